"""``python -m rmqtwist echo`` as a real process on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmqtwist import RemotingCommand, SerializeType
from rmqtwist.codec import FrameDecoder, encode_frame

SRC = str(Path(__file__).resolve().parent.parent / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo_server() -> int:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "rmqtwist", "echo", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        for line in process.stdout:
            if "listening on" in line:
                break
            assert time.monotonic() < deadline, "echo server did not start"
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_echo_server_answers_over_loopback(echo_server: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_server), timeout=10) as sock:
        requests = [
            RemotingCommand.request(105, {"topic": "T"}, b"x" * 5000, opaque=1),
            RemotingCommand.request(28, opaque=2, serialize_type=SerializeType.ROCKETMQ),
        ]
        sock.sendall(b"".join(encode_frame(r) for r in requests))
        decoder = FrameDecoder()
        replies: list[RemotingCommand] = []
        while len(replies) < 2:
            data = sock.recv(65536)
            assert data, "server closed the connection"
            replies += decoder.feed(data)
    assert [r.opaque for r in replies] == [1, 2]
    assert replies[0].body == b"x" * 5000 and replies[0].ext_fields == {"topic": "T"}
    assert replies[1].serialize_type == SerializeType.ROCKETMQ


def test_echo_server_closes_on_http(echo_server: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_server), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # the server aborts: an RST rather than a FIN
            answer = b""
        assert answer == b""  # closed, nothing answered


def test_bad_port_is_a_one_line_error() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-m", "rmqtwist", "echo", "--port", "70000"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "python -m rmqtwist: error: --port 70000 is not a TCP port"
