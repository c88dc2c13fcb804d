"""Interoperability with ali-ons 3.12.0, the Node.js RocketMQ client nobody here wrote.

An echo server of ours (rmqtwist.framing) listens on 127.0.0.1; ``node/ons_echo_client.js``
builds requests with ali-ons' own ``RemotingCommand`` (lib/protocol/command/
remoting_command.js), sends them over ali-ons' own ``Channel`` (lib/channel.js, on
tcp-base) and prints what ali-ons decoded from our replies, one JSON line each.

What ali-ons does on the wire (read from its sources, checked here):

- every header is JSON; ``language`` is always "JAVA" and ``version`` always 121;
- ``extFields`` carry the custom header's values as JSON numbers and booleans, not strings,
  and leave out null/undefined ones; ``extFields`` is ``{}`` when there are none;
- opaques come from a per-process counter that starts at 1;
- a reply is matched by its opaque and only if flag bit 0 is set;
- its decoder reads the header length without masking off the serialize-type byte;
- ``Channel.invokeOneway`` never sets the oneway flag bit.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
from collections.abc import Mapping
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

from rmqtwist import LanguageCode, RemotingCommand, ResponseCode, SerializeType
from rmqtwist.framing import LengthPrefixed, LengthPrefixedFactory

pytestmark = pytest.mark.interop

NODE_RUN_TIMEOUT = 60.0  # seconds; a healthy run takes well under one
ALI_ONS_VERSION = 121  # MQVersion V3_4_9, hard-coded in ali-ons' RemotingCommand
CODE_SEND_MESSAGE = 10
CODE_GET_ROUTEINFO_BY_TOPIC = 105


# ---------------------------------------------------------------------------
# Our side: an echo server that records what it received
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ServerState:
    #: every command received, in order, with the peer port of its connection
    received: list[tuple[int, RemotingCommand]] = dataclasses.field(default_factory=list)
    #: when set: hold replies until this many requests arrived, then answer them all in
    #: reverse order (proves the client matches replies by opaque, not by order)
    hold_until: int | None = None
    #: never answer (to check that the node script fails in bounded time)
    silent: bool = False
    held: list[tuple[LengthPrefixed, RemotingCommand]] = dataclasses.field(default_factory=list)

    @property
    def commands(self) -> list[RemotingCommand]:
        return [command for _, command in self.received]


def echo_reply(request: RemotingCommand) -> RemotingCommand:
    """Echo remark, ext fields and body; the code is ext ``replyCode`` or SUCCESS."""
    code = int(request.ext("replyCode", str(int(ResponseCode.SUCCESS))))
    return RemotingCommand.response_to(
        request, code, remark=request.remark, ext_fields=request.ext_fields, body=request.body
    )


class RecordingEcho(LengthPrefixed):
    def command_received(self, command: RemotingCommand) -> None:
        state: ServerState = self.factory.state
        state.received.append((self.transport.getPeer().port, command))
        if state.silent:
            return
        if state.hold_until is None:
            self.send_command(echo_reply(command))
            return
        state.held.append((self, command))
        if len(state.held) >= state.hold_until:
            held, state.held = state.held, []
            for proto, request in reversed(held):
                proto.send_command(echo_reply(request))


def listen(state: ServerState) -> Any:
    factory = LengthPrefixedFactory.forProtocol(RecordingEcho)
    factory.state = state
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


# ---------------------------------------------------------------------------
# Their side: ali-ons in a node subprocess
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class NodeRun:
    status: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool

    @property
    def lines(self) -> list[dict[str, Any]]:
        # split on "\n" only: str.splitlines() would also split inside a U+2028 in a value
        text = self.stdout.decode("utf-8")
        return [json.loads(line) for line in text.split("\n") if line]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["kind"] == kind]

    def describe(self) -> str:
        return (
            f"node exit status {self.status}, signal {self.signal}, timed out {self.timed_out}\n"
            f"--- stderr ---\n{self.stderr.decode('utf-8', 'replace')}\n"
            f"--- stdout (first 4000 chars) ---\n{self.stdout.decode('utf-8', 'replace')[:4000]}"
        )


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        # fires with the exception that ended the process (ProcessDone/ProcessTerminated)
        self.ended: defer.Deferred[BaseException] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)  # not the Failure: that would errback


async def run_ons(ali_ons: Any, port: Any, spec: Mapping[str, Any]) -> NodeRun:
    """Run ons_echo_client.js against ``port`` without blocking the reactor."""
    collect = _Collect(json.dumps(spec).encode("utf-8"))
    address = port.getHost()
    process = reactor.spawnProcess(
        collect,
        ali_ons.node,
        [ali_ons.node, str(ali_ons.script), address.host, str(address.port), "-"],
        env=dict(os.environ),
        path=str(ali_ons.directory),
    )
    timed_out = []

    def kill() -> None:
        timed_out.append(True)
        process.signalProcess("KILL")

    killer = reactor.callLater(NODE_RUN_TIMEOUT, kill)
    try:
        ended = await collect.ended
    finally:
        if killer.active():
            killer.cancel()
    return NodeRun(
        status=getattr(ended, "exitCode", None),
        signal=getattr(ended, "signal", None),
        stdout=b"".join(collect.out),
        stderr=b"".join(collect.err),
        timed_out=bool(timed_out),
    )


def ok(run: NodeRun) -> NodeRun:
    assert run.status == 0 and not run.timed_out, run.describe()
    return run


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def request(
    code: int,
    custom_header: Mapping[str, Any] | None = None,
    body: bytes | None = None,
    **more: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"code": code}
    if custom_header is not None:
        spec["customHeader"] = dict(custom_header)
    if body is not None:
        spec["body"] = {"base64": b64(body)}
    spec.update(more)
    return spec


def check_json_reply(line: Mapping[str, Any]) -> None:
    """The frame ali-ons decoded is one we wrote as JSON, as ali-ons requires."""
    wire = line["wire"]
    assert wire is not None, line
    assert wire["serializeTypeByte"] == SerializeType.JSON
    assert wire["headerLengthField"] == wire["headerLength"]  # ali-ons reads it unmasked
    header = wire["header"]
    assert header is not None, "the reply header is not JSON"
    assert header["serializeTypeCurrentRPC"] == "JSON"
    assert header["flag"] == 1
    assert isinstance(header["language"], str)
    ext = header.get("extFields")
    assert ext is None or all(isinstance(value, str) for value in ext.values()), ext
    # as ali-ons' RemotingCommand saw it
    assert line["flag"] == 1
    assert line["isResponseType"] is True
    assert line["isOnewayRPC"] is False
    assert line["type"] == "RESPONSE_COMMAND"
    # ali-ons' language/version getters are constants: it drops the decoded ones
    assert (line["language"], line["version"]) == ("JAVA", ALI_ONS_VERSION)


def check_seen_as_ali_ons(command: RemotingCommand) -> None:
    assert command.language == LanguageCode.JAVA == 0
    assert command.version == ALI_ONS_VERSION
    assert command.serialize_type == SerializeType.JSON
    assert command.flag == 0
    assert command.ext_fields is not None  # ali-ons always sends "extFields", maybe {}
    assert all(isinstance(value, str) for value in command.ext_fields.values())


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

UNICODE = "héllo ☃ 𝄞 中文 ünïcödé"
NASTY_REMARK = 'quote " backslash \\ newline \n tab \t ctl \x01 del \x7f ls \u2028 ' + UNICODE
RNG_SEED = 20240611


@pytest_twisted.ensureDeferred
async def test_requests_round_trip(ali_ons: Any) -> None:
    rng = random.Random(RNG_SEED)
    big = rng.randbytes(100 * 1024)
    every_byte = bytes(range(256)) * 4
    header = {
        "topic": "TopicTest",
        "queueId": 4,
        "d": 4,
        "k": False,
        "t": True,
        "neg": -7,
        "zero": 0,
        "maxSafe": 9007199254740991,
        "ratio": 1.5,
        "u": UNICODE,
        "empty": "",
        "skipped": None,  # ali-ons leaves null values out of extFields
    }
    as_java = {
        "topic": "TopicTest",
        "queueId": "4",
        "d": "4",
        "k": "false",
        "t": "true",
        "neg": "-7",
        "zero": "0",
        "maxSafe": "9007199254740991",
        "ratio": "1.5",
        "u": UNICODE,
        "empty": "",
    }
    requests = [
        request(CODE_GET_ROUTEINFO_BY_TOPIC, header, UNICODE.encode("utf-8"), remark=UNICODE),
        request(CODE_SEND_MESSAGE),  # no header, no body, no remark
        request(34, {"consumerGroup": "G", "commitOffset": 123456789012}, big),
        request(36, {"replyCode": 1, "why": "error path"}, every_byte, remark=NASTY_REMARK),
        request(38, {"replyCode": 17}, b"\x00", remark=""),
    ]
    state = ServerState()
    port = listen(state)
    try:
        run = ok(await run_ons(ali_ons, port, {"mode": "sequential", "requests": requests}))
    finally:
        await port.stopListening()

    sent = run.kind("sent")
    responses = run.kind("response")
    assert run.kind("stray") == []
    assert {line["onsVersion"] for line in sent} == {"3.12.0"}
    # ali-ons' opaques: a per-process counter starting at 1
    assert [line["opaque"] for line in sent] == [1, 2, 3, 4, 5]
    assert [line["flag"] for line in sent] == [0] * 5
    assert [line["index"] for line in responses] == [0, 1, 2, 3, 4]
    for line in responses:
        check_json_reply(line)
        assert line["opaque"] == line["sent"]["opaque"]

    r0, r1, r2, r3, r4 = responses
    assert r0["code"] == ResponseCode.SUCCESS
    assert r0["remark"] == UNICODE
    assert r0["extFields"] == as_java
    assert r0["bodyPresent"] is True
    assert base64.b64decode(r0["body"]) == UNICODE.encode("utf-8")
    # ali-ons turns an absent remark into undefined and an absent body into undefined
    assert r1["code"] == ResponseCode.SUCCESS
    assert r1["remark"] is None
    assert r1["wire"]["header"].get("remark") is None
    assert r1["extFields"] == {}
    assert r1["bodyPresent"] is False and r1["bodyLength"] == 0
    assert r2["extFields"] == {"consumerGroup": "G", "commitOffset": "123456789012"}
    assert r2["bodyLength"] == len(big)
    assert base64.b64decode(r2["body"]) == big
    assert r3["code"] == ResponseCode.SYSTEM_ERROR
    assert r3["remark"] == NASTY_REMARK
    assert r3["extFields"] == {"replyCode": "1", "why": "error path"}
    assert base64.b64decode(r3["body"]) == every_byte
    assert r4["code"] == 17
    assert r4["remark"] == ""
    assert base64.b64decode(r4["body"]) == b"\x00"

    # what our server saw
    seen = state.commands
    assert len(seen) == 5
    assert len({peer for peer, _ in state.received}) == 1  # one ali-ons Channel, one socket
    for command, line in zip(seen, sent, strict=True):
        check_seen_as_ali_ons(command)
        assert command.opaque == line["opaque"]
        assert command.code == line["code"]
    s0, s1, s2, s3, s4 = seen
    assert dict(s0.ext_fields or {}) == as_java
    assert s0.remark == UNICODE
    assert s0.body == UNICODE.encode("utf-8")
    assert dict(s1.ext_fields or {}) == {}
    assert s1.remark is None
    assert s1.body == b""
    assert s2.ext_fields == {"consumerGroup": "G", "commitOffset": "123456789012"}
    assert s2.body == big
    assert s3.ext("replyCode") == "1"
    assert s3.remark == NASTY_REMARK
    assert s3.body == every_byte
    assert s4.remark == ""
    assert s4.body == b"\x00"


@pytest_twisted.ensureDeferred
async def test_body_beyond_ali_ons_encode_buffer(ali_ons: Any) -> None:
    """ali-ons encodes into a shared 1 MiB ByteBuffer that grows; bodies past it and a
    small one after it must still be byte-exact both ways."""
    rng = random.Random(RNG_SEED + 1)
    huge = rng.randbytes(1536 * 1024 + 7)
    small = b"after the big one"
    state = ServerState()
    port = listen(state)
    try:
        run = ok(
            await run_ons(
                ali_ons,
                port,
                {"requests": [request(310, {"n": 1}, huge), request(310, {"n": 2}, small)]},
            )
        )
    finally:
        await port.stopListening()
    first, second = run.kind("response")
    for line in (first, second):
        check_json_reply(line)
    assert (first["opaque"], second["opaque"]) == (1, 2)
    assert base64.b64decode(first["body"]) == huge
    assert base64.b64decode(second["body"]) == small
    assert [c.body for c in state.commands] == [huge, small]
    assert [dict(c.ext_fields or {}) for c in state.commands] == [{"n": "1"}, {"n": "2"}]


@pytest_twisted.ensureDeferred
async def test_many_requests_in_flight_on_one_channel(ali_ons: Any) -> None:
    """All invokes are written before any reply comes; the server answers them in reverse
    order; ali-ons must match every reply to its own request by opaque."""
    count = 40
    rng = random.Random(RNG_SEED + 2)
    bodies = [rng.randbytes(rng.randrange(0, 4096)) + bytes([i]) for i in range(count)]
    requests = [
        request(
            11 + i % 5,
            {"i": i, "even": i % 2 == 0, "tag": f"t{i} ☃"},
            bodies[i],
            remark=f"request {i}",
        )
        for i in range(count)
    ]
    state = ServerState(hold_until=count)
    port = listen(state)
    try:
        run = ok(await run_ons(ali_ons, port, {"mode": "concurrent", "requests": requests}))
    finally:
        await port.stopListening()

    sent = {line["index"]: line for line in run.kind("sent")}
    responses = run.kind("response")
    assert run.kind("stray") == []
    assert sorted(line["opaque"] for line in sent.values()) == list(range(1, count + 1))
    assert len(responses) == count
    # replies arrived in reverse order of sending
    assert [line["index"] for line in responses] == list(range(count - 1, -1, -1))
    for line in responses:
        i = line["index"]
        check_json_reply(line)
        assert line["opaque"] == line["sent"]["opaque"] == sent[i]["opaque"]
        assert line["code"] == ResponseCode.SUCCESS
        assert line["remark"] == f"request {i}"
        assert line["extFields"] == {
            "i": str(i),
            "even": "true" if i % 2 == 0 else "false",
            "tag": f"t{i} ☃",
        }
        assert base64.b64decode(line["body"]) == bodies[i]

    seen = state.commands
    assert len(seen) == count
    assert len({peer for peer, _ in state.received}) == 1
    by_opaque = {command.opaque: command for command in seen}
    for i, line in sent.items():
        command = by_opaque[line["opaque"]]
        check_seen_as_ali_ons(command)
        assert command.ext("i") == str(i)
        assert command.body == bodies[i]


@pytest_twisted.ensureDeferred
async def test_invoke_oneway_does_not_set_the_oneway_flag(ali_ons: Any) -> None:
    """ali-ons' Channel.invokeOneway sends flag 0, so a correct server answers it; ali-ons
    then drops that reply as matching nothing."""
    state = ServerState()
    port = listen(state)
    try:
        run = ok(
            await run_ons(
                ali_ons,
                port,
                {
                    "allowStray": True,
                    "requests": [
                        request(CODE_SEND_MESSAGE, {"oneway": True}, b"fire", oneway=True),
                        request(CODE_SEND_MESSAGE, {"after": 1}, b"and wait"),
                    ],
                },
            )
        )
    finally:
        await port.stopListening()
    oneway, normal = state.commands
    check_seen_as_ali_ons(oneway)
    assert (oneway.opaque, oneway.flag, oneway.is_oneway) == (1, 0, False)
    assert oneway.body == b"fire"
    (stray,) = run.kind("stray")
    check_json_reply(stray)
    assert (stray["opaque"], base64.b64decode(stray["body"])) == (1, b"fire")
    (response,) = run.kind("response")
    assert (response["opaque"], base64.b64decode(response["body"])) == (2, b"and wait")
    assert normal.opaque == 2


@pytest_twisted.ensureDeferred
async def test_node_client_fails_in_bounded_time_without_a_reply(ali_ons: Any) -> None:
    """The harness itself: no reply means a non-zero exit after the timeout, not a hang
    and not a pass."""
    state = ServerState(silent=True)
    port = listen(state)
    try:
        run = await run_ons(
            ali_ons, port, {"timeout": 300, "requests": [request(CODE_SEND_MESSAGE, {"x": 1})]}
        )
    finally:
        await port.stopListening()
    assert not run.timed_out, run.describe()
    assert run.status == 1, run.describe()
    assert b"ResponseTimeoutError" in run.stderr
    assert run.kind("response") == []
    assert len(state.commands) == 1
