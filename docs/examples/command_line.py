"""``python -m rmqtwist produce``, ``route``, ``topics`` and ``consume`` against the dev broker.

Starts the dev broker (``twist rmq-remoting``, its own name server) on a free port of
127.0.0.1 and runs the command line against it, printing what each command writes and
its exit status. Ports, message ids and times differ from run to run; they are printed
as ``PORT`` and ``...``.

Run from a checkout:  PYTHONPATH=src python docs/examples/command_line.py
"""

from __future__ import annotations

import re
import subprocess
import sys

from _twist import ENV as TWIST_ENV
from _twist import twist_server

ENV = {**TWIST_ENV, "COLUMNS": "80"}


def run(address: str, *args: str, stdin: str | None = None, sort: bool = False) -> None:
    """Run ``python -m rmqtwist ARGS...`` (``ADDRESS`` stands for the broker's) and print
    what it writes (its lines sorted with ``sort``: messages come from the queues in turn,
    in an order that depends on timing)."""
    shown = " ".join(arg if " " not in arg else repr(arg) for arg in args)
    if stdin is not None:
        print(f"$ printf {stdin!r} | python -m rmqtwist {shown}")
    else:
        print(f"$ python -m rmqtwist {shown}")
    done = subprocess.run(
        [sys.executable, "-m", "rmqtwist", *(address if a == "ADDRESS" else a for a in args)],
        env=ENV,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    stdout = "".join(sorted(done.stdout.splitlines(keepends=True))) if sort else done.stdout
    output = (stdout + done.stderr).replace(address, "ADDRESS")
    output = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", output)
    output = re.sub(r'"(msgId|offsetMsgId)": "[0-9A-F]+"', r'"\1": "..."', output)
    output = re.sub(r"msgId=[0-9A-F]+", "msgId=...", output)
    output = re.sub(r'"(UNIQ_KEY)": "[0-9A-F]+"', r'"\1": "..."', output)
    output = re.sub(r'"bornTimestamp": \d+', '"bornTimestamp": ...', output)
    print(output, end="")
    print(f"(exit status {done.returncode})\n")


def main() -> None:
    with twist_server() as address:
        run(
            address,
            "produce", "ADDRESS", "Orders", "--tag", "paid", "--key", "order-1",
            "--property", "region=eu", "--json",
            stdin="order 1\norder 2\norder 3\n",
        )  # fmt: skip
        run(address, "produce", "ADDRESS", "Orders", "one more, as BODY")
        run(
            address,
            "consume", "ADDRESS", "Orders", "--group", "audit", "--from", "first",
            "--count", "4", "--json",
            sort=True,
        )  # fmt: skip
        run(address, "produce", "ADDRESS", "Orders", "sent later")
        run(address, "consume", "ADDRESS", "Orders", "--group", "audit", "--count", "1")
        run(address, "route", "ADDRESS", "Orders")
        run(address, "route", "ADDRESS", "Nope")
        run(address, "topics", "ADDRESS")


if __name__ == "__main__":
    main()
