"""RemotingProtocol on in-memory transports with a fake clock: every branch of the connection.

No sockets and no real time: a :class:`Side` is one protocol on a ``StringTransport`` driven
by hand (feed it frames, decode what it wrote), :func:`pair` joins a client and a server
with ``twisted.test.iosim``, and :class:`Socket` models a TCP transport's write buffer and
read pausing for the back-pressure tests. The blocking-processor test runs one real thread
pool, synchronised through a queue, never a sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from queue import Queue
from typing import Any, TypeVar

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from rmqtwist import (
    FLAG_ONEWAY,
    FLAG_RESPONSE,
    EncodeError,
    RemotingCommand,
    ResponseCode,
    SerializeType,
    WrongProtocol,
)
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.errors import (
    ConnectionLostError,
    RemotingTimeoutError,
    RPCHookAbort,
    SendRequestError,
    TooManyRequestsError,
)
from rmqtwist.interfaces import IChannelEventListener, IRequestProcessor, IRPCHook
from rmqtwist.protocol import (
    OVERLOAD_REMARK,
    REJECT_REMARK,
    Dispatcher,
    Permit,
    Permits,
    RemotingProtocol,
    RequestContext,
)

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)
Event = dict[str, Any]

INT32_MAX = (1 << 31) - 1
SERVER = IPv4Address("TCP", "10.0.0.1", 10911)
CLIENT = IPv4Address("TCP", "10.0.0.2", 50000)
SEND = 10  # a request code with a processor in most tests
OK = ResponseCode.SUCCESS


# ---------------------------------------------------------------------------
# Helpers: Deferred results, logs
# ---------------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[list[Event]]:
    events: list[Event] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def failures(events: list[Event]) -> list[str]:
    """The text of every failure logged."""
    return [str(e["log_failure"].value) for e in events if "log_failure" in e]


def messages(events: list[Event]) -> list[str]:
    return [str(e.get("log_format")) for e in events]


def call_timers(clock: Any) -> list[Any]:
    """The clock's timers less a connection's deadline timer with nothing left to time.

    That timer outlives the last answer on purpose (cheaper than cancelling it and
    setting a new one per request): it runs once at its time, finds nothing due and
    stops (test_deadline_timer_outliving_the_last_answer_runs_once_and_stops).
    """
    return [call for call in clock.getDelayedCalls() if not _idle_deadline_timer(call)]


def _idle_deadline_timer(call: Any) -> bool:
    func = call.func
    return (
        getattr(func, "__func__", None) is RemotingProtocol._deadlines_due
        and not func.__self__._deadlines
    )


def has_result(d: Deferred[Any]) -> bool:
    return bool(d.called) and not d.paused


def result_of(d: Deferred[T]) -> T:
    """The result ``d`` has already fired with (raises if it failed or has not fired)."""
    results: list[T | Failure] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def failure_of(d: Deferred[Any], error_type: type[E]) -> E:
    """The exception ``d`` has already failed with; it must be an ``error_type``."""
    results: list[object] = []
    d.addBoth(results.append)  # consumes the failure: nothing "unhandled" is logged
    assert results, f"{d!r} has not fired"
    (result,) = results
    assert isinstance(result, Failure), f"{d!r} succeeded with {result!r}"
    assert isinstance(result.value, error_type), result
    return result.value


def request(code: int = SEND, opaque: int = 0, **kwargs: Any) -> RemotingCommand:
    return RemotingCommand.request(code, opaque=opaque, **kwargs)


def response_to(command: RemotingCommand, code: int = OK, remark: str = "ok") -> RemotingCommand:
    return RemotingCommand.response_to(command, code, remark, body=command.body)


# ---------------------------------------------------------------------------
# Helpers: processors, hooks, listeners
# ---------------------------------------------------------------------------

Answer = Callable[[RequestContext, RemotingCommand], Any]


def echo(context: RequestContext, request: RemotingCommand) -> RemotingCommand:
    return response_to(request)


@implementer(IRequestProcessor)
class Recorder:
    """A processor that records its calls (and threads) and answers with ``answer``."""

    blocking = False

    def __init__(self, answer: Answer = echo, reject: bool | Exception = False) -> None:
        self.answer = answer
        self.reject = reject
        self.contexts: list[RequestContext] = []
        self.requests: list[RemotingCommand] = []
        self.threads: list[threading.Thread] = []

    def process_request(self, context: RequestContext, request: RemotingCommand) -> Any:
        self.contexts.append(context)
        self.requests.append(request)
        self.threads.append(threading.current_thread())
        return self.answer(context, request)

    def reject_request(self) -> bool:
        if isinstance(self.reject, Exception):
            raise self.reject
        return self.reject


class BlockingRecorder(Recorder):
    blocking = True


class Later:
    """An ``answer`` that returns a new unfired Deferred per request, kept in order."""

    def __init__(self) -> None:
        self.deferreds: list[Deferred[Any]] = []

    def __call__(self, context: RequestContext, request: RemotingCommand) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.deferreds.append(d)
        return d


def raising(error: Exception) -> Callable[..., Any]:
    def raise_(*args: object) -> Any:
        raise error

    return raise_


@implementer(IRPCHook)
class Hook:
    """An RPC hook that records its calls; ``before``/``after`` give the replacement."""

    def __init__(
        self,
        before: Callable[[RemotingCommand], RemotingCommand | None] = lambda request: None,
        after: Callable[[RemotingCommand, RemotingCommand], RemotingCommand | None] = (
            lambda request, response: None
        ),
    ) -> None:
        self.before = before
        self.after = after
        self.calls: list[tuple[Any, ...]] = []

    def before_request(self, remote_address: str, request: RemotingCommand) -> Any:
        self.calls.append(("before", remote_address, request))
        return self.before(request)

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> Any:
        self.calls.append(("after", remote_address, request, response))
        return self.after(request, response)


@implementer(IChannelEventListener)
class Events:
    """A listener that records (event, remote address, channel, *args)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def on_connect(self, remote_address: str, channel: object) -> None:
        self.events.append(("connect", remote_address, channel))

    def on_close(self, remote_address: str, channel: object) -> None:
        self.events.append(("close", remote_address, channel))

    def on_exception(self, remote_address: str, channel: object, error: Exception) -> None:
        self.events.append(("exception", remote_address, channel, error))

    def on_idle(self, remote_address: str, channel: object) -> None:
        # whether the transport was already closed when the event came
        closed = getattr(getattr(channel, "transport", None), "disconnecting", None)
        self.events.append(("idle", remote_address, channel, closed))


@implementer(IChannelEventListener)
class BrokenListener:
    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith("on_"):
            raise AttributeError(name)
        return raising(RuntimeError(f"listener bug in {name}"))


# ---------------------------------------------------------------------------
# Helpers: connections
# ---------------------------------------------------------------------------


class Transport(StringTransport):
    """StringTransport that records TCP_NODELAY and counts pause/resume calls."""

    no_delay: bool | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(hostAddress=SERVER, peerAddress=CLIENT, **kwargs)
        self.pauses = 0
        self.resumes = 0

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def pauseProducing(self) -> None:
        self.pauses += 1
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.resumes += 1
        super().resumeProducing()


def make_dispatcher(clock: Clock | None = None, **kwargs: Any) -> Dispatcher:
    """A Dispatcher on a fake clock; no idle timeout unless asked (it would add a timer)."""
    kwargs.setdefault("idle_timeout", None)
    return Dispatcher(clock if clock is not None else Clock(), **kwargs)


class Side:
    """One RemotingProtocol on a StringTransport: feed it frames, read what it wrote."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        transport: StringTransport | None = None,
        max_frame_length: int | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock: Clock = dispatcher.reactor
        self.transport = transport if transport is not None else Transport()
        self.protocol = RemotingProtocol()
        self.protocol.dispatcher = dispatcher
        if max_frame_length is not None:
            self.protocol.max_frame_length = max_frame_length
        self.protocol.makeConnection(self.transport)

    def feed(self, *commands: RemotingCommand) -> None:
        self.protocol.dataReceived(b"".join(encode_frame(c) for c in commands))

    def sent(self) -> list[RemotingCommand]:
        """The commands written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return FrameDecoder().feed(data)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone("peer went away")))


def side(dispatcher: Dispatcher | None = None, **kwargs: Any) -> Side:
    return Side(dispatcher if dispatcher is not None else make_dispatcher(**kwargs))


def assert_budgets_full(dispatcher: Dispatcher) -> None:
    for permits in (dispatcher.async_permits, dispatcher.oneway_permits):
        assert permits.available == permits.limit, permits.name
        assert permits.in_use == 0


