"""Running a test's Python script in a fresh interpreter (the blocking APIs start
crochet's reactor thread, which a test process can start only once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def run_python(
    script: str, timeout: float, *, tracebacks: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with this checkout's ``src`` first on the path; fail with its
    output unless it exits 0 having printed ``PASSED`` last, with no unhandled error
    logged (and no traceback at all, unless ``tracebacks``: a test that makes user code
    raise expects the logged one)."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(SRC) + (os.pathsep + path if path else "")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.endswith("PASSED\n"), (
        f"exit status {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    assert "Unhandled" not in done.stderr, done.stderr
    assert tracebacks or "Traceback" not in done.stderr, done.stderr
    return done
