"""``python -m rmqtwist call``: one request from the command line, and its exit status.

Starts ``twist rmq-remoting --processor HEART_BEAT=echo`` on a free port of 127.0.0.1,
runs ``python -m rmqtwist call`` against it with a few command lines, and prints what
each writes and its exit status. Times and ports differ from run to run; they are
printed as ``...`` and ``PORT``.

Run from a checkout:  PYTHONPATH=src python docs/examples/client_cli.py
"""

from __future__ import annotations

import re
import subprocess
import sys

from _twist import ENV as TWIST_ENV
from _twist import free_address, twist_server

ENV = {**TWIST_ENV, "COLUMNS": "80"}


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