@dataclass
class Pair:
    client: RemotingProtocol
    server: RemotingProtocol
    pump: IOPump
    clock: Clock


def pair(server: Dispatcher | None = None, client: Dispatcher | None = None) -> Pair:
    """A client and a server protocol joined by iosim (on the server dispatcher's clock)."""
    server = server if server is not None else make_dispatcher()
    clock: Clock = server.reactor
    client = client if client is not None else make_dispatcher(clock)
    server_protocol, client_protocol = RemotingProtocol(), RemotingProtocol()
    server_protocol.dispatcher = server
    client_protocol.dispatcher = client
    pump = connect(
        server_protocol,
        FakeTransport(server_protocol, True, hostAddress=SERVER, peerAddress=CLIENT),
        client_protocol,
        FakeTransport(client_protocol, False, hostAddress=CLIENT, peerAddress=SERVER),
        clock=clock,
    )
    return Pair(client_protocol, server_protocol, pump, clock)


# ===========================================================================
# Permits
# ===========================================================================


def test_permits_are_first_come_first_served_and_released_once() -> None:
    clock = Clock()
    permits = Permits(1, "test", clock)
    held = permits.try_acquire()
    assert held is not None and permits.available == 0
    first, second = permits.acquire(5), permits.acquire(5)
    assert not first.called and not second.called
    held.release()
    assert permits.try_acquire() is None  # `second` is queued before any newcomer
    got = result_of(first)
    assert isinstance(got, Permit) and permits.in_use == 1
    got.release()
    got.release()  # a second release is a no-op: it must not free a slot nobody holds
    last = result_of(second)
    assert permits.in_use == 1
    last.release()
    assert permits.available == 1
    assert call_timers(clock) == []  # the waiters' timers were cancelled


def test_permit_wait_times_out() -> None:
    clock = Clock()
    permits = Permits(2, "async", clock)
    held = [permits.try_acquire(), permits.try_acquire()]
    waiter = permits.acquire(1.5)
    clock.advance(1.4)
    assert not waiter.called
    clock.advance(0.1)
    error = failure_of(waiter, TooManyRequestsError)
    assert str(error) == "no async permit came free within 1.5 s (2 in flight)"
    for permit in held:
        assert permit is not None
        permit.release()
    assert permits.available == 2


def test_cancelled_permit_wait_leaves_the_queue() -> None:
    clock = Clock()
    permits = Permits(1, "test", clock)
    held = permits.try_acquire()
    assert held is not None
    waiter = permits.acquire(5)
    waiter.cancel()
    failure_of(waiter, CancelledError)
    held.release()
    assert permits.available == 1
    assert call_timers(clock) == []


def test_budgets_and_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="oneway budget must be at least 1"):
        make_dispatcher(oneway_permits=0)
    with pytest.raises(ValueError, match="in-flight limits"):
        make_dispatcher(max_in_flight=0)
    with pytest.raises(ValueError, match="in-flight limits"):
        make_dispatcher(max_in_flight_per_connection=0)


def test_dispatcher_defaults_to_the_global_reactor() -> None:
    from twisted.internet import reactor

    assert Dispatcher().reactor is reactor


# ===========================================================================
# Requests we send: invoke
# ===========================================================================


def test_opaques_are_per_connection_start_at_one_and_increment() -> None:
    dispatcher = make_dispatcher()
    a, b = side(dispatcher), side(dispatcher)
    a.protocol.invoke(request())
    a.protocol.invoke_oneway(request())
    a.protocol.invoke(request(opaque=77))  # the caller's opaque is replaced
    b.protocol.invoke(request())
    assert [c.opaque for c in a.sent()] == [1, 2, 3]
    assert [c.opaque for c in b.sent()] == [1]


def test_opaque_wraps_in_int32_and_skips_pending_ones() -> None:
    s = side()
    s.protocol.invoke(request())  # 1 and 2 stay pending
    s.protocol.invoke(request())
    s.protocol._next_opaque = INT32_MAX  # white box: 2**31 invokes would take a while
    for _ in range(3):
        s.protocol.invoke(request())
    assert [c.opaque for c in s.sent()] == [1, 2, INT32_MAX, 0, 3]
    assert s.protocol.pending_count == 5


def test_pending_entry_is_registered_before_the_write() -> None:
    class Inspecting(Transport):
        protocol: RemotingProtocol

        def __init__(self) -> None:
            super().__init__()
            self.pending_at_write: list[int] = []

        def write(self, data: bytes) -> None:
            self.pending_at_write.append(self.protocol.pending_count)
            super().write(data)

    transport = Inspecting()
    s = Side(make_dispatcher(), transport)
    transport.protocol = s.protocol
    s.protocol.invoke(request())
    s.protocol.invoke(request())
    assert transport.pending_at_write == [1, 2]


def test_response_pops_the_entry_and_fires_the_deferred() -> None:
    server = make_dispatcher()
    recorder = Recorder()
    server.register_processor(SEND, recorder)
    p = pair(server)
    d = p.client.invoke(request(body=b"hello", ext_fields={"topic": "T"}))
    assert p.client.pending_count == 1 and not d.called
    p.pump.flush()
    response = result_of(d)
    assert response.code == OK and response.body == b"hello" and response.is_response
    assert response.opaque == recorder.requests[0].opaque == 1
    assert recorder.requests[0].ext("topic") == "T"
    assert p.client.pending_count == 0
    assert call_timers(p.clock) == []  # the request's timer was cancelled
    assert_budgets_full(p.client.dispatcher)
    assert p.client.dispatcher.requests_sent == 1
    assert server.requests_received == 1 and server.responses_sent == 1


def test_unknown_response_is_logged_and_dropped(logged: list[Event]) -> None:
    s = side()
    d = s.protocol.invoke(request())
    (sent,) = s.sent()
    s.feed(RemotingCommand.response_to(request(opaque=42), OK))
    assert s.dispatcher.late_responses == 1
    (event,) = [e for e in logged if "matches no pending request" in str(e.get("log_format"))]
    assert event["log_level"] == LogLevel.info and "opaque=42" in event["response"]
    assert not d.called and s.protocol.pending_count == 1
    assert not s.transport.disconnecting
    s.feed(response_to(sent))  # the real one still matches
    assert result_of(d).opaque == sent.opaque


def test_timeout_fails_removes_the_entry_and_releases_the_permit() -> None:
    s = side()
    d = s.protocol.invoke(request(), timeout=2.0)
    (sent,) = s.sent()
    s.clock.advance(1.999)
    assert not d.called
    s.clock.advance(0.001)
    error = failure_of(d, RemotingTimeoutError)
    assert "within 2 s" in str(error) and "opaque 1" in str(error)
    assert s.protocol.pending_count == 0
    assert_budgets_full(s.dispatcher)
    assert not s.transport.disconnecting  # one late request does not close the connection
    s.feed(response_to(sent))  # the late response is dropped
    assert s.dispatcher.late_responses == 1


def test_mixed_timeouts_expire_each_at_its_own_deadline() -> None:
    # One timer per connection, set for the earliest deadline: a later call with an
    # earlier deadline moves it forward, and each call expires exactly on time.
    s = side()
    order: list[float] = []
    for timeout in (5.0, 1.0, 3.0, 0.5, 3.0):
        d = s.protocol.invoke(request(), timeout=timeout)
        d.addErrback(lambda f, t=timeout: order.append(t) if f.check(RemotingTimeoutError) else f)
    assert len(call_timers(s.clock)) == 1
    s.clock.advance(0.4999)
    assert order == []
    s.clock.advance(0.0001)
    assert order == [0.5]
    s.clock.advance(0.5)
    assert order == [0.5, 1.0]
    s.clock.advance(2.0)
    assert order == [0.5, 1.0, 3.0, 3.0]
    s.clock.advance(1.9999)
    assert order == [0.5, 1.0, 3.0, 3.0]
    s.clock.advance(0.0001)
    assert order == [0.5, 1.0, 3.0, 3.0, 5.0]
    assert s.protocol.pending_count == 0
    assert call_timers(s.clock) == []
    assert s.dispatcher.calls_failed == 5
    assert_budgets_full(s.dispatcher)


