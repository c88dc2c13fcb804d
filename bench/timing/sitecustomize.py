"""Time rmqtwist's protocol work inside a real benchmark process (for ``bench/split.py``).

Python imports ``sitecustomize`` at start-up from the first directory on ``sys.path``
that has one. With this directory on ``PYTHONPATH`` and ``RMQTWIST_BENCH_TIMING`` set to
a directory, every Python process of a benchmark (the ``rpc.py`` parent, the client it
forks, the ``twist`` server it starts) wraps ``RemotingProtocol.dataReceived``: the time
spent in it (``time.perf_counter_ns`` around each call; nothing in it blocks) is added
up, and every ``EVERY`` calls a line goes to ``<dir>/timing-<pid>.jsonl`` with the
clock, the calls, the nanoseconds and the connection's dispatcher counters. Both sides
get the same wrapper, so its own cost (two clock reads and some arithmetic per read)
falls on each alike. Without the variable this file does nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

EVERY = 10_000

_directory = os.environ.get("RMQTWIST_BENCH_TIMING")

if _directory:
    from rmqtwist.protocol import RemotingProtocol

    _original = RemotingProtocol.dataReceived
    _clock = time.perf_counter_ns
    _totals = [0, 0]  # nanoseconds, calls

    def _dump(connection: Any) -> None:
        dispatcher = connection.dispatcher
        line = {
            "t": time.monotonic(),
            "pid": os.getpid(),
            "role": "client" if type(connection).__name__ == "_ClientConnection" else "server",
            "calls": _totals[1],
            "ns": _totals[0],
            "requests_sent": dispatcher.requests_sent,
            "requests_received": dispatcher.requests_received,
        }
        with open(os.path.join(_directory, f"timing-{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")

    def _timed(self: Any, data: bytes) -> None:
        started = _clock()
        _original(self, data)
        _totals[0] += _clock() - started
        _totals[1] += 1
        if not _totals[1] % EVERY:
            _dump(self)

    RemotingProtocol.dataReceived = _timed  # type: ignore[method-assign]
