"""``rmqtwist.consumer.PullConsumer`` (lite pull) against the dev broker, real reactor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from zope.interface import implementer

from rmqtwist.broker.store import DiskStore
from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand
from rmqtwist.consumer import ConsumeFrom, PullConsumer
from rmqtwist.interfaces import IRPCHook
from rmqtwist.message import Message, MessageExt
from rmqtwist.producer import Producer
from rmqtwist.routing import MessageQueue
from rmqtwist.testing import RunningBroker, start_broker

TOPIC = "LiteT"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    waited = 0.0
    while not check():
        assert waited < timeout, "condition not met in time"
        await sleep(0.05)
        waited += 0.05


async def poll_all(consumer: PullConsumer, count: int, timeout: float = 10.0) -> list[MessageExt]:
    got: list[MessageExt] = []
    waited = 0.0
    while len(got) < count and waited < timeout:
        batch = await consumer.poll(0.2)
        got.extend(batch)
        if not batch:
            waited += 0.2
    return got


async def send(producer: Producer, count: int, topic: str = TOPIC, **kw: Any) -> list[bytes]:
    bodies = []
    for i in range(count):
        body = f"m-{i}".encode()
        await producer.send(Message(topic, body, **kw))
        bodies.append(body)
    return bodies


@pytest_twisted.async_yield_fixture
async def env() -> AsyncIterator[tuple[RunningBroker, Producer]]:
    broker = await start_broker()
    broker.create_topic(TOPIC, 4)
    producer = Producer("PG", broker.address)
    await producer.start()
    yield broker, producer
    await producer.shutdown()
    await broker.stop()


def consumer_of(broker: RunningBroker, group: str = "LG", **kw: Any) -> PullConsumer:
    kw.setdefault("consume_from", ConsumeFrom.FIRST)
    return PullConsumer(group, broker.address, **kw)


@pytest_twisted.ensureDeferred
async def test_poll_everything_back_then_commit(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    sent = await send(producer, 20, tags="TagA")
    consumer = consumer_of(broker)
    consumer.subscribe(TOPIC)
    await consumer.start()
    try:
        assert len(consumer.assignment()) == 4
        got = await poll_all(consumer, 20)
        assert sorted(m.body for m in got) == sorted(sent)
        assert all(isinstance(m, MessageExt) and m.topic == TOPIC for m in got)
        assert await consumer.poll(0.1) == []
        await consumer.commit()
        offsets = broker.offsets("LG")[TOPIC]
        assert sum(offsets.values()) == 20
        queue = sorted(consumer.assignment())[0]
        assert await consumer.committed(queue) == offsets[queue.queue_id]
    finally:
        await consumer.shutdown()
    assert broker.consumer_ids("LG") == []


@pytest_twisted.ensureDeferred
async def test_tag_filter(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    await send(producer, 6, tags="TagA")
    await send(producer, 6, tags="TagB")
    await send(producer, 3, tags="TagC")
    consumer = consumer_of(broker)
    consumer.subscribe(TOPIC, "TagB || TagC")
    await consumer.start()
    try:
        got = await poll_all(consumer, 9)
        assert sorted(m.tags or "" for m in got) == ["TagB"] * 6 + ["TagC"] * 3
        assert await consumer.poll(0.3) == []
        await consumer.commit()  # filtered messages are skipped over by the commit
        assert sum(broker.offsets("LG")[TOPIC].values()) == 15
    finally:
        await consumer.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_new_member_continues_where_the_first_committed(
    env: tuple[RunningBroker, Producer],
) -> None:
    broker, producer = env
    sent = await send(producer, 12)
    first = consumer_of(broker, poll_batch_size=5, auto_commit=False)
    first.subscribe(TOPIC)
    await first.start()
    seen = await first.poll(5)
    assert len(seen) == 5
    await first.commit()
    await first.shutdown()  # auto-commit off: the buffered rest is not committed
    assert sum(broker.offsets("LG")[TOPIC].values()) == 5
    second = consumer_of(broker)
    second.subscribe(TOPIC)
    await second.start()
    try:
        rest = await poll_all(second, 7)
        assert sorted(m.body for m in seen + rest) == sorted(sent)
        assert await second.poll(0.2) == []
    finally:
        await second.shutdown()
    assert sum(broker.offsets("LG")[TOPIC].values()) == 12  # auto-commit at shutdown


@pytest_twisted.ensureDeferred
async def test_shutdown_commits_only_what_poll_returned(
    env: tuple[RunningBroker, Producer],
) -> None:
    broker, producer = env
    await send(producer, 12)
    consumer = consumer_of(broker, poll_batch_size=5, auto_commit_interval=60)
    consumer.subscribe(TOPIC)
    await consumer.start()
    await until(lambda: sum(len(s.buffer) for s in consumer._queues.values()) == 12)
    assert len(await consumer.poll(1)) == 5
    await consumer.shutdown()  # the 7 buffered, never returned, stay uncommitted
    assert sum(broker.offsets("LG")[TOPIC].values()) == 5


@pytest_twisted.ensureDeferred
async def test_without_auto_commit_nothing_is_committed_until_commit(
    env: tuple[RunningBroker, Producer],
) -> None:
    broker, producer = env
    await send(producer, 8)
    consumer = consumer_of(broker, auto_commit=False, auto_commit_interval=0.05)
    consumer.subscribe(TOPIC)
    await consumer.start()
    try:
        assert len(await poll_all(consumer, 8)) == 8
        await sleep(0.2)
        assert broker.offsets("LG").get(TOPIC, {}) == {}
        await consumer.commit()
        assert sum(broker.offsets("LG")[TOPIC].values()) == 8
    finally:
        await consumer.shutdown()


@pytest_twisted.ensureDeferred
async def test_auto_commit_on_its_timer(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    await send(producer, 8)
    consumer = consumer_of(broker, auto_commit_interval=0.1)
    consumer.subscribe(TOPIC)
    await consumer.start()
    try:
        assert len(await poll_all(consumer, 8)) == 8
        await until(lambda: sum(broker.offsets("LG").get(TOPIC, {}).values()) == 8)
    finally:
        await consumer.shutdown()


@pytest_twisted.ensureDeferred
async def test_seek_and_seek_to_begin_replay(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    queue = MessageQueue(TOPIC, "broker-a", 1)
    for i in range(6):
        await producer.send(Message(TOPIC, b"q1-%d" % i), queue=queue)
    consumer = consumer_of(broker)
    consumer.assign([queue])
    await consumer.start()
    try:
        got = await poll_all(consumer, 6)
        assert [m.body for m in got] == [b"q1-%d" % i for i in range(6)]
        consumer.seek(queue, 4)
        again = await poll_all(consumer, 2)
        assert [m.queue_offset for m in again] == [4, 5]
        await consumer.seek_to_begin(queue)
        assert [m.queue_offset for m in await poll_all(consumer, 6)] == list(range(6))
        await consumer.seek_to_end(queue)
        assert await consumer.poll(0.2) == []
        await producer.send(Message(TOPIC, b"late"), queue=queue)
        assert [m.body for m in await poll_all(consumer, 1)] == [b"late"]
        with pytest.raises(ValueError, match="not assigned"):
            consumer.seek(MessageQueue(TOPIC, "broker-a", 0), 0)
    finally:
        await consumer.shutdown()


@pytest_twisted.ensureDeferred
async def test_assign_mode_takes_only_its_queues(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    await send(producer, 16)
    consumer = consumer_of(broker)
    queues = await consumer.fetch_queues(TOPIC)
    assert queues == [MessageQueue(TOPIC, "broker-a", i) for i in range(4)]
    consumer.assign(queues[:2])
    with pytest.raises(ValueError, match="assign"):
        consumer.subscribe(TOPIC)
    await consumer.start()
    try:
        assert consumer.assignment() == frozenset(queues[:2])
        expected = len(broker.messages(TOPIC, 0)) + len(broker.messages(TOPIC, 1))
        got = await poll_all(consumer, expected)
        assert len(got) == expected and {m.queue_id for m in got} <= {0, 1}
        assert await consumer.poll(0.2) == []
        assert broker.consumer_ids("LG") == []  # no group membership in assign mode
    finally:
        await consumer.shutdown()
    other = consumer_of(broker)
    other.subscribe(TOPIC)
    with pytest.raises(ValueError, match="subscribe"):
        other.assign(queues)


@pytest_twisted.ensureDeferred
async def test_two_members_split_the_queues(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    one = consumer_of(broker, rebalance_interval=60)
    two = consumer_of(broker, rebalance_interval=60)
    for consumer in (one, two):
        consumer.subscribe(TOPIC)
    await one.start()
    assert len(one.assignment()) == 4
    await two.start()
    try:
        # The broker tells the first member (NOTIFY_CONSUMER_IDS_CHANGED): it gives two up.
        await until(lambda: len(one.assignment()) == 2 and len(two.assignment()) == 2)
        assert one.assignment() | two.assignment() == frozenset(
            MessageQueue(TOPIC, "broker-a", i) for i in range(4)
        )
        sent = await send(producer, 20)
        got_one = await poll_all(one, 10, timeout=3)
        got_two = await poll_all(two, 10, timeout=3)
        assert sorted(m.body for m in got_one + got_two) == sorted(sent)
        assert {m.queue_id for m in got_one}.isdisjoint({m.queue_id for m in got_two})
    finally:
        await two.shutdown()
        await until(lambda: len(one.assignment()) == 4)  # the leaver's queues come back
        await one.shutdown()


@pytest_twisted.ensureDeferred
async def test_poll_timeout_cancel_and_shutdown_twice(env: tuple[RunningBroker, Producer]) -> None:
    broker, _ = env
    consumer = consumer_of(broker)
    consumer.subscribe(TOPIC)
    with pytest.raises(Exception, match="not started"):
        await consumer.poll(0.1)
    await consumer.start()
    assert await consumer.poll(0.2) == []
    cancelled = consumer.poll(5)
    cancelled.cancel()
    with pytest.raises(CancelledError):
        await cancelled
    pending = consumer.poll(10)
    await consumer.shutdown()
    assert await pending == []
    await consumer.shutdown()
    with pytest.raises(Exception, match="shut down"):
        await consumer.poll(0.1)
    assert broker.consumer_ids("LG") == []


@pytest_twisted.ensureDeferred
async def test_buffer_cap_pauses_pulling(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    queue = MessageQueue(TOPIC, "broker-a", 2)
    for i in range(10):
        await producer.send(Message(TOPIC, b"%d" % i), queue=queue)
    consumer = consumer_of(broker, max_cached_messages=4, pull_batch_size=4)
    pulls: list[int] = []

    @implementer(IRPCHook)
    class Count:
        def before_request(self, address: str, request: RemotingCommand) -> None:
            if request.code == RequestCode.PULL_MESSAGE:
                pulls.append(int((request.ext_fields or {})["queueOffset"]))

        def after_response(self, address: str, request: Any, response: Any) -> None:
            pass

    consumer.client.register_rpc_hook(Count())
    consumer.assign([queue])
    await consumer.start()
    try:
        await until(lambda: pulls == [0])
        await sleep(0.3)
        assert pulls == [0] and broker.held_pulls() == {}  # paused: full buffer
        got = await consumer.poll(1)
        assert [m.queue_offset for m in got] == [0, 1, 2, 3]
        await until(lambda: pulls == [0, 4])
        await sleep(0.2)
        assert pulls == [0, 4]
        got = await poll_all(consumer, 6)
        assert [m.queue_offset for m in got] == list(range(4, 10))
        await until(lambda: broker.held_pulls() == {(TOPIC, 2): 1})  # caught up: long poll
    finally:
        await consumer.shutdown()


@pytest_twisted.ensureDeferred
async def test_broker_restart_resumes_from_the_committed_offset(tmp_path: Path) -> None:
    broker = await start_broker(store=DiskStore(tmp_path, reactor=reactor))
    port = int(broker.address.rsplit(":", 1)[1])
    broker.create_topic(TOPIC, 2)
    producer = Producer("PG", broker.address, retries=5)
    await producer.start()
    consumer = PullConsumer(
        "LG", broker.address, consume_from=ConsumeFrom.FIRST, retry_delay=0.2,
        auto_commit_interval=0.2, rebalance_interval=0.5, heartbeat_interval=0.5,
    )  # fmt: skip
    consumer.subscribe(TOPIC)
    await consumer.start()
    try:
        sent = await send(producer, 10)
        got = await poll_all(consumer, 10)
        await consumer.commit()
        committed = broker.offsets("LG")[TOPIC]
        await broker.stop()
        broker = await start_broker(store=DiskStore(tmp_path, reactor=reactor), port=port)
        assert broker.offsets("LG")[TOPIC] == committed  # the commit survived
        more = [f"after-{i}".encode() for i in range(10)]
        for body in more:
            await producer.send(Message(TOPIC, body))
        got += await poll_all(consumer, 10, timeout=15)
        bodies = [m.body for m in got]
        duplicates = len(bodies) - len(set(bodies))
        assert set(bodies) == set(sent + more), f"{duplicates} duplicates"
        await consumer.commit()
        assert sum(broker.offsets("LG")[TOPIC].values()) == 20
        await until(lambda: broker.consumer_ids("LG") == [consumer.client_id])
    finally:
        await consumer.shutdown()
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_consume_from_last_skips_what_is_there(env: tuple[RunningBroker, Producer]) -> None:
    broker, producer = env
    await send(producer, 8)
    consumer = consumer_of(broker, consume_from=ConsumeFrom.LAST)
    consumer.subscribe(TOPIC)
    await consumer.start()
    try:
        assert await consumer.poll(0.3) == []  # a new group on a young queue: still the end
        await producer.send(Message(TOPIC, b"new"))
        assert [m.body for m in await poll_all(consumer, 1)] == [b"new"]
    finally:
        await consumer.shutdown()