def test_answered_calls_never_expire_and_leave_no_timer() -> None:
    s = side()
    first = s.protocol.invoke(request(), timeout=1.0)
    second = s.protocol.invoke(request(), timeout=2.0)
    sent = s.sent()
    s.feed(response_to(sent[0]))
    assert result_of(first).opaque == sent[0].opaque
    s.clock.advance(1.0)  # the timer, set for the first call, finds it answered
    assert not second.called
    assert len(call_timers(s.clock)) == 1  # re-armed for the second
    s.feed(response_to(sent[1]))
    assert result_of(second).opaque == sent[1].opaque
    assert call_timers(s.clock) == []  # nothing pending: no timer of a call either
    s.clock.advance(10)
    assert s.dispatcher.calls_failed == 0
    assert s.clock.getDelayedCalls() == []


def test_deadline_timer_outliving_the_last_answer_runs_once_and_stops() -> None:
    # One call at a time: the timer is set once, not once per call. It stays armed for
    # the first call's deadline, runs then, re-arms for the call still pending, and
    # stops when it finds nothing pending.
    s = side()
    first = s.protocol.invoke(request(), timeout=3.0)
    timer = s.clock.getDelayedCalls()[0]
    s.feed(response_to(s.sent()[0]))
    assert result_of(first).is_response
    assert s.clock.getDelayedCalls() == [timer]  # kept, with nothing left to time
    s.clock.advance(1.0)
    later = s.protocol.invoke(request(), timeout=3.0)  # due at 4.0: the timer at 3.0 stays
    assert s.clock.getDelayedCalls() == [timer]
    s.clock.advance(2.0)  # 3.0: the timer runs, finds the later call not yet due
    assert not later.called
    (rearmed,) = s.clock.getDelayedCalls()
    assert rearmed is not timer and rearmed.getTime() == pytest.approx(4.0)
    s.feed(response_to(s.sent()[0]))
    assert result_of(later).is_response
    s.clock.advance(1.0)  # 4.0: it runs once more, finds nothing, and is not set again
    assert s.clock.getDelayedCalls() == []
    assert s.dispatcher.calls_failed == 0
    sooner = s.protocol.invoke(request(), timeout=0.5)  # a fresh timer for a new call
    assert len(s.clock.getDelayedCalls()) == 1
    s.clock.advance(0.5)
    failure_of(sooner, RemotingTimeoutError)
    assert_budgets_full(s.dispatcher)


def test_the_deadline_heap_stays_bounded_under_steady_load() -> None:
    # 64 calls always in flight, 10,000 answered: answered entries are compacted away,
    # and none of the live ones is lost or expired early.
    s = side()
    in_flight = [s.protocol.invoke(request(), timeout=3.0) for _ in range(64)]
    sent = s.sent()
    answered = 0
    most = 0
    for _ in range(10_000):
        in_flight.append(s.protocol.invoke(request(), timeout=3.0))
        sent += s.sent()
        s.feed(response_to(sent.pop(0)))  # answer the oldest
        assert result_of(in_flight.pop(0)).is_response
        answered += 1
        most = max(most, len(s.protocol._deadlines))
        s.clock.advance(0.0001)  # one second in all: no deadline is reached
    assert answered == 10_000
    assert s.protocol.pending_count == 64
    assert most <= 2 * 64 + 64 + 1
    assert s.dispatcher.calls_failed == 0
    s.clock.advance(3.0)
    assert s.dispatcher.calls_failed == 64
    assert s.protocol.pending_count == 0 and s.protocol._deadlines == []
    assert_budgets_full(s.dispatcher)
    for d in in_flight:
        failure_of(d, RemotingTimeoutError)


def test_failed_calls_are_counted_once_and_cancels_are_not() -> None:
    s = side(async_permits=1, oneway_permits=1)
    timed_out = s.protocol.invoke(request(), timeout=1.0)
    no_permit = s.protocol.invoke(request(), timeout=0.5)
    s.clock.advance(0.5)
    failure_of(no_permit, TooManyRequestsError)
    s.clock.advance(0.5)
    failure_of(timed_out, RemotingTimeoutError)
    cancelled = s.protocol.invoke(request())
    cancelled.cancel()
    failure_of(cancelled, CancelledError)
    bad = s.protocol.invoke(request(200050, serialize_type=SerializeType.ROCKETMQ))
    failure_of(bad, EncodeError)
    failure_of(
        s.protocol.invoke_oneway(request(200050, serialize_type=SerializeType.ROCKETMQ)),
        EncodeError,
    )
    lost = [s.protocol.invoke(request())]
    s.lose()
    failure_of(lost[0], ConnectionLostError)
    failure_of(s.protocol.invoke(request()), ConnectionLostError)
    failure_of(s.protocol.invoke_oneway(request()), ConnectionLostError)
    assert s.dispatcher.calls_failed == 7
    assert_budgets_full(s.dispatcher)


def test_close_on_timeout_closes_the_connection(logged: list[Event]) -> None:
    s = side(close_on_timeout=True)
    timing_out = s.protocol.invoke(request(), timeout=1.0)
    other = s.protocol.invoke(request(), timeout=10.0)
    s.clock.advance(1)
    failure_of(timing_out, RemotingTimeoutError)
    assert s.transport.disconnecting and not s.transport.disconnected  # graceful close
    assert "Closing {peer} after a request timed out" in messages(logged)
    s.lose()  # the transport reports the close: the other request fails then
    failure_of(other, ConnectionLostError)
    assert_budgets_full(s.dispatcher)


def test_cancel_removes_the_entry_and_releases_the_permit() -> None:
    s = side()
    d = s.protocol.invoke(request())
    (sent,) = s.sent()
    d.cancel()
    failure_of(d, CancelledError)
    assert s.protocol.pending_count == 0
    assert call_timers(s.clock) == []
    assert_budgets_full(s.dispatcher)
    s.feed(response_to(sent))
    assert s.dispatcher.late_responses == 1


def test_the_canceller_leaves_an_entry_that_is_not_its_own() -> None:
    # A Reply's canceller finds its entry by opaque; should that opaque ever belong to
    # another request (the Reply's own entry gone), the other request stays.
    from rmqtwist._reply import Reply

    s = side()
    d = s.protocol.invoke(request())
    (sent,) = s.sent()
    stale: Reply[RemotingCommand] = Reply(s.protocol._cancel_reply, sent.opaque)
    stale.addErrback(lambda f: None)
    stale.cancel()
    assert s.protocol.pending_count == 1
    s.feed(response_to(sent))
    assert result_of(d).opaque == sent.opaque
    assert_budgets_full(s.dispatcher)


def test_connection_loss_fails_every_pending_request_at_once() -> None:
    s = side(async_permits=100)
    deferreds = [s.protocol.invoke(request()) for _ in range(100)]
    assert s.protocol.pending_count == 100
    s.lose()
    errors = [failure_of(d, ConnectionLostError) for d in deferreds]
    assert "lost before the response to" in str(errors[0]) and "peer went away" in str(errors[0])
    assert s.protocol.pending_count == 0
    assert call_timers(s.clock) == []
    assert_budgets_full(s.dispatcher)
    assert not s.protocol.is_connected and not s.protocol.is_writable


def test_invoke_on_a_closed_connection_fails_at_once() -> None:
    s = side()
    s.lose()
    s.transport.clear()
    failure_of(s.protocol.invoke(request()), ConnectionLostError)
    failure_of(s.protocol.invoke_oneway(request()), ConnectionLostError)
    assert s.transport.value() == b""
    assert_budgets_full(s.dispatcher)
    never = RemotingProtocol()
    never.dispatcher = make_dispatcher()
    error = failure_of(never.invoke(request()), ConnectionLostError)
    assert str(error) == "connection to peer is not connected"


def test_encode_error_fails_the_call_and_releases_the_permit() -> None:
    s = side()
    too_big = request(200050, serialize_type=SerializeType.ROCKETMQ)  # code > int16
    failure_of(s.protocol.invoke(too_big), EncodeError)
    failure_of(s.protocol.invoke_oneway(too_big), EncodeError)
    assert s.transport.value() == b""
    assert s.protocol.pending_count == 0
    assert call_timers(s.clock) == []
    assert_budgets_full(s.dispatcher)
    s.protocol.invoke(request(200050))  # JSON has no int16 limit
    assert [c.code for c in s.sent()] == [200050]


