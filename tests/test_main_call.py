"""``python -m rmqtwist call`` as a subprocess against a real ``twist rmq-remoting``.

The servers (one with the echo server's processors: echo, and stats for code 28; one with
only stats) run on free 127.0.0.1 ports for the whole module and are stopped in
teardown, as in tests/test_twist_integration.py, whose helpers are reused.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_twist_integration import Twist, environment, free_port

PREFIX = "python -m rmqtwist call: error: "


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Twist]]:
    """``{"default": ..., "stats": ...}``: ``--processor echo`` (echo, and stats for code
    28), and ``--processor stats``."""
    logs = tmp_path_factory.mktemp("twist")
    started: dict[str, Twist] = {}
    try:
        started["default"] = Twist(logs / "default.log", "--processor", "echo")
        started["stats"] = Twist(logs / "stats.log", "--processor", "stats")
        for server in started.values():
            server.wait_listening()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def address(servers: dict[str, Twist]) -> str:
    return f"127.0.0.1:{servers['default'].port}"


def call(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmqtwist", "call", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )


def call_json(*args: str) -> dict[str, Any]:
    done = call(*args, "--json")
    assert done.returncode == 0, done
    (line,) = done.stdout.splitlines()
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_echo_text_prints_code_remark_sorted_ext_and_body(address: str) -> None:
    done = call(address, "105", "--ext", "zeta=last", "--ext", "alpha=1=2", "--body", "héllo\n2")
    assert (done.returncode, done.stderr) == (0, ""), done
    *lines, summary = done.stdout.splitlines()
    assert lines == [
        "code: SUCCESS (0)",
        "remark: ok",
        "ext_fields:",
        "  alpha=1=2",
        "  zeta=last",
        "body (8 bytes, utf-8):",
        "héllo",
        "2",
    ]
    assert summary.startswith("opaque=1 flag=1 language=PYTHON version=401 serialize_type=json")
    assert summary.endswith(" ms")


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (b"\x00\x01\xfe\xff", "0001feff"),  # not UTF-8
        (b"bell\x07", "62656c6c07"),  # UTF-8, but a control character
    ],
)
def test_binary_body_is_printed_as_hex(
    address: str, tmp_path: Path, content: bytes, shown: str
) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(content)
    done = call(address, "105", "--body-file", str(body))
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines[2:5] == ["ext_fields: (none)", f"body ({len(content)} bytes, hex):", shown]


def test_json_output(address: str, tmp_path: Path) -> None:
    reply = call_json(address, "105", "--ext", "b=2", "--ext", "a=1", "--body", "tab\tok")
    assert list(reply) == [
        "code",
        "code_name",
        "remark",
        "ext_fields",
        "body",
        "body_encoding",
        "opaque",
        "flag",
        "language",
        "version",
        "serialize_type",
        "elapsed_ms",
    ]
    elapsed = reply.pop("elapsed_ms")
    assert isinstance(elapsed, float) and 0 < elapsed < 60_000
    assert reply == {
        "code": 0,
        "code_name": "SUCCESS",
        "remark": "ok",
        "ext_fields": {"a": "1", "b": "2"},
        "body": "tab\tok",
        "body_encoding": "utf-8",
        "opaque": 1,
        "flag": 1,
        "language": "PYTHON",
        "version": 401,
        "serialize_type": "json",
    }
    assert list(reply["ext_fields"]) == ["a", "b"]

    binary = tmp_path / "b"
    binary.write_bytes(b"\xff")
    reply = call_json(address, "105", "--body-file", str(binary))
    assert (reply["body"], reply["body_encoding"]) == ("ff", "hex")
    reply = call_json(address, "105")
    assert (reply["body"], reply["body_encoding"]) == (None, None)  # no body at all


def test_code_by_name_goes_to_the_stats_processor(address: str) -> None:
    reply = call_json(address, "get_broker_runtime_info")
    assert (reply["code"], reply["code_name"]) == (0, "SUCCESS")
    table = reply["ext_fields"]
    assert isinstance(table, dict) and "requestsReceived" in table and "uptimeSeconds" in table
    assert isinstance(reply["body"], str)
    assert json.loads(reply["body"]) == {"table": table}


def test_oneway_is_written_and_processed(address: str) -> None:
    before = call_json(address, "28")["ext_fields"]
    done = call(address, "105", "--oneway", "--body", "fire")
    assert (done.returncode, done.stderr) == (0, ""), done
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"oneway request GET_ROUTEINFO_BY_TOPIC (105) written to {address} in")

    oneway = call_json(address, "10", "--oneway")
    assert (oneway["oneway"], oneway["code"], oneway["code_name"]) == (True, 10, "SEND_MESSAGE")
    after = call_json(address, "28")["ext_fields"]
    assert isinstance(before, dict) and isinstance(after, dict)
    # the two oneway requests and the second stats request; no response to the oneways
    assert int(after["requestsReceived"]) == int(before["requestsReceived"]) + 3
    assert int(after["responsesSent"]) == int(before["responsesSent"]) + 1


def test_other_response_code_exits_3_and_is_printed(servers: dict[str, Twist]) -> None:
    done = call(f"127.0.0.1:{servers['stats'].port}", "105", "--ext", "topic=T")
    assert (done.returncode, done.stderr) == (3, ""), done
    lines = done.stdout.splitlines()
    assert lines[:2] == [
        "code: REQUEST_CODE_NOT_SUPPORTED (3)",
        "remark:  request type 105 not supported",
    ]


def test_refused_port_exits_1_with_connect_error() -> None:
    done = call(f"127.0.0.1:{free_port()}", "28")
    assert (done.returncode, done.stdout) == (1, ""), done
    (line,) = done.stderr.splitlines()
    assert line.startswith(PREFIX + "ConnectError: cannot connect to 127.0.0.1:")
    assert "refused" in line


def test_serialize_type_rocketmq(address: str) -> None:
    reply = call_json(address, "105", "--serialize-type", "ROCKETMQ", "--ext", "k=v", "--body", "b")
    assert reply["serialize_type"] == "rocketmq"
    assert (reply["ext_fields"], reply["body"]) == ({"k": "v"}, "b")


def test_timeout_is_respected_against_a_silent_listener() -> None:
    with socket.socket() as listener:  # the kernel accepts; nobody ever answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        started = time.monotonic()
        done = call(f"127.0.0.1:{port}", "105", "--timeout", "0.4")
        elapsed = time.monotonic() - started
    assert (done.returncode, done.stdout) == (1, ""), done
    (line,) = done.stderr.splitlines()
    assert line.startswith(PREFIX + "RemotingTimeoutError: no response from 127.0.0.1:")
    assert 0.4 <= elapsed < 2.9, elapsed  # its own 0.4 s, not the default 3 s


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("127.0.0.1", "28"), "argument ADDRESS: address must be 'host:port'"),
        (("127.0.0.1:1", "no_such_code"), "argument CODE: 'no_such_code' is neither a number"),
        (("127.0.0.1:1", "28", "--ext", "novalue"), "argument --ext: expected KEY=VALUE"),
        (("127.0.0.1:1", "28", "--ext", "=v"), "argument --ext: expected KEY=VALUE"),
        (
            ("127.0.0.1:1", "28", "--body", "x", "--body-file", __file__),
            "argument --body-file: not allowed with argument --body",
        ),
        (("127.0.0.1:1", "28", "--body-file", "/no/such/file"), "cannot read /no/such/file"),
        (("127.0.0.1:1", "28", "--serialize-type", "xml"), "argument --serialize-type"),
        (("127.0.0.1:1", "28", "--timeout", "0"), "expected a number of seconds > 0"),
        (("127.0.0.1:1",), "the following arguments are required: CODE"),
    ],
)
def test_bad_usage_exits_2(args: tuple[str, ...], message: str) -> None:
    done = call(*args)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(PREFIX) and message in last, done.stderr


def test_body_file_dash_reads_stdin(address: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rmqtwist", "call", address, "105", "--body-file", "-", "--json"],
        input=b"\x00from stdin",
        capture_output=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done
    reply = json.loads(done.stdout)
    assert (reply["body"], reply["body_encoding"]) == (b"\x00from stdin".hex(), "hex")
