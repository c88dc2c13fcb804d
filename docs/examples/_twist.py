"""Helpers the client examples share: a real ``twist rmq-remoting`` and a dead address.

Not an example itself (``run_all.py`` skips modules whose name starts with ``_``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent.parent / "src"
#: The environment for child processes: this checkout's ``src`` on PYTHONPATH.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
}


@dataclasses.dataclass
class Twist:
    """A running ``twist rmq-remoting``: its address, its process, and the log lines it
    wrote until it listened."""

    address: str
    process: subprocess.Popen[str]
    log: list[str]


@contextmanager
def twist_process(*options: str) -> Iterator[Twist]:
    """Run ``twist rmq-remoting`` on a free port of 127.0.0.1 until the block ends (or
    the block kills it). Ready once it says where it listens: the dev broker's line
    (which comes once its store is open), or with ``--processor`` the server's."""
    script = Path(sys.executable).with_name("twist")
    twist = [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]
    listen = ["--listen", "tcp:0:interface=127.0.0.1"]
    ready = (
        r"listening on (127\.0\.0\.1:\d+)"
        if "--processor" in options
        else r"give clients the name server address (127\.0\.0\.1:\d+)"
    )
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
        log = []
        for line in server.stdout:  # wait until it says where it listens
            log.append(line)
            listening = re.search(ready, line)
            if listening:
                break
        else:
            raise SystemExit("twist rmq-remoting exited before listening:\n" + "".join(log))
        yield Twist(listening.group(1), server, log)
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=30)
        server.stdout.close()  # type: ignore[union-attr]


@contextmanager
def twist_server(*options: str) -> Iterator[str]:
    """Run ``twist rmq-remoting`` on a free port of 127.0.0.1; yield its address."""
    with twist_process(*options) as running:
        yield running.address


def free_address() -> str:
    """An address of 127.0.0.1 on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
