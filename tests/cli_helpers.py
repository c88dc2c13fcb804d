"""Helpers for tests/test_cli_*.py: ``python -m rmqtwist`` as a real subprocess, run in a
thread so that the reactor (and the dev broker on it) keeps running meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import threads

from rmqtwist.pytest_plugin import running_broker
from rmqtwist.testing import RunningBroker

SRC = Path(__file__).resolve().parent.parent / "src"
TIMEOUT = 30.0


def environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": str(SRC) + (os.pathsep + path if path else ""),
        "COLUMNS": "100",
    }


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rmqtwist", *args]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line to its end (blocking)."""
    return subprocess.run(
        command(*args),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=TIMEOUT,
        check=False,
    )


async def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line in a thread, the reactor running meanwhile."""
    done: subprocess.CompletedProcess[str] = await threads.deferToThread(run, *args, stdin=stdin)
    return done


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(line, dict) for line in lines), text
    return lines


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest) -> Iterator[RunningBroker]:
    """One dev broker for a module's tests (each uses its own topics)."""
    with running_broker(request) as running:
        yield running
