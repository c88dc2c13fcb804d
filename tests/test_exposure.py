"""Bounded work per peer (issue 14, defects 1-5 and 10) on in-memory transports and a fake
clock: held commands while the write buffer is full, the unsent-bytes cap, clipped and
rate-limited log lines, frame deadlines, the partial-frame budget, per-address limits and
the open-file warning. The same attacks on real sockets: tests/attacks/."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode
from rmqtwist._logsafe import LogLimiter, clip, clip_repr
from rmqtwist.budgets import BufferBudget
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.dispatcher import RequestContext
from rmqtwist.interfaces import IRequestProcessor
from rmqtwist.protocol import RemotingProtocol
from rmqtwist.server import Refused, RemotingServer, RemotingServerFactory

Event = dict[str, Any]
SEND = 10


class Socket(StringTransport):
    """A TCP-like transport: pauses its producer when the unread output passes
    ``high_water``, resumes it on :meth:`drain`; records aborts."""

    def __init__(self, host: str = "10.0.0.2", port: int = 50000, high_water: int = 10**9):
        super().__init__(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 10911),
            peerAddress=IPv4Address("TCP", host, port),
        )
        self.high_water = high_water
        self.paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer and not self.paused and len(self.value()) > self.high_water:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> list[RemotingCommand]:
        commands = FrameDecoder().feed(self.value())
        self.clear()
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()
        return commands

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


@implementer(IRequestProcessor)
class Processor:
    """A processor calling ``function(context, request)``."""

    def __init__(self, function: Callable[[RequestContext, RemotingCommand], Any]) -> None:
        self.function = function

    def process_request(self, context: RequestContext, request: RemotingCommand) -> Any:
        return self.function(context, request)


def echo_function(context: RequestContext, request: RemotingCommand) -> RemotingCommand:
    return RemotingCommand.response_to(request, ResponseCode.SUCCESS, body=request.body)


echo = Processor(echo_function)


def factory(**options: Any) -> RemotingServerFactory:
    options.setdefault("reactor", Clock())
    options.setdefault("idle_timeout", None)
    made = RemotingServerFactory(**options)
    made.register_default_processor(echo)
    return made


def connect(made: RemotingServerFactory, transport: Socket | None = None) -> tuple[Any, Socket]:
    transport = transport if transport is not None else Socket()
    protocol = made.buildProtocol(transport.getPeer())
    assert protocol is not None
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: Any, transport: Socket) -> None:
    if transport.disconnecting and protocol.connected:
        protocol.connectionLost(None)


@pytest.fixture
def logged() -> Iterator[list[Event]]:
    events: list[Event] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events: list[Event], words: str) -> list[Event]:
    return [e for e in events if words in str(e.get("log_format", ""))]


def frames(count: int, body: bytes = b"") -> bytes:
    return b"".join(
        encode_frame(RemotingCommand(code=SEND, opaque=i, body=body)) for i in range(count)
    )


# -- helpers ----------------------------------------------------------------------------


def test_clip_keeps_short_text_and_says_how_long_long_text_was() -> None:
    assert clip("abc") == "abc"
    assert clip("x" * 1000, 10) == "xxxxxxxxxx...[1000 chars]"
    assert len(clip_repr(b"y" * 10**6)) < 400


def test_log_limiter_lets_one_through_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    limiter = LogLimiter(clock, 10.0, max_keys=2)
    assert limiter.allow("a") == 0
    assert [limiter.allow("a") for _ in range(5)] == [None] * 5
    assert limiter.allow("b") == 0
    clock.advance(10)
    assert limiter.allow("a") == 5
    limiter.allow("c")  # a third key: the oldest is forgotten
    assert len(limiter._keys) == 2


# -- defect 2: response amplification -----------------------------------------------------


def test_a_read_is_handled_only_while_the_connection_is_writable() -> None:
    made = factory()
    protocol, transport = connect(made, Socket(high_water=2000))
    protocol.dataReceived(frames(3000))  # one read, 3000 tiny requests
    answered = len(FrameDecoder().feed(transport.value()))
    assert answered < 100  # stopped as soon as the write buffer filled
    assert protocol.held_commands < 64  # the rest of a batch decoded; the rest is bytes
    assert protocol.held_bytes > (3000 - answered - 64) * 25
    assert transport.producerState == "paused"  # and reading stopped
    opaques: list[int] = []
    rounds = 0
    while protocol.held_commands or protocol.held_bytes or transport.value():
        opaques += [c.opaque for c in transport.drain()]
        rounds += 1
    assert opaques == list(range(3000)) and rounds > 10  # all answered, in order
    assert transport.producerState == "producing"


def test_a_decode_error_after_held_commands_still_closes_the_connection() -> None:
    made = factory()
    protocol, transport = connect(made, Socket(high_water=100))
    protocol.dataReceived(frames(50) + struct.pack(">ii", 2, 0))
    assert transport.aborted and protocol.held_commands == 0


def test_a_peer_that_never_reads_is_closed_past_max_unsent_bytes(logged: list[Event]) -> None:
    made = factory(max_unsent_bytes=10_000)
    later: list[RequestContext] = []
    made.register_default_processor(Processor(lambda context, request: later.append(context)))
    protocol, transport = connect(made, Socket(high_water=1000))
    protocol.dataReceived(frames(100))
    for context in later[:5]:  # answers written while the buffer is full still count
        context.respond(RemotingCommand.response_to(context.request, 0, body=b"z" * 1500))
    assert not transport.aborted
    for context in later[5:20]:
        context.respond(RemotingCommand.response_to(context.request, 0, body=b"z" * 1500))
    assert transport.aborted
    assert len(transport.value()) < 1000 + 10_000 + 2000
    (event,) = lines(logged, "does not read what is sent to it")
    assert event["limit"] == 10_000


def test_the_unsent_count_starts_again_when_the_buffer_drains() -> None:
    made = factory(max_unsent_bytes=3000)
    later: list[RequestContext] = []
    made.register_default_processor(Processor(lambda context, request: later.append(context)))
    protocol, transport = connect(made, Socket(high_water=1000))
    protocol.dataReceived(frames(20))
    for round_ in range(4):
        for context in later[round_ * 4 : round_ * 4 + 4]:
            context.respond(RemotingCommand.response_to(context.request, 0, body=b"z" * 600))
        transport.drain()
    assert not transport.aborted


# -- defect 3: log amplification --------------------------------------------------------


def test_responses_to_nothing_log_one_clipped_line_per_peer_and_interval(
    logged: list[Event],
) -> None:
    made = factory()
    clock = made.dispatcher.clock
    protocol, _ = connect(made)
    late = RemotingCommand(code=0, opaque=99, flag=1, remark="r" * 100_000)
    protocol.dataReceived(encode_frame(late) * 200)
    clock.advance(0)  # past 128 in a read, the rest waits for the next reactor turn
    (event,) = lines(logged, "matches no pending request")
    assert len(event["response"]) < 500 and event["dropped"] == 0
    clock.advance(10)  # type: ignore[attr-defined]
    protocol.dataReceived(encode_frame(late))
    assert lines(logged, "matches no pending request")[-1]["dropped"] == 199
    assert made.dispatcher.late_responses == 201


def test_an_unencodable_answer_logs_a_clipped_line_once_per_interval(
    logged: list[Event],
) -> None:
    made = factory()

    def bad(context: RequestContext, request: RemotingCommand) -> RemotingCommand:
        return RemotingCommand.response_to(request, 0).replace(code=1 << 40)

    made.register_default_processor(Processor(bad))
    protocol, transport = connect(made)
    big = RemotingCommand(code=SEND, ext_fields={"k": "v" * 100_000})
    protocol.dataReceived(encode_frame(big) * 20)
    answers = FrameDecoder().feed(transport.value())
    assert len(answers) == 20 and {a.code for a in answers} == {ResponseCode.SYSTEM_ERROR}
    events = lines(logged, "Cannot send the response")
    assert len(events) == 1 and len(events[0]["request"]) < 500


def test_invalid_frames_from_one_host_are_logged_once_per_interval(logged: list[Event]) -> None:
    made = factory()
    for port in range(100):
        protocol, transport = connect(made, Socket(port=40000 + port))
        protocol.dataReceived(b'\x00\x00\x00\x20\x00\x00\x00\x18{"code":1,"language":[' + b"1" * 8)
        assert transport.aborted
    (event,) = lines(logged, "sent an invalid frame")
    assert event["dropped"] == 0
    other, transport = connect(made, Socket(host="10.9.9.9"))
    other.dataReceived(struct.pack(">ii", 2, 0))
    assert len(lines(logged, "sent an invalid frame")) == 2  # another peer: its own line


# -- defect 4: slow peers ----------------------------------------------------------------


def test_a_frame_must_arrive_whole_within_the_frame_timeout(logged: list[Event]) -> None:
    made = factory(frame_timeout=10.0, first_frame_timeout=None, idle_timeout=120.0)
    clock: Clock = made.dispatcher.clock  # type: ignore[assignment]
    protocol, transport = connect(made)
    frame = encode_frame(RemotingCommand(code=SEND, body=b"x" * 100))
    protocol.dataReceived(frame[:1])
    for byte in frame[1:3]:  # a byte every 4 s keeps the idle timer happy, not this one
        clock.advance(4)
        protocol.dataReceived(bytes([byte]))
    assert not transport.aborted
    clock.advance(2.1)
    assert transport.aborted
    assert lines(logged, "did not arrive whole")[0]["buffered"] == 3


def test_whole_frames_reset_the_frame_deadline() -> None:
    made = factory(frame_timeout=10.0, first_frame_timeout=None)
    clock: Clock = made.dispatcher.clock  # type: ignore[assignment]
    protocol, transport = connect(made)
    frame = encode_frame(RemotingCommand(code=SEND))
    for _ in range(10):
        protocol.dataReceived(frame[:5])
        clock.advance(6)
        protocol.dataReceived(frame[5:])  # done: no deadline until the next frame begins
        clock.advance(20)
    assert not transport.aborted
    protocol.dataReceived(frame + frame[:5])  # one done, the next begun in the same read
    clock.advance(9)
    assert not transport.aborted
    clock.advance(1.1)
    assert transport.aborted


def test_a_silent_connection_is_closed_after_the_first_frame_timeout(logged: list[Event]) -> None:
    made = factory(first_frame_timeout=5.0)
    clock: Clock = made.dispatcher.clock  # type: ignore[assignment]
    silent, silent_transport = connect(made, Socket(port=1))
    talker, talker_transport = connect(made, Socket(port=2))
    talker.dataReceived(frames(1))
    clock.advance(5.1)
    assert silent_transport.aborted and not talker_transport.aborted
    assert lines(logged, "sent nothing within")
    lose(silent, silent_transport)
    clock.advance(100)
    assert not talker_transport.aborted


def test_the_deadlines_are_off_by_default_on_client_connections() -> None:
    protocol = RemotingProtocol()
    assert (protocol.frame_timeout, protocol.first_frame_timeout) == (None, None)
    assert protocol.max_unsent_bytes is None and protocol.buffer_budget is None


def test_connections_per_address_are_limited_when_asked(logged: list[Event]) -> None:
    made = factory(max_connections_per_address=2)
    assert isinstance(connect(made, Socket(port=1))[0], RemotingProtocol)
    assert isinstance(connect(made, Socket(port=2))[0], RemotingProtocol)
    assert isinstance(made.buildProtocol(IPv4Address("TCP", "10.0.0.2", 3)), Refused)
    assert isinstance(made.buildProtocol(IPv4Address("TCP", "10.0.0.3", 3)), RemotingProtocol)
    assert "too many connections from 10.0.0.2" in lines(logged, "Refused")[0]["why"]


# -- defect 5: the partial-frame budget --------------------------------------------------


def test_past_the_buffer_budget_the_connections_holding_most_are_closed(
    logged: list[Event],
) -> None:
    made = factory(max_buffered_bytes=100_000)
    budget = made.buffer_budget
    assert budget is not None
    big = encode_frame(RemotingCommand(code=SEND, body=b"x" * 200_000))
    small, small_transport = connect(made, Socket(port=1))
    small.dataReceived(big[:10_000])
    large, large_transport = connect(made, Socket(port=2))
    large.dataReceived(big[:60_000])
    assert budget.total == 70_000 and not large_transport.aborted
    middle, middle_transport = connect(made, Socket(port=3))
    middle.dataReceived(big[:40_000])  # 110,000: over
    assert large_transport.aborted
    assert not small_transport.aborted and not middle_transport.aborted
    assert budget.total == 50_000 and budget.closed == 1
    (event,) = lines(logged, "unfinished frames")
    assert event["held"] == 60_000
    lose(large, large_transport)
    middle.dataReceived(big[40_000:])  # completed: it holds nothing now
    assert budget.total == 10_000
    lose(small, small_transport)
    small.connectionLost(None)
    assert budget.total == 0


def test_a_budget_below_one_frame_is_warned_about(logged: list[Event]) -> None:
    factory(max_frame_length=1000, max_buffered_bytes=999)
    assert lines(logged, "is below max_frame_length")
    logged.clear()
    factory(max_frame_length=1000, max_buffered_bytes=1000)
    assert not lines(logged, "is below max_frame_length")


def test_buffer_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BufferBudget(0, Clock())


# -- defect 10: the open-file limit ------------------------------------------------------


def test_an_open_file_limit_below_max_connections_is_warned_about_at_start(
    logged: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, 256))
    server = RemotingServer(factory(max_connections=1000))
    server.startService()
    (event,) = lines(logged, "open-file limit")
    assert event["limit"] == 256 and event["connections"] == 1000
    server.stopService()
    logged.clear()
    monkeypatch.setattr(resource, "getrlimit", lambda which: (65536, 65536))
    server = RemotingServer(factory(max_connections=1000))
    server.startService()
    assert not lines(logged, "open-file limit")
    server.stopService()


def test_refusals_are_logged_once_per_interval_with_a_count(logged: list[Event]) -> None:
    made = factory(max_connections=1)
    connect(made)
    for port in range(50):
        assert isinstance(made.buildProtocol(IPv4Address("TCP", "10.0.0.5", port)), Refused)
    assert len(lines(logged, "Refused")) == 1
    made.dispatcher.clock.advance(10)  # type: ignore[attr-defined]
    made.buildProtocol(IPv4Address("TCP", "10.0.0.5", 1))
    assert lines(logged, "Refused")[-1]["refused"] == 50
    assert made.refused_connections == 51


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="frame_timeout"):
        factory(frame_timeout=0)
    with pytest.raises(ValueError, match="max_connections_per_address"):
        factory(max_connections_per_address=0)


def test_twist_options_reach_the_factory_and_zero_turns_them_off() -> None:
    from rmqtwist.tap import Options, _limits

    options = Options()
    options.parseOptions(
        ["--processor", "echo", "--frame-timeout", "3", "--first-frame-timeout", "0",
         "--max-header-length", "4096", "--max-ext-fields", "64", "--max-unsent-bytes", "0",
         "--max-buffered-bytes", "1000000", "--max-connections-per-address", "5"]
    )  # fmt: skip
    limits = _limits(options)
    assert limits["frame_timeout"] == 3.0 and limits["first_frame_timeout"] is None
    assert (limits["max_header_length"], limits["max_ext_fields"]) == (4096, 64)
    assert limits["max_unsent_bytes"] is None and limits["max_buffered_bytes"] == 1_000_000
    assert limits["max_connections_per_address"] == 5
    made = RemotingServerFactory(reactor=Clock(), **limits)
    assert made.buffer_budget is not None and made.buffer_budget.limit == 1_000_000
    options = Options()
    options.parseOptions(["--max-header-length", "0", "--max-ext-fields", "0"])
    assert _limits(options)["max_header_length"] is None
    assert _limits(options)["max_ext_fields"] is None
    defaults = _limits(Options())
    assert defaults["frame_timeout"] == 10.0 and defaults["max_buffered_bytes"] == 256 << 20


def test_no_frame_deadline_runs_while_reading_is_paused() -> None:
    made = factory(frame_timeout=10.0, first_frame_timeout=None)
    clock: Clock = made.dispatcher.clock  # type: ignore[assignment]
    protocol, transport = connect(made, Socket(high_water=500))
    frame = encode_frame(RemotingCommand(code=SEND, body=b"x" * 600))
    protocol.dataReceived(frame + frame[:10])  # the answer fills the buffer; a frame begun
    assert transport.producerState == "paused" and protocol.held_bytes == 10
    clock.advance(60)  # we do not read: the peer cannot finish it
    assert not transport.aborted
    transport.drain()  # reading again: the deadline starts now
    clock.advance(9)
    assert not transport.aborted
    clock.advance(1.1)
    assert transport.aborted


def test_the_logging_hook_clips_what_it_logs(logged: list[Event]) -> None:
    from rmqtwist.processors import LoggingHook

    request = RemotingCommand(code=SEND, remark="r" * 100_000)
    hook = LoggingHook()
    hook.before_request("10.0.0.2:1", request)
    hook.after_response("10.0.0.2:1", request, RemotingCommand.response_to(request, 0, "x" * 10**5))
    assert [len(e["request" if "request" in e else "response"]) < 500 for e in logged] == [True] * 2


def test_a_flooding_connection_yields_its_turn_to_the_others() -> None:
    made = factory(max_commands_per_turn=128)
    clock: Clock = made.dispatcher.clock  # type: ignore[assignment]
    flood, flood_transport = connect(made, Socket(port=1))
    polite, polite_transport = connect(made, Socket(port=2))
    flood.dataReceived(frames(1000))  # one read of 1000 requests
    answered = len(FrameDecoder().feed(flood_transport.value()))
    assert 128 <= answered <= 192  # its share, then the rest waits
    assert flood_transport.producerState == "paused"
    polite.dataReceived(frames(1))
    assert len(FrameDecoder().feed(polite_transport.value())) == 1  # served at once
    clock.advance(0)  # (Clock runs the turns scheduled meanwhile too; a reactor would not)
    assert not (flood.held_bytes or flood.held_commands)
    assert [c.opaque for c in FrameDecoder().feed(flood_transport.value())] == list(range(1000))
    assert flood_transport.producerState == "producing"


def test_a_turn_ending_while_the_buffer_is_full_leaves_the_rest_to_the_drain() -> None:
    made = factory(max_commands_per_turn=128)
    clock: Clock = made.dispatcher.clock  # type: ignore[assignment]
    protocol, transport = connect(made, Socket(high_water=20_000))
    protocol.dataReceived(frames(1000))  # the turn ends before the buffer fills
    clock.advance(0)  # the next turn fills it
    opaques: list[int] = []
    for _ in range(200):
        opaques += [c.opaque for c in transport.drain()]
        clock.advance(0)
        if not (protocol.held_bytes or protocol.held_commands or transport.value()):
            break
    assert opaques == list(range(1000))
    assert transport.producerState == "producing" and not transport.aborted
