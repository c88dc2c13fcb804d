"""``BlockingProducer`` and ``BlockingConsumer`` against a dev broker in crochet's reactor.

As in ``test_blocking.py``, crochet's reactor thread cannot share a process with
pytest-twisted's reactor, so every test runs a script in a subprocess: it starts a dev
broker with :func:`rmqtwist.testing.start_broker_in_thread`, checks with plain
``assert``\\ s and prints ``PASSED`` at the end.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

import rmqtwist.consumer
from tests.script_helpers import run_python

TIMEOUT = 90.0

PRELUDE = """
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import crochet

from rmqtwist.blocking import BlockingProducer
from rmqtwist.message import Message
from rmqtwist.producer import (
    NoRouteError,
    ProducerClosedError,
    SendResult,
    SendStatus,
)
from rmqtwist.testing import start_broker_in_thread

crochet.setup()
BROKER = start_broker_in_thread()
ADDRESS = BROKER.address


def refused_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def raises(error_type, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except error_type as e:
        return e
    raise AssertionError(f"{function} did not raise {error_type.__name__}")


def bodies(topic):
    return sorted(m.body for m in BROKER.messages(topic))
"""

EPILOGUE = """
BROKER.stop()
print("PASSED")
"""


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + ``body`` in a fresh interpreter (see run_python)."""
    return run_python(PRELUDE + textwrap.dedent(body) + EPILOGUE, TIMEOUT)


def test_producer_sends_from_many_threads() -> None:
    run_script(
        """
        with BlockingProducer("blocking_test", ADDRESS, send_timeout=5.0) as producer:
            result = producer.send(Message("Orders", b"one", tags="new", keys="k1"))
            assert isinstance(result, SendResult), result
            assert result.status is SendStatus.SEND_OK, result
            assert result.queue.topic == "Orders" and result.queue_offset == 0, result

            with ThreadPoolExecutor(8) as pool:
                results = list(
                    pool.map(lambda i: producer.send(Message("Orders", b"m%02d" % i)), range(20))
                )
            assert all(r.status is SendStatus.SEND_OK for r in results)
            assert len({r.msg_id for r in results}) == 20

            batch = producer.send_batch([Message("Batch", b"b1"), Message("Batch", b"b2")])
            assert batch.msg_id.count(",") == 1, batch
            assert producer.send_oneway(Message("Oneway", b"o1")) is None
            keyed = {producer.send(Message("Keyed", b"x"), sharding_key="user-7").queue
                     for _ in range(5)}
            assert len(keyed) == 1, keyed
            raises(ValueError, producer.send_batch, [])
            raises(ValueError, producer.send, Message("Orders", b"z"), timeout=-1)

        assert bodies("Orders") == [b"m%02d" % i for i in range(20)] + [b"one"]
        assert bodies("Batch") == [b"b1", b"b2"]
        deadline = time.monotonic() + 5
        while bodies("Oneway") != [b"o1"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bodies("Oneway") == [b"o1"]
        # shut down: sends raise the async API's own error
        error = raises(ProducerClosedError, producer.send, Message("Orders", b"late"))
        assert "shut down" in str(error), error
        producer.shutdown()  # again: nothing
        """
    )


def test_errors_are_the_async_apis() -> None:
    run_script(
        """
        producer = BlockingProducer("blocking_test", refused_address(), send_timeout=1.0)
        started = time.monotonic()
        error = raises(NoRouteError, producer.send, Message("Orders", b"one"))
        assert time.monotonic() - started < 10, time.monotonic() - started
        producer.shutdown()

        late = BlockingProducer("blocking_test", ADDRESS, start=False)
        raises(ProducerClosedError, late.send, Message("Orders", b"one"))
        late.start()
        assert late.send(Message("Orders", b"one")).status is SendStatus.SEND_OK
        late.shutdown()
        raises(TypeError, BlockingProducer, "g", ADDRESS, reactor=object())
        raises(ValueError, BlockingProducer, "g", [])
        """
    )


def test_refused_in_the_reactor_thread() -> None:
    run_script(
        """
        producer = BlockingProducer("blocking_test", ADDRESS)

        @crochet.wait_for(timeout=10)
        def in_reactor():
            errors = []
            for call in (
                lambda: producer.send(Message("Orders", b"x")),
                lambda: producer.send_oneway(Message("Orders", b"x")),
                lambda: producer.shutdown(),
                lambda: BlockingProducer("g", ADDRESS),
            ):
                try:
                    call()
                except RuntimeError as e:
                    errors.append(str(e))
            return errors

        errors = in_reactor()
        assert len(errors) == 4, errors
        assert all("reactor thread" in e for e in errors), errors
        assert "BlockingProducer.producer" in errors[0], errors
        assert "use Producer there" in errors[3], errors
        assert producer.send(Message("Orders", b"ok")).status is SendStatus.SEND_OK
        producer.shutdown()
        """
    )


CONSUMER_PRELUDE = """
from rmqtwist.blocking import BlockingConsumer
from rmqtwist.consumer import ConsumeFrom, ConsumerClosedError

with BlockingProducer("blocking_test", ADDRESS) as producer:
    for n in range(10):
        producer.send(Message("Orders", b"m%d" % n, tags="A" if n % 2 else "B"))
ALL = sorted(b"m%d" % n for n in range(10))
"""


#: The consumer tests wait for ``rmqtwist.consumer`` to export PullConsumer (issue 13:
#: the lite pull consumer lands separately).
needs_pull_consumer = pytest.mark.skipif(
    not all(hasattr(rmqtwist.consumer, name) for name in ("PullConsumer", "ConsumeFrom")),
    reason="rmqtwist.consumer does not export PullConsumer yet",
)


def run_consumer_script(body: str) -> None:
    run_script(CONSUMER_PRELUDE + textwrap.dedent(body))


@needs_pull_consumer
def test_consumer_reads_every_message_and_commits() -> None:
    run_consumer_script(
        """
        with BlockingConsumer("g1", ADDRESS, "Orders", consume_from=ConsumeFrom.FIRST) as c:
            assert len(c.assignment()) == 4, c.assignment()
            got = [m.body for m in c.messages(timeout=2)]
            assert sorted(got) == ALL, got
            assert all(m.topic == "Orders" for m in c.poll(0.1)) is True
        committed = BROKER.offsets("g1")["Orders"]
        assert sum(committed.values()) == 10, committed

        # the group has read everything: a new member gets nothing
        started = time.monotonic()
        with BlockingConsumer("g1", ADDRESS, "Orders", consume_from=ConsumeFrom.FIRST) as c:
            assert list(c.messages(timeout=1)) == []
        assert time.monotonic() - started < 30

        # a tag expression
        with BlockingConsumer("g2", ADDRESS, "Orders", "A", consume_from=ConsumeFrom.FIRST) as c:
            got = sorted(m.body for m in c.messages(timeout=2))
        assert got == [b"m1", b"m3", b"m5", b"m7", b"m9"], got
        """
    )


@needs_pull_consumer
def test_max_messages_break_and_poll_limits_leave_nothing_behind() -> None:
    run_consumer_script(
        """
        consumer = BlockingConsumer(
            "g3", ADDRESS, "Orders", consume_from=ConsumeFrom.FIRST, auto_commit=False
        )
        first = [m.body for m in consumer.messages(timeout=2, max_messages=3)]
        assert len(first) == 3, first
        for message in consumer.messages(timeout=2):
            second = message.body
            break  # nothing fetched is left behind
        two = [m.body for m in consumer.poll(2, max_messages=2)]
        assert len(two) == 2, two
        rest = [m.body for m in consumer.messages(timeout=2)]
        assert sorted(first + [second] + two + rest) == ALL, (first, second, two, rest)
        raises(ValueError, consumer.poll, 1, max_messages=0)
        assert consumer.poll(0.2) == []
        consumer.commit()
        queues = sorted(consumer.assignment())
        assert sum(consumer.committed(q) or 0 for q in queues) == 10
        raises(ValueError, lambda: list(consumer.messages(timeout=-1)))
        consumer.shutdown()
        raises(ConsumerClosedError, consumer.poll, 0.1)
        """
    )


@needs_pull_consumer
def test_consumer_refused_in_the_reactor_thread() -> None:
    run_consumer_script(
        """
        consumer = BlockingConsumer("g4", ADDRESS, "Orders")

        @crochet.wait_for(timeout=10)
        def in_reactor():
            errors = []
            for call in (lambda: consumer.poll(0.1), consumer.commit, consumer.shutdown):
                try:
                    call()
                except RuntimeError as e:
                    errors.append(str(e))
            return errors

        errors = in_reactor()
        assert len(errors) == 3 and all("BlockingConsumer.consumer" in e for e in errors), errors
        consumer.shutdown()
        """
    )