def test_write_error_fails_the_call_and_forgets_it() -> None:
    class Broken(Transport):
        def write(self, data: bytes) -> None:
            raise OSError("transport broke")

    s = Side(make_dispatcher(), Broken())
    error = failure_of(s.protocol.invoke(request()), SendRequestError)
    assert isinstance(error.__cause__, OSError)
    assert "transport broke" in str(error)
    error = failure_of(s.protocol.invoke_oneway(request()), SendRequestError)
    assert isinstance(error.__cause__, OSError)
    assert s.protocol.pending_count == 0
    assert call_timers(s.clock) == []
    assert_budgets_full(s.dispatcher)


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
def test_negative_timeout_is_refused_before_taking_a_permit(timeout: float) -> None:
    s = side()
    with pytest.raises(ValueError, match="timeout must be"):
        s.protocol.invoke(request(), timeout)
    with pytest.raises(ValueError, match="timeout must be"):
        s.protocol.invoke_oneway(request(), timeout)
    assert s.transport.value() == b""
    assert_budgets_full(s.dispatcher)


def test_client_hooks_replace_the_request_and_the_response() -> None:
    server = make_dispatcher()
    recorder = Recorder()
    server.register_processor(SEND, recorder)
    p = pair(server)
    hook = Hook(
        before=lambda r: r.replace(ext_fields={**(r.ext_fields or {}), "signed": "yes"}),
        after=lambda request, response: response.replace(remark="checked"),
    )
    p.client.dispatcher.register_rpc_hook(hook)
    d = p.client.invoke(request(ext_fields={"topic": "T"}))
    p.pump.flush()
    assert dict(recorder.requests[0].ext_fields or {}) == {"topic": "T", "signed": "yes"}
    assert result_of(d).remark == "checked"
    assert [c[:2] for c in hook.calls] == [
        ("before", "10.0.0.1:10911"),
        ("after", "10.0.0.1:10911"),
    ]
    _, _, hooked_request, raw_response = hook.calls[1]
    assert hooked_request.ext("signed") == "yes" and raw_response.remark == "ok"


def test_client_hook_flag_is_sent_and_after_hooks_see_the_request_as_sent() -> None:
    # The flag comes from the request the hook returned (less the response and oneway
    # bits), and the after step gets that request stamped with the opaque used.
    server = make_dispatcher()
    recorder = Recorder()
    server.register_processor(SEND, recorder)
    p = pair(server)
    hook = Hook(before=lambda r: r.replace(flag=r.flag | 4 | FLAG_RESPONSE))
    p.client.dispatcher.register_rpc_hook(hook)
    d = p.client.invoke(request())
    p.pump.flush()
    assert result_of(d).is_response
    (received,) = recorder.requests
    assert received.flag == 4
    _, _, sent_request, _ = hook.calls[1]
    assert sent_request.flag == 4 and sent_request.opaque == received.opaque


def test_client_hook_abort_fails_the_call_without_sending() -> None:
    s = side()
    s.dispatcher.register_rpc_hook(Hook(before=raising(RPCHookAbort(16, "no key"))))
    error = failure_of(s.protocol.invoke(request()), RPCHookAbort)
    assert error.code == 16 and error.remark == "no key"
    failure_of(s.protocol.invoke_oneway(request()), RPCHookAbort)
    assert s.transport.value() == b""
    assert s.protocol.pending_count == 0
    assert_budgets_full(s.dispatcher)


def test_client_after_hook_raising_fails_the_call() -> None:
    s = side()
    s.dispatcher.register_rpc_hook(Hook(after=raising(ValueError("bad signature"))))
    d = s.protocol.invoke(request())
    (sent,) = s.sent()
    s.feed(response_to(sent))
    assert "bad signature" in str(failure_of(d, ValueError))
    assert s.protocol.pending_count == 0
    assert_budgets_full(s.dispatcher)


# ===========================================================================
# Requests we send: async and oneway budgets
# ===========================================================================


def test_third_invoke_waits_for_a_permit_and_keeps_its_deadline() -> None:
    s = side(async_permits=2)
    d1, d2 = s.protocol.invoke(request(), 10), s.protocol.invoke(request(), 10)
    d3 = s.protocol.invoke(request(body=b"third"), 3)
    first, second = s.sent()  # the third is not written yet
    assert s.dispatcher.async_permits.available == 0 and s.protocol.pending_count == 2
    s.clock.advance(1)
    s.feed(response_to(first))
    result_of(d1)
    (third,) = s.sent()  # the freed permit went to the waiting call
    assert third.body == b"third" and third.opaque == 3
    s.clock.advance(1.999)  # its 3 s started when it was invoked, not when it was written
    assert not has_result(d3)
    s.clock.advance(0.001)
    failure_of(d3, RemotingTimeoutError)
    s.feed(response_to(second))
    result_of(d2)
    assert_budgets_full(s.dispatcher)
    assert call_timers(s.clock) == []


def test_invoke_fails_when_no_permit_frees_in_time() -> None:
    s = side(async_permits=2)
    d1, d2 = s.protocol.invoke(request(), 10), s.protocol.invoke(request(), 10)
    d3 = s.protocol.invoke(request(), 1)
    s.clock.advance(1)
    assert "no async permit came free within 1 s" in str(failure_of(d3, TooManyRequestsError))
    first, second = s.sent()
    assert s.protocol.pending_count == 2
    s.feed(response_to(first), response_to(second))
    result_of(d1), result_of(d2)
    assert s.sent() == []  # the expired call was never written
    assert_budgets_full(s.dispatcher)


def test_invoke_cancelled_while_waiting_for_a_permit_is_never_sent() -> None:
    s = side(async_permits=1)
    d1 = s.protocol.invoke(request())
    d2 = s.protocol.invoke(request())
    d2.cancel()
    failure_of(d2, CancelledError)
    (first,) = s.sent()
    s.feed(response_to(first))
    result_of(d1)
    assert s.sent() == []
    assert_budgets_full(s.dispatcher)
    assert call_timers(s.clock) == []


def test_invoke_cancelled_after_its_permit_came_forgets_the_request() -> None:
    s = side(async_permits=1)
    d1 = s.protocol.invoke(request())
    d2 = s.protocol.invoke(request())
    (first,) = s.sent()
    s.feed(response_to(first))
    result_of(d1)
    (second,) = s.sent()
    d2.cancel()
    failure_of(d2, CancelledError)
    assert s.protocol.pending_count == 0
    assert_budgets_full(s.dispatcher)
    s.feed(response_to(second))
    assert s.dispatcher.late_responses == 1


def test_invoke_waiting_for_a_permit_fails_at_once_when_its_connection_is_lost() -> None:
    dispatcher = make_dispatcher(async_permits=1)
    a, b = side(dispatcher), side(dispatcher)
    held = a.protocol.invoke(request())  # a holds the only permit
    waiting = b.protocol.invoke(request(), timeout=3)
    b.lose()
    failure_of(waiting, ConnectionLostError)  # at once, not after 3 s
    (sent,) = a.sent()
    a.feed(response_to(sent))
    result_of(held)
    assert b.sent() == []
    assert_budgets_full(dispatcher)  # the permit did not go to the dead waiter
    assert call_timers(dispatcher.clock) == []


def test_invoke_waiting_for_a_permit_on_a_connection_lost_meanwhile() -> None:
    # The permit comes from another connection after this one closed.
    dispatcher = make_dispatcher(async_permits=1)
    a, b = side(dispatcher), side(dispatcher)
    held = a.protocol.invoke(request())
    waiting = b.protocol.invoke(request())
    b.protocol.is_connected = False  # closing, connectionLost not called yet
    (sent,) = a.sent()
    a.feed(response_to(sent))
    result_of(held)
    failure_of(waiting, ConnectionLostError)
    assert b.sent() == []
    assert_budgets_full(dispatcher)


def test_invoke_oneway_sets_the_flag_and_fires_none_once_written() -> None:
    s = side()
    d = s.protocol.invoke_oneway(request(body=b"fire"))
    assert result_of(d) is None
    (sent,) = s.sent()
    assert sent.flag == FLAG_ONEWAY and sent.body == b"fire"
    assert s.protocol.pending_count == 0
    assert call_timers(s.clock) == []
    assert_budgets_full(s.dispatcher)
    assert s.dispatcher.requests_sent == 1
    # flags are the connection's business: the response bit is cleared, and invoke()
    # clears a oneway bit (it waits for a response, so it must ask for one)
    s.protocol.invoke_oneway(request().replace(flag=FLAG_RESPONSE))
    s.protocol.invoke(request(oneway=True))
    assert [c.flag for c in s.sent()] == [FLAG_ONEWAY, 0]


