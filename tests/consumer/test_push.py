"""``rmqtwist.consumer.PushConsumer`` against the dev broker (real reactor): consuming what
a Producer sent, tag filters, the concurrency cap, flow control, offsets, retries and the
DLQ, graceful shutdown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from rmqtwist.consumer import ConsumeFrom, ConsumeResult, PushConsumer
from rmqtwist.message import Message, MessageExt
from rmqtwist.producer import Producer
from rmqtwist.testing import RunningBroker, start_broker


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await sleep(0.02)
        waited += 0.02


async def produce(broker: RunningBroker, topic: str, bodies: list[bytes], **kw: Any) -> None:
    producer = Producer("PG", [broker.address])
    await producer.start()
    try:
        for body in bodies:
            await producer.send(Message(topic, body, **kw))
    finally:
        await producer.shutdown()


def consumer(broker: RunningBroker, group: str, listener: Any, **kw: Any) -> PushConsumer:
    kw.setdefault("consume_from", ConsumeFrom.FIRST)
    kw.setdefault("persist_interval", 0.2)
    return PushConsumer(group, [broker.address], listener, **kw)


@pytest_twisted.ensureDeferred
async def test_consumes_what_a_producer_sent_with_a_tag_filter() -> None:
    broker = await start_broker()
    try:
        await produce(broker, "T", [b"a-%d" % i for i in range(10)], tags="A")
        await produce(broker, "T", [b"b-%d" % i for i in range(10)], tags="B")
        got: list[MessageExt] = []
        c = consumer(broker, "G", got.append)
        c.subscribe("T", "A")
        await c.start()
        await until(lambda: len(got) >= 10, what="10 messages")
        await sleep(0.2)
        assert sorted(m.body for m in got) == sorted(b"a-%d" % i for i in range(10))
        assert all(m.topic == "T" and m.tags == "A" for m in got)
        assert len(c.assigned_queues) == 4 + 1  # T's queues + the retry topic's
        await c.shutdown()
        offsets = broker.offsets("G")["T"]
        assert sum(offsets.values()) == 20  # the B messages are skipped, not left behind
        await c.shutdown()  # twice is fine
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_coroutine_and_deferred_listeners_and_the_concurrency_cap() -> None:
    broker = await start_broker()
    try:
        await produce(broker, "T", [b"%d" % i for i in range(30)])
        running = 0
        most = 0
        done: list[bytes] = []

        async def listener(message: MessageExt) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await sleep(0.02)
            running -= 1
            done.append(message.body)

        c = consumer(broker, "G", listener, concurrency=3)
        c.subscribe("T")
        await c.start()
        await until(lambda: len(done) == 30, what="30 messages")
        assert most == 3
        await c.shutdown()
        assert sum(broker.offsets("G")["T"].values()) == 30

        deferred_got: list[bytes] = []

        def deferred_listener(message: MessageExt) -> Deferred[bool]:
            deferred_got.append(message.body)
            return deferLater(reactor, 0.001, lambda: True)

        await produce(broker, "T", [b"more"])
        c2 = consumer(broker, "G", deferred_listener)
        c2.subscribe("T")
        await c2.start()
        await until(lambda: deferred_got == [b"more"], what="the new message")
        await c2.shutdown()
        assert sum(broker.offsets("G")["T"].values()) == 31
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_flow_control_pauses_a_queue_past_its_cap() -> None:
    broker = await start_broker()
    broker.create_topic("F", 1)
    try:
        await produce(broker, "F", [b"%d" % i for i in range(40)])
        gate: Deferred[None] = Deferred()
        got: list[bytes] = []

        def listener(message: MessageExt) -> Deferred[None]:
            got.append(message.body)
            return gate

        c = consumer(broker, "G", listener, max_cached_messages=5, concurrency=50)
        c.subscribe("F")
        await c.start()
        await until(lambda: len(got) == 5, what="5 messages")
        await sleep(0.3)
        assert len(got) == 5  # paused: five cached, none more pulled
        [queue] = [q for q in c.assigned_queues if q.topic == "F"]
        assert c._queues[queue].cached_messages == 5
        gate.callback(None)
        await until(lambda: len(got) == 40, what="the rest")
        await c.shutdown()
        assert broker.offsets("G")["F"] == {0: 40}
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_offset_only_up_to_the_lowest_unfinished_message_and_resume() -> None:
    broker = await start_broker()
    broker.create_topic("O", 1)
    try:
        await produce(broker, "O", [b"%d" % i for i in range(10)])
        slow: Deferred[None] = Deferred()
        got: list[bytes] = []

        def listener(message: MessageExt) -> Deferred[None] | None:
            got.append(message.body)
            return slow if message.body == b"3" else None

        c = consumer(broker, "G", listener)
        c.subscribe("O")
        await c.start()
        await until(lambda: len(got) == 10, what="10 messages")
        await sleep(0.5)  # a few persist rounds
        assert broker.offsets("G")["O"] == {0: 3}
        # A consumer killed now (no shutdown) loses nothing: a new one starts at 3.
        c._stopping = True
        for pq in c._queues.values():
            pq.dropped = True
        await c.client.close(timeout=0)
        again: list[bytes] = []
        c2 = consumer(broker, "G", lambda m: again.append(m.body))
        c2.subscribe("O")
        await c2.start()
        await until(lambda: len(again) == 7, what="7 messages")
        assert sorted(again) == [b"%d" % i for i in range(3, 10)]
        await c2.shutdown()
        assert broker.offsets("G")["O"] == {0: 10}
        slow.callback(None)
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_graceful_shutdown_finishes_in_flight_work() -> None:
    broker = await start_broker()
    broker.create_topic("S", 1)
    try:
        await produce(broker, "S", [b"%d" % i for i in range(3)])
        finished: list[bytes] = []
        started: list[bytes] = []

        async def listener(message: MessageExt) -> None:
            started.append(message.body)
            await sleep(0.3)
            finished.append(message.body)

        c = consumer(broker, "G", listener)
        c.subscribe("S")
        await c.start()
        await until(lambda: len(started) == 3, what="3 started")
        await c.shutdown()
        assert len(finished) == 3
        assert broker.offsets("G")["S"] == {0: 3}
        assert broker.consumer_ids("G") == []
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_shutdown_is_bounded_by_its_timeout() -> None:
    broker = await start_broker()
    broker.create_topic("S", 1)
    try:
        await produce(broker, "S", [b"x"])
        never: Deferred[None] = Deferred()
        c = consumer(broker, "G", lambda m: never)
        c.subscribe("S")
        await c.start()
        await until(lambda: c._inflight == 1, what="the listener call")
        before = reactor.seconds()
        await c.shutdown(timeout=0.3)
        assert reactor.seconds() - before < 2
        assert broker.offsets("G").get("S", {0: 0}) == {0: 0}
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_consume_from_first_last_and_timestamp() -> None:
    broker = await start_broker()
    broker.create_topic("C", 1)
    try:
        await produce(broker, "C", [b"old"])
        await sleep(0.5)
        middle = reactor.seconds()  # nearer "newer" than "old": the broker finds the nearest
        await produce(broker, "C", [b"newer"])
        results: dict[str, list[bytes]] = {}
        for name, where, stamp in (
            ("first", ConsumeFrom.FIRST, None),
            ("last", ConsumeFrom.LAST, None),
            ("stamp", ConsumeFrom.TIMESTAMP, middle),
        ):
            got: list[bytes] = []
            c = consumer(
                broker,
                "G-" + name,
                lambda m, got=got: got.append(m.body),
                consume_from=where,
                consume_timestamp=stamp,
            )
            c.subscribe("C")
            await c.start()
            await sleep(0.3)
            await produce(broker, "C", [b"after-" + name.encode()])
            await until(lambda got=got: any(b.startswith(b"after") for b in got), what=name)
            await c.shutdown()
            results[name] = [b for b in got if not b.startswith(b"after")]
        assert results["first"][:2] == [b"old", b"newer"]
        assert results["last"] == []
        assert results["stamp"][:1] == [b"newer"]
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_failure_is_retried_then_reaches_the_dlq() -> None:
    broker = await start_broker(delay_levels=(0.1,) * 18)
    broker.create_topic("R", 1)
    try:
        await produce(broker, "R", [b"bad", b"good"])
        seen: list[tuple[bytes, str, int]] = []

        def listener(message: MessageExt) -> ConsumeResult | None:
            seen.append((message.body, message.topic, message.reconsume_times))
            if message.body == b"bad":
                raise ValueError("cannot")
            return None

        c = consumer(broker, "G", listener, max_reconsume_times=2)
        c.subscribe("R")
        await c.start()
        await until(lambda: len(broker.messages("%DLQ%G")) == 1, what="the DLQ", timeout=15)
        await sleep(0.3)
        await c.shutdown()
        bad = [(topic, times) for body, topic, times in seen if body == b"bad"]
        assert bad == [("R", 0), ("R", 1), ("R", 2)]
        assert [body for body, _, _ in seen].count(b"good") == 1
        assert broker.offsets("G")["R"] == {0: 2}
        assert broker.messages("%DLQ%G")[0].body == b"bad"
    finally:
        await broker.stop()
