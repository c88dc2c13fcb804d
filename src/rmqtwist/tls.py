"""TLS for the remoting server and client, through Twisted endpoints and
:mod:`twisted.internet.ssl` (pyOpenSSL: ``pip install twisted[tls]``).

Server: :class:`TLSServerEndpoint` wraps any listening endpoint (``tcp:``, ``unix:``, a
PROXY-protocol one) in one of RocketMQ's modes (:class:`TLSMode`):

- ``permissive``: TLS and plaintext on one port, told apart by the first byte (0x16
  starts a TLS handshake; a remoting frame starts with its 4-byte length, whose first
  byte is 0 for any frame under 16 MiB);
- ``enforcing``: TLS only; a plaintext connection is closed before any of its bytes is
  read as a request (Apache's server processes it anyway), logged at most once per 10 s
  with a count.

:func:`server_tls_options` makes the certificate options, with optional client
certificates (:class:`ClientAuth`). Client: :func:`client_tls_endpoint_factory` makes the
endpoints a :class:`~rmqtwist.client.RemotingClient` uses when its
:class:`~rmqtwist.client.ClientConfig` has ``tls=True``: the server's certificate is
verified against the system's CAs (or ``tls_ca``) and its host name, unless
``tls_verify=False``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from OpenSSL.SSL import Error as SSLError
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from rmqtwist._logsafe import LogLimiter
from rmqtwist.framing import abort_transport, format_address

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IAddress,
        IDelayedCall,
        IListeningPort,
        IProtocol,
        IReactorTime,
    )

    from rmqtwist.client import ClientConfig

__all__ = [
    "TLS_HANDSHAKE",
    "ClientAuth",
    "TLSClientEndpoint",
    "TLSHandshakeError",
    "TLSMode",
    "TLSServerEndpoint",
    "client_tls_endpoint_factory",
    "client_tls_options",
    "listen_endpoint",
    "load_certificates",
    "server_tls_options",
]

_log = Logger()

#: The first byte of a TLS handshake record (a ClientHello).
TLS_HANDSHAKE = 0x16
#: Seconds a connection may stay silent before its first byte tells TLS from plaintext.
_DEFAULT_SNIFF_TIMEOUT = 10.0
_REFUSAL_LOG_INTERVAL = 10.0


class TLSMode(enum.Enum):
    """How a server port treats TLS (RocketMQ's ``tls.server.mode``)."""

    DISABLED = "disabled"
    PERMISSIVE = "permissive"
    ENFORCING = "enforcing"


class ClientAuth(enum.Enum):
    """Whether a TLS server asks clients for a certificate (``tls.server.need.client.auth``)."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRE = "require"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ValueError(f"{what} {path}: cannot read: {error.strerror or error}") from None


def load_certificates(path: str) -> list[ssl.Certificate]:
    """Every PEM certificate in the file at ``path`` (a CA bundle); ValueError if none."""
    data = _read(path, "CA file")
    marker = b"-----BEGIN CERTIFICATE-----"
    certificates = []
    for part in data.split(marker)[1:]:
        try:
            certificates.append(ssl.Certificate.loadPEM(marker + part))
        except Exception as error:
            raise ValueError(f"CA file {path}: not a PEM certificate: {error}") from None
    if not certificates:
        raise ValueError(f"CA file {path}: no PEM certificate in it")
    return certificates


def _private_certificate(cert_path: str, key_path: str | None) -> ssl.PrivateCertificate:
    cert = _read(cert_path, "certificate")
    key = _read(key_path, "key") if key_path else cert
    try:
        private: ssl.PrivateCertificate = ssl.PrivateCertificate.loadPEM(  # type: ignore[no-untyped-call]
            key + b"\n" + cert
        )
        return private
    except Exception as error:
        raise ValueError(
            f"certificate {cert_path} with key {key_path or cert_path}: cannot load them: "
            f"{error or type(error).__name__}"
        ) from None


def server_tls_options(
    cert: str,
    key: str | None = None,
    *,
    ca: str | None = None,
    client_auth: ClientAuth = ClientAuth.NONE,
) -> ssl.CertificateOptions:
    """A server's TLS options: its certificate chain file ``cert`` (PEM) and private key
    ``key`` (PEM; None: in ``cert``); with ``client_auth`` optional or require, client
    certificates are verified against the CAs in ``ca``. ValueError for files that
    cannot be used."""
    private = _private_certificate(cert, key)
    identity = {
        "privateKey": private.privateKey.original.to_cryptography_key(),
        "certificate": private.original.to_cryptography(),
    }
    if client_auth is ClientAuth.NONE:
        plain = ssl.CertificateOptions(**identity)
        plain.getContext()
        return plain
    if ca is None:
        raise ValueError(f"client_auth {client_auth.value} needs a CA file to verify clients")
    options = ssl.CertificateOptions(
        **identity,
        verify=True,
        caCerts=[certificate.original for certificate in load_certificates(ca)],
        requireCertificate=client_auth is ClientAuth.REQUIRE,
    )
    options.getContext()  # made now: a problem is an error here, not at each connection
    return options


class _Sniffer(Protocol):
    """Waits for a connection's first byte, then connects it as TLS or plaintext (or
    closes it: plaintext on an enforcing port, or silence)."""

    def __init__(self, factory: _SniffingFactory, addr: IAddress | None) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: IProtocol | None = None
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        timeout = self.factory.sniff_timeout
        if timeout is not None:
            self._timer = self.factory.clock.callLater(timeout, self._silent)

    def _silent(self) -> None:
        self._timer = None
        self._abort()

    def _abort(self) -> None:
        transport = self.transport
        assert transport is not None
        abort_transport(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if not data:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        factory = self.factory
        inner: IProtocol | None
        if data[0] == TLS_HANDSHAKE:
            inner = factory.tls_factory.buildProtocol(peer)
        elif factory.mode is TLSMode.ENFORCING:
            factory.refuse_plaintext(peer)
            self._abort()
            return
        else:
            inner = factory.wrapped.buildProtocol(peer)
        if inner is None:
            transport.loseConnection()
            return
        self.inner = inner
        try:
            inner.makeConnection(transport)
        except Exception:
            _log.failure("Cannot set up a connection from {peer}", peer=format_address(peer))
            self.inner = None
            self._abort()
            return
        inner.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # type: ignore[no-untyped-call]  # noqa: B008
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connectionLost(reason)


class _SniffingFactory(Factory):
    noisy = False  # the wrapped factory logs its own start and stop

    def __init__(
        self,
        wrapped: Factory,
        mode: TLSMode,
        options: Any,
        clock: IReactorTime,
        sniff_timeout: float | None,
    ) -> None:
        self.wrapped = wrapped
        self.mode = mode
        self.clock = clock
        self.sniff_timeout = sniff_timeout
        self.tls_factory = TLSMemoryBIOFactory(options, False, wrapped)
        self.refused_plaintext = 0
        self._log_limiter = LogLimiter(clock, _REFUSAL_LOG_INTERVAL)

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _Sniffer(self, addr)

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        name = prefix() if callable(prefix) else type(self.wrapped).__name__
        return f"{name} (TLS {self.mode.value})"

    def refuse_plaintext(self, peer: IAddress) -> None:
        self.refused_plaintext += 1
        dropped = self._log_limiter.allow()
        if dropped is None:
            return
        _log.warn(
            "Closed a plaintext connection from {peer} on a TLS-only (enforcing) port "
            "without reading it; {count} such since the last such message",
            peer=format_address(peer),
            count=dropped + 1,
        )

    def doStart(self) -> None:
        self.wrapped.doStart()  # type: ignore[no-untyped-call]

    def doStop(self) -> None:
        self.wrapped.doStop()  # type: ignore[no-untyped-call]


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """Listens on ``wrapped`` with TLS in ``mode`` (permissive or enforcing, see the
    module doc), with ``options`` from :func:`server_tls_options`. A connection silent
    for ``sniff_timeout`` seconds (None: no limit) is closed before any protocol is
    built for it."""

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        options: Any,
        mode: TLSMode = TLSMode.ENFORCING,
        *,
        clock: IReactorTime | None = None,
        sniff_timeout: float | None = _DEFAULT_SNIFF_TIMEOUT,
        description: str = "",
    ) -> None:
        if mode is TLSMode.DISABLED:
            raise ValueError("TLSServerEndpoint needs the permissive or enforcing mode")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.wrapped = wrapped
        self.options = options
        self.mode = mode
        self.clock = clock
        self.sniff_timeout = sniff_timeout
        self.description = description
        #: The factory of the last listen (its ``refused_plaintext`` counts refusals).
        self.factory: _SniffingFactory | None = None

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:  # noqa: N803
        self.factory = _SniffingFactory(
            protocolFactory, self.mode, self.options, self.clock, self.sniff_timeout
        )
        return self.wrapped.listen(self.factory)

    def __repr__(self) -> str:
        inner = self.description or repr(self.wrapped)
        return f"tls({self.mode.value}):{inner}"


def client_tls_options(
    hostname: str,
    *,
    ca: str | None = None,
    verify: bool = True,
    cert: str | None = None,
    key: str | None = None,
) -> Any:
    """A client's TLS connection creator for ``hostname``: the server's certificate is
    verified against the system's trusted CAs (or those in the file ``ca``) and must name
    ``hostname``; ``verify=False`` turns both checks off (anyone can then pretend to be
    the server). ``cert``/``key``: a client certificate, for servers that ask for one."""
    client_certificate = _private_certificate(cert, key) if cert else None
    if not verify:
        if client_certificate is None:
            return ssl.CertificateOptions(verify=False)
        return ssl.CertificateOptions(
            privateKey=client_certificate.privateKey.original.to_cryptography_key(),
            certificate=client_certificate.original.to_cryptography(),
            verify=False,
        )
    trust = (
        ssl.trustRootFromCertificates(  # type: ignore[no-untyped-call]
            load_certificates(ca)
        )
        if ca is not None
        else ssl.platformTrust()  # type: ignore[no-untyped-call]
    )
    return ssl.optionsForClientTLS(hostname, trust, client_certificate)


EndpointFactory = Callable[[Any, str, int, float], "IStreamClientEndpoint"]


class TLSHandshakeError(ConnectionError):
    """The TLS handshake with a server failed (the message says why, as OpenSSL does:
    ``certificate verify failed``, a missing client certificate...)."""


def _tls_reason(failure: Failure) -> str:
    error = failure.value
    reasons: list[str] = []
    details = error.args[0] if isinstance(error, SSLError) and error.args else None
    if isinstance(details, list):
        reasons = [str(item[-1]) for item in details if isinstance(item, tuple) and item]
    if reasons:
        return "TLS handshake failed: " + "; ".join(reasons)
    return f"TLS handshake failed: {failure.getErrorMessage()}"


class _HandshakeTLS(BufferingTLSTransport):
    """A client's TLS connection that tells when its handshake is done (or failed)."""

    def __init__(self, factory: TLSMemoryBIOFactory, wrappedProtocol: Any) -> None:  # noqa: N803
        super().__init__(factory, wrappedProtocol)
        self.handshake_done: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[None]) -> None:
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()  # type: ignore[no-untyped-call]
        if self._handshakeDone and not self.handshake_done.called:
            self.handshake_done.callback(None)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # type: ignore[no-untyped-call]  # noqa: B008
        if not self.handshake_done.called:
            # The TLS layer keeps the handshake's error and passes it to the wrapped
            # protocol; the transport's own reason is only "closed cleanly".
            why = getattr(self, "_reason", None) or reason
            self.handshake_done.errback(Failure(TLSHandshakeError(_tls_reason(why))))  # type: ignore[no-untyped-call]
        super().connectionLost(reason)


