"""The PROXY protocol (v1 and v2) behind a load balancer, on Twisted's
:mod:`twisted.protocols.haproxy` wrapper.

:class:`ProxyProtocolEndpoint` wraps a listening endpoint: every connection must start
with a PROXY header (one that does not is closed), and the connection's protocol is
built and connected only once the header is read, so that ``getPeer()`` is the real
client from its first use: the connection limits per address, channel events, RPC hooks
(the ACL's white lists) and log lines all see the client, not the load balancer.
(Twisted's own ``haproxy:`` endpoint connects the protocol before the header arrives,
when ``getPeer()`` is still the load balancer's address; the command line's
``--proxy-protocol`` and a ``haproxy:`` prefix on ``--listen`` both use this one.)

A v2 ``LOCAL`` header (a load balancer's health check) keeps the load balancer's
address. Accept it only on ports that only the load balancer can reach: whoever can
send the header chooses the address the server believes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from rmqtwist.framing import abort_transport

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import (
        IAddress,
        IDelayedCall,
        IListeningPort,
        IReactorTime,
        ITransport,
    )

__all__ = ["ProxyProtocolEndpoint"]

#: Seconds a connection may take to send its whole PROXY header.
_DEFAULT_HEADER_TIMEOUT = 10.0
#: A v1 header is at most 107 bytes; v2 headers with TLVs may be longer, but not this.
_MAX_HEADER = 4096


class _Placeholder(Protocol):
    """Stands for the wrapped protocol until the header is read (never connected)."""


class _ProxiedConnection(HAProxyProtocolWrapper):
    """Reads the PROXY header, then builds and connects the wrapped protocol."""

    factory: _ProxyFactory

    def __init__(self, factory: _ProxyFactory) -> None:
        super().__init__(factory, _Placeholder())  # type: ignore[arg-type]
        self._ready = False
        self._seen = 0
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection without connecting the wrapped protocol yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)  # type: ignore[no-untyped-call]
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        timeout = self.factory.header_timeout
        if timeout is not None:
            self._timer = self.factory.clock.callLater(timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._close()

    def _close(self) -> None:
        transport = self.transport
        assert transport is not None
        abort_transport(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._ready:
            self.wrappedProtocol.dataReceived(data)
            return
        self._seen += len(data)
        parser = self._parser
        if parser is None:
            buffered = getattr(self, "_start", b"") + data
            if len(buffered) < 16 and (
                V2Parser.PREFIX.startswith(buffered[:12])
                or V1Parser.PROXYSTR.startswith(buffered[:5])
            ):
                self._start = buffered  # too short to tell yet
                return
            data, self._start = buffered, b""
            if data[:12] == V2Parser.PREFIX and data[12] & 0xF0 == 0x20:
                self._parser = parser = V2Parser()
            elif data[:5] == V1Parser.PROXYSTR:
                self._parser = parser = V1Parser()
            else:
                self._close()
                return
        try:
            info, remaining = parser.feed(data)
        except InvalidProxyHeader:
            self._close()
            return
        if info is None:
            if self._seen > _MAX_HEADER:
                self._close()
            return
        self._proxyInfo = info
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wrapped = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if wrapped is None:
            self._close()
            return
        self.wrappedProtocol = wrapped
        self._ready = True
        wrapped.makeConnection(self)
        if remaining:
            wrapped.dataReceived(remaining)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # type: ignore[no-untyped-call]  # noqa: B008
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ready:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        else:
            self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]


class _ProxyFactory(HAProxyWrappingFactory):
    noisy = False  # the wrapped factory logs its own start and stop

    def __init__(self, wrapped: Factory, clock: IReactorTime, header_timeout: float | None) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.header_timeout = header_timeout

    def buildProtocol(self, addr: IAddress | None) -> Any:
        return _ProxiedConnection(self)


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """Listens on ``wrapped``, taking a PROXY v1 or v2 header at the start of every
    connection (see the module doc); a connection whose header is not whole within
    ``header_timeout`` seconds (None: no limit) is closed."""

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        *,
        clock: IReactorTime | None = None,
        header_timeout: float | None = _DEFAULT_HEADER_TIMEOUT,
        description: str = "",
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.wrapped = wrapped
        self.clock = clock
        self.header_timeout = header_timeout
        self.description = description

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:  # noqa: N803
        return self.wrapped.listen(_ProxyFactory(protocolFactory, self.clock, self.header_timeout))

    def __repr__(self) -> str:
        return f"proxy:{self.description or repr(self.wrapped)}"
