"""``python -m rmqtwist call``: one request from the command line, and its exit status.

Starts ``twist rmq-remoting --processor HEART_BEAT=echo`` on a free port of 127.0.0.1,
runs ``python -m rmqtwist call`` against it with a few command lines, and prints what
each writes and its exit status. Times and ports differ from run to run; they are
printed as ``...`` and ``PORT``.

Run from a checkout:  PYTHONPATH=src python docs/examples/client_cli.py
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent.parent / "src"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    "COLUMNS": "80",
}


@contextmanager
def twist_server(*options: str) -> Iterator[str]:
    """Run ``twist rmq-remoting`` on a free port of 127.0.0.1; yield its address."""
    script = Path(sys.executable).with_name("twist")
    twist = [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]
    listen = ["--listen", "tcp:0:interface=127.0.0.1"]
    server = subprocess.Popen(
        [*twist, "--log-format=text", "rmq-remoting", *listen, *options],
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:  # wait until it says where it listens
            listening = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
            if listening:
                break
        else:
            raise SystemExit("twist rmq-remoting exited before listening")
        yield listening.group(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()  # type: ignore[union-attr]


def free_address() -> str:
    """An address of 127.0.0.1 on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def call(address: str, *args: str, stdin: str | None = None) -> None:
    """Run ``python -m rmqtwist call ADDRESS ARGS...`` and print what it writes."""
    shown = " ".join(arg if " " not in arg else repr(arg) for arg in args)
    print(f"$ python -m rmqtwist call ADDRESS {shown}")
    done = subprocess.run(
        [sys.executable, "-m", "rmqtwist", "call", address, *args],
        env=ENV,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = (done.stdout + done.stderr).replace(address, "ADDRESS")
    output = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", output)
    output = re.sub(r"(elapsed=|in )\d+\.\d+ ms", r"\1... ms", output)
    output = re.sub(r'"elapsed_ms": [0-9.e-]+', '"elapsed_ms": ...', output)
    output = re.sub(r"(Connection was refused by other side): .*", r"\1: ...", output)
    print(output, end="")
    print(f"(exit status {done.returncode})\n")


def main() -> None:
    with twist_server("--processor", "HEART_BEAT=echo") as address:
        call(address, "HEART_BEAT", "--ext", "clientID=cli", "--body", "hello")
        call(address, "34", "--ext", "clientID=cli", "--body", "hello", "--json")
        call(
            address,
            "heart_beat",
            "--body-file",
            "-",
            "--serialize-type",
            "rocketmq",
            stdin="from stdin\n",
        )
        call(address, "HEART_BEAT", "--oneway")
        call(address, "GET_ROUTEINFO_BY_TOPIC", "--ext", "topic=TopicTest")
        call(free_address(), "HEART_BEAT", "--timeout", "1")
        call(address, "NO_SUCH_CODE")


if __name__ == "__main__":
    main()