def test_invoke_oneway_waits_for_a_permit() -> None:
    s = side(oneway_permits=1)
    held = s.dispatcher.oneway_permits.try_acquire()  # e.g. another connection's
    assert held is not None
    written_when_fired: list[bytes] = []
    d = s.protocol.invoke_oneway(request(), timeout=2)
    d.addCallback(lambda _: written_when_fired.append(s.transport.value()))
    assert s.transport.value() == b"" and not d.called
    s.clock.advance(1)
    held.release()
    assert result_of(d) is None
    assert written_when_fired and written_when_fired[0]  # fired after the write
    (sent,) = s.sent()
    assert sent.is_oneway
    assert_budgets_full(s.dispatcher)
    assert call_timers(s.clock) == []


def test_invoke_oneway_fails_when_no_permit_frees_in_time() -> None:
    s = side(oneway_permits=1)
    held = s.dispatcher.oneway_permits.try_acquire()
    assert held is not None
    d = s.protocol.invoke_oneway(request(), timeout=2)
    s.clock.advance(2)
    assert "no oneway permit" in str(failure_of(d, TooManyRequestsError))
    held.release()
    assert s.transport.value() == b""
    assert_budgets_full(s.dispatcher)


def test_invoke_oneway_waiting_fails_at_once_when_the_connection_is_lost() -> None:
    s = side(oneway_permits=1)
    held = s.dispatcher.oneway_permits.try_acquire()
    assert held is not None
    d = s.protocol.invoke_oneway(request(), timeout=2)
    s.lose()
    failure_of(d, ConnectionLostError)
    held.release()
    assert s.transport.value() == b""
    assert_budgets_full(s.dispatcher)
    assert call_timers(s.clock) == []


def test_oneway_request_gets_no_reply_over_a_pair() -> None:
    server = make_dispatcher()
    recorder = Recorder()
    server.register_processor(SEND, recorder)
    p = pair(server)
    d = p.client.invoke_oneway(request(body=b"x"))
    p.pump.flush()
    assert result_of(d) is None
    assert recorder.requests[0].is_oneway
    assert server.responses_sent == 0 and p.client.dispatcher.late_responses == 0


# ===========================================================================
# Requests we answer
# ===========================================================================


def test_requests_go_to_their_processor_else_the_default() -> None:
    s = side()
    by_code = Recorder()
    default = Recorder(lambda c, r: RemotingCommand.response_to(r, OK, "default"))
    s.dispatcher.register_processor(SEND, by_code)
    s.dispatcher.register_default_processor(default)
    s.feed(request(SEND, opaque=1), request(SEND + 1, opaque=2))
    assert [(c.opaque, c.remark) for c in s.sent()] == [(1, "ok"), (2, "default")]
    assert [r.code for r in by_code.requests] == [SEND]
    assert [r.code for r in default.requests] == [SEND + 1]
    assert s.dispatcher.processor_codes == [SEND]
    assert s.dispatcher.in_flight == 0 and s.protocol.processing_count == 0


def test_no_processor_answers_request_code_not_supported() -> None:
    s = side()
    s.feed(request(105, opaque=7))
    (response,) = s.sent()
    assert response.code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED
    assert response.remark == " request type 105 not supported"
    assert response.opaque == 7 and response.flag == FLAG_RESPONSE
    assert s.dispatcher.requests_unsupported == 1


def test_rejecting_processor_answers_system_busy() -> None:
    s = side()
    recorder = Recorder(reject=True)
    s.dispatcher.register_processor(SEND, recorder)
    s.feed(request(opaque=3))
    (response,) = s.sent()
    assert (response.code, response.remark, response.opaque) == (
        ResponseCode.SYSTEM_BUSY,
        REJECT_REMARK,
        3,
    )
    assert REJECT_REMARK.startswith("[REJECTREQUEST]")
    assert recorder.requests == []
    assert s.dispatcher.requests_rejected == 1 and s.dispatcher.in_flight == 0


def test_reject_request_raising_is_logged_and_means_no(logged: list[Event]) -> None:
    s = side()
    recorder = Recorder(reject=RuntimeError("reject bug"))
    s.dispatcher.register_processor(SEND, recorder)
    s.feed(request())
    assert [c.code for c in s.sent()] == [OK]
    assert failures(logged) == ["reject bug"]


def test_processor_exception_answers_system_error_and_the_connection_stays(
    logged: list[Event],
) -> None:
    s = side()

    def answer(context: RequestContext, request: RemotingCommand) -> RemotingCommand:
        if request.opaque == 1:
            raise ValueError("disk on fire")
        return response_to(request)

    s.dispatcher.register_processor(SEND, Recorder(answer))
    s.feed(request(opaque=1))
    s.feed(request(opaque=2))
    error, ok = s.sent()
    assert error.code == ResponseCode.SYSTEM_ERROR and error.opaque == 1
    assert error.remark is not None and "disk on fire" in error.remark
    assert (ok.code, ok.opaque) == (OK, 2)
    assert not s.transport.disconnecting and s.protocol.is_connected
    assert s.dispatcher.processor_errors == 1 and s.dispatcher.in_flight == 0
    assert failures(logged) == ["disk on fire"]


def test_processor_failing_deferred_answers_system_error() -> None:
    s = side()
    s.dispatcher.register_processor(SEND, Recorder(lambda c, r: fail(KeyError("no such topic"))))
    s.feed(request(opaque=4))
    (response,) = s.sent()
    assert response.code == ResponseCode.SYSTEM_ERROR and response.opaque == 4
    assert response.remark is not None and "no such topic" in response.remark
    assert s.dispatcher.in_flight == 0


def test_processor_deferred_is_answered_when_it_fires() -> None:
    s = side()
    later = Later()
    s.dispatcher.register_processor(SEND, Recorder(later))
    s.feed(request(opaque=1), request(opaque=2))
    assert s.sent() == []
    assert s.dispatcher.in_flight == 2 and s.protocol.processing_count == 2
    later.deferreds[1].callback(RemotingCommand(code=OK, remark="second"))
    later.deferreds[0].errback(ValueError("first failed"))
    first, second = [(c.opaque, c.code) for c in s.sent()][::-1]
    assert second == (2, OK) and first == (1, ResponseCode.SYSTEM_ERROR)
    assert s.dispatcher.in_flight == 0 and s.protocol.processing_count == 0


def test_processor_returning_none_answers_later_through_the_context() -> None:
    s = side()
    recorder = Recorder(lambda c, r: None)
    s.dispatcher.register_processor(SEND, recorder)
    s.feed(request(opaque=9))
    assert s.sent() == [] and s.dispatcher.in_flight == 1
    (context,) = recorder.contexts
    assert not context.responded and context.channel is s.protocol
    context.respond(RemotingCommand(code=OK, remark="later"))
    (response,) = s.sent()
    assert (response.opaque, response.remark, response.flag) == (9, "later", FLAG_RESPONSE)
    assert context.responded and s.dispatcher.in_flight == 0
    with pytest.raises(RuntimeError, match="already answered"):
        context.respond(RemotingCommand(code=OK))
    assert s.sent() == []


def test_processor_responding_and_returning_a_command_sends_one_response(
    logged: list[Event],
) -> None:
    s = side()

    def answer(context: RequestContext, request: RemotingCommand) -> RemotingCommand:
        context.respond(RemotingCommand(code=OK, remark="first"))
        return RemotingCommand(code=OK, remark="second")

    s.dispatcher.register_processor(SEND, Recorder(answer))
    s.feed(request())
    assert [c.remark for c in s.sent()] == ["first"]
    assert any("already answered" in m for m in messages(logged))
    assert s.dispatcher.in_flight == 0


@pytest.mark.parametrize(
    ("answer", "type_name"),
    [(lambda c, r: "hello", "str"), (lambda c, r: succeed(42), "int")],
)
def test_processor_returning_a_non_command_answers_system_error(
    answer: Answer, type_name: str
) -> None:
    s = side()
    s.dispatcher.register_processor(SEND, Recorder(answer))
    s.feed(request())
    (response,) = s.sent()
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert f"processor returned {type_name}, not a command" in (response.remark or "")
    assert s.dispatcher.in_flight == 0


