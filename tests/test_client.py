"""RemotingClient on a MemoryReactorClock: the pool, one deadline per call, budgets, close.

No sockets and no real time. Connects go through the default TCP endpoint to the memory
reactor, which records each ``connectTCP``; a test completes one with :meth:`Net.accept`
(a :class:`Wire`, a StringTransport it reads requests from and feeds responses into) or
fails it with :meth:`Net.refuse`. One test joins a client connection to a real server-side
RemotingProtocol with ``twisted.test.iosim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from zope.interface import implementer

from rmqtwist import FLAG_ONEWAY, RemotingCommand, RequestCode, ResponseCode
from rmqtwist.client import ClientConfig, PoolStats, RemotingClient
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.dispatcher import Dispatcher
from rmqtwist.errors import (
    ClientClosedError,
    ConnectError,
    ConnectionLimitError,
    ConnectionLostError,
    RemotingTimeoutError,
    SendRequestError,
    TooManyRequestsError,
)
from rmqtwist.interfaces import IRequestProcessor
from rmqtwist.processors import EchoProcessor
from rmqtwist.protocol import RemotingProtocol
from tests.test_protocol import call_timers

E = TypeVar("E", bound=BaseException)

ADDRESS = "127.0.0.1:9876"
OTHER = "127.0.0.1:9877"
THIRD = "127.0.0.1:9878"
SEND = 10  # SEND_MESSAGE
OK = ResponseCode.SUCCESS


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def request(body: bytes = b"hello") -> RemotingCommand:
    return RemotingCommand.request(SEND, body=body)


def watch(d: Deferred[Any]) -> list[object]:
    """Every result ``d`` fires with (a failure is consumed): a test checks there is one."""
    results: list[object] = []
    d.addBoth(results.append)
    return results


def value_of(results: list[object]) -> Any:
    assert len(results) == 1, results
    assert not isinstance(results[0], Failure), results[0]
    return results[0]


def error_of(results: list[object], error_type: type[E]) -> E:
    assert len(results) == 1, results
    (result,) = results
    assert isinstance(result, Failure), result
    assert isinstance(result.value, error_type), result
    return result.value


class Wire(StringTransport):
    """The transport of one client connection: counts aborts; writes may fail or pause."""

    def __init__(self, peer: IPv4Address) -> None:
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 50000), peerAddress=peer)
        self.aborts = 0
        self.write_error: Exception | None = None
        self.pause_on_write = False  # every write fills the buffer past high water

    def write(self, data: bytes) -> None:
        if self.write_error is not None:
            raise self.write_error
        super().write(data)
        if self.pause_on_write:
            self.producer.pauseProducing()

    def abortConnection(self) -> None:
        self.aborts += 1
        super().abortConnection()


@dataclass
class Conn:
    """A client connection made by :meth:`Net.accept`: read its requests, answer them."""

    protocol: RemotingProtocol
    wire: Wire

    def sent(self) -> list[RemotingCommand]:
        """The commands the client wrote since the last call."""
        data = self.wire.value()
        self.wire.clear()
        return FrameDecoder().feed(data)

    def answer(self, *requests: RemotingCommand) -> None:
        self.protocol.dataReceived(
            b"".join(
                encode_frame(RemotingCommand.response_to(r, OK, "ok", body=r.body))
                for r in requests
            )
        )

    def lose(self) -> None:
        """The transport finished closing (or the peer went away)."""
        self.protocol.connectionLost(Failure(ConnectionDone("peer went away")))

    @property
    def closing(self) -> bool:
        return bool(self.wire.disconnecting)


class Net:
    """A RemotingClient on a MemoryReactorClock; no idle sweep unless a test asks."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("idle_timeout", None)
        self.reactor = MemoryReactorClock()
        self.client = RemotingClient(self.reactor, ClientConfig(**config), random=lambda: 0.5)

    @property
    def connects(self) -> int:
        return len(self.reactor.tcpClients)

    def accept(self, index: int = -1) -> Conn:
        """Complete connect attempt ``index`` (default: the latest)."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        wire = Wire(IPv4Address("TCP", host, port))
        wrapper = factory.buildProtocol(None)
        wrapper.makeConnection(wire)
        return Conn(wrapper._wrappedProtocol, wire)

    def refuse(self, index: int = -1) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def connect(self, address: str = ADDRESS) -> Conn:
        """A pooled connection to ``address``, made by one answered call."""
        results = watch(self.client.invoke(address, request()))
        conn = self.accept()
        conn.answer(*conn.sent())
        value_of(results)
        assert self.client.connection(address) is conn.protocol
        return conn

    def advance_to(self, when: float) -> None:
        self.reactor.advance(when - self.reactor.seconds())
        assert self.reactor.seconds() == when

    def run_until(self, when: float) -> None:
        """Advance in 1 s steps, so that a LoopingCall runs at each of its times
        (one big advance runs it once, at the end)."""
        while self.reactor.seconds() + 1 < when:
            self.reactor.advance(1)
        self.advance_to(when)


def assert_settled(net: Net) -> None:
    """Nothing in flight, every permit back, no timer of any call left."""
    client = net.client
    dispatcher = client.dispatcher
    assert dispatcher.async_permits.in_use == 0
    assert dispatcher.oneway_permits.in_use == 0
    stats = client.pool_stats()
    assert (stats.in_flight, stats.connecting) == (0, 0)
    assert not client._calls  # no call still tracked by the client
    for connection in dispatcher.connections:
        assert connection.in_flight_calls() == []
    assert call_timers(net.reactor) == []


# ===========================================================================
# 1. Happy path and the fast path
# ===========================================================================


def test_invoke_connects_sends_and_fires_with_the_response() -> None:
    net = Net()
    results = watch(net.client.invoke(ADDRESS, request(b"ping"), timeout=2))
    assert net.reactor.tcpClients[0][:2] == ("127.0.0.1", 9876)
    assert net.reactor.tcpClients[0][3] == 3.0  # connect_timeout goes to the endpoint
    assert results == []
    conn = net.accept()
    (sent,) = conn.sent()
    assert (sent.code, sent.opaque, sent.flag, sent.body) == (SEND, 1, 0, b"ping")
    assert results == []
    conn.answer(sent)
    response = value_of(results)
    assert (response.code, response.opaque, response.body) == (OK, 1, b"ping")
    assert net.client.connection(ADDRESS) is conn.protocol
    assert_settled(net)


def test_invoke_oneway_sets_the_flag_and_fires_once_written() -> None:
    net = Net()
    first = watch(net.client.invoke_oneway(ADDRESS, request(b"one")))
    assert first == []
    conn = net.accept()
    assert value_of(first) is None
    second = watch(net.client.invoke_oneway(ADDRESS, request(b"two")))  # fast path
    assert value_of(second) is None
    sent = conn.sent()
    assert [(c.body, c.flag & FLAG_ONEWAY) for c in sent] == [(b"one", 2), (b"two", 2)]
    assert conn.protocol.pending_count == 0
    assert net.connects == 1
    assert_settled(net)


def test_fast_path_reuses_the_pooled_connection_for_many_calls() -> None:
    net = Net()
    conn = net.connect()
    calls = [watch(net.client.invoke(ADDRESS, request(b"%d" % i))) for i in range(20)]
    sent = conn.sent()
    assert [c.opaque for c in sent] == list(range(2, 22))
    conn.answer(*reversed(sent))
    assert [value_of(r).body for r in calls] == [b"%d" % i for i in range(20)]
    assert net.connects == 1
    assert net.client.pool_stats().created == 1
    assert_settled(net)


def test_calls_to_a_real_server_protocol_over_iosim() -> None:
    net = Net()
    server = Dispatcher(net.reactor, idle_timeout=None)
    server.register_default_processor(EchoProcessor())
    results = watch(net.client.invoke(ADDRESS, request(b"echo me")))
    oneway = watch(net.client.invoke_oneway(ADDRESS, request(b"no reply")))
    server_protocol = RemotingProtocol()
    server_protocol.dispatcher = server
    client_wrapper = net.reactor.tcpClients[0][2].buildProtocol(None)
    pump = connect(
        server_protocol,
        FakeTransport(server_protocol, True),
        client_wrapper,
        FakeTransport(client_wrapper, False),
        clock=net.reactor,
    )
    pump.flush()
    assert value_of(results).body == b"echo me"
    assert value_of(oneway) is None
    assert server.requests_received == 2
    assert server.responses_sent == 1  # none for the oneway request
    assert_settled(net)


# ===========================================================================
# 2. Concurrent first calls share one connect attempt
# ===========================================================================


def test_concurrent_first_calls_share_one_connect_attempt() -> None:
    net = Net()
    calls = [watch(net.client.invoke(ADDRESS, request(b"%d" % i))) for i in range(5)]
    oneway = watch(net.client.invoke_oneway(ADDRESS, request(b"ow")))
    assert net.connects == 1
    assert net.client.pool_stats().connecting == 1
    conn = net.accept()
    sent = conn.sent()
    assert len(sent) == 6
    assert value_of(oneway) is None
    conn.answer(*[c for c in sent if not c.flag & FLAG_ONEWAY])
    assert [value_of(r).body for r in calls] == [b"%d" % i for i in range(5)]
    assert net.connects == 1
    assert_settled(net)


def test_calls_to_other_addresses_make_their_own_connections() -> None:
    net = Net()
    watch(net.client.invoke(ADDRESS, request()))
    watch(net.client.invoke(OTHER, request()))
    watch(net.client.invoke(ADDRESS, request()))
    assert [c[:2] for c in net.reactor.tcpClients] == [("127.0.0.1", 9876), ("127.0.0.1", 9877)]


def test_concurrent_first_calls_all_fail_when_the_connect_is_refused() -> None:
    net = Net()
    calls = [watch(net.client.invoke(ADDRESS, request())) for _ in range(4)]
    oneway = watch(net.client.invoke_oneway(ADDRESS, request()))
    net.refuse()
    for results in [*calls, oneway]:
        error = error_of(results, ConnectError)
        assert error.address == ADDRESS
        assert f"cannot connect to {ADDRESS}" in str(error)
        assert "ConnectionRefusedError" in str(error)
    assert net.connects == 1
    stats = net.client.pool_stats()
    assert (stats.failed_connects, stats.requests, stats.errors, stats.open) == (1, 5, 5, 0)
    assert net.client.health(ADDRESS).last_error.startswith("ConnectionRefusedError")
    assert_settled(net)


# ===========================================================================
# 3. One deadline covers the connect
# ===========================================================================


def test_deadline_covers_a_slow_connect_and_the_attempt_goes_on() -> None:
    net = Net()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=1))
    net.reactor.advance(0.999)
    assert results == []
    net.advance_to(1)
    error = error_of(results, RemotingTimeoutError)
    assert f"no connection to {ADDRESS} within the call's 1 s deadline" in str(error)
    assert not net.reactor.connectors[0].stoppedConnecting
    assert net.client.pool_stats().connecting == 1
    net.advance_to(2)
    conn = net.accept()
    assert conn.sent() == []  # the timed-out request was never written
    assert net.client.connection(ADDRESS) is conn.protocol
    later = watch(net.client.invoke(ADDRESS, request()))
    conn.answer(*conn.sent())
    assert value_of(later).code == OK
    assert net.connects == 1
    assert_settled(net)


def test_connect_timeout_fails_the_waiting_calls_with_connect_error() -> None:
    net = Net()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=10))
    net.reactor.advance(2.999)
    assert results == []
    net.advance_to(3)
    error = error_of(results, ConnectError)
    assert "timed out after 3 s" in str(error)
    assert error.address == ADDRESS
    assert net.reactor.connectors[0].stoppedConnecting  # the endpoint was cancelled
    assert net.client.pool_stats().failed_connects == 1
    assert_settled(net)


def test_connect_timeout_is_configurable() -> None:
    net = Net(connect_timeout=0.5)
    results = watch(net.client.invoke(ADDRESS, request(), timeout=10))
    assert net.reactor.tcpClients[0][3] == 0.5
    net.advance_to(0.5)
    assert "timed out after 0.5 s" in str(error_of(results, ConnectError))


def test_time_spent_connecting_is_taken_from_the_response_wait() -> None:
    net = Net()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=1))
    net.advance_to(0.5)
    conn = net.accept()
    assert len(conn.sent()) == 1
    net.reactor.advance(0.499)
    assert results == []
    net.advance_to(1.0)
    error = error_of(results, RemotingTimeoutError)
    assert str(error) == (
        f"no response from {ADDRESS} to SEND_MESSAGE within the call's 1 s deadline "
        "(0.5 s of it spent connecting)"
    )
    assert "(opaque 1) within 0.5 s" in str(error.__cause__)
    assert conn.protocol.pending_count == 0


# ===========================================================================
# 4. Cancel
# ===========================================================================


def test_cancel_while_connecting_leaves_the_attempt_to_the_others() -> None:
    net = Net()
    cancelled = net.client.invoke(ADDRESS, request(b"cancelled"))
    first = watch(cancelled)
    other = watch(net.client.invoke(ADDRESS, request(b"other")))
    cancelled.cancel()
    error_of(first, CancelledError)
    assert not net.reactor.connectors[0].stoppedConnecting
    assert other == []
    conn = net.accept()
    (sent,) = conn.sent()
    assert sent.body == b"other"
    conn.answer(sent)
    assert value_of(other).body == b"other"
    assert len(first) == 1
    assert net.client.pool_stats().errors == 0  # a cancel is not an error
    assert_settled(net)


def test_cancel_of_the_only_call_still_pools_the_connection() -> None:
    net = Net()
    d = net.client.invoke(ADDRESS, request())
    results = watch(d)
    d.cancel()
    error_of(results, CancelledError)
    conn = net.accept()
    assert conn.sent() == []
    assert net.client.connection(ADDRESS) is conn.protocol
    assert_settled(net)


def test_cancel_while_waiting_for_the_response_forgets_the_request() -> None:
    net = Net()
    d = net.client.invoke(ADDRESS, request())
    results = watch(d)
    conn = net.accept()
    (sent,) = conn.sent()
    assert net.client.dispatcher.async_permits.in_use == 1
    d.cancel()
    error_of(results, CancelledError)
    assert conn.protocol.pending_count == 0
    assert_settled(net)
    conn.answer(sent)  # late
    assert net.client.dispatcher.late_responses == 1
    assert len(results) == 1
    assert not conn.closing


def test_cancel_on_the_fast_path_forgets_the_request() -> None:
    net = Net()
    conn = net.connect()
    d = net.client.invoke(ADDRESS, request())
    results = watch(d)
    (sent,) = conn.sent()
    d.cancel()
    error_of(results, CancelledError)
    assert conn.protocol.pending_count == 0
    assert_settled(net)
    conn.answer(sent)
    assert net.client.dispatcher.late_responses == 1
    assert len(results) == 1
    assert net.client.pool_stats().errors == 0


def test_cancel_after_the_response_changes_nothing() -> None:
    net = Net()
    conn = net.connect()
    d = net.client.invoke(ADDRESS, request())
    results = watch(d)
    conn.answer(*conn.sent())
    d.cancel()
    assert value_of(results).code == OK
    assert_settled(net)


# ===========================================================================
# 5. Timeout, then a late response
# ===========================================================================


def test_timeout_fails_the_call_closes_the_connection_and_drops_the_late_response() -> None:
    net = Net()
    conn = net.connect()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=2))
    (sent,) = conn.sent()
    net.reactor.advance(1.999)
    assert results == [] and not conn.closing
    net.advance_to(2)
    error = error_of(results, RemotingTimeoutError)
    assert "to SEND_MESSAGE (opaque 2) within 2 s" in str(error)
    assert conn.protocol.pending_count == 0
    assert conn.closing  # close_on_timeout=True by default
    conn.answer(sent)
    assert net.client.dispatcher.late_responses == 1
    assert len(results) == 1
    assert_settled(net)
    # The closing connection is not used again: the next call connects anew.
    watch(net.client.invoke(ADDRESS, request()))
    assert net.connects == 2
    assert conn.sent() == []


def test_a_call_made_from_the_timed_out_calls_errback_goes_out_on_a_new_connection() -> None:
    net = Net()
    conn = net.connect()
    retries: list[Deferred[Any]] = []
    pooled_then: list[object] = []

    def retry(failure: Failure) -> None:
        failure.trap(RemotingTimeoutError)
        protocol = conn.protocol
        pooled_then.append((protocol.is_closing, protocol.is_writable))
        pooled_then.append(net.client.connection(ADDRESS))
        retries.append(net.client.invoke(ADDRESS, request(b"again"), timeout=2))

    net.client.invoke(ADDRESS, request(), timeout=2).addErrback(retry)
    conn.sent()
    net.advance_to(2)
    # The timed-out connection was already unusable and out of the pool.
    assert pooled_then == [(True, False), None]
    (retried,) = retries
    results = watch(retried)
    assert conn.closing and conn.sent() == []  # nothing more on the closing connection
    assert net.connects == 2
    fresh = net.accept()
    (sent,) = fresh.sent()
    assert sent.body == b"again"
    fresh.answer(sent)
    assert value_of(results).body == b"again"
    assert net.client.connection(ADDRESS) is fresh.protocol
    conn.lose()
    assert net.client.connection(ADDRESS) is fresh.protocol
    assert_settled(net)


def test_timeout_keeps_the_connection_with_close_on_timeout_false() -> None:
    net = Net(close_on_timeout=False)
    conn = net.connect()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=2))
    (sent,) = conn.sent()
    net.advance_to(2)
    error_of(results, RemotingTimeoutError)
    assert not conn.closing
    conn.answer(sent)
    assert net.client.dispatcher.late_responses == 1
    again = watch(net.client.invoke(ADDRESS, request()))
    conn.answer(*conn.sent())
    value_of(again)
    assert net.connects == 1
    assert_settled(net)


# ===========================================================================
# 6. Connection lost
# ===========================================================================


def test_connection_lost_fails_every_pending_call_once() -> None:
    net = Net()
    conn = net.connect()
    calls = [watch(net.client.invoke(ADDRESS, request(), timeout=30)) for _ in range(100)]
    assert conn.protocol.pending_count == 100
    assert net.client.dispatcher.async_permits.in_use == 100
    conn.lose()
    for results in calls:
        error = error_of(results, ConnectionLostError)
        assert f"connection to {ADDRESS} lost before the response to SEND_MESSAGE" in str(error)
        assert "peer went away" in str(error)
    assert net.client.connection(ADDRESS) is None
    stats = net.client.pool_stats()
    assert (stats.open, stats.closed, stats.errors) == (0, 1, 100)
    assert_settled(net)
    net.reactor.advance(60)
    assert all(len(results) == 1 for results in calls)
    again = watch(net.client.invoke(ADDRESS, request()))
    assert net.connects == 2
    new = net.accept()
    new.answer(*new.sent())
    value_of(again)
    assert_settled(net)


def test_call_waiting_for_a_writable_connection_fails_when_it_is_lost() -> None:
    net = Net()
    conn = net.connect()
    conn.protocol.pauseProducing()
    results = watch(net.client.invoke(ADDRESS, request()))
    conn.lose()
    error = error_of(results, ConnectionLostError)
    assert "while waiting for the write buffer to drain" in str(error)
    assert_settled(net)


# ===========================================================================
# 7. Budgets
# ===========================================================================


def test_third_call_waits_for_a_permit_and_fails_at_its_deadline() -> None:
    net = Net(async_permits=2)
    conn = net.connect()
    first = watch(net.client.invoke(ADDRESS, request(b"1"), timeout=10))
    second = watch(net.client.invoke(ADDRESS, request(b"2"), timeout=10))
    third = watch(net.client.invoke(ADDRESS, request(b"3"), timeout=1))
    sent = conn.sent()
    assert [c.body for c in sent] == [b"1", b"2"]
    net.reactor.advance(0.999)
    assert third == []
    net.advance_to(1)
    error = error_of(third, TooManyRequestsError)
    assert "no async permit came free within 1 s (2 in flight)" in str(error)
    assert not conn.closing  # no request timed out
    assert conn.sent() == []
    conn.answer(*sent)
    value_of(first), value_of(second)
    assert_settled(net)


def test_third_call_gets_the_permit_when_one_frees() -> None:
    net = Net(async_permits=2)
    conn = net.connect()
    calls = [watch(net.client.invoke(ADDRESS, request(b"%d" % i))) for i in range(3)]
    first, second = conn.sent()
    conn.answer(first)
    (third,) = conn.sent()
    assert third.body == b"2"
    assert net.client.dispatcher.async_permits.in_use == 2
    conn.answer(second, third)
    assert [value_of(r).body for r in calls] == [b"0", b"1", b"2"]
    assert_settled(net)


def test_budget_wait_on_the_slow_path_keeps_the_call_deadline() -> None:
    net = Net(async_permits=2)
    calls = [watch(net.client.invoke(ADDRESS, request(b"%d" % i), timeout=1)) for i in range(3)]
    net.advance_to(0.5)
    conn = net.accept()
    sent = conn.sent()
    assert len(sent) == 2
    net.reactor.advance(0.25)
    conn.answer(sent[0])
    (late,) = conn.sent()  # the third got the first one's permit
    assert late.body == b"2"
    conn.answer(sent[1], late)
    assert [value_of(r).body for r in calls] == [b"0", b"1", b"2"]
    assert_settled(net)


def test_budget_wait_on_the_slow_path_fails_at_the_call_deadline() -> None:
    net = Net(async_permits=2)
    calls = [watch(net.client.invoke(ADDRESS, request(), timeout=t)) for t in (5, 5, 1)]
    net.advance_to(0.5)
    conn = net.accept()
    sent = conn.sent()
    net.reactor.advance(0.499)
    assert calls[2] == []
    net.advance_to(1)
    assert "within 0.5 s" in str(error_of(calls[2], TooManyRequestsError))
    conn.answer(*sent)
    value_of(calls[0]), value_of(calls[1])
    assert_settled(net)


def test_oneway_budget_waits_for_a_held_permit_or_fails_at_the_deadline() -> None:
    net = Net(oneway_permits=1)
    full = net.connect(ADDRESS)
    free = net.connect(OTHER)
    full.wire.pause_on_write = True
    written = watch(net.client.invoke_oneway(ADDRESS, request(b"fills the buffer")))
    assert value_of(written) is None
    assert net.client.dispatcher.oneway_permits.in_use == 1  # held until the buffer drains
    timed_out = watch(net.client.invoke_oneway(OTHER, request(b"late"), timeout=1))
    net.reactor.advance(0.999)
    assert timed_out == []
    net.reactor.advance(0.001)
    error = error_of(timed_out, TooManyRequestsError)
    assert "no oneway permit came free within 1 s (1 in flight)" in str(error)
    waiting = watch(net.client.invoke_oneway(OTHER, request(b"waits"), timeout=1))
    free.sent()
    assert waiting == []
    full.wire.pause_on_write = False
    full.protocol.resumeProducing()
    assert value_of(waiting) is None
    (sent,) = free.sent()
    assert (sent.body, sent.flag & FLAG_ONEWAY) == (b"waits", FLAG_ONEWAY)
    assert_settled(net)


Ending = Any


def _end_answered(net: Net, conn: Conn, results: list[object], d: Deferred[Any]) -> None:
    conn.answer(*conn.sent())
    value_of(results)


def _end_timed_out(net: Net, conn: Conn, results: list[object], d: Deferred[Any]) -> None:
    net.reactor.advance(3)
    error_of(results, RemotingTimeoutError)


def _end_cancelled(net: Net, conn: Conn, results: list[object], d: Deferred[Any]) -> None:
    d.cancel()
    error_of(results, CancelledError)


def _end_lost(net: Net, conn: Conn, results: list[object], d: Deferred[Any]) -> None:
    conn.lose()
    error_of(results, ConnectionLostError)


@pytest.mark.parametrize("end", [_end_answered, _end_timed_out, _end_cancelled, _end_lost])
def test_permit_is_released_exactly_once_however_the_call_ends(end: Any) -> None:
    net = Net(async_permits=1)
    conn = net.connect()
    d = net.client.invoke(ADDRESS, request())
    results = watch(d)
    assert net.client.dispatcher.async_permits.in_use == 1
    end(net, conn, results, d)
    assert net.client.dispatcher.async_permits.in_use == 0
    d.cancel()  # a second release would show as in_use == -1
    net.reactor.advance(10)
    assert net.client.dispatcher.async_permits.in_use == 0
    assert len(results) == 1
    assert_settled(net)


# ===========================================================================
# 8. Write failures, closing and unwritable connections
# ===========================================================================


def test_write_failure_on_the_fast_path_is_a_send_request_error() -> None:
    net = Net()
    conn = net.connect()
    conn.wire.write_error = OSError("broken pipe")
    results = watch(net.client.invoke(ADDRESS, request()))
    oneway = watch(net.client.invoke_oneway(ADDRESS, request()))
    for outcome in (results, oneway):
        error = error_of(outcome, SendRequestError)
        assert "cannot write SEND_MESSAGE to 127.0.0.1:9876: OSError: broken pipe" in str(error)
        assert isinstance(error.__cause__, OSError)
    assert conn.protocol.pending_count == 0
    assert net.client.pool_stats().errors == 2
    assert_settled(net)


def test_write_failure_on_the_slow_path_is_a_send_request_error() -> None:
    net = Net()
    results = watch(net.client.invoke(ADDRESS, request()))
    oneway = watch(net.client.invoke_oneway(ADDRESS, request()))
    host, port, factory, _, _ = net.reactor.tcpClients[0]
    wire = Wire(IPv4Address("TCP", host, port))
    wire.write_error = OSError("broken pipe")
    factory.buildProtocol(None).makeConnection(wire)
    assert "OSError: broken pipe" in str(error_of(results, SendRequestError))
    assert "OSError: broken pipe" in str(error_of(oneway, SendRequestError))
    assert net.client.pool_stats().errors == 2
    assert_settled(net)


def test_connection_closed_by_close_clients_is_never_handed_out() -> None:
    net = Net()
    old = net.connect()
    pending = watch(net.client.invoke(ADDRESS, request()))
    old.sent()
    net.client.close_clients([ADDRESS, OTHER])  # OTHER: no connection, ignored
    assert old.closing
    assert net.client.connection(ADDRESS) is None
    fresh = watch(net.client.invoke(ADDRESS, request(b"fresh")))
    assert net.connects == 2
    new = net.accept()
    old.lose()  # the old one finishing its close does not drop the new one from the pool
    error_of(pending, ConnectionLostError)
    assert net.client.connection(ADDRESS) is new.protocol
    (sent,) = new.sent()
    new.answer(sent)
    assert value_of(fresh).body == b"fresh"
    assert old.sent() == []
    assert_settled(net)


def test_connection_closed_by_protocol_close_is_never_handed_out() -> None:
    net = Net()
    old = net.connect()
    old.protocol.close()
    for call in (net.client.invoke, net.client.invoke_oneway):
        watch(call(ADDRESS, request()))
    assert net.connects == 2
    assert old.sent() == []
    new = net.accept()
    assert len(new.sent()) == 2


def test_unwritable_connection_makes_the_call_wait_until_it_drains() -> None:
    net = Net()
    conn = net.connect()
    conn.protocol.pauseProducing()
    results = watch(net.client.invoke(ADDRESS, request(b"waits")))
    oneway = watch(net.client.invoke_oneway(ADDRESS, request(b"waits too")))
    assert conn.sent() == []
    assert (results, oneway) == ([], [])
    assert net.connects == 1
    conn.protocol.resumeProducing()
    sent = conn.sent()
    assert [c.body for c in sent] == [b"waits", b"waits too"]
    assert value_of(oneway) is None
    conn.answer(sent[0])
    assert value_of(results).body == b"waits"
    assert_settled(net)


def test_unwritable_connection_call_times_out_at_its_deadline() -> None:
    net = Net()
    conn = net.connect()
    conn.protocol.pauseProducing()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=1))
    net.reactor.advance(0.999)
    assert results == []
    net.advance_to(1)
    error = error_of(results, RemotingTimeoutError)
    assert "within the call's 1 s deadline" in str(error)
    assert conn.protocol.in_flight_calls() == []
    conn.protocol.resumeProducing()
    assert conn.sent() == []
    assert_settled(net)


# ===========================================================================
# 9. Idle sweep
# ===========================================================================


def test_idle_connection_is_closed_by_the_sweep() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10)
    conn = net.connect()  # traffic at t=0; the sweep runs every 10 s from t=0
    net.run_until(39.9)
    assert not conn.closing
    net.run_until(40)  # the first sweep saw the traffic; idle from t=10 for 30 s
    assert conn.closing
    assert net.client.connection(ADDRESS) is None
    conn.lose()
    assert net.client.pool_stats().open == 0
    watch(net.client.invoke(ADDRESS, request()))
    assert net.connects == 2


def test_idle_connection_without_any_traffic_is_closed_at_the_idle_timeout() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10)
    d = net.client.invoke(ADDRESS, request())
    d.cancel()  # the connection is made but never used
    conn = net.accept()
    net.run_until(29.9)
    assert not conn.closing
    net.run_until(30)
    assert conn.closing


def test_connection_with_a_pending_request_is_not_swept() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10)
    conn = net.connect()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=200))
    net.run_until(150)
    assert not conn.closing
    conn.answer(*conn.sent())
    value_of(results)
    net.run_until(189.9)  # idle since the sweep at t=160 saw the response
    assert not conn.closing
    net.run_until(190)
    assert conn.closing


def test_connection_with_a_call_waiting_for_a_permit_is_not_swept() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10, async_permits=1)
    busy = net.connect(ADDRESS)
    queued = net.connect(OTHER)
    holding = watch(net.client.invoke(ADDRESS, request(), timeout=200))
    waiting = watch(net.client.invoke(OTHER, request(), timeout=200))
    assert len(queued.protocol.in_flight_calls()) == 1  # waits on OTHER for the permit
    net.run_until(100)
    assert not queued.closing and not busy.closing
    busy.answer(*busy.sent())
    value_of(holding)
    queued.answer(*queued.sent())
    value_of(waiting)


def test_unwritable_connection_with_a_call_waiting_to_write_is_not_swept() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10)
    conn = net.connect()
    conn.protocol.pauseProducing()
    waiting = watch(net.client.invoke(ADDRESS, request(), timeout=200))
    net.run_until(100)
    assert not conn.closing
    conn.protocol.resumeProducing()
    conn.answer(*conn.sent())
    value_of(waiting)


def test_connection_processing_a_pushed_request_is_not_swept() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10)
    answers: list[Deferred[RemotingCommand]] = []

    @implementer(IRequestProcessor)
    class Later:
        def process_request(self, context: object, pushed: RemotingCommand) -> Deferred[Any]:
            answers.append(Deferred())
            return answers[-1]

        def reject_request(self) -> bool:
            return False

    net.client.register_processor(RequestCode.CHECK_TRANSACTION_STATE, Later())
    conn = net.connect()
    pushed = RemotingCommand.request(RequestCode.CHECK_TRANSACTION_STATE, opaque=7)
    conn.protocol.dataReceived(encode_frame(pushed))
    net.run_until(100)
    assert not conn.closing
    answers[0].callback(RemotingCommand.response_to(pushed, OK))
    (response,) = conn.sent()
    assert (response.opaque, response.is_response) == (7, True)
    net.run_until(140)  # idle since the sweep at t=110 saw the response
    assert conn.closing


def test_connection_with_recent_traffic_is_not_swept() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10)
    conn = net.connect()
    for when in range(5, 101, 5):
        net.run_until(when)
        results = watch(net.client.invoke(ADDRESS, request()))
        conn.answer(*conn.sent())
        value_of(results)
        assert not conn.closing
    assert net.connects == 1
    net.run_until(139.9)  # the sweep at t=110 saw the last call
    assert not conn.closing
    net.run_until(140)
    assert conn.closing


def test_idle_timeout_none_never_closes_connections() -> None:
    net = Net(idle_timeout=None)
    conn = net.connect()
    net.reactor.advance(10_000)
    assert not conn.closing
    assert net.client.connection(ADDRESS) is conn.protocol
    assert call_timers(net.reactor) == []  # no sweep at all


# ===========================================================================
# 10. max_connections
# ===========================================================================


def test_new_address_evicts_the_least_recent_idle_connection_at_the_limit() -> None:
    net = Net(max_connections=2)
    first = net.connect(ADDRESS)
    net.reactor.advance(1)
    second = net.connect(OTHER)
    results = watch(net.client.invoke(THIRD, request()))
    assert first.closing and not second.closing
    assert net.client.connection(ADDRESS) is None
    assert net.connects == 3
    third = net.accept()
    third.answer(*third.sent())
    value_of(results)


def test_no_idle_connection_at_the_limit_is_a_connection_limit_error() -> None:
    net = Net(max_connections=2)
    busy = [net.connect(ADDRESS), net.connect(OTHER)]
    pending = [watch(net.client.invoke(a, request())) for a in (ADDRESS, OTHER)]
    results = watch(net.client.invoke(THIRD, request()))
    error = error_of(results, ConnectionLimitError)
    assert error.address == THIRD
    assert "2 connections open or opening (max_connections) and none idle" in str(error)
    assert net.connects == 2
    assert not any(c.closing for c in busy)
    for conn, outcome in zip(busy, pending, strict=True):
        conn.answer(*conn.sent())
        value_of(outcome)
    assert net.client.pool_stats().errors == 1
    assert_settled(net)


def test_connect_attempts_count_toward_the_limit() -> None:
    net = Net(max_connections=2)
    watch(net.client.invoke(ADDRESS, request()))
    watch(net.client.invoke(OTHER, request()))
    results = watch(net.client.invoke(THIRD, request()))
    error_of(results, ConnectionLimitError)
    assert net.connects == 2


# ===========================================================================
# 11. pool_stats
# ===========================================================================


def test_pool_stats_before_any_call() -> None:
    stats = Net().client.pool_stats()
    assert stats == PoolStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None)
    assert (stats.utilization, stats.error_rate) == (0.0, 0.0)


def test_pool_stats_after_a_scripted_sequence() -> None:
    net = Net(max_connections=4)
    a = net.connect(ADDRESS)  # 1 request, created 1
    refused = watch(net.client.invoke(OTHER, request()))
    net.refuse()  # 2 requests, 1 error, 1 failed connect
    error_of(refused, ConnectError)
    pending = watch(net.client.invoke(ADDRESS, request()))  # 3 requests, in flight on a
    connecting = watch(net.client.invoke(THIRD, request()))  # 4 requests, connecting
    stats = net.client.pool_stats()
    assert (stats.open, stats.active, stats.idle, stats.connecting) == (1, 1, 0, 1)
    assert (stats.created, stats.closed, stats.failed_connects) == (1, 0, 1)
    assert (stats.requests, stats.errors, stats.in_flight) == (4, 1, 1)
    assert stats.utilization == 0.5  # (1 open + 1 connecting) / 4
    assert stats.error_rate == 0.25
    c = net.accept()
    c.answer(*c.sent())
    value_of(connecting)
    a.lose()
    error_of(pending, ConnectionLostError)
    stats = net.client.pool_stats()
    assert (stats.open, stats.active, stats.idle, stats.connecting) == (1, 0, 1, 0)
    assert (stats.created, stats.closed, stats.failed_connects) == (2, 1, 1)
    assert (stats.requests, stats.errors, stats.in_flight) == (4, 2, 0)
    assert stats.utilization == 0.25
    assert stats.error_rate == 0.5
    as_dict = stats.as_dict()
    assert set(as_dict) == {f.name for f in fields(PoolStats)} | {"utilization", "error_rate"}
    assert as_dict["max_connections"] == 4
    assert (as_dict["utilization"], as_dict["error_rate"]) == (0.25, 0.5)


def test_utilization_without_a_limit_is_active_over_open() -> None:
    net = Net()
    a = net.connect(ADDRESS)
    net.connect(OTHER)
    watch(net.client.invoke(ADDRESS, request()))
    stats = net.client.pool_stats()
    assert (stats.open, stats.active, stats.max_connections) == (2, 1, None)
    assert stats.utilization == 0.5
    a.lose()


# ===========================================================================
# 12. close()
# ===========================================================================


def test_close_refuses_new_calls() -> None:
    net = Net()
    closed = watch(net.client.close())
    assert value_of(closed) is None  # nothing to drain or close
    assert net.client.closed
    for call in (net.client.invoke, net.client.invoke_oneway):
        error = error_of(watch(call(ADDRESS, request())), ClientClosedError)
        assert "the client is closed" in str(error)
    assert net.connects == 0
    assert net.client.pool_stats().errors == 2
    assert call_timers(net.reactor) == []


def test_close_fails_calls_waiting_for_a_connection_at_once() -> None:
    net = Net()
    calls = [watch(net.client.invoke(ADDRESS, request())) for _ in range(3)]
    closed = watch(net.client.close())
    for results in calls:
        error = error_of(results, ClientClosedError)
        assert "closed while connecting" in str(error)
    assert net.reactor.connectors[0].stoppedConnecting
    assert value_of(closed) is None
    assert net.client.pool_stats().failed_connects == 0
    assert_settled(net)


def test_close_drains_in_flight_calls_then_closes_the_connections() -> None:
    net = Net(idle_timeout=30)
    conn = net.connect()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=10))
    closed = watch(net.client.close())
    assert net.client.connection(ADDRESS) is None
    refused = watch(net.client.invoke(ADDRESS, request()))
    error_of(refused, ClientClosedError)
    net.reactor.advance(2)
    assert not conn.closing and closed == []
    conn.answer(*conn.sent())
    assert value_of(results).code == OK
    assert conn.closing
    assert closed == []  # fires once the connection is closed
    conn.lose()
    assert value_of(closed) is None
    assert_settled(net)


def test_close_fails_calls_still_pending_at_the_drain_deadline() -> None:
    net = Net()
    conn = net.connect()
    calls = [watch(net.client.invoke(ADDRESS, request(), timeout=60)) for _ in range(3)]
    closed = watch(net.client.close(timeout=2))
    net.reactor.advance(1.999)
    assert calls[0] == [] and not conn.closing
    net.advance_to(2)
    for results in calls:
        error = error_of(results, ClientClosedError)
        assert "the client closed (drain timeout 2 s) before the response to" in str(error)
    assert conn.closing and closed == []
    assert net.client.dispatcher.async_permits.in_use == 0
    conn.lose()
    assert value_of(closed) is None
    assert net.client.pool_stats().errors == 3
    assert_settled(net)


def test_close_uses_the_configured_drain_timeout() -> None:
    net = Net(drain_timeout=4)
    net.connect()
    results = watch(net.client.invoke(ADDRESS, request(), timeout=60))
    watch(net.client.close())
    net.reactor.advance(3.999)
    assert results == []
    net.advance_to(4)
    assert "drain timeout 4 s" in str(error_of(results, ClientClosedError))


def test_close_twice_fires_both_once_at_the_same_end() -> None:
    net = Net()
    conn = net.connect()
    first = watch(net.client.close())
    second = watch(net.client.close())
    assert conn.closing
    assert (first, second) == ([], [])
    conn.lose()
    assert value_of(first) is None and value_of(second) is None
    third = watch(net.client.close())
    assert value_of(third) is None
    assert_settled(net)


def test_close_aborts_a_peer_that_never_finishes_closing() -> None:
    net = Net()
    conn = net.connect()
    closed = watch(net.client.close())
    assert conn.closing and conn.wire.aborts == 0
    net.reactor.advance(0.999)
    assert conn.wire.aborts == 0
    net.advance_to(1)
    assert conn.wire.aborts == 1
    assert closed == []
    conn.lose()  # the abort completes
    assert value_of(closed) is None
    assert_settled(net)


@pytest.mark.parametrize("timeout", [-1.0, math.nan])
def test_close_with_a_bad_timeout_is_a_value_error_and_does_not_close(timeout: float) -> None:
    net = Net()
    conn = net.connect()
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        net.client.close(timeout)
    assert not net.client.closed and not conn.closing
    results = watch(net.client.invoke(ADDRESS, request()))
    conn.answer(*conn.sent())
    value_of(results)


def test_close_leaves_no_timer_behind() -> None:
    net = Net(idle_timeout=30, idle_sweep_interval=10)
    conns = [net.connect(ADDRESS), net.connect(OTHER)]
    pending = watch(net.client.invoke(ADDRESS, request(), timeout=100))
    connecting = watch(net.client.invoke(THIRD, request(), timeout=100))
    # the sweep, the response timer, the connect timer and the connecting call's deadline
    assert len(call_timers(net.reactor)) == 4
    closed = watch(net.client.close(timeout=1))
    error_of(connecting, ClientClosedError)
    net.advance_to(1)
    error_of(pending, ClientClosedError)
    for conn in conns:
        assert conn.closing
        conn.lose()
    assert value_of(closed) is None
    assert net.reactor.getDelayedCalls() == []  # the connections' deadline timers too
    assert_settled(net)


# ===========================================================================
# 13. Validation
# ===========================================================================


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nohost", "must be 'host:port'"),
        (":80", "must be 'host:port'"),
        ("h:0", "port in 1..65535"),
        ("h:99999", "port in 1..65535"),
        ("h:-1", "port in 1..65535"),
        ("h:8o", "port in 1..65535"),
        ("::1:80", "an IPv6 address needs brackets: '[::1]:80'"),
        ("[::1]", "must be 'host:port'"),
    ],
)
@pytest.mark.parametrize("oneway", [False, True])
def test_bad_address_is_a_value_error_before_anything_is_counted(
    address: str, message: str, oneway: bool
) -> None:
    net = Net()
    call = net.client.invoke_oneway if oneway else net.client.invoke
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(address, request())
    assert net.client.pool_stats() == PoolStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None)
    assert net.connects == 0
    assert call_timers(net.reactor) == []


def test_bracketed_ipv6_address_is_fine() -> None:
    net = Net()
    watch(net.client.invoke("[::1]:80", request()))
    assert net.reactor.tcpClients[0][:2] == ("::1", 80)


def test_address_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="got tuple"):
        Net().client.invoke(("127.0.0.1", 9876), request())  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1.0, -0.001, math.nan, -math.inf])
@pytest.mark.parametrize("pooled", [False, True])
def test_bad_timeout_is_a_value_error_before_anything_is_sent(timeout: float, pooled: bool) -> None:
    net = Net()
    conn = net.connect() if pooled else None
    before = net.client.pool_stats()
    for call in (net.client.invoke, net.client.invoke_oneway):
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
            call(ADDRESS, request(), timeout=timeout)
    assert net.client.pool_stats() == before
    assert net.connects == (1 if pooled else 0)
    if conn is not None:
        assert conn.sent() == []
    assert_settled(net)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be > 0"),
        ({"connect_timeout": math.nan}, "connect_timeout must be > 0"),
        ({"idle_sweep_interval": -1}, "idle_sweep_interval must be > 0"),
        ({"name_server_probe_interval": 0}, "name_server_probe_interval must be > 0"),
        ({"backoff_initial": -1}, "backoff_initial must be >= 0"),
        ({"drain_timeout": -0.5}, "drain_timeout must be >= 0"),
        ({"breaker_reset_timeout": math.nan}, "breaker_reset_timeout must be >= 0"),
        ({"idle_timeout": 0}, "idle_timeout must be > 0 or None"),
        ({"backoff_jitter": 1.0}, r"backoff_jitter must be in \[0, 1\)"),
        ({"backoff_jitter": -0.1}, r"backoff_jitter must be in \[0, 1\)"),
        ({"backoff_initial": 10, "backoff_max": 5}, "backoff_max must be >= backoff_initial"),
        ({"breaker_threshold": 0}, "breaker_threshold must be >= 1"),
        ({"max_connections": 0}, "max_connections must be >= 1 or None"),
    ],
)
def test_client_config_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClientConfig(**changes)


@pytest.mark.parametrize("budget", ["async_permits", "oneway_permits"])
def test_empty_budget_is_refused_when_the_client_is_made(budget: str) -> None:
    with pytest.raises(ValueError, match="budget must be at least 1"):
        RemotingClient(MemoryReactorClock(), ClientConfig(**{budget: 0}))
