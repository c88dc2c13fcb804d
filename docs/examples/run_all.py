"""Run every example program in this directory and compare its output with ``NAME.out``.

Run from a checkout:  python docs/examples/run_all.py [--update]

Each example runs with ``src`` on PYTHONPATH and a time limit; it must exit 0 and print
exactly what its ``.out`` file holds (the documentation includes those files). Modules
named ``_*.py`` are helpers the examples import, not examples.
``--update`` rewrites the ``.out`` files instead of comparing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"
TIME_LIMIT = 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the .out files")
    args = parser.parse_args()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    )
    failed = 0
    for script in sorted(HERE.glob("*.py")):
        if script.name == Path(__file__).name or script.name.startswith("_"):
            continue  # this runner, or a helper module the examples import
        done = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT,
            check=False,
        )
        expected_file = script.with_suffix(".out")
        if done.returncode != 0:
            print(f"FAIL {script.name}: exit status {done.returncode}\n{done.stderr}")
            failed += 1
        elif args.update:
            expected_file.write_text(done.stdout)
            print(f"wrote {expected_file.name}")
        elif not expected_file.exists() or expected_file.read_text() != done.stdout:
            print(f"FAIL {script.name}: output differs from {expected_file.name}:\n{done.stdout}")
            failed += 1
        else:
            print(f"ok   {script.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
