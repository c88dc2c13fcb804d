"""What ``twist rmq-remoting`` says about itself, and about a bad command line.

Runs ``twist rmq-remoting --help``, ``--help-hooks`` and a command line with a mistake,
and prints what each writes and its exit status (at 80 columns, whatever the terminal).

Run from a checkout:  PYTHONPATH=src python docs/examples/twist_help.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def twist() -> list[str]:
    """The ``twist`` of this interpreter's environment."""
    script = Path(sys.executable).with_name("twist")
    return [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]


def run(*args: str) -> None:
    print("$ twist " + " ".join(args))
    done = subprocess.run(
        [*twist(), *args],
        env={**os.environ, "COLUMNS": "80"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    print(done.stdout + done.stderr, end="")
    print(f"(exit status {done.returncode})\n")


if __name__ == "__main__":
    run("rmq-remoting", "--help")
    run("rmq-remoting", "--help-hooks")
    run("rmq-remoting", "--processor", "upper")
    run("rmq-remoting", "--processor", "28=stats", "--processor", "GET_BROKER_RUNTIME_INFO=echo")
