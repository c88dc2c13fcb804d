"""Run the example test suites of ``docs/examples/broker_tests`` as pytest runs yours.

``test_sync.py`` runs without pytest-twisted (``-p no:twisted``): the
``rocketmq_broker`` fixture's broker runs in crochet's reactor thread and the tests are
plain functions. ``test_async.py`` runs with pytest-twisted: the broker runs on its
reactor and the tests are async. Prints each test's outcome.

Run from a checkout, with pytest and pytest-twisted installed:
    PYTHONPATH=src python docs/examples/broker_pytest.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SUITES = Path(__file__).resolve().parent / "broker_tests"
SRC = SUITES.parent.parent.parent / "src"


def run(*arguments: str) -> int:
    print("$ pytest " + " ".join(arguments))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *arguments],
        cwd=SUITES,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(SUITES)])},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # One line per test, without the progress percentage; the summary without timing.
    for line in done.stdout.splitlines():
        outcome = re.match(r"(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", line)
        if outcome:
            print(f"  {outcome.group(1)} {outcome.group(2)}")
        elif line.startswith("=") and (" passed" in line or " failed" in line):
            print("  " + re.sub(r" in [\d.]+s.*", "", line.strip("= ")))
    if done.returncode:
        print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    status = run("-p", "no:twisted", "test_sync.py") or run("test_async.py")
    sys.exit(status)
