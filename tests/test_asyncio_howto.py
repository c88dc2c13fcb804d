"""The asyncio how-to (``docs/howto/asyncio.rst``): the Producer and PushConsumer on
Twisted's asyncio reactor.

The asyncio reactor must be installed before any other reactor is imported, and this
process runs pytest-twisted's: so each check runs a program in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
EXAMPLE = ROOT / "docs" / "examples" / "asyncio_messaging.py"
TIMEOUT = 60.0


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(SRC) + (os.pathsep + path if path else "")}
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


def test_the_example_sends_and_receives_on_the_asyncio_reactor() -> None:
    done = run([str(EXAMPLE)])
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXAMPLE.with_suffix(".out").read_text(), done.stdout
    assert "Traceback" not in done.stderr and "Unhandled" not in done.stderr, done.stderr


def test_a_producer_under_asyncio_run() -> None:
    script = textwrap.dedent(
        """
        import asyncio

        from twisted.internet import asyncioreactor


        async def main():
            loop = asyncio.get_running_loop()
            asyncioreactor.install(loop)
            from twisted.internet import reactor

            from rmqtwist.message import Message
            from rmqtwist.producer import Producer, SendStatus
            from rmqtwist.testing import start_broker

            assert type(reactor).__name__ == "AsyncioSelectorReactor", reactor
            broker = await start_broker().asFuture(loop)
            producer = Producer("asyncio_app", broker.address)
            await producer.start().asFuture(loop)
            sends = [producer.send(Message("T", b"%d" % n)).asFuture(loop) for n in range(5)]
            results = await asyncio.gather(*sends)
            assert all(r.status is SendStatus.SEND_OK for r in results), results
            assert sorted(m.body for m in broker.messages("T")) == [b"%d" % n for n in range(5)]
            await producer.shutdown().asFuture(loop)
            await broker.stop().asFuture(loop)
            print("PASSED")


        asyncio.run(main())
        """
    )
    done = run(["-c", script])
    assert done.returncode == 0 and done.stdout == "PASSED\n", (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Unhandled" not in done.stderr, done.stderr
