"""The remoting client: pooled connections, calls with one deadline, name-server choice.

:class:`RemotingClient` is what a program uses to talk to RocketMQ name servers and
brokers (Apache's or an rmqtwist server):

- :meth:`~RemotingClient.invoke` and :meth:`~RemotingClient.invoke_oneway` take an
  address (``"host:port"``, or None for "the current name server"). A call's timeout is
  one absolute deadline covering the connect, the wait for a permit, the write and the
  wait for the response. Every failure has its own type (see :mod:`rmqtwist.errors`):
  :class:`~rmqtwist.errors.ConnectError` (and its fail-fast subclasses
  :class:`~rmqtwist.errors.ConnectBackoffError`,
  :class:`~rmqtwist.errors.CircuitOpenError`,
  :class:`~rmqtwist.errors.ConnectionLimitError`,
  :class:`~rmqtwist.errors.NoNameServerError`),
  :class:`~rmqtwist.errors.SendRequestError`,
  :class:`~rmqtwist.errors.RemotingTimeoutError`,
  :class:`~rmqtwist.errors.ConnectionLostError`,
  :class:`~rmqtwist.errors.TooManyRequestsError`,
  :class:`~rmqtwist.errors.ClientClosedError`.
- The pool keeps one multiplexed connection per address, made on first use; calls that
  arrive while it is being made share the one attempt. A connection that is closing or
  closed is never handed out; one whose write buffer is full makes calls wait (within
  their deadline) until it drains. An idle sweep closes connections with nothing in
  flight and no traffic for ``idle_timeout`` seconds.
- Per address, failed connects back off (1 s doubling to 60 s, with jitter) and a
  circuit breaker opens after 5 consecutive failures (half-open after 30 s).
- Name servers are chosen by recent latency and consecutive errors, stuck to while
  healthy, and failed over at once; a background probe keeps
  :meth:`~RemotingClient.available_name_server_list` fresh.
- The server may push requests to the client (a broker asks a producer
  CHECK_TRANSACTION_STATE): register processors, hooks and listeners as on a server.

Everything runs on the reactor thread; time comes from the reactor given (a ``Clock``
in tests). For blocking code, see :mod:`rmqtwist.blocking`.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.codec import DEFAULT_MAX_FRAME_LENGTH
from rmqtwist.codes import SerializeType, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.dispatcher import Dispatcher, Registrar
from rmqtwist.errors import (
    CircuitOpenError,
    ClientClosedError,
    ConnectBackoffError,
    ConnectError,
    ConnectionLimitError,
    EncodeError,
    NoNameServerError,
    RemotingTimeoutError,
    RPCHookAbort,
    TooManyRequestsError,
)
from rmqtwist.protocol import RemotingProtocol, _check_timeout

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime


__all__ = [
    "AddressHealth",
    "ClientConfig",
    "PoolStats",
    "RemotingClient",
    "parse_address",
]

_log = Logger()

#: After close() has drained (or given up on) the calls, connections that have not
#: closed within this many seconds (a peer that does not read) are aborted.
_CLOSE_GRACE = 1.0
#: Weight of the newest sample in a name server's latency average.
_LATENCY_WEIGHT = 0.3

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
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {self.max_connections}")


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a client's pool, from :meth:`RemotingClient.pool_stats`."""

    #: Connections open now.
    open: int
    #: Open connections with a request of ours in flight.
    active: int
    #: Open connections with nothing of ours in flight.
    idle: int
    #: Connect attempts under way (or waiting for their backoff).
    connecting: int
    #: Connections made since the client started.
    created: int
    #: Connections closed since the client started.
    closed: int
    #: Connect attempts that failed.
    failed_connects: int
    #: Calls made (invoke and invoke_oneway).
    requests: int
    #: Calls that failed, whatever the reason.
    errors: int
    #: Requests sent and waiting for their response.
    in_flight: int
    #: The configured limit on connections (None: none).
    max_connections: int | None

    @property
    def utilization(self) -> float:
        """Open connections over ``max_connections``; without a limit, active over open."""
        if self.max_connections is not None:
            return (self.open + self.connecting) / self.max_connections
        return self.active / self.open if self.open else 0.0

    @property
    def error_rate(self) -> float:
        """Failed calls over calls made (0.0 before the first call)."""
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every field and the two ratios, for printing as JSON."""
        return {**asdict(self), "utilization": self.utilization, "error_rate": self.error_rate}


@dataclass(frozen=True)
class AddressHealth:
    """What the client knows of connecting to one address (:meth:`RemotingClient.health`)."""

    address: str
    #: ``"closed"`` (connects allowed, perhaps after a backoff), ``"open"`` (calls fail
    #: fast) or ``"half-open"`` (the next connect is a trial).
    breaker: str
    consecutive_failures: int
    #: Seconds until the next connect attempt is allowed (0.0: now).
    retry_in: float
    #: Why the last connect failed (None if it did not).
    last_error: str | None
    #: Average latency of recent calls and connects, in seconds (None before any).
    latency: float | None
    #: Consecutive failed calls (connect failures, timeouts, lost connections).
    consecutive_errors: int


class _Health:
    __slots__ = ("consecutive_errors", "failures", "last_error", "latency", "open", "retry_at")

    def __init__(self) -> None:
        self.failures = 0  # consecutive failed connects
        self.retry_at = 0.0  # no connect attempt before this time
        self.open = False
        self.last_error: str | None = None
        self.latency: float | None = None  # moving average, for name-server choice
        self.consecutive_errors = 0  # failed calls, for name-server choice


class _ClientConnection(RemotingProtocol):
    client: RemotingClient
    address: str
    idle_since: float
    swept_activity: int

    def mark_closing(self) -> None:
        super().mark_closing()
        self.client._drop_from_pool(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.client._connection_lost(self)


class _ClientFactory(Factory):
    protocol = _ClientConnection

    def __init__(self, client: RemotingClient, address: str) -> None:
        self.client = client
        self.address = address

    def buildProtocol(self, addr: IAddress | None) -> _ClientConnection:
        client = self.client
        connection = _ClientConnection()
        connection.factory = self
        connection.dispatcher = client.dispatcher
        connection.max_frame_length = client.config.max_frame_length
        connection.client = client
        connection.address = self.address
        connection.idle_since = client.clock.seconds()
        connection.swept_activity = 0
        return connection


class _Attempt:
    """One connect attempt to an address, shared by every call that needs it."""

    __slots__ = (
        "address",
        "connecting",
        "outcome",
        "start_at",
        "started",
        "starter",
        "timer",
        "waiters",
    )

    def __init__(self, address: str, start_at: float) -> None:
        self.address = address
        self.start_at = start_at
        self.started: float | None = None
        self.starter: IDelayedCall | None = None  # the attempt waits out a backoff
        self.connecting: Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.waiters: list[Deferred[_ClientConnection]] = []
        # An endpoint may connect (or fail) before the first call waits: keep the outcome.
        self.outcome: _ClientConnection | Exception | None = None

    def wait(self) -> Deferred[_ClientConnection]:
        if isinstance(self.outcome, Exception):
            return fail(self.outcome)
        if self.outcome is not None:
            return succeed(self.outcome)
        waiter: Deferred[_ClientConnection] = Deferred(self._forget)
        self.waiters.append(waiter)
        return waiter

    def _forget(self, waiter: Deferred[_ClientConnection]) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)

    def settle(self, result: _ClientConnection | Exception) -> None:
        self.outcome = result
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if isinstance(result, Exception):
                waiter.errback(result)
            else:
                waiter.callback(result)


class _Call:
    """One call that is not on the fast path: it connects (or chooses a name server) first."""

    __slots__ = (
        "address",
        "candidates",
        "client",
        "deadline",
        "errors",
        "name_server",
        "oneway",
        "request",
        "result",
        "sent_at",
        "stage",
        "started",
        "timeout",
        "timer",
    )

    def __init__(
        self,
        client: RemotingClient,
        address: str | None,
        request: RemotingCommand,
        timeout: float,
        oneway: bool,
    ) -> None:
        self.client = client
        self.request = request
        self.oneway = oneway
        self.timeout = timeout
        self.started = client.clock.seconds()
        self.deadline = self.started + timeout
        self.result: Deferred[Any] = Deferred(self._cancelled)
        self.stage: Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.name_server = address is None
        self.address = address
        self.candidates: list[str] = []
        self.errors: list[str] = []
        self.sent_at = 0.0

    # -- choosing where to connect ----------------------------------------------------

    def start(self) -> None:
        if self.address is not None:
            self._connect(self.address)
            return
        self.candidates = self.client._name_server_candidates()
        if not self.candidates:
            self._finish(
                NoNameServerError(
                    "no name-server address is set: call update_name_server_address_list()"
                )
            )
            return
        self._next_candidate()

    def _next_candidate(self) -> None:
        self.address = self.candidates.pop(0)
        self._connect(self.address)

    def _connect(self, address: str) -> None:
        client = self.client
        now = client.clock.seconds()
        remaining = self.deadline - now
        try:
            connecting = client._connection_for(address, self.deadline)
        except ConnectError as e:
            self._connect_failed(address, e)
            return
        except ClientClosedError as e:
            self._finish(e)
            return
        if connecting.called:  # the pool had a usable connection
            connecting.addCallbacks(
                self._connected,
                self._connect_errback,
                callbackArgs=(address,),
                errbackArgs=(address,),
            )
            return
        # With other name servers left, one that hangs may take only its share of the
        # deadline, so that a dead address never eats a whole call.
        wait = remaining / (1 + len(self.candidates)) if self.candidates else remaining
        self.stage = connecting
        self.timer = client.clock.callLater(max(wait, 0.0), self._connect_too_slow, address)
        connecting.addCallbacks(
            self._connected_later,
            self._connect_errback_later,
            callbackArgs=(connecting, address),
            errbackArgs=(connecting, address),
        )

    def _connected_later(
        self, connection: _ClientConnection, stage: Deferred[Any], address: str
    ) -> None:
        if self.stage is stage:  # else the call moved on; the pool keeps the connection
            self.stage = None
            self._connected(connection, address)

    def _connect_errback_later(self, failure: Failure, stage: Deferred[Any], address: str) -> None:
        if self.stage is stage:  # else cancelled by us: the call moved on
            self.stage = None
            self._connect_errback(failure, address)

    def _connect_too_slow(self, address: str) -> None:
        self.timer = None
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.cancel()  # leaves the shared attempt; it goes on for the pool
        waited = self.client.clock.seconds() - self.started
        if self.candidates:
            self.client._record_error(address)
            self.errors.append(f"{address}: still connecting after {waited:.3g} s")
            self._next_candidate()
            return
        self._finish(
            RemotingTimeoutError(
                f"no connection to {address} within the call's {self.timeout:g} s deadline"
                + (f" (tried {'; '.join(self.errors)})" if self.errors else "")
            )
        )

    def _connect_errback(self, failure: Failure, address: str) -> None:
        self._stop_timer()
        error = failure.value
        if isinstance(error, ConnectError):
            self._connect_failed(address, error)
        else:  # ClientClosedError, or the connection closed while we waited for it to drain
            self._finish(failure)

    def _connect_failed(self, address: str, error: ConnectError) -> None:
        client = self.client
        if self.name_server:
            client._record_error(address)
            self.errors.append(f"{address}: {error}")
            if self.candidates and client.clock.seconds() < self.deadline:
                self._next_candidate()
                return
            if len(self.errors) > 1:
                combined = ConnectError(
                    f"no name server could be reached: {'; '.join(self.errors)}"
                )
                combined.__cause__ = error
                self._finish(combined)
                return
        self._finish(error)

    # -- sending ----------------------------------------------------------------------

    def _connected(self, connection: _ClientConnection, address: str) -> None:
        self._stop_timer()
        client = self.client
        now = client.clock.seconds()
        remaining = self.deadline - now
        if remaining <= 0:
            self._finish(
                RemotingTimeoutError(
                    f"the call's {self.timeout:g} s deadline passed while connecting to {address}"
                )
            )
            return
        self.sent_at = now
        stage: Deferred[Any]
        if self.oneway:
            stage = connection.invoke_oneway(self.request, remaining)
        else:
            stage = connection.invoke(self.request, remaining)
        if stage.called:
            stage.addBoth(self._done, address)
            return
        self.stage = stage
        stage.addBoth(self._done_later, stage, address)

    def _done_later(self, result: object, stage: Deferred[Any], address: str) -> None:
        if self.stage is not stage:
            return  # cancelled: the outer Deferred has its CancelledError already
        self.stage = None
        self._done(result, address)

    def _done(self, result: object, address: str) -> None:
        spent = self.sent_at - self.started
        if isinstance(result, Failure) and type(result.value) is RemotingTimeoutError and spent:
            # The connection was given what was left of the deadline: say what the
            # caller asked for instead.
            error = RemotingTimeoutError(
                f"no response from {address} to {code_name(self.request.code)} within the "
                f"call's {self.timeout:g} s deadline ({spent:.3g} s of it spent connecting)"
            )
            error.__cause__ = result.value
            result = Failure(error)  # type: ignore[no-untyped-call]
        if self.name_server:
            client = self.client
            if isinstance(result, Failure):
                if not isinstance(result.value, RPCHookAbort | EncodeError | TooManyRequestsError):
                    client._record_error(address)
            else:
                client._record_success(address, client.clock.seconds() - self.sent_at)
        self._finish(result, counted=True)

    # -- ending -----------------------------------------------------------------------

    def _stop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _finish(self, result: object, counted: bool = False) -> None:
        # ``counted``: the result came from the connection, which counted a failure.
        self._stop_timer()
        self.client._calls.discard(self)
        if self.result.called:
            return
        if isinstance(result, Failure | Exception):
            if not counted:
                self.client._errors += 1
            self.result.errback(result)
        else:
            self.result.callback(result)

    def fail(self, error: Exception) -> None:
        """End the call with ``error`` now, forgetting whatever it waits on."""
        stage, self.stage = self.stage, None
        self._stop_timer()
        if stage is not None:
            stage.cancel()
        self._finish(error)

    def _cancelled(self, _: Deferred[Any]) -> None:
        stage, self.stage = self.stage, None
        self._stop_timer()
        self.client._calls.discard(self)
        if stage is not None:
            stage.cancel()  # forgets the pending entry (or leaves the connect attempt)


class RemotingClient(Registrar):
    """A RocketMQ remoting client over a pool of connections (see the module doc).

    ``reactor`` defaults to the global one; tests give a ``MemoryReactorClock``.
    Processors, hooks and listeners registered on it (``register_processor`` and the
    rest, as on a server) answer the requests servers push to the client.
    ``endpoint_factory(reactor, host, port, timeout)`` makes the endpoint to connect to
    (default :func:`tcp_endpoint`; give one for TLS or UNIX sockets). ``random`` is the
    source of backoff jitter (a callable returning floats in [0, 1)).
    """

    def __init__(
        self,
        reactor: Any = None,
        config: ClientConfig | None = None,
        *,
        endpoint_factory: EndpointFactory = tcp_endpoint,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.config = config = config if config is not None else ClientConfig()
        self.dispatcher = Dispatcher(
            reactor,
            idle_timeout=None,  # the pool's sweep closes idle connections
            oneway_permits=config.oneway_permits,
            async_permits=config.async_permits,
            max_in_flight=config.max_in_flight,
            max_in_flight_per_connection=config.max_in_flight,
            blocking_threads=config.blocking_threads,
            write_high_water=config.write_high_water,
            serialize_type=config.serialize_type,
            close_on_timeout=config.close_on_timeout,
        )
        self._async_permits = self.dispatcher.async_permits
        self._endpoint_factory = endpoint_factory
        self._random = random
        self._connections: dict[str, _ClientConnection] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._health: dict[str, _Health] = {}
        self._calls: set[_Call] = set()
        self._name_servers: list[str] = []
        self._current_name_server: str | None = None
        self._reachable: set[str] = set()
        self._probed: set[str] = set()
        self._probing: set[str] = set()
        self._prober: LoopingCall | None = None
        self._sweeper: LoopingCall | None = None
        self._closed = False
        self._closing: Deferred[None] | None = None
        self._all_closed: list[Deferred[None]] = []
        self._created = 0
        self._closed_count = 0
        self._failed_connects = 0
        self._requests = 0
        self._errors = 0

    # -- calls ------------------------------------------------------------------------

    def invoke(
        self, address: str | None, request: RemotingCommand, timeout: float = 3.0
    ) -> Deferred[RemotingCommand]:
        """Send ``request`` to ``address`` (None: the current name server); a Deferred of
        the response.

        ``timeout`` is one deadline for everything: connecting, waiting for a permit or a
        writable connection, writing, and waiting for the response. Cancelling the
        Deferred forgets the request (a late response is dropped). Raises ValueError at
        once for a malformed address or a negative timeout.
        """
        if address is not None:
            connection = self._connections.get(address)
            if connection is not None and connection.is_writable:
                if timeout >= 0 and self._async_permits.take():
                    # The fast path: what connection.invoke would do after its checks
                    # (a writable connection is open and not closing).
                    self._requests += 1
                    return connection._send_request(request, timeout, self._async_permits)
                deferred = connection.invoke(request, timeout)  # ValueError for a bad timeout
                self._requests += 1
                return deferred
            parse_address(address)  # a bad address is refused before it is counted
        _check_timeout(timeout)
        self._requests += 1
        return self._slow_call(address, request, timeout, oneway=False)

    def invoke_oneway(
        self, address: str | None, request: RemotingCommand, timeout: float = 3.0
    ) -> Deferred[None]:
        """Send ``request`` with the oneway flag set; fires with None once it is written.

        ``timeout`` bounds connecting and waiting for a oneway permit. No response
        comes, so nothing tells whether the peer processed it.
        """
        if address is not None:
            connection = self._connections.get(address)
            if connection is not None and connection.is_writable:
                deferred = connection.invoke_oneway(
                    request, timeout
                )  # ValueError for a bad timeout
                self._requests += 1
                return deferred
            parse_address(address)  # a bad address is refused before it is counted
        _check_timeout(timeout)
        self._requests += 1
        return self._slow_call(address, request, timeout, oneway=True)

    def _slow_call(
        self, address: str | None, request: RemotingCommand, timeout: float, oneway: bool
    ) -> Deferred[Any]:
        if self._closed:
            self._errors += 1
            return fail(ClientClosedError("the client is closed"))
        call = _Call(self, address, request, timeout, oneway)
        self._calls.add(call)
        call.start()
        return call.result

    # -- the pool ---------------------------------------------------------------------

    def connection(self, address: str) -> RemotingProtocol | None:
        """The pooled connection to ``address``, if one is open (for inspection)."""
        return self._connections.get(address)

    def _connection_for(self, address: str, deadline: float) -> Deferred[_ClientConnection]:
        """A usable connection to ``address``; raises a ConnectError to fail fast."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        connection = self._connections.get(address)
        if connection is not None:
            if connection.is_writable:
                return succeed(connection)
            if connection.is_connected and not connection.is_closing:
                # Past the high-water mark: wait (within the call's deadline) to drain.
                return connection.when_writable().addCallback(lambda _: connection)
            del self._connections[address]  # closing: a new one is made below
        attempt = self._attempts.get(address)
        if attempt is None:
            attempt = self._start_attempt(address, deadline)
        elif attempt.start_at > deadline:
            raise self._backoff_error(address, attempt.start_at - self.clock.seconds())
        return attempt.wait()

    def _backoff_error(self, address: str, retry_in: float) -> ConnectBackoffError:
        health = self._health[address]
        return ConnectBackoffError(
            f"not connecting to {address} for another {retry_in:.3g} s, after "
            f"{health.failures} failed connect(s) (last: {health.last_error})",
            address,
            retry_in,
        )

    def _start_attempt(self, address: str, deadline: float) -> _Attempt:
        now = self.clock.seconds()
        health = self._health.get(address)
        start_at = now
        if health is not None and health.retry_at > now:
            retry_in = health.retry_at - now
            if health.open:
                raise CircuitOpenError(
                    f"circuit open for {address} after {health.failures} consecutive failed "
                    f"connects (last: {health.last_error}); half-open in {retry_in:.3g} s",
                    address,
                    retry_in,
                )
            if health.retry_at > deadline:
                raise self._backoff_error(address, retry_in)
            start_at = health.retry_at
        limit = self.config.max_connections
        if (
            limit is not None
            and len(self._connections) + len(self._attempts) >= limit
            and not self._evict_idle()
        ):
            raise ConnectionLimitError(
                f"cannot connect to {address}: {limit} connections open or opening "
                "(max_connections) and none idle",
                address,
            )
        attempt = self._attempts[address] = _Attempt(address, start_at)
        if start_at > now:
            attempt.starter = self.clock.callLater(start_at - now, self._begin, attempt)
        else:
            self._begin(attempt)
        return attempt

    def _evict_idle(self) -> bool:
        # Close the least recently active connection with nothing in flight, if any.
        idle = [
            c
            for c in self._connections.values()
            if not c.pending_count and not c.processing_count and not c.in_flight_calls()
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        del self._connections[victim.address]
        _log.info(
            "Closing the idle connection to {address}: max_connections reached",
            address=victim.address,
        )
        victim.close()
        return True

    def _begin(self, attempt: _Attempt) -> None:
        attempt.starter = None
        address = attempt.address
        host, port = parse_address(address)
        timeout = self.config.connect_timeout
        attempt.started = self.clock.seconds()
        try:
            endpoint = self._endpoint_factory(self.reactor, host, port, timeout)
            connecting = endpoint.connect(_ClientFactory(self, address))
        except Exception as e:
            connecting = fail(e)
        attempt.connecting = connecting
        if not connecting.called:
            attempt.timer = self.clock.callLater(timeout, self._connect_timed_out, attempt)
        connecting.addCallbacks(
            self._connect_succeeded,
            self._connect_failed,
            callbackArgs=(attempt,),
            errbackArgs=(attempt,),
        )

    def _connect_timed_out(self, attempt: _Attempt) -> None:
        attempt.timer = None
        connecting, attempt.connecting = attempt.connecting, None
        self._attempt_failed(attempt, f"connect timed out after {self.config.connect_timeout:g} s")
        if connecting is not None:
            connecting.cancel()  # its errback finds the attempt settled already

    def _connect_succeeded(self, connection: _ClientConnection, attempt: _Attempt) -> None:
        if attempt.connecting is None:  # timed out or the client closed: too late
            connection.abort()
            return
        self._stop_attempt(attempt)
        address = attempt.address
        if self._closed:
            connection.abort()
            attempt.settle(ClientClosedError("the client is closed"))
            return
        self._created += 1
        health = self._health.setdefault(address, _Health())
        health.failures = 0
        health.open = False
        health.retry_at = 0.0
        health.last_error = None
        assert attempt.started is not None
        self._record_latency(health, self.clock.seconds() - attempt.started)
        self._connections[address] = connection
        if address in self._name_servers:
            self._reachable.add(address)
        if self._sweeper is None and self.config.idle_timeout is not None:
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(self.config.idle_sweep_interval, now=False)
        attempt.settle(connection)

    def _connect_failed(self, failure: Failure, attempt: _Attempt) -> None:
        if attempt.connecting is None:
            return  # settled by the connect timeout or close()
        error = failure.value
        self._attempt_failed(attempt, f"{type(error).__name__}: {failure.getErrorMessage()}")

    def _stop_attempt(self, attempt: _Attempt) -> None:
        attempt.connecting = None
        if self._attempts.get(attempt.address) is attempt:
            del self._attempts[attempt.address]
        for call in (attempt.timer, attempt.starter):
            if call is not None and call.active():
                call.cancel()
        attempt.timer = attempt.starter = None

    def _attempt_failed(self, attempt: _Attempt, why: str) -> None:
        self._stop_attempt(attempt)
        address = attempt.address
        if self._closed:
            attempt.settle(ClientClosedError("the client is closed"))
            return
        self._failed_connects += 1
        health = self._health.setdefault(address, _Health())
        health.failures += 1
        health.last_error = why
        config = self.config
        base = min(config.backoff_initial * 2 ** (health.failures - 1), config.backoff_max)
        spread = config.backoff_jitter
        wait = base * (1 - spread + 2 * spread * self._random())
        if health.failures >= config.breaker_threshold:
            if not health.open:
                _log.warn(
                    "Circuit open for {address} after {failures} failed connects: {why}",
                    address=address,
                    failures=health.failures,
                    why=why,
                )
            health.open = True
            wait = max(wait, config.breaker_reset_timeout)
        health.retry_at = self.clock.seconds() + wait
        self._reachable.discard(address)
        attempt.settle(ConnectError(f"cannot connect to {address}: {why}", address))

    def _drop_from_pool(self, connection: _ClientConnection) -> None:
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]

    def _connection_lost(self, connection: _ClientConnection) -> None:
        self._drop_from_pool(connection)
        self._closed_count += 1
        if self._all_closed and not self.dispatcher.connections:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def _sweep(self) -> None:
        idle_timeout = self.config.idle_timeout
        assert idle_timeout is not None
        now = self.clock.seconds()
        for connection in list(self._connections.values()):
            if (
                connection.activity != connection.swept_activity
                or connection.pending_count
                or connection.processing_count
                or connection.in_flight_calls()  # calls queued for a permit or a drain
            ):
                connection.swept_activity = connection.activity
                connection.idle_since = now
            elif now - connection.idle_since >= idle_timeout:
                _log.info(
                    "Closing the connection to {address}: idle for {seconds:.0f} s",
                    address=connection.address,
                    seconds=now - connection.idle_since,
                )
                del self._connections[connection.address]
                connection.close()

    def close_clients(self, addresses: Iterable[str]) -> None:
        """Close the connections to ``addresses``; their pending calls fail with
        ConnectionLostError. A later call connects anew."""
        for address in addresses:
            connection = self._connections.pop(address, None)
            if connection is not None:
                connection.close()

    def is_address_reachable(self, address: str, timeout: float | None = None) -> Deferred[bool]:
        """A Deferred of whether a writable connection to ``address`` exists or can be made
        within ``timeout`` (default ``connect_timeout``). It never fails; it does respect
        the address's backoff and circuit breaker (False at once while they forbid a try).
        """
        parse_address(address)
        if timeout is None:
            timeout = self.config.connect_timeout
        _check_timeout(timeout)
        deadline = self.clock.seconds() + timeout
        try:
            connecting = self._connection_for(address, deadline)
        except (ConnectError, ClientClosedError):
            return succeed(False)
        if connecting.called:
            return connecting.addCallbacks(lambda c: c.is_writable, lambda _: False)
        cancelled = False

        def cancel(_: Deferred[bool]) -> None:
            nonlocal cancelled
            cancelled = True
            connecting.cancel()

        result: Deferred[bool] = Deferred(cancel)
        timer = self.clock.callLater(timeout, connecting.cancel)

        def settle(outcome: object) -> None:
            if timer.active():
                timer.cancel()
            if not cancelled:
                result.callback(isinstance(outcome, _ClientConnection) and outcome.is_writable)

        connecting.addBoth(settle)
        return result

    def health(self, address: str) -> AddressHealth:
        """What the client knows about connecting to ``address``."""
        health = self._health.get(address) or _Health()
        now = self.clock.seconds()
        retry_in = max(health.retry_at - now, 0.0)
        if not health.open:
            breaker = "closed"
        elif retry_in > 0:
            breaker = "open"
        else:
            breaker = "half-open"
        return AddressHealth(
            address=address,
            breaker=breaker,
            consecutive_failures=health.failures,
            retry_in=retry_in,
            last_error=health.last_error,
            latency=health.latency,
            consecutive_errors=health.consecutive_errors,
        )

    def pool_stats(self) -> PoolStats:
        """A snapshot of the pool: connections, calls and errors (see :class:`PoolStats`)."""
        connections = self.dispatcher.connections
        active = sum(1 for c in connections if c.pending_count)
        return PoolStats(
            open=len(connections),
            active=active,
            idle=len(connections) - active,
            connecting=len(self._attempts),
            created=self._created,
            closed=self._closed_count,
            failed_connects=self._failed_connects,
            requests=self._requests,
            errors=self._errors + self.dispatcher.calls_failed,
            in_flight=sum(c.pending_count for c in connections),
            max_connections=self.config.max_connections,
        )

    # -- name servers -----------------------------------------------------------------

    def update_name_server_address_list(self, addresses: Iterable[str]) -> None:
        """Use ``addresses`` (``host:port`` strings, in order of preference) as the name
        servers; starts (or keeps) the background probe. Raises ValueError for a bad one."""
        new: list[str] = []
        for address in addresses:
            parse_address(address)
            if address not in new:
                new.append(address)
        if new == self._name_servers:
            return
        self._name_servers = new
        kept = set(new)
        self._reachable &= kept
        self._probed &= kept
        if self._current_name_server not in kept:
            self._current_name_server = None
        if not new:
            if self._prober is not None and self._prober.running:
                self._prober.stop()
            self._prober = None
            return
        if self._closed:
            return
        if self._prober is None:
            self._prober = LoopingCall(self._probe)
            self._prober.clock = self.clock
            self._prober.start(self.config.name_server_probe_interval, now=True)
        else:
            self._probe()

    @property
    def name_server_address_list(self) -> list[str]:
        """The name servers set by :meth:`update_name_server_address_list`, in order."""
        return list(self._name_servers)

    def available_name_server_list(self) -> list[str]:
        """The name servers the probe (or the last call) found reachable, in list order."""
        return [a for a in self._name_servers if a in self._reachable]

    @property
    def current_name_server(self) -> str | None:
        """The name server calls with ``address=None`` stick to, once one has answered."""
        return self._current_name_server

    def _probe(self) -> None:
        for address in self._name_servers:
            if address in self._probing:
                continue
            self._probing.add(address)
            self.is_address_reachable(address).addCallback(self._probed_one, address)

    def _probed_one(self, reachable: bool, address: str) -> None:
        self._probing.discard(address)
        if address not in self._name_servers:
            return
        self._probed.add(address)
        if reachable:
            self._reachable.add(address)
        else:
            self._reachable.discard(address)

    def _name_server_candidates(self) -> list[str]:
        """Every name server, best first; the current one first while it is healthy."""
        now = self.clock.seconds()

        def key(item: tuple[int, str]) -> tuple[int, int, int, float, int]:
            index, address = item
            health = self._health.get(address)
            blocked = health is not None and health.retry_at > now
            unreachable = address in self._probed and address not in self._reachable
            errors = health.consecutive_errors if health is not None else 0
            latency = health.latency if health is not None and health.latency else 0.0
            return (int(blocked), int(unreachable), errors, latency, index)

        ranked = [a for _, a in sorted(enumerate(self._name_servers), key=key)]
        current = self._current_name_server
        if current is not None and current in ranked:
            health = self._health.get(current)
            healthy = health is None or (health.consecutive_errors == 0 and health.retry_at <= now)
            if healthy and not (current in self._probed and current not in self._reachable):
                ranked.remove(current)
                ranked.insert(0, current)
        return ranked

    def _record_latency(self, health: _Health, seconds: float) -> None:
        if health.latency is None:
            health.latency = seconds
        else:
            health.latency += _LATENCY_WEIGHT * (seconds - health.latency)

    def _record_success(self, address: str, seconds: float) -> None:
        health = self._health.setdefault(address, _Health())
        health.consecutive_errors = 0
        self._record_latency(health, seconds)
        self._current_name_server = address
        self._reachable.add(address)

    def _record_error(self, address: str) -> None:
        health = self._health.setdefault(address, _Health())
        health.consecutive_errors += 1
        if self._current_name_server == address:
            self._current_name_server = None

    # -- closing ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float | None = None) -> Deferred[None]:
        """Stop: refuse new calls, let calls in flight finish for up to ``timeout``
        seconds (default ``drain_timeout``), fail the rest with ClientClosedError, and
        close every connection. Fires once every connection is closed.

        Calls still waiting for a connection fail with ClientClosedError at once: nothing
        of them was sent. Calling it again returns a Deferred of the same end.
        """
        if self._closing is not None:
            return self._observe(self._closing)
        timeout = self.config.drain_timeout if timeout is None else timeout
        _check_timeout(timeout)
        self._closed = True
        self._connections.clear()  # nothing new is sent; what is in flight may finish
        for loop in (self._prober, self._sweeper):
            if loop is not None and loop.running:
                loop.stop()
        self._prober = self._sweeper = None
        for attempt in list(self._attempts.values()):
            connecting = attempt.connecting
            self._stop_attempt(attempt)
            attempt.settle(ClientClosedError("the client was closed while connecting"))
            if connecting is not None:
                connecting.cancel()
        in_flight = [call.result for call in self._calls]
        for connection in self.dispatcher.connections:
            in_flight.extend(connection.in_flight_calls())
        drained = DeferredList([self._observe(d) for d in in_flight])
        timer = self.clock.callLater(timeout, self._give_up, timeout)
        closing = self._closing = Deferred()

        def close_connections(_: object) -> Deferred[None]:
            if timer.active():
                timer.cancel()
            return self._close_connections()

        drained.addCallback(close_connections).chainDeferred(closing)
        return self._observe(closing)

    def _observe(self, deferred: Deferred[Any]) -> Deferred[None]:
        # A Deferred that fires (with None) when ``deferred`` does, leaving its result be.
        observer: Deferred[None] = Deferred()

        def fired(result: object) -> object:
            observer.callback(None)
            return result

        deferred.addBoth(fired)
        return observer

    def _give_up(self, timeout: float) -> None:
        def error(what: str) -> ClientClosedError:
            return ClientClosedError(f"the client closed (drain timeout {timeout:g} s) {what}")

        for call in list(self._calls):
            call.fail(error("before the call finished"))
        for connection in list(self.dispatcher.connections):
            connection.fail_calls(error)

    def _close_connections(self) -> Deferred[None]:
        self._connections.clear()
        open_connections = list(self.dispatcher.connections)
        if not open_connections:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._all_closed.append(done)
        for connection in open_connections:
            connection.close()

        def abort_stragglers() -> None:
            for connection in list(self.dispatcher.connections):
                connection.abort()

        grace = self.clock.callLater(_CLOSE_GRACE, abort_stragglers)

        def closed(_: object) -> None:
            if grace.active():
                grace.cancel()
            self.dispatcher.stop()

        return done.addCallback(closed)
