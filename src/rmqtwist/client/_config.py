"""How a client connects: its configuration, ``host:port`` addresses and the default endpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from rmqtwist.codec import DEFAULT_MAX_FRAME_LENGTH
from rmqtwist.codes import SerializeType

EndpointFactory = Callable[[Any, str, int, float], IStreamClientEndpoint]


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``; ValueError if it is not one."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a 'host:port' string, got {type(address).__name__}")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = address.rpartition(":")
        if ":" in host:
            raise ValueError(f"an IPv6 address needs brackets: '[{host}]:{port}', not {address!r}")
    if not host or not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be 'host:port' with a port in 1..65535, got {address!r}")
    return host, int(port)


def tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """The default way to reach ``host:port``: plain TCP (a name is resolved, v4 and v6)."""
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout)  # type: ignore[no-untyped-call]
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout)
    return HostnameEndpoint(reactor, host, port, timeout)


@dataclass(frozen=True)
class ClientConfig:
    """How a :class:`RemotingClient` behaves. Every field has a default; times are seconds."""

    #: How long one connect attempt may take (Java ``connectTimeoutMillis``).
    connect_timeout: float = 3.0
    #: Requests awaiting a response at once, over all connections (Java
    #: ``clientAsyncSemaphoreValue``).
    async_permits: int = 65535
    #: Oneway requests being written at once (Java ``clientOnewaySemaphoreValue``).
    oneway_permits: int = 65535
    #: Most connections open (or being opened) at once; None for no limit.
    max_connections: int | None = None
    #: A connection with nothing in flight and no traffic for this long is closed by the
    #: sweep (Java ``clientChannelMaxIdleTimeSeconds``); None keeps idle connections.
    idle_timeout: float | None = 120.0
    #: How often the idle sweep runs.
    idle_sweep_interval: float = 10.0
    #: Close a connection when a request on it times out (Java
    #: ``clientCloseSocketIfTimeout``): the peer may be wedged.
    close_on_timeout: bool = True
    #: Wait after the first failed connect to an address; doubles per failure...
    backoff_initial: float = 1.0
    #: ...up to this.
    backoff_max: float = 60.0
    #: Each wait is spread uniformly over +/- this fraction of itself.
    backoff_jitter: float = 0.2
    #: Consecutive failed connects that open an address's circuit breaker.
    breaker_threshold: int = 5
    #: An open breaker turns half-open (one trial connect) after at least this long.
    breaker_reset_timeout: float = 30.0
    #: How often the background probe checks every name server.
    name_server_probe_interval: float = 10.0
    #: How long :meth:`RemotingClient.close` waits for calls in flight by default.
    drain_timeout: float = 5.0
    #: Serialize type forced on every request sent (None: each request's own).
    serialize_type: SerializeType | None = None
    #: Largest frame accepted from a server, length prefix included.
    max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH
    #: Write buffer size past which a connection is unwritable (calls wait).
    write_high_water: int = 64 * 1024
    #: Requests pushed by servers that may be processed at once.
    max_in_flight: int = 1000
    #: Threads for blocking processors of pushed requests.
    blocking_threads: int = 4
    #: Connect with TLS (:mod:`rmqtwist.tls`); the server's certificate is verified.
    tls: bool = False
    #: PEM file of the CAs trusted to sign servers' certificates (None: the system's).
    tls_ca: str | None = None
    #: False turns off the check of the server's certificate and host name: anyone on the
    #: way can then pretend to be the server. Only for self-signed dev setups.
    tls_verify: bool = True
    #: PEM file of a client certificate (and its key, or ``tls_key``), for servers that
    #: ask for one (mutual TLS).
    tls_cert: str | None = None
    #: PEM file of the client certificate's private key (None: in ``tls_cert``).
    tls_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "idle_sweep_interval", "name_server_probe_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("backoff_initial", "backoff_max", "breaker_reset_timeout", "drain_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 or None, got {self.idle_timeout!r}")
        if not 0 <= self.backoff_jitter < 1:
            raise ValueError(f"backoff_jitter must be in [0, 1), got {self.backoff_jitter!r}")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        if self.breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be >= 1, got {self.breaker_threshold}")
        if not self.tls and (
            self.tls_ca is not None or self.tls_cert is not None or not self.tls_verify
        ):
            raise ValueError("tls_ca, tls_cert and tls_verify apply only with tls=True")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {self.max_connections}")