class _ClientTLSFactory(TLSMemoryBIOFactory):
    protocol = _HandshakeTLS


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """Connects over ``wrapped`` with TLS (``options`` from :func:`client_tls_options`);
    the connection counts as made once the TLS handshake is done, so that a server that
    fails verification is a connect error, and no request waits on a handshake (one
    written before would pause the connection's reading, and with it the handshake)."""

    def __init__(self, options: Any, wrapped: IStreamClientEndpoint) -> None:
        self.options = options
        self.wrapped = wrapped

    def connect(self, protocolFactory: Any) -> Deferred[Any]:  # noqa: N803
        connecting = self.wrapped.connect(_ClientTLSFactory(self.options, True, protocolFactory))

        def handshake(tls: Any) -> Deferred[Any]:
            done: Deferred[Any] = tls.handshake_done
            return done.addCallback(lambda _: tls.wrappedProtocol)

        result: Deferred[Any] = connecting.addCallback(handshake)
        return result


def client_tls_endpoint_factory(config: ClientConfig, plain: EndpointFactory) -> EndpointFactory:
    """The endpoint factory of a client whose ``config`` has ``tls=True``: ``plain``'s
    endpoints wrapped in TLS as :func:`client_tls_options` describes (the files are read
    once, here; ValueError for one that cannot be used)."""
    client_certificate = (
        _private_certificate(config.tls_cert, config.tls_key) if config.tls_cert else None
    )
    trust: Any = None
    fixed: Any = None
    if not config.tls_verify:
        fixed = client_tls_options("", verify=False, cert=config.tls_cert, key=config.tls_key)
    elif config.tls_ca is not None:
        trust = ssl.trustRootFromCertificates(  # type: ignore[no-untyped-call]
            load_certificates(config.tls_ca)
        )
    else:
        trust = ssl.platformTrust()  # type: ignore[no-untyped-call]

    def make(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
        options = fixed
        if options is None:
            options = ssl.optionsForClientTLS(host, trust, client_certificate)
        return TLSClientEndpoint(options, plain(reactor, host, port, timeout))

    return make


def listen_endpoint(
    reactor: Any,
    description: str,
    *,
    proxy_protocol: bool = False,
    tls_mode: TLSMode = TLSMode.DISABLED,
    tls_options: Any = None,
    clock: IReactorTime | None = None,
    first_byte_timeout: float | None = _DEFAULT_SNIFF_TIMEOUT,
) -> str | IStreamServerEndpoint:
    """The endpoint to listen on for the endpoint string ``description``: behind PROXY
    headers (:class:`~rmqtwist.proxy.ProxyProtocolEndpoint`) with ``proxy_protocol`` or
    a ``haproxy:`` prefix, and then TLS in ``tls_mode`` with ``tls_options``; the string
    itself when neither applies. A connection that has not sent its PROXY header, or
    (TLS) its first byte, ``first_byte_timeout`` seconds after connecting is closed
    (None: no limit)."""
    if description.startswith("haproxy:"):
        description = description[len("haproxy:") :]
        proxy_protocol = True
    if not proxy_protocol and tls_mode is TLSMode.DISABLED:
        return description
    from twisted.internet.endpoints import serverFromString

    from rmqtwist.proxy import ProxyProtocolEndpoint

    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    shown = description
    if proxy_protocol:
        endpoint = ProxyProtocolEndpoint(
            endpoint, clock=clock, header_timeout=first_byte_timeout, description=description
        )
        shown = repr(endpoint)
    if tls_mode is not TLSMode.DISABLED:
        if tls_options is None:
            raise ValueError(f"TLS mode {tls_mode.value} needs TLS options (a certificate)")
        endpoint = TLSServerEndpoint(
            endpoint,
            tls_options,
            tls_mode,
            clock=clock,
            sniff_timeout=first_byte_timeout,
            description=shown,
        )
    return endpoint