@pytest.mark.parametrize("stype", list(SerializeType))
def test_an_answer_over_the_frame_limit_becomes_a_system_error_that_fits(
    stype: SerializeType, logged: list[Event]
) -> None:
    limit = 4096
    s = Side(make_dispatcher(), max_frame_length=limit)
    s.dispatcher.register_processor(SEND, Recorder())  # echo: the body and a remark back
    empty = len(encode_frame(request(opaque=7, serialize_type=stype)))
    at_limit = request(opaque=7, serialize_type=stype, body=b"x" * (limit - empty))
    assert len(encode_frame(at_limit)) == limit  # the request just fits...
    answer_size = len(encode_frame(response_to(at_limit)))
    assert answer_size > limit  # ...its echo does not
    s.feed(at_limit)
    data = s.transport.value()
    assert len(data) <= limit
    (response,) = FrameDecoder(limit).feed(data)
    assert (response.code, response.opaque, response.body) == (ResponseCode.SYSTEM_ERROR, 7, b"")
    assert response.serialize_type == stype
    assert response.remark == f"the answer was {answer_size} bytes, over the frame limit {limit}"
    (line,) = [e for e in logged if "over the frame limit" in str(e.get("log_format"))]
    assert (line["response_code"], line["size"], line["limit"]) == (OK, answer_size, limit)
    assert line["log_level"] == LogLevel.warn
    assert s.dispatcher.in_flight == 0 and s.dispatcher.responses_sent == 1
    # An answer that fits is sent as it is.
    s.transport.clear()
    s.feed(request(opaque=8, serialize_type=stype, body=b"small"))
    (ok,) = s.sent()
    assert (ok.code, ok.opaque, ok.body) == (OK, 8, b"small")


@pytest.mark.parametrize("stype", list(SerializeType))
def test_response_copies_opaque_sets_the_flag_and_uses_the_request_serialize_type(
    stype: SerializeType,
) -> None:
    s = side()
    other = SerializeType.JSON if stype == SerializeType.ROCKETMQ else SerializeType.ROCKETMQ
    # a processor building its response carelessly: wrong opaque, flags and serialize type
    careless = RemotingCommand(code=OK, opaque=999, flag=FLAG_ONEWAY, serialize_type=other)
    s.dispatcher.register_processor(SEND, Recorder(lambda c, r: careless))
    s.protocol.dataReceived(encode_frame(request(opaque=5, serialize_type=stype)))
    raw = s.transport.value()
    assert raw[4] == stype  # the high byte of the header-length word
    (response,) = s.sent()
    assert response.opaque == 5 and response.flag == FLAG_RESPONSE
    assert response.serialize_type == stype


# -- oneway requests never get a reply ------------------------------------------------


def _setup_unknown(d: Dispatcher) -> None:
    pass


def _setup_rejected(d: Dispatcher) -> None:
    d.register_processor(SEND, Recorder(reject=True))


def _setup_raising(d: Dispatcher) -> None:
    d.register_processor(SEND, Recorder(raising(ValueError("boom"))))


def _setup_failing_deferred(d: Dispatcher) -> None:
    d.register_processor(SEND, Recorder(lambda c, r: fail(ValueError("boom"))))


def _setup_answering(d: Dispatcher) -> None:
    d.register_processor(SEND, Recorder())


def _setup_non_command(d: Dispatcher) -> None:
    d.register_processor(SEND, Recorder(lambda c, r: 42))


def _setup_responding_later(d: Dispatcher) -> None:
    def answer(context: RequestContext, request: RemotingCommand) -> None:
        d.reactor.callLater(1, context.respond, response_to(request))

    d.register_processor(SEND, Recorder(answer))


def _setup_hook_abort(d: Dispatcher) -> None:
    d.register_processor(SEND, Recorder())
    d.register_rpc_hook(Hook(before=raising(RPCHookAbort(16, "denied"))))


def _setup_hook_raising(d: Dispatcher) -> None:
    d.register_processor(SEND, Recorder())
    d.register_rpc_hook(Hook(before=raising(ValueError("hook bug"))))


@pytest.mark.parametrize(
    "setup",
    [
        _setup_unknown,
        _setup_rejected,
        _setup_raising,
        _setup_failing_deferred,
        _setup_answering,
        _setup_non_command,
        _setup_responding_later,
        _setup_hook_abort,
        _setup_hook_raising,
    ],
)
def test_oneway_request_never_gets_a_reply(setup: Callable[[Dispatcher], None]) -> None:
    s = side()
    setup(s.dispatcher)
    s.feed(request(oneway=True), request(oneway=True, serialize_type=SerializeType.ROCKETMQ))
    s.clock.advance(1)
    assert s.transport.value() == b""
    assert s.dispatcher.responses_sent == 0
    assert s.dispatcher.in_flight == 0 and s.protocol.processing_count == 0
    assert s.protocol.is_connected and not s.transport.disconnecting


def test_oneway_request_is_not_answered_overload() -> None:
    s = side(max_in_flight=1)
    s.dispatcher.register_processor(SEND, Recorder(Later()))
    s.feed(request(opaque=1))  # takes the only slot
    s.feed(request(oneway=True))
    assert s.transport.value() == b""
    assert s.dispatcher.requests_overloaded == 1


def test_oneway_processor_returning_none_frees_its_slot_and_may_still_respond() -> None:
    s = side()
    recorder = Recorder(lambda c, r: None)
    s.dispatcher.register_processor(SEND, recorder)
    s.feed(request(oneway=True))
    assert s.dispatcher.in_flight == 0  # None from a oneway processor means done
    (context,) = recorder.contexts
    context.respond(response_to(context.request))  # dropped, not an error
    assert context.responded
    assert s.transport.value() == b""


# -- server-side RPC hooks ----------------------------------------------------------------


def test_server_before_hook_replaces_the_request() -> None:
    s = side()
    recorder = Recorder()
    s.dispatcher.register_processor(SEND, recorder)
    s.dispatcher.register_rpc_hook(Hook(before=lambda r: r.replace(ext_fields={"user": "al"})))
    s.dispatcher.register_rpc_hook(Hook(before=lambda r: r.replace(remark=r.ext("user"))))
    s.feed(request(opaque=3))
    (processed,) = recorder.requests
    assert processed.ext("user") == "al" and processed.remark == "al"  # hooks run in order
    assert recorder.contexts[0].request is processed
    assert [c.opaque for c in s.sent()] == [3]


def test_server_hook_replacement_does_not_change_where_the_response_goes() -> None:
    # A hook that builds a new request (opaque 0, JSON, no oneway bit) must not make the
    # response go out with the wrong opaque, serialize type, or to a oneway request.
    s = side()
    s.dispatcher.register_processor(SEND, Recorder())
    s.dispatcher.register_rpc_hook(Hook(before=lambda r: RemotingCommand.request(r.code)))
    s.feed(request(opaque=5, serialize_type=SerializeType.ROCKETMQ))
    s.feed(request(opaque=6, oneway=True))
    raw = s.transport.value()
    (response,) = s.sent()
    assert response.opaque == 5 and raw[4] == SerializeType.ROCKETMQ


def test_server_hook_abort_answers_with_its_code_and_remark() -> None:
    s = side()
    recorder = Recorder()
    s.dispatcher.register_processor(SEND, recorder)
    s.dispatcher.register_rpc_hook(
        Hook(before=raising(RPCHookAbort(ResponseCode.NO_PERMISSION, "no access to T")))
    )
    s.feed(request(opaque=2))
    (response,) = s.sent()
    assert (response.code, response.remark, response.opaque) == (16, "no access to T", 2)
    assert recorder.requests == []
    assert s.dispatcher.in_flight == 0


def test_server_before_hook_raising_answers_system_error(logged: list[Event]) -> None:
    s = side()
    recorder = Recorder()
    s.dispatcher.register_processor(SEND, recorder)
    s.dispatcher.register_rpc_hook(Hook(before=raising(LookupError("hook bug"))))
    s.feed(request(opaque=2))
    (response,) = s.sent()
    assert response.code == ResponseCode.SYSTEM_ERROR and "hook bug" in (response.remark or "")
    assert recorder.requests == [] and s.dispatcher.in_flight == 0
    assert failures(logged) == ["hook bug"]


def test_server_after_hook_replaces_the_response() -> None:
    s = side()
    s.dispatcher.register_processor(SEND, Recorder())
    hook = Hook(after=lambda request, response: response.replace(ext_fields={"sig": "x"}))
    s.dispatcher.register_rpc_hook(hook)
    s.feed(request(opaque=4, body=b"b"))
    (response,) = s.sent()
    assert response.ext("sig") == "x" and response.opaque == 4 and response.body == b"b"
    (_, remote, hooked_request, made) = hook.calls[1]
    assert remote == "10.0.0.2:50000" and hooked_request.opaque == 4 and made.remark == "ok"


def test_server_after_hook_building_a_new_response_is_still_addressed() -> None:
    s = side()
    s.dispatcher.register_processor(SEND, Recorder())
    s.dispatcher.register_rpc_hook(Hook(after=lambda request, response: RemotingCommand(code=7)))
    s.feed(request(opaque=4, serialize_type=SerializeType.ROCKETMQ))
    raw = s.transport.value()
    (response,) = s.sent()
    assert (response.code, response.opaque, response.flag) == (7, 4, FLAG_RESPONSE)
    assert raw[4] == SerializeType.ROCKETMQ


