"""The real ``twist rmq-remoting`` as a subprocess on a free loopback port.

It is talked to (a) with our own codec over a plain socket and with a RemotingProtocol
client, and (b) with the Node.js ali-ons client (``tests/interop/node/ons_echo_client.js``,
the interop tests' driver). Every server binds 127.0.0.1 only and is terminated (then
killed if need be) in teardown. Bad command lines must give one line and a status, no
traceback.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, SerializeType
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.dispatcher import Dispatcher
from rmqtwist.protocol import RemotingProtocol
from tests.interop.conftest import NodeEnv
from tests.interop.conftest import ali_ons as ali_ons  # the fixture, outside tests/interop
from tests.interop.test_ali_ons import NodeRun, check_json_reply, request

SRC = Path(__file__).resolve().parent.parent / "src"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
NODE_TIMEOUT = 60.0
OK = ResponseCode.SUCCESS


def twist_command() -> list[str]:
    """The ``twist`` of this interpreter's environment (``python -m twisted`` is the same)."""
    script = Path(sys.executable).with_name("twist")
    return [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]


def environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(SRC) + (os.pathsep + path if path else "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Twist:
    """One ``twist rmq-remoting`` process; its log goes to a file."""

    def __init__(self, log: Path, *args: str, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.log_path = log
        self.log_file = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [
                *twist_command(),
                "--log-format=text",
                "rmq-remoting",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=environment(),
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"twist exited with {self.process.returncode}:\n{self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"twist did not listen on {self.port} within {START_TIMEOUT} s:\n{self.log}")

    def stop(self) -> int:
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=STOP_TIMEOUT)
            return self.process.returncode
        finally:
            self.log_file.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """``start(*args)`` runs ``twist rmq-remoting --listen tcp:PORT:... *args``, waits
    until it listens; every process started is stopped in teardown."""
    started: list[Twist] = []

    def run(*args: str) -> Twist:
        server = Twist(tmp_path / f"twist-{len(started)}.log", *args)
        started.append(server)
        server.wait_listening()
        return server

    try:
        yield run
    finally:
        for server in started:
            server.stop()


class Conn:
    """A blocking socket speaking frames with our codec."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = FrameDecoder()
        self.pending: list[RemotingCommand] = []

    def send(self, *commands: RemotingCommand) -> None:
        self.sock.sendall(b"".join(encode_frame(command) for command in commands))

    def receive(self, count: int = 1) -> list[RemotingCommand]:
        while len(self.pending) < count:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.pending += self.decoder.feed(data)
        got, self.pending = self.pending[:count], self.pending[count:]
        return got

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------
# (a) Our own codec and protocol
# ---------------------------------------------------------------------------


def test_echo_stats_and_oneway_over_a_socket(start: Any) -> None:
    server = start("--processor", "echo")
    conn = Conn(server.port)
    try:
        conn.send(
            RemotingCommand.request(105, {"topic": "T", "n": 4}, b"x" * 70000, opaque=1),
            RemotingCommand.request(
                105, {"b": "1"}, b"bin", opaque=2, serialize_type=SerializeType.ROCKETMQ
            ),
        )
        json_reply, binary_reply = conn.receive(2)
        assert (json_reply.code, json_reply.remark, json_reply.opaque) == (OK, "ok", 1)
        assert dict(json_reply.ext_fields or {}) == {"topic": "T", "n": "4"}
        assert json_reply.body == b"x" * 70000
        assert json_reply.serialize_type == SerializeType.JSON and json_reply.is_response
        assert (binary_reply.opaque, binary_reply.body) == (2, b"bin")
        assert binary_reply.serialize_type == SerializeType.ROCKETMQ

        # oneway: no reply of any kind; the next request's reply is the next frame
        conn.send(
            RemotingCommand.request(105, body=b"fire", opaque=3, oneway=True),
            RemotingCommand.request(999, body=b"and wait", opaque=4),
        )
        (reply,) = conn.receive()
        assert (reply.opaque, reply.body) == (4, b"and wait")

        conn.send(RemotingCommand.request(28, opaque=5))
        (stats,) = conn.receive()
        assert (stats.code, stats.opaque) == (OK, 5)
        table = json.loads(stats.body)["table"]
        assert table == dict(stats.ext_fields or {})
        assert table["connections"] == "1"
        assert table["requestsReceived"] == "5"  # the oneway one too
        assert table["responsesSent"] == "3"
        assert all(isinstance(value, str) for value in table.values())
    finally:
        conn.close()
    assert conn.pending == []


def test_only_code_specific_processors_answer_3_for_other_codes(start: Any) -> None:
    server = start("--processor", "stats")
    conn = Conn(server.port)
    try:
        conn.send(
            RemotingCommand.request(105, {"topic": "T"}, opaque=1),
            RemotingCommand.request(105, opaque=2, oneway=True),  # not even the error
            RemotingCommand.request(28, opaque=3),
        )
        unsupported, stats = conn.receive(2)
        assert unsupported.code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED == 3
        assert (unsupported.opaque, unsupported.remark) == (1, " request type 105 not supported")
        assert (stats.code, stats.opaque) == (OK, 3)
        assert stats.ext("requestsUnsupported") == "2"
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_remoting_protocol_client(start: Any) -> None:
    server = start("--processor", "28=stats", "--processor", "echo", "--hook", "log")
    client = RemotingProtocol()
    client.dispatcher = Dispatcher()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
    await connectProtocol(endpoint, client)
    try:
        reply = await client.invoke(RemotingCommand.request(105, {"k": "v"}, b"hello"), 10)
        assert (reply.code, reply.remark, reply.body) == (OK, "ok", b"hello")
        assert reply.ext("k") == "v"
        await client.invoke_oneway(RemotingCommand.request(105, body=b"no reply"))
        stats = await client.invoke(RemotingCommand.request(28), 10)
        assert stats.ext("requestsReceived") == "3"
        assert client.dispatcher.late_responses == 0  # the oneway one got no reply
    finally:
        client.close()
        for _ in range(500):
            if not client.is_connected:
                break
            await deferLater(reactor, 0.01, lambda: None)
    assert not client.is_connected
    assert "<- SUCCESS for GET_BROKER_RUNTIME_INFO" in server.log  # --hook log at work


def test_sigterm_closes_connections_and_stops(start: Any) -> None:
    server = start("--processor", "echo", "--shutdown-timeout", "5")
    conn = Conn(server.port)
    try:
        conn.send(RemotingCommand.request(105, opaque=1))
        conn.receive()
        server.process.send_signal(signal.SIGTERM)
        assert conn.sock.recv(100) == b""  # closed by the server
        status = server.process.wait(timeout=STOP_TIMEOUT)
    finally:
        conn.close()
    assert status in (0, -signal.SIGTERM), server.log  # twist re-raises the signal
    log = server.log
    assert "Stopping: closing 1 connection(s)" in log
    assert "rmqtwist remoting server stopped" in log
    assert "Traceback" not in log


# ---------------------------------------------------------------------------
# Bad command lines
# ---------------------------------------------------------------------------


def run_twist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*twist_command(), "rmq-remoting", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "http"), "--port must be a number, not 'http'"),
        (("--processor", "nope"), "--processor nope: no processor plugin of that name"),
        (("--processor", "x=echo"), "'x' is neither a number nor a RequestCode name"),
        (("--listen", "bogus:1"), "--listen bogus:1: ValueError: Unknown endpoint type"),
        (("--frobnicate",), "option --frobnicate not recognized"),
    ],
)
def test_bad_option_is_one_line_and_status_2(args: tuple[str, ...], message: str) -> None:
    done = run_twist(*args)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("twist rmq-remoting: error: ")
    assert message in lines[0]


def test_port_in_use_is_one_line_and_status_1(start: Any) -> None:
    server = start()
    done = run_twist("--listen", f"tcp:{server.port}:interface=127.0.0.1")
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr + done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"twist rmq-remoting: error: cannot listen on tcp:{server.port}")
    assert "Address already in use" in line


def test_help_lists_the_plugin() -> None:
    done = subprocess.run(
        [*twist_command(), "--help"],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "rmq-remoting" in done.stdout


# ---------------------------------------------------------------------------
# (b) The Node.js ali-ons client
# ---------------------------------------------------------------------------


def run_ons(env: NodeEnv, port: int, spec: dict[str, Any]) -> NodeRun:
    try:
        done = subprocess.run(
            [env.node, str(env.script), "127.0.0.1", str(port), "-"],
            input=json.dumps(spec).encode("utf-8"),
            capture_output=True,
            cwd=env.directory,
            timeout=NODE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:  # run() has killed it
        return NodeRun(None, None, e.stdout or b"", e.stderr or b"", True)
    status = done.returncode if done.returncode >= 0 else None
    killed_by = -done.returncode if done.returncode < 0 else None
    return NodeRun(status, killed_by, done.stdout, done.stderr, False)


def ok(run: NodeRun) -> NodeRun:
    assert run.status == 0 and not run.timed_out, run.describe()
    return run


@pytest.mark.interop
def test_ali_ons_echo_stats_and_oneway(start: Any, ali_ons: NodeEnv) -> None:
    server = start("--processor", "echo")
    run = ok(
        run_ons(
            ali_ons,
            server.port,
            {
                "allowStray": True,
                "requests": [
                    request(105, {"topic": "T", "d": 4, "k": False}, b"hello", remark="r"),
                    request(28),
                    # ali-ons' invokeOneway sends flag 0: the server cannot know, so it
                    # answers, and ali-ons drops that answer as a stray
                    request(10, {"oneway": True}, b"fire", oneway=True),
                    request(10, {"after": 1}, b"and wait"),
                ],
            },
        )
    )
    echo, stats, after = run.kind("response")
    for line in (echo, stats, after):
        check_json_reply(line)
        assert line["opaque"] == line["sent"]["opaque"]
    assert (echo["code"], echo["remark"]) == (OK, "ok")
    assert echo["extFields"] == {"topic": "T", "d": "4", "k": "false"}
    assert base64.b64decode(echo["body"]) == b"hello"

    assert stats["code"] == OK
    table = json.loads(base64.b64decode(stats["body"]))["table"]
    assert table == stats["extFields"]
    assert table["connections"] == "1" and table["requestsReceived"] == "2"

    (stray,) = run.kind("stray")
    check_json_reply(stray)
    assert (stray["opaque"], base64.b64decode(stray["body"])) == (3, b"fire")
    assert (after["opaque"], base64.b64decode(after["body"])) == (4, b"and wait")


@pytest.mark.interop
def test_ali_ons_unknown_code_gets_3(start: Any, ali_ons: NodeEnv) -> None:
    server = start("--processor", "stats")
    run = ok(run_ons(ali_ons, server.port, {"requests": [request(105, {"topic": "T"})]}))
    (line,) = run.kind("response")
    check_json_reply(line)
    assert line["code"] == ResponseCode.REQUEST_CODE_NOT_SUPPORTED == 3
    assert line["remark"] == " request type 105 not supported"
    assert line["bodyPresent"] is False


# ---------------------------------------------------------------------------
# The dev broker (what runs without --processor)
# ---------------------------------------------------------------------------


def test_broker_by_default_sends_pulls_and_stops_promptly_with_a_held_pull(start: Any) -> None:
    server = start("--shutdown-timeout", "20")
    assert "give clients the name server address 127.0.0.1:" in server.log
    conn = Conn(server.port)
    try:
        send = RemotingCommand.request(
            RequestCode.SEND_MESSAGE_V2,
            {"a": "PG", "b": "T", "c": "TBW102", "d": 4, "e": 0, "f": 0, "g": 1, "h": 0},
            b"hello",
            opaque=1,
        )
        pull = {
            "consumerGroup": "CG",
            "topic": "T",
            "queueId": 0,
            "maxMsgNums": 32,
            "sysFlag": 6,
            "commitOffset": 0,
            "suspendTimeoutMillis": 15000,
            "subVersion": 0,
            "subscription": "*",
        }
        conn.send(
            send,
            RemotingCommand.request(RequestCode.PULL_MESSAGE, {**pull, "queueOffset": 0}, opaque=2),
            RemotingCommand.request(RequestCode.PULL_MESSAGE, {**pull, "queueOffset": 1}, opaque=3),
        )
        sent, found = conn.receive(2)
        assert (sent.opaque, sent.code, sent.ext("queueOffset")) == (1, OK, "0")
        assert (found.opaque, found.code, found.ext("nextBeginOffset")) == (2, OK, "1")
        assert b"hello" in found.body
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        (held,) = conn.receive()  # the held pull is answered, not left to time out
        assert (held.opaque, held.code) == (3, ResponseCode.PULL_NOT_FOUND)
        status = server.process.wait(timeout=STOP_TIMEOUT)
        assert time.monotonic() - started < 10
    finally:
        conn.close()
    assert status in (0, -signal.SIGTERM), server.log
    assert "Traceback" not in server.log
