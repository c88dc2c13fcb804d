"""The remoting server: a factory of :class:`~rmqtwist.protocol.RemotingProtocol`
connections, and a service that listens on Twisted endpoints and stops gracefully.

- :class:`RemotingServerFactory` builds the connections, gives each the shared
  :class:`~rmqtwist.dispatcher.Dispatcher` and refuses new ones beyond ``max_connections``.
- :class:`RemotingServer` is a ``MultiService`` that listens on any number of endpoint
  strings (``tcp:10911``, ``tcp:0:interface=127.0.0.1``, ``tcp6:...``, ``unix:...``,
  ``ssl:...``) and whose ``stopService()`` stops accepting, lets in-flight requests finish
  within ``shutdown_timeout``, then closes every connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist._logsafe import LogLimiter
from rmqtwist.budgets import BufferBudget
from rmqtwist.codec import (
    DEFAULT_MAX_EXT_FIELDS,
    DEFAULT_MAX_FRAME_LENGTH,
    DEFAULT_MAX_HEADER_LENGTH,
)
from rmqtwist.dispatcher import Dispatcher, Registrar
from rmqtwist.framing import LengthPrefixedFactory, abort_transport, format_address
from rmqtwist.protocol import RemotingProtocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IReactorTime


__all__ = [
    "DEFAULT_FIRST_FRAME_TIMEOUT",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_COMMANDS_PER_TURN",
    "DEFAULT_MAX_UNSENT_BYTES",
    "Refused",
    "RemotingServer",
    "RemotingServerFactory",
]

#: Seconds a frame may take to arrive whole once its first byte has.
DEFAULT_FRAME_TIMEOUT = 10.0
#: Seconds after connecting by which a peer must have sent one whole frame.
DEFAULT_FIRST_FRAME_TIMEOUT = 10.0
#: Bytes written to a connection whose write buffer is full before it is closed (two
#: frames of the default frame limit).
DEFAULT_MAX_UNSENT_BYTES = 32 * 1024 * 1024
#: Requests handled from one connection's read before the others get their turn.
DEFAULT_MAX_COMMANDS_PER_TURN = 128
#: Bytes of unfinished frames all connections of a server may hold together.
DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024

_log = Logger()

#: How often a stopping server looks whether in-flight requests and connections are gone.
_POLL_INTERVAL = 0.05
#: Refusals beyond max_connections are logged at most once per this many seconds.
_REFUSAL_LOG_INTERVAL = 10.0


class Refused(Protocol):
    """A refused connection: aborted as soon as it is made, whatever it sends.

    (Returning None from ``buildProtocol`` closes a plain TCP connection too, but a TLS
    wrapper (``ssl:`` endpoints) cannot handle None: the client would hang.)
    """

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        abort_transport(transport)

    def dataReceived(self, data: bytes) -> None:
        """Ignored: the connection is closing."""


class RemotingServerFactory(Registrar, LengthPrefixedFactory):
    """Builds one :class:`~rmqtwist.protocol.RemotingProtocol` per accepted connection.

    All connections share :attr:`dispatcher`: the one given, or one built from
    ``dispatcher_options`` (``reactor``, ``idle_timeout``, ``max_in_flight``,
    ``serialize_type``, ...; see :class:`~rmqtwist.dispatcher.Dispatcher`). While
    ``max_connections`` connections are open (or ``max_connections_per_address`` from
    one host, when set), a new one is refused (aborted at once, and logged at most once
    per 10 s with a count); the open ones are not affected.

    What one peer can make the server hold is bounded (see the how-to on exposing a
    server): ``max_header_length`` and ``max_ext_fields`` per frame header;
    ``frame_timeout`` seconds for a frame to arrive whole once begun, and
    ``first_frame_timeout`` for the first one after connecting; ``max_unsent_bytes``
    written to a peer that does not read; ``max_buffered_bytes`` of unfinished frames
    over all connections (past it the connections holding the most are closed); and
    ``max_commands_per_turn`` requests handled from one read before the other
    connections get their turn (so that a flood on one connection delays the others
    by a little).
    None turns a limit off.
    """

    protocol = RemotingProtocol

    def __init__(
        self,
        dispatcher: Dispatcher | None = None,
        *,
        max_connections: int = 1000,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
        max_header_length: int | None = DEFAULT_MAX_HEADER_LENGTH,
        max_ext_fields: int | None = DEFAULT_MAX_EXT_FIELDS,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
        first_frame_timeout: float | None = DEFAULT_FIRST_FRAME_TIMEOUT,
        max_unsent_bytes: int | None = DEFAULT_MAX_UNSENT_BYTES,
        max_buffered_bytes: int | None = DEFAULT_MAX_BUFFERED_BYTES,
        max_connections_per_address: int | None = None,
        max_commands_per_turn: int | None = DEFAULT_MAX_COMMANDS_PER_TURN,
        **dispatcher_options: Any,
    ) -> None:
        super().__init__(
            max_frame_length, max_header_length=max_header_length, max_ext_fields=max_ext_fields
        )
        if dispatcher is None:
            dispatcher = Dispatcher(**dispatcher_options)
        elif dispatcher_options:
            raise TypeError(
                "give either a dispatcher or the options to build one, not both "
                f"(got {', '.join(sorted(dispatcher_options))})"
            )
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        for name, value in (
            ("frame_timeout", frame_timeout),
            ("first_frame_timeout", first_frame_timeout),
            ("max_unsent_bytes", max_unsent_bytes),
            ("max_connections_per_address", max_connections_per_address),
            ("max_commands_per_turn", max_commands_per_turn),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None: no limit), got {value!r}")
        self.dispatcher = dispatcher
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.frame_timeout = frame_timeout
        self.first_frame_timeout = first_frame_timeout
        self.max_unsent_bytes = max_unsent_bytes
        self.max_commands_per_turn = max_commands_per_turn
        if max_buffered_bytes is not None and max_buffered_bytes < max_frame_length:
            _log.warn(
                "max_buffered_bytes ({budget}) is below max_frame_length ({frame}): one "
                "connection sending a frame that large will be closed for it",
                budget=max_buffered_bytes,
                frame=max_frame_length,
            )
        #: The budget of unfinished-frame bytes all connections share (None: none).
        self.buffer_budget = (
            None
            if max_buffered_bytes is None
            else BufferBudget(max_buffered_bytes, dispatcher.clock)
        )
        #: False once the server stops: every new connection is then refused.
        self.accepting = True
        #: Connections refused so far (over the limit, or while stopping).
        self.refused_connections = 0
        self._refusal_log = LogLimiter(dispatcher.clock, _REFUSAL_LOG_INTERVAL)

    @property
    def connections(self) -> set[RemotingProtocol]:
        """The open connections (the dispatcher's set: do not change it)."""
        return self.dispatcher.connections

    # -- connections -------------------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """A connection for ``addr``; or, when the server is stopping or
        ``max_connections`` are open, a :class:`Refused` one that closes at once."""
        open_now = len(self.dispatcher.connections)
        if not self.accepting:
            self._refuse(addr, "the server is shutting down", open_now)
            return Refused()
        if open_now >= self.max_connections:
            self._refuse(addr, "too many connections", open_now)
            return Refused()
        per_address = self.max_connections_per_address
        if per_address is not None:
            host = getattr(addr, "host", None)
            if host is not None and self._open_from(host) >= per_address:
                self._refuse(addr, f"too many connections from {host}", open_now, per_address)
                return Refused()
        protocol = super().buildProtocol(addr)
        if isinstance(protocol, RemotingProtocol):
            protocol.dispatcher = self.dispatcher
            protocol.frame_timeout = self.frame_timeout
            protocol.first_frame_timeout = self.first_frame_timeout
            protocol.max_unsent_bytes = self.max_unsent_bytes
            protocol.max_commands_per_turn = self.max_commands_per_turn
            protocol.buffer_budget = self.buffer_budget
        return protocol

    def _open_from(self, host: str) -> int:
        return sum(1 for c in self.dispatcher.connections if c.peer_host == host)

    def _refuse(
        self, addr: IAddress | None, why: str, open_now: int, limit: int | None = None
    ) -> None:
        self.refused_connections += 1
        dropped = self._refusal_log.allow()
        if dropped is None:
            return
        _log.warn(
            "Refused a connection from {peer}: {why} ({open} open, limit {limit}); "
            "{refused} refused since the last such message",
            peer=format_address(addr),
            why=why,
            open=open_now,
            limit=self.max_connections if limit is None else limit,
            refused=dropped + 1,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} connections={len(self.dispatcher.connections)}"
            f"/{self.max_connections} max_frame_length={self.max_frame_length}>"
        )


class _Listener(Service):
    """Listens on one endpoint for the server (a child of :class:`RemotingServer`)."""

    def __init__(
        self, description: str, endpoint: IStreamServerEndpoint, factory: RemotingServerFactory
    ) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.error: Failure | None = None
        self._attempt: Deferred[IListeningPort] | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        # Listen here (before twistd drops privileges), as StreamServerEndpointService does.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._attempt is None:
            self._listen()

    def _listen(self) -> None:
        self.error = None
        attempt = self._attempt = self.endpoint.listen(self.factory)
        attempt.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        _log.info(
            "rmqtwist remoting server listening on {address} ({endpoint})",
            address=format_address(port.getHost()),
            endpoint=self.description,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _failed(self, failure: Failure) -> None:
        self.error = failure
        if not isinstance(failure.value, CancelledError):
            _log.error(
                "Cannot listen on {endpoint}: {error}",
                endpoint=self.description,
                error=failure.getErrorMessage(),
            )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def when_listening(self) -> Deferred[IListeningPort]:
        """The listening port once listening; fails if listening failed."""
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred[IListeningPort] = Deferred()
        if self.error is not None:
            waiter.errback(self.error)
        else:
            self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        attempt, self._attempt = self._attempt, None
        port, self.port = self.port, None
        if port is not None:
            _log.info("Stopped listening on {address}", address=format_address(port.getHost()))
            return maybeDeferred(port.stopListening).addCallback(lambda _: None)
        if attempt is not None and self.error is None:
            attempt.cancel()  # still trying to listen
        return succeed(None)


class RemotingServer(MultiService):
    """A remoting server listening on Twisted endpoints, with a graceful stop.

    ``endpoints`` are endpoint strings (parsed with
    :func:`twisted.internet.endpoints.serverFromString` on ``reactor``, by default the
    dispatcher's) or :class:`~twisted.internet.interfaces.IStreamServerEndpoint`\\ s;
    :meth:`listen` adds more. A listening failure is logged and fails
    :meth:`when_listening`; it does not raise from ``startService``.

    ``stopService()`` (twist and twistd call it on SIGTERM/SIGINT and wait for it):

    1. stops listening, and refuses connections still being accepted;
    2. waits until no request is being processed (``dispatcher.in_flight == 0``), at most
       ``shutdown_timeout`` seconds on the dispatcher's clock; connections stay open and
       keep answering meanwhile;
    3. closes every connection (``loseConnection``), aborting those not closed after
       ``close_grace`` seconds; requests still in flight are cut, and the peers' pending
       requests fail with ``ConnectionLostError`` on their side;
    4. stops the dispatcher's thread pool of blocking processors.

    It returns a Deferred that fires with None when all that is done.
    """

    def __init__(
        self,
        factory: RemotingServerFactory,
        endpoints: Iterable[str | IStreamServerEndpoint] = (),
        *,
        reactor: Any = None,
        shutdown_timeout: float = 30.0,
        close_grace: float = 2.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if shutdown_timeout < 0 or close_grace < 0:
            raise ValueError("shutdown_timeout and close_grace must not be negative")
        self.factory = factory
        self.dispatcher = factory.dispatcher
        self.reactor = reactor if reactor is not None else factory.dispatcher.reactor
        self.clock: IReactorTime = factory.dispatcher.clock
        self.shutdown_timeout = shutdown_timeout
        self.close_grace = close_grace
        self._listeners: list[_Listener] = []
        self._stopped: Deferred[None] | None = None
        for endpoint in endpoints:
            self.listen(endpoint)

    def listen(self, endpoint: str | IStreamServerEndpoint) -> None:
        """Also listen on ``endpoint`` (at once if the server is running).

        Raises ValueError for an endpoint string Twisted cannot parse.
        """
        if isinstance(endpoint, str):
            description = endpoint
            parsed = serverFromString(self.reactor, endpoint)  # type: ignore[no-untyped-call]
        else:
            description = repr(endpoint)
            parsed = IStreamServerEndpoint(endpoint)
        listener = _Listener(description, parsed, self.factory)
        self._listeners.append(listener)
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]

    @property
    def ports(self) -> list[IListeningPort]:
        """The ports listening now (empty before the server starts and after it stops)."""
        return [listener.port for listener in self._listeners if listener.port is not None]

    @property
    def listen_errors(self) -> list[tuple[str, Failure]]:
        """``(endpoint, failure)`` for every endpoint that could not be listened on."""
        return [
            (listener.description, listener.error)
            for listener in self._listeners
            if listener.error is not None and not isinstance(listener.error.value, CancelledError)
        ]

    def when_listening(self) -> Deferred[list[IListeningPort]]:
        """Fires with the listening ports (in :meth:`listen` order) once all listen, or
        fails with the first error (``CannotListenError``...)."""
        attempts = [listener.when_listening() for listener in self._listeners]
        gathered = gatherResults(attempts, consumeErrors=True)

        def first_error(failure: Failure) -> Failure:
            if isinstance(failure.value, FirstError):
                return failure.value.subFailure
            return failure

        return gathered.addErrback(first_error)

    # -- graceful stop ------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True from the first ``stopService()`` call on."""
        return self._stopped is not None

    def stopService(self) -> Deferred[None]:
        """Stop gracefully (see the class doc); a Deferred firing when all is closed.

        Calling it again while stopping returns a Deferred that fires at the same time.
        """
        if self._stopped is None:
            self.factory.accepting = False
            listeners_stopped: Deferred[Any] = super().stopService()  # type: ignore[no-untyped-call]
            self._stopped = Deferred.fromCoroutine(self._shut_down(listeners_stopped))
            self._stopped.addErrback(self._shutdown_failed)
        done: Deferred[None] = Deferred()

        def fire(result: None) -> None:
            done.callback(None)
            return result

        self._stopped.addCallback(fire)
        return done

    def startService(self) -> None:
        self._stopped = None
        self.factory.accepting = True
        _warn_if_few_file_descriptors(self.factory.max_connections)
        super().startService()  # type: ignore[no-untyped-call]

    def privilegedStartService(self) -> None:
        self._stopped = None
        self.factory.accepting = True
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    async def _shut_down(self, listeners_stopped: Deferred[Any]) -> None:
        clock = self.clock
        deadline = clock.seconds() + self.shutdown_timeout
        await listeners_stopped
        dispatcher = self.dispatcher
        if dispatcher.in_flight:
            _log.info(
                "Stopping: waiting up to {timeout} s for {count} request(s) in flight",
                timeout=self.shutdown_timeout,
                count=dispatcher.in_flight,
            )
            if not await self._wait_until(lambda: dispatcher.in_flight <= 0, deadline):
                _log.warn(
                    "Stopping: {count} request(s) still in flight after {timeout} s; "
                    "closing their connections anyway",
                    count=dispatcher.in_flight,
                    timeout=self.shutdown_timeout,
                )
        connections = list(dispatcher.connections)
        if connections:
            _log.info("Stopping: closing {count} connection(s)", count=len(connections))
            for connection in connections:
                connection.close()
            grace = clock.seconds() + self.close_grace
            if not await self._wait_until(lambda: not dispatcher.connections, grace):
                stuck = list(dispatcher.connections)
                _log.warn(
                    "Stopping: aborting {count} connection(s) not closed after {grace} s",
                    count=len(stuck),
                    grace=self.close_grace,
                )
                for connection in stuck:
                    connection.abort()
                grace = clock.seconds() + self.close_grace
                if not await self._wait_until(lambda: not dispatcher.connections, grace):
                    _log.warn(
                        "Stopping: {connections} still not closed after an abort; giving up",
                        connections=list(dispatcher.connections),
                    )
        dispatcher.stop()
        _log.info("rmqtwist remoting server stopped")

    async def _wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Poll ``done()`` on the clock until it is true (True) or ``deadline`` (False)."""
        clock = self.clock
        while not done():
            left = deadline - clock.seconds()
            if left <= 0:
                return False
            await deferLater(clock, min(_POLL_INTERVAL, left), lambda: None)
        return True

    def _shutdown_failed(self, failure: Failure) -> None:
        _log.failure("The remoting server did not stop cleanly", failure)

    def __repr__(self) -> str:
        ports = ", ".join(format_address(port.getHost()) for port in self.ports)
        return f"<{type(self).__name__} listening=[{ports}] {self.factory!r}>"


#: File descriptors a server needs beside its connections (listening sockets, logs,
#: a data directory's files, the reactor's own).
_SPARE_DESCRIPTORS = 32


def _warn_if_few_file_descriptors(max_connections: int) -> None:
    """Warn when the process's open-file limit cannot hold ``max_connections``: past it,
    accepting fails with EMFILE instead of a clean refusal."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # not on this platform
        return
    if soft != resource.RLIM_INFINITY and soft < max_connections + _SPARE_DESCRIPTORS:
        _log.warn(
            "The open-file limit ({limit}) is below max_connections ({connections}) plus "
            "{spare} spare: connections past it fail to be accepted instead of being "
            "refused; raise it (ulimit -n) or lower max_connections",
            limit=soft,
            connections=max_connections,
            spare=_SPARE_DESCRIPTORS,
        )
