"""``PushConsumer`` groups against the dev broker (real reactor): two members split the
queues and a crashed member's queues move, broadcasting, orderly consumption with broker
locks, and a broker restarted mid-stream (at-least-once, duplicates counted)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest_twisted

from rmqtwist.broker.locks import MessageQueue as LockQueue
from rmqtwist.broker.store.disk import DiskStore
from rmqtwist.consumer import ConsumeFrom, ConsumeResult, MessageModel, PushConsumer
from rmqtwist.message import Message, MessageExt
from rmqtwist.producer import Producer
from rmqtwist.testing import RunningBroker, start_broker
from tests.consumer.test_push import produce, sleep, until


def member(broker: RunningBroker | str, group: str, listener: Any, **kw: Any) -> PushConsumer:
    address = broker if isinstance(broker, str) else broker.address
    kw.setdefault("consume_from", ConsumeFrom.FIRST)
    kw.setdefault("persist_interval", 0.2)
    kw.setdefault("rebalance_interval", 0.5)
    return PushConsumer(group, [address], listener, **kw)


async def crash(consumer: PushConsumer) -> None:
    """Kill a consumer without its shutdown: no commit, no unregister, connections cut."""
    consumer._stopping = True
    consumer._running = False
    for loop in consumer._loops:
        if loop.running:
            loop.stop()
    for pq in consumer._queues.values():
        pq.dropped = True
    await consumer.client.close(timeout=0)


def topic_queues(consumer: PushConsumer, topic: str) -> set[Any]:
    return {q for q in consumer.assigned_queues if q.topic == topic}


@pytest_twisted.ensureDeferred
async def test_two_members_split_the_queues_and_a_crashed_ones_move() -> None:
    broker = await start_broker()
    broker.create_topic("T", 4)
    try:
        got: list[tuple[str, bytes]] = []
        one = member(broker, "G", lambda m: got.append(("one", m.body)), client_id="a")
        two = member(broker, "G", lambda m: got.append(("two", m.body)), client_id="b")
        one.subscribe("T")
        two.subscribe("T")
        await one.start()
        await two.start()
        await until(
            lambda: len(topic_queues(one, "T")) == 2 and len(topic_queues(two, "T")) == 2,
            what="two queues each",
        )
        assert not topic_queues(one, "T") & topic_queues(two, "T")
        await produce(broker, "T", [b"%d" % i for i in range(40)])
        await until(lambda: len(got) >= 40, what="40 messages")
        await sleep(0.3)
        bodies = Counter(body for _, body in got)
        assert set(bodies) == {b"%d" % i for i in range(40)}
        assert max(bodies.values()) == 1
        assert {who for who, _ in got} == {"one", "two"}
        await sleep(0.5)  # offsets committed
        await crash(two)
        await until(lambda: len(topic_queues(one, "T")) == 4, what="all four queues")
        got.clear()
        await produce(broker, "T", [b"late-%d" % i for i in range(8)])
        await until(lambda: len(got) >= 8, what="8 late messages")
        assert {body for _, body in got} >= {b"late-%d" % i for i in range(8)}
        await one.shutdown()
        assert sum(broker.offsets("G")["T"].values()) == 48
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_broadcasting_gives_every_member_every_message(tmp_path: Path) -> None:
    broker = await start_broker()
    broker.create_topic("B", 2)
    try:
        got: dict[str, list[bytes]] = {"one": [], "two": []}
        members = [
            member(
                broker,
                "GB",
                lambda m, who=who: got[who].append(m.body),
                model=MessageModel.BROADCASTING,
                client_id=who,
                offset_dir=str(tmp_path / who),
            )
            for who in ("one", "two")
        ]
        for consumer in members:
            consumer.subscribe("B")
            await consumer.start()
            assert len(consumer.assigned_queues) == 2  # every queue, no retry topic
        await produce(broker, "B", [b"%d" % i for i in range(20)])
        await until(lambda: all(len(v) >= 20 for v in got.values()), what="20 each")
        for consumer in members:
            await consumer.shutdown()
        assert sorted(got["one"]) == sorted(got["two"]) == sorted(b"%d" % i for i in range(20))
        assert broker.offsets("GB") == {}  # kept locally
        # A member restarted with its offset file goes on where it stopped.
        await produce(broker, "B", [b"new"])
        again: list[bytes] = []
        restarted = member(
            broker,
            "GB",
            lambda m: again.append(m.body),
            model=MessageModel.BROADCASTING,
            client_id="one",
            offset_dir=str(tmp_path / "one"),
        )
        restarted.subscribe("B")
        await restarted.start()
        await until(lambda: again == [b"new"], what="only the new message")
        await sleep(0.2)
        assert again == [b"new"]
        await restarted.shutdown()
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_orderly_keeps_each_keys_order_and_holds_the_lock() -> None:
    broker = await start_broker()
    broker.create_topic("S", 4)
    try:
        producer = Producer("PG", [broker.address])
        await producer.start()
        for i in range(30):
            key = f"order-{i % 3}"
            await producer.send(Message("S", f"{key}:{i}".encode()), sharding_key=key)
        await producer.shutdown()
        got: list[str] = []
        tries: Counter[str] = Counter()
        times: dict[str, list[int]] = {}

        async def listener(message: MessageExt) -> ConsumeResult:
            body = message.body.decode()
            tries[body] += 1
            times.setdefault(body, []).append(message.reconsume_times)
            await sleep(random.random() * 0.01)
            if body.endswith(":4") and tries[body] < 3:
                return ConsumeResult.SUSPEND
            got.append(body)
            return ConsumeResult.SUCCESS

        consumer = member(broker, "GO", listener, orderly=True, suspend_time=0.05)
        consumer.subscribe("S")
        await consumer.start()
        await until(lambda: len(got) == 30, what="30 messages")
        for key in range(3):
            sequence = [int(b.split(":")[1]) for b in got if b.startswith(f"order-{key}:")]
            assert sequence == sorted(sequence) and len(sequence) == 10
        assert times["order-1:4"] == [0, 1, 2]
        locks = broker.broker.locks
        for queue in topic_queues(consumer, "S"):
            lock_queue = LockQueue(queue.topic, queue.broker_name, queue.queue_id)
            assert locks.owner("GO", lock_queue) == consumer.client_id
        held = topic_queues(consumer, "S")
        await consumer.shutdown()
        for queue in held:
            lock_queue = LockQueue(queue.topic, queue.broker_name, queue.queue_id)
            assert locks.owner("GO", lock_queue) is None
        assert sum(broker.offsets("GO")["S"].values()) == 30
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_orderly_failure_past_the_limit_goes_to_the_dlq_and_the_queue_goes_on() -> None:
    broker = await start_broker()
    broker.create_topic("S", 1)
    try:
        await produce(broker, "S", [b"bad", b"after"])
        got: list[tuple[bytes, int]] = []

        def listener(message: MessageExt) -> bool:
            got.append((message.body, message.reconsume_times))
            return message.body != b"bad"

        consumer = member(
            broker, "GO", listener, orderly=True, suspend_time=0.02, max_reconsume_times=2
        )
        consumer.subscribe("S")
        await consumer.start()
        await until(lambda: (b"after", 0) in got, what="the next message")
        assert got == [(b"bad", 0), (b"bad", 1), (b"bad", 2), (b"after", 0)]
        await until(lambda: len(broker.messages("%DLQ%GO")) == 1, what="the DLQ")
        await consumer.shutdown()
        assert broker.offsets("GO")["S"] == {0: 2}
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_broker_restarted_mid_stream_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = await start_broker(store=DiskStore(data))
    port = broker.port
    broker.create_topic("D", 2)
    seen: Counter[bytes] = Counter()
    consumer = member(broker, "GD", lambda m: seen.update([m.body]), persist_interval=0.1)
    consumer.subscribe("D")
    try:
        await consumer.start()
        await produce(broker, "D", [b"first-%d" % i for i in range(20)])
        await until(lambda: len(seen) == 20, what="the first 20")
        await sleep(0.4)  # committed, and the broker saves offsets at stop
        await broker.stop()
        await sleep(0.5)  # pulls fail meanwhile, the consumer backs off
        broker = await start_broker(store=DiskStore(data), port=port)
        broker.create_topic("D", 2)
        await produce(broker, "D", [b"second-%d" % i for i in range(20)])
        await until(lambda: len(seen) == 40, timeout=20, what="all 40")
        await consumer.shutdown()
        duplicates = sum(n - 1 for n in seen.values())
        print(f"duplicates after the broker restart: {duplicates}")
        assert set(seen) == {b"first-%d" % i for i in range(20)} | {
            b"second-%d" % i for i in range(20)
        }
        assert sum(broker.offsets("GD")["D"].values()) == 40
    finally:
        await consumer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_notify_consumer_ids_changed_rebalances_without_waiting_for_the_timer() -> None:
    broker = await start_broker()
    broker.create_topic("N", 4)
    try:
        one = member(broker, "GN", lambda m: None, client_id="a", rebalance_interval=600)
        two = member(broker, "GN", lambda m: None, client_id="b", rebalance_interval=600)
        one.subscribe("N")
        await one.start()
        assert len(topic_queues(one, "N")) == 4
        two.subscribe("N")
        await two.start()  # the broker tells "a" (code 40): it lets two queues go
        await until(lambda: len(topic_queues(one, "N")) == 2, what="a's half")
        assert not topic_queues(one, "N") & topic_queues(two, "N")
        await crash(two)
        await until(lambda: len(topic_queues(one, "N")) == 4, what="all four again")
        await one.shutdown()
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_subscribe_after_start() -> None:
    broker = await start_broker()
    broker.create_topic("L", 1)
    try:
        got: list[bytes] = []
        consumer = member(broker, "GL", lambda m: got.append(m.body))
        consumer.subscribe("unused")
        await consumer.start()
        await produce(broker, "L", [b"x"])
        consumer.subscribe("L")
        await until(lambda: got == [b"x"], what="the message")
        consumer.unsubscribe("L")
        await until(lambda: not topic_queues(consumer, "L"), what="L dropped")
        await consumer.shutdown()
        assert broker.offsets("GL")["L"] == {0: 1}
    finally:
        await broker.stop()
