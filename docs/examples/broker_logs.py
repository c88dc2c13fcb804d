"""What ``twist rmq-remoting`` logs when its output is not a terminal, and how to read it.

Starts ``twist rmq-remoting`` twice on a free port of 127.0.0.1 with its output going to
a pipe, as under systemd, Docker or CI: once as it is, when twist writes JSON lines,
then with ``twist --log-format=text``. Prints the broker's start-up line each time (its
time and port replaced by fixed text), and turns the JSON line back into text with
Twisted's own functions.

Run from a checkout:  PYTHONPATH=src python docs/examples/broker_logs.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from _twist import ENV
from twisted.logger import eventFromJSON, formatEvent


def start_up_line(*twist_options: str) -> str:
    """The broker's start-up line of one ``twist ... rmq-remoting --port 0`` run."""
    script = Path(sys.executable).with_name("twist")
    twist = [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]
    command = [*twist, *twist_options, "rmq-remoting", "--port", "0"]
    print("$ " + " ".join(["twist", *command[len(twist) :]]) + " | cat")
    server = subprocess.Popen(
        command, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "give clients the name server address" in line:
                return line
        raise SystemExit("twist rmq-remoting exited before listening")
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()  # type: ignore[union-attr]


def steady(text: str) -> str:
    """``text`` with the port and the time, which change from run to run, made fixed."""
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", "TIME", text)


def main() -> None:
    line = start_up_line()
    print(f"  each line starts with {line[0]!r} (RS, Twisted's record separator), then JSON")
    event = json.loads(line.lstrip("\x1e"))
    print("  the start-up line's keys:")
    print("   ", ", ".join(sorted(key for key in event if not key.startswith("log_"))))
    print("   ", ", ".join(sorted(key for key in event if key.startswith("log_"))))
    print(f"  log_namespace: {event['log_namespace']}, log_level: {event['log_level']['name']}")
    print(f"  the address to give clients, in its own key: {steady(event['shown'])}")
    print("  as text, with twisted.logger.eventFromJSON and formatEvent:")
    print("   ", steady(formatEvent(eventFromJSON(line.lstrip("\x1e")))))
    print()
    print(steady(start_up_line("--log-format=text")), end="")


if __name__ == "__main__":
    main()
