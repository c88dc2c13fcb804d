"""The command line's manners: plain --help, --version, "did you mean", a repeated
--ext, Ctrl-C (130, "interrupted"), a closed stdout (141, no traceback) and why a
dropped connection was dropped. Real subprocesses; the dev broker in this process."""

from __future__ import annotations

import signal
import struct
import subprocess

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, threads

from rmqtwist import __version__
from rmqtwist.cli import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED
from rmqtwist.testing import RunningBroker
from tests.cli_helpers import TIMEOUT, cli, command, environment, run
from tests.cli_helpers import broker as broker  # the fixture


def test_help_is_plain_text_with_the_exit_statuses() -> None:
    done = run("--help")
    assert (done.returncode, done.stderr) == (0, ""), done
    for markup in ("``", ":class:", ":doc:", ":mod:"):
        assert markup not in done.stdout
    for name in ("produce", "consume", "route", "topics", "call", "echo"):
        assert f"    {name} " in done.stdout
    assert "130  interrupted (Ctrl-C)" in done.stdout
    for sub in ("produce", "consume", "route", "topics", "call", "echo"):
        sub_help = run(sub, "--help")
        assert sub_help.returncode == 0 and "``" not in sub_help.stdout, sub_help


def test_version() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout) == (0, f"rmqtwist {__version__.public()}\n"), done


def test_a_mistyped_code_name_gets_a_did_you_mean() -> None:
    done = run("call", "127.0.0.1:1", "GET_ROUTEINFO_BY_TOPPIC")
    assert done.returncode == 2, done
    assert done.stderr.splitlines()[-1].endswith("did you mean GET_ROUTEINFO_BY_TOPIC?")
    done = run("call", "127.0.0.1:1", "xyzzy")
    assert done.returncode == 2 and "did you mean" not in done.stderr, done


def test_a_repeated_ext_key_is_an_error() -> None:
    done = run("call", "127.0.0.1:1", "28", "--ext", "topic=A", "--ext", "topic=B")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.splitlines()[-1] == (
        "python -m rmqtwist call: error: argument --ext: 'topic' is given twice (topic=A, topic=B)"
    )


def _interrupt_after_first_line(args: list[str]) -> tuple[int, str, str]:
    """Start ``args`` with a stdin left open, SIGINT it once it printed a line."""
    process = subprocess.Popen(
        command(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write("first\n")
        process.stdin.flush()
        first = process.stdout.readline()
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, first + rest, errors


@pytest_twisted.ensureDeferred
async def test_ctrl_c_exits_130_saying_interrupted(broker: RunningBroker) -> None:
    status, output, errors = await threads.deferToThread(
        _interrupt_after_first_line, ["produce", broker.address, "CliInterrupted"]
    )
    assert output.startswith("SEND_OK msgId="), (output, errors)
    assert (status, errors) == (
        EXIT_INTERRUPTED,
        "python -m rmqtwist produce: interrupted\n",
    )
    assert [m.body for m in broker.messages("CliInterrupted")] == [b"first"]


def test_ctrl_c_during_a_call_exits_130() -> None:
    import socket
    import time

    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            command("call", f"127.0.0.1:{port}", "28", "--timeout", "20"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        try:
            listener.settimeout(TIMEOUT)
            connection, _ = listener.accept()  # the call is under way
            time.sleep(0.1)
            process.send_signal(signal.SIGINT)
            output, errors = process.communicate(timeout=TIMEOUT)
            connection.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert (process.returncode, output) == (EXIT_INTERRUPTED, ""), errors
    assert errors == "python -m rmqtwist call: interrupted\n"


@pytest_twisted.ensureDeferred
async def test_a_closed_stdout_exits_141_without_traceback(broker: RunningBroker) -> None:
    def pipeline() -> subprocess.CompletedProcess[str]:
        produce = " ".join(command("produce", broker.address, "CliPipe"))
        return subprocess.run(
            ["bash", "-c", f"set -o pipefail; yes | head -n 100000 | {produce} | head -1"],
            capture_output=True,
            text=True,
            env=environment(),
            timeout=TIMEOUT,
            check=False,
        )

    done = await threads.deferToThread(pipeline)
    assert (done.returncode, done.stderr) == (EXIT_PIPE_CLOSED, ""), done
    assert done.stdout.startswith("SEND_OK msgId=") and done.stdout.count("\n") == 1

    def closed_at_once() -> tuple[int, str]:
        process = subprocess.Popen(
            command("topics", broker.address),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # nobody reads: the first write fails with EPIPE
        errors = process.stderr.read().decode()
        return process.wait(timeout=TIMEOUT), errors

    assert await threads.deferToThread(closed_at_once) == (EXIT_PIPE_CLOSED, "")


class _Http(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()


class _Huge(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(struct.pack(">I", 100 << 20) + b"\x00" * 16)  # a 100 MiB frame


@pytest.mark.parametrize(
    ("peer", "args", "why"),
    [
        (_Http, ["call", "{}", "28"], "speaks HTTP, not the RocketMQ remoting protocol"),
        (_Http, ["route", "{}", "T"], "speaks HTTP, not the RocketMQ remoting protocol"),
        (_Huge, ["call", "{}", "28"], "sent a frame of 104857604 bytes, over our limit of"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_says_why(
    peer: type[protocol.Protocol], args: list[str], why: str
) -> None:
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(peer), interface="127.0.0.1")
    try:
        address = f"127.0.0.1:{port.getHost().port}"
        done = await cli(*[a.format(address) for a in args])
    finally:
        await port.stopListening()
    assert (done.returncode, done.stdout) == (1, ""), done
    (line,) = done.stderr.splitlines()
    assert f"connection to {address} lost" in line
    assert f"we dropped it because {address} {why}" in line
    assert "abortConnection" not in line
