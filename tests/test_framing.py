"""LengthPrefixed on in-memory transports: delivery, errors, logging, factories."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer

from rmqtwist import RemotingCommand, ResponseCode, SerializeType
from rmqtwist.__main__ import EchoProtocol
from rmqtwist.codec import encode_frame
from rmqtwist.framing import LengthPrefixed, LengthPrefixedFactory, format_address


class Recorder(LengthPrefixed):
    def __init__(self) -> None:
        self.received: list[RemotingCommand] = []
        self.fail_on: set[int] = set()

    def command_received(self, command: RemotingCommand) -> None:
        if command.code in self.fail_on:
            raise RuntimeError(f"handler bug on {command.code}")
        self.received.append(command)


class AbortRecordingTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


@pytest.fixture
def logged() -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def connected(protocol: LengthPrefixed) -> AbortRecordingTransport:
    transport = AbortRecordingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return transport


def test_commands_are_delivered_in_order_whatever_the_split() -> None:
    protocol = Recorder()
    connected(protocol)
    cmds = [RemotingCommand(code=i, opaque=i, body=b"b" * i) for i in range(1, 6)]
    data = b"".join(encode_frame(c) for c in cmds)
    protocol.dataReceived(data[:7])
    protocol.dataReceived(data[7:50])
    assert protocol.received == cmds[: len(protocol.received)]
    protocol.dataReceived(data[50:])
    assert protocol.received == cmds


def test_send_command_writes_one_frame() -> None:
    protocol = Recorder()
    transport = connected(protocol)
    command = RemotingCommand(code=7, ext_fields={"k": "v"})
    protocol.send_command(command)
    protocol.send_command(command, SerializeType.ROCKETMQ)
    assert transport.value() == encode_frame(command) + encode_frame(
        command, SerializeType.ROCKETMQ
    )


def test_send_command_before_connection_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before the connection"):
        Recorder().send_command(RemotingCommand(code=1))


def test_bad_frame_is_logged_and_aborts(logged: list[dict[str, object]]) -> None:
    protocol = Recorder()
    transport = connected(protocol)
    good = RemotingCommand(code=1, opaque=1)
    protocol.dataReceived(encode_frame(good) + struct.pack(">ii", 4, 0x05000000))
    assert protocol.received == [good]  # what came before the bad frame is delivered
    assert transport.aborted
    warnings = [e for e in logged if e.get("log_level") == LogLevel.warn]
    assert len(warnings) == 1
    assert warnings[0]["peer"] == "127.0.0.1:40000"
    assert warnings[0]["error_type"] == "MalformedFrame"
    assert "unknown serialize type 5" in str(warnings[0]["error"])
    protocol.dataReceived(encode_frame(good))  # ignored after the failure
    assert protocol.received == [good]


@pytest.mark.parametrize(
    ("data", "error_type"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "WrongProtocol"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "WrongProtocol"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00", "WrongProtocol"),
        (struct.pack(">i", 16 * 1024 * 1024), "FrameTooLarge"),
    ],
)
def test_wrong_protocol_and_oversize_are_explained(
    data: bytes, error_type: str, logged: list[dict[str, object]]
) -> None:
    protocol = Recorder()
    transport = connected(protocol)
    protocol.dataReceived(data)
    assert transport.aborted
    (warning,) = [e for e in logged if e.get("log_level") == LogLevel.warn]
    assert warning["error_type"] == error_type


def test_factory_limit_reaches_the_protocol() -> None:
    factory = LengthPrefixedFactory.forProtocol(Recorder, max_frame_length=64)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(protocol, Recorder)
    transport = connected(protocol)
    protocol.dataReceived(encode_frame(RemotingCommand(code=1, body=b"x" * 100)))
    assert transport.aborted and protocol.received == []
    with pytest.raises(ValueError, match="at least 8"):
        LengthPrefixedFactory(max_frame_length=2)
    assert "Recorder" in repr(factory)


def test_handler_exception_is_logged_and_the_connection_stays(
    logged: list[dict[str, object]],
) -> None:
    protocol = Recorder()
    protocol.fail_on = {2}
    transport = connected(protocol)
    cmds = [RemotingCommand(code=c) for c in (1, 2, 3)]
    protocol.dataReceived(b"".join(encode_frame(c) for c in cmds))
    assert [c.code for c in protocol.received] == [1, 3]
    assert not transport.aborted
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 1
    assert "handler bug on 2" in str(failures[0]["log_failure"])


def test_default_command_received_logs(logged: list[dict[str, object]]) -> None:
    protocol = LengthPrefixed()
    connected(protocol)
    protocol.dataReceived(encode_frame(RemotingCommand(code=1)))
    assert any("nothing handles" in str(e.get("log_format")) for e in logged)


def test_format_address() -> None:
    assert format_address(IPv4Address("TCP", "10.0.0.1", 9876)) == "10.0.0.1:9876"
    assert format_address(IPv6Address("TCP", "::1", 9876)) == "[::1]:9876"
    assert format_address(UNIXAddress("/tmp/s")) == "/tmp/s"
    assert format_address(None) == "None"


def test_echo_over_a_simulated_connection() -> None:
    server = makeFakeServer(EchoProtocol())
    client_protocol = Recorder()
    client = makeFakeClient(client_protocol)
    pump = connect(server.protocol, server, client_protocol, client)
    requests = [
        RemotingCommand.request(105, {"topic": "T"}, b"hello", opaque=1),
        RemotingCommand.request(106, {"k": "v"}, opaque=2, serialize_type=SerializeType.ROCKETMQ),
        RemotingCommand.request(15, opaque=3, oneway=True),
    ]
    for request in requests:
        client_protocol.send_command(request)
    pump.flush()
    replies = client_protocol.received
    assert [r.opaque for r in replies] == [1, 2]  # the oneway request got no answer
    assert all(r.is_response and r.code == ResponseCode.SUCCESS for r in replies)
    assert replies[0].ext_fields == {"topic": "T"} and replies[0].body == b"hello"
    assert replies[0].serialize_type == SerializeType.JSON
    assert replies[1].serialize_type == SerializeType.ROCKETMQ
    assert all(r.remark == "ok" for r in replies)