def test_server_after_hook_raising_answers_system_error(logged: list[Event]) -> None:
    s = side()
    s.dispatcher.register_processor(SEND, Recorder())
    s.dispatcher.register_rpc_hook(Hook(after=raising(ValueError("cannot sign"))))
    s.feed(request(opaque=4))
    (response,) = s.sent()
    assert response.code == ResponseCode.SYSTEM_ERROR and response.opaque == 4
    assert "cannot sign" in (response.remark or "")
    assert failures(logged) == ["cannot sign"]


def test_unencodable_response_answers_system_error() -> None:
    s = side()
    s.dispatcher.register_processor(SEND, Recorder(lambda c, r: RemotingCommand(code=70000)))
    s.feed(request(opaque=8, serialize_type=SerializeType.ROCKETMQ))
    (response,) = s.sent()
    assert response.code == ResponseCode.SYSTEM_ERROR and response.opaque == 8
    assert "EncodeError" in (response.remark or "")


# ===========================================================================
# In-flight limits
# ===========================================================================


def test_max_in_flight_is_shared_by_the_connections_of_a_dispatcher() -> None:
    dispatcher = make_dispatcher(max_in_flight=2)
    later = Later()
    dispatcher.register_processor(SEND, Recorder(later))
    a, b = side(dispatcher), side(dispatcher)
    a.feed(request(opaque=1))
    b.feed(request(opaque=1), request(opaque=2))
    assert a.sent() == []
    (busy,) = b.sent()
    assert (busy.code, busy.remark, busy.opaque) == (ResponseCode.SYSTEM_BUSY, OVERLOAD_REMARK, 2)
    assert OVERLOAD_REMARK.startswith("[OVERLOAD]")
    assert dispatcher.in_flight == 2 and dispatcher.requests_overloaded == 1
    later.deferreds[0].callback(RemotingCommand(code=OK))  # a's request is done
    assert [c.opaque for c in a.sent()] == [1]
    assert dispatcher.in_flight == 1
    b.feed(request(opaque=3))  # the freed slot is usable from any connection
    assert b.sent() == [] and dispatcher.in_flight == 2
    b.lose()  # b's two requests are forgotten with it
    assert dispatcher.in_flight == 0
    later.deferreds[1].callback(RemotingCommand(code=OK))  # answers to a lost peer: dropped
    later.deferreds[2].errback(ValueError("late failure"))
    assert b.sent() == [] and dispatcher.in_flight == 0
    a.feed(request(opaque=2), request(opaque=3))
    assert a.sent() == [] and dispatcher.in_flight == 2  # both admitted again


def test_max_in_flight_per_connection() -> None:
    dispatcher = make_dispatcher(max_in_flight_per_connection=1)
    later = Later()
    dispatcher.register_processor(SEND, Recorder(later))
    a, b = side(dispatcher), side(dispatcher)
    a.feed(request(opaque=1), request(opaque=2))
    b.feed(request(opaque=1))
    assert [(c.opaque, c.remark) for c in a.sent()] == [(2, OVERLOAD_REMARK)]
    assert b.sent() == []
    assert a.protocol.processing_count == 1 and b.protocol.processing_count == 1
    later.deferreds[0].callback(RemotingCommand(code=OK))
    a.feed(request(opaque=3))
    assert [c.opaque for c in a.sent()] == [1]
    assert a.protocol.processing_count == 1
    a.lose()
    b.lose()
    assert dispatcher.in_flight == 0


# ===========================================================================
# Blocking processors
# ===========================================================================


