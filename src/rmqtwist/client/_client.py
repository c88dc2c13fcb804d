"""RemotingClient: the pool, the calls' fast path, name-server choice and closing."""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.client._call import _Call
from rmqtwist.client._config import ClientConfig, EndpointFactory, parse_address, tcp_endpoint
from rmqtwist.client._connection import _Attempt, _ClientConnection, _ClientFactory
from rmqtwist.client._health import AddressHealth, PoolStats, _Health
from rmqtwist.command import RemotingCommand
from rmqtwist.dispatcher import Dispatcher, Registrar
from rmqtwist.errors import (
    CircuitOpenError,
    ClientClosedError,
    ConnectBackoffError,
    ConnectError,
    ConnectionLimitError,
)
from rmqtwist.protocol import RemotingProtocol, _check_timeout

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

# The namespace the module had before it became a package, so log filters keep working.
_log = Logger(namespace="rmqtwist.client")


#: After close() has drained (or given up on) the calls, connections that have not
#: closed within this many seconds (a peer that does not read) are aborted.
_CLOSE_GRACE = 1.0
#: Weight of the newest sample in a name server's latency average.
_LATENCY_WEIGHT = 0.3


class RemotingClient(Registrar):
    """A RocketMQ remoting client over a pool of connections (see the module doc).

    ``reactor`` defaults to the global one; tests give a ``MemoryReactorClock``.
    Processors, hooks and listeners registered on it (``register_processor`` and the
    rest, as on a server) answer the requests servers push to the client.
    ``endpoint_factory(reactor, host, port, timeout)`` makes the endpoint to connect to
    (default :func:`tcp_endpoint`; give one for UNIX sockets); with ``config.tls`` its
    endpoints are wrapped in TLS (:mod:`rmqtwist.tls`). ``random`` is the
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
        if config.tls:
            from rmqtwist.tls import client_tls_endpoint_factory

            endpoint_factory = client_tls_endpoint_factory(config, endpoint_factory)
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