class ThreadedClock(Clock):
    """A Clock whose callFromThread queues the call for the test to run on its thread."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: Queue[tuple[Callable[..., object], tuple[object, ...]]] = Queue()

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.from_threads.put((f, args))

    def run_one_from_thread(self) -> None:
        f, args = self.from_threads.get(timeout=10)
        f(*args)


@pytest.fixture
def threaded() -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(ThreadedClock(), idle_timeout=None, blocking_threads=2)
    yield dispatcher
    dispatcher.stop()


def test_blocking_processor_runs_in_the_pool_not_the_reactor_thread(
    threaded: Dispatcher,
) -> None:
    clock: ThreadedClock = threaded.reactor
    by_attribute = BlockingRecorder()
    by_registration = Recorder(raising(ValueError("slow failure")))
    inline = BlockingRecorder()
    threaded.register_processor(1, by_attribute)
    threaded.register_processor(2, by_registration, blocking=True)
    threaded.register_processor(3, inline, blocking=False)  # registration wins
    s = Side(threaded)
    s.feed(request(1, opaque=1), request(2, opaque=2))
    assert s.sent() == [] and threaded.in_flight == 2
    clock.run_one_from_thread()
    clock.run_one_from_thread()
    responses = sorted(s.sent(), key=lambda c: c.opaque)
    assert [(c.opaque, c.code) for c in responses] == [(1, OK), (2, ResponseCode.SYSTEM_ERROR)]
    assert "slow failure" in (responses[1].remark or "")
    main = threading.current_thread()
    assert by_attribute.threads[0] is not main and by_registration.threads[0] is not main
    s.feed(request(3, opaque=3))
    assert inline.threads == [main] and [c.opaque for c in s.sent()] == [3]
    assert threaded.in_flight == 0


def test_stopping_a_dispatcher_without_a_pool_is_harmless() -> None:
    dispatcher = make_dispatcher()
    dispatcher.stop()
    dispatcher.stop()


# ===========================================================================
# Idle connections
# ===========================================================================


def test_idle_connection_raises_the_idle_event_then_is_aborted(logged: list[Event]) -> None:
    events = Events()
    s = side(idle_timeout=120)
    s.dispatcher.register_listener(events)
    s.clock.advance(119.9)
    assert not s.transport.disconnecting
    s.clock.advance(0.1)
    assert s.transport.disconnected  # aborted
    assert events.names == ["idle"]
    assert events.events[0][3] is False  # the listener heard it before the close
    assert "Closing {peer}: idle for {seconds} s" in messages(logged)


def test_reads_and_writes_reset_the_idle_timeout() -> None:
    s = side(idle_timeout=120)
    s.clock.advance(100)
    s.feed(RemotingCommand.response_to(request(opaque=99), OK))  # a read, nothing written
    assert s.transport.value() == b""
    s.clock.advance(100)  # 200 s since connecting, 100 since the read
    assert not s.transport.disconnecting
    s.protocol.invoke_oneway(request())  # a write, nothing read
    s.clock.advance(119)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.transport.disconnected


def test_no_idle_timeout() -> None:
    s = side(idle_timeout=None)
    assert call_timers(s.clock) == []
    s.clock.advance(10_000)
    assert not s.transport.disconnecting


def test_connection_loss_cancels_the_idle_timer() -> None:
    s = side(idle_timeout=120)
    assert len(call_timers(s.clock)) == 1
    s.lose()
    assert call_timers(s.clock) == []


def test_idle_timeout_over_iosim_with_a_memory_reactor() -> None:
    clock = MemoryReactorClock()
    server = Dispatcher(clock, idle_timeout=30)
    server.register_processor(SEND, Recorder())
    p = pair(server, Dispatcher(clock, idle_timeout=None))
    clock.advance(29)
    p.client.invoke(request())
    p.pump.flush()
    clock.advance(29)
    assert p.server.is_connected
    clock.advance(1)
    p.pump.flush()  # the abort reaches both sides
    assert not p.server.is_connected and not p.client.is_connected


# ===========================================================================
# Channel events
# ===========================================================================


def test_listeners_hear_connect_and_close() -> None:
    events = Events()
    dispatcher = make_dispatcher()
    dispatcher.register_listener(events)
    s = side(dispatcher)
    assert events.events == [("connect", "10.0.0.2:50000", s.protocol)]
    assert dispatcher.connections == {s.protocol} and dispatcher.connections_made == 1
    assert s.protocol.remote_address == "10.0.0.2:50000"
    assert s.protocol.local_address == "10.0.0.1:10911"
    s.lose()
    assert events.names == ["connect", "close"]
    assert dispatcher.connections == set() and dispatcher.connections_closed == 1


def test_garbage_raises_the_exception_event_and_aborts(logged: list[Event]) -> None:
    events = Events()
    s = side()
    s.dispatcher.register_listener(events)
    s.protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    (event,) = events.events
    assert event[0] == "exception" and event[2] is s.protocol
    assert isinstance(event[3], WrongProtocol) and event[3].protocol == "HTTP"
    assert s.transport.disconnected
    assert any(e.get("error_type") == "WrongProtocol" for e in logged)


def test_a_raising_listener_is_logged_and_breaks_nothing(logged: list[Event]) -> None:
    events = Events()
    dispatcher = make_dispatcher(idle_timeout=60)
    dispatcher.register_listener(BrokenListener())
    dispatcher.register_listener(events)
    dispatcher.register_processor(SEND, Recorder())
    s = side(dispatcher)
    s.feed(request(opaque=1))
    assert [c.opaque for c in s.sent()] == [1]
    s.clock.advance(60)
    s.protocol.dataReceived(b"\x16\x03\x01\x00\xa5")
    s.lose()
    assert events.names == ["connect", "idle", "exception", "close"]
    assert failures(logged) == [
        f"listener bug in on_{name}" for name in ("connect", "idle", "exception", "close")
    ]
    assert dispatcher.connections == set()


# ===========================================================================
# Back-pressure
# ===========================================================================


def test_producer_is_registered_and_the_buffer_size_set() -> None:
    class Sized(Transport):
        bufferSize = 1  # noqa: N815  (the transport attribute Twisted reads)

    s = Side(make_dispatcher(write_high_water=4096), Sized())
    assert s.transport.producer is s.protocol and s.transport.streaming is True
    assert s.transport.bufferSize == 4096  # type: ignore[attr-defined]


def test_pause_stops_reading_and_resume_reads_again_writes_are_kept() -> None:
    s = side()
    s.dispatcher.register_processor(SEND, Recorder())
    transport: Transport = s.transport  # type: ignore[assignment]
    assert s.protocol.is_writable
    s.protocol.pauseProducing()  # as the transport does past its high-water mark
    s.protocol.pauseProducing()
    assert transport.producerState == "paused" and transport.pauses == 1
    assert not s.protocol.is_writable
    s.feed(request(opaque=1))  # read before the pause took effect: held until it drains
    s.protocol.invoke_oneway(request())
    assert [(c.opaque, c.is_response) for c in s.sent()] == [(1, False)]
    assert s.protocol.held_bytes > 0  # kept as bytes, not decoded yet
    s.protocol.resumeProducing()
    s.protocol.resumeProducing()
    assert [(c.opaque, c.is_response) for c in s.sent()] == [(1, True)]
    assert transport.producerState == "producing" and transport.resumes == 1
    assert s.protocol.is_writable
    s.protocol.stopProducing()  # connectionLost does the clean-up
    assert s.protocol.is_connected
    s.lose()
    s.protocol.resumeProducing()
    assert not s.protocol.is_writable


class Socket(StringTransport):
    """A TCP-like transport: a write buffer that pauses its producer past ``high_water``
    and resumes it when drained, and reads that wait while the transport is paused."""

    def __init__(self, high_water: int) -> None:
        super().__init__(hostAddress=SERVER, peerAddress=CLIENT)
        self.high_water = high_water
        self.producer_paused = False
        self.inbox: list[bytes] = []
        self.protocol: RemotingProtocol | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer and not self.producer_paused and len(self.value()) > self.high_water:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data

    def receive(self) -> None:
        """Deliver what the peer sent, one chunk at a time, while reading is not paused."""
        assert self.protocol is not None
        while self.inbox and self.producerState == "producing":
            self.protocol.dataReceived(self.inbox.pop(0))


def test_requests_sent_while_paused_are_all_answered_in_order_after_resume() -> None:
    server = make_dispatcher()
    server.register_processor(SEND, Recorder())
    socket = Socket(high_water=500)
    s = Side(server, socket)
    socket.protocol = s.protocol
    client = side()
    deferreds = [client.protocol.invoke(request(body=b"%03d" % i + b"." * 200)) for i in range(20)]
    socket.inbox = [encode_frame(c) for c in client.sent()]  # one chunk per request
    socket.receive()
    assert socket.producerState == "paused" and not s.protocol.is_writable
    assert len(socket.inbox) == 18  # 2 answers filled the buffer: reading stopped
    rounds = 0
    while socket.inbox or socket.value():
        client.protocol.dataReceived(socket.drain())  # the client reads: the buffer drains
        socket.receive()
        rounds += 1
    assert rounds > 5
    bodies = [result_of(d).body[:3] for d in deferreds]
    assert bodies == [b"%03d" % i for i in range(20)]
    assert client.dispatcher.late_responses == 0 and server.responses_sent == 20
    assert s.protocol.is_writable and socket.producerState == "producing"


# ===========================================================================
# TCP_NODELAY, repr
# ===========================================================================


def test_tcp_nodelay_is_requested() -> None:
    s = side()
    assert s.transport.no_delay is True  # type: ignore[attr-defined]


def test_tcp_nodelay_refused_or_absent_is_fine() -> None:
    class Unix(Transport):
        def setTcpNoDelay(self, enabled: bool) -> None:
            raise OSError("Operation not supported")

    for transport in (Unix(), StringTransport()):
        s = Side(make_dispatcher(), transport)
        assert s.protocol.is_connected and s.protocol.is_writable


def test_repr_shows_the_connection_and_its_tables() -> None:
    s = side()
    s.protocol.invoke(request())
    text = repr(s.protocol)
    assert s.protocol.channel_id in text and "10.0.0.2:50000" in text
    assert "pending=1" in text and "processing=0" in text


@pytest.mark.parametrize("forced", [SerializeType.JSON, SerializeType.ROCKETMQ])
def test_dispatcher_serialize_type_is_forced_on_requests_sent(forced: SerializeType) -> None:
    other = SerializeType.ROCKETMQ if forced == SerializeType.JSON else SerializeType.JSON
    side = Side(Dispatcher(Clock(), serialize_type=forced))
    side.protocol.invoke(RemotingCommand.request(10, serialize_type=other))
    side.protocol.invoke_oneway(RemotingCommand.request(11, serialize_type=other))
    assert [c.serialize_type for c in side.sent()] == [forced, forced]


def test_requests_keep_their_own_serialize_type_by_default() -> None:
    side = Side(Dispatcher(Clock()))
    side.protocol.invoke(RemotingCommand.request(10, serialize_type=SerializeType.ROCKETMQ))
    assert [c.serialize_type for c in side.sent()] == [SerializeType.ROCKETMQ]


def test_processor_without_reject_request_is_accepted() -> None:
    @implementer(IRequestProcessor)
    class Bare:  # declares the interface but leaves out reject_request
        def process_request(self, context: object, request: RemotingCommand) -> RemotingCommand:
            return RemotingCommand.response_to(request, ResponseCode.SUCCESS)

    dispatcher = Dispatcher(Clock())
    dispatcher.register_default_processor(Bare())
    side = Side(dispatcher)
    side.feed(RemotingCommand.request(10, opaque=5))
    assert [(c.opaque, c.code) for c in side.sent()] == [(5, 0)]


def test_oneway_permits_are_held_while_the_write_buffer_is_full() -> None:
    dispatcher = Dispatcher(Clock(), oneway_permits=2, idle_timeout=None)
    s = Side(dispatcher)
    s.protocol.pauseProducing()  # the transport says its buffer passed the high-water mark
    first = s.protocol.invoke_oneway(RemotingCommand.request(15))
    second = s.protocol.invoke_oneway(RemotingCommand.request(15))
    assert result_of(first) is None and result_of(second) is None  # written (buffered)
    assert dispatcher.oneway_permits.available == 0
    third = s.protocol.invoke_oneway(RemotingCommand.request(15), timeout=1.0)
    assert not third.called  # waits for the buffer to drain
    s.protocol.resumeProducing()
    assert result_of(third) is None
    assert len(s.sent()) == 3
    assert dispatcher.oneway_permits.available == 2


def test_held_oneway_permits_are_freed_when_the_connection_is_lost() -> None:
    dispatcher = Dispatcher(Clock(), oneway_permits=1, idle_timeout=None)
    s = Side(dispatcher)
    s.protocol.pauseProducing()
    s.protocol.invoke_oneway(RemotingCommand.request(15))
    assert dispatcher.oneway_permits.available == 0
    s.lose()
    assert dispatcher.oneway_permits.available == 1


def test_send_command_resets_the_idle_timer() -> None:
    clock = Clock()
    s = Side(Dispatcher(clock, idle_timeout=10))
    clock.advance(9)
    s.protocol.send_command(RemotingCommand.request(1))
    clock.advance(9)
    assert s.protocol.is_connected and not s.transport.disconnecting
