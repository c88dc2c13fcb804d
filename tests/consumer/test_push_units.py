"""``PushConsumer`` pieces without a broker: the in-flight offsets of a queue, the local
offsets file, the listener's results, the life cycle's edges (Clock, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from rmqtwist.consumer import ConsumeResult, MessageModel, PushConsumer
from rmqtwist.consumer._process_queue import LocalOffsets, ProcessQueue
from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue

Q = MessageQueue("T", "b", 0)


def message(offset: int, body: bytes = b"x") -> MessageExt:
    return MessageExt("T", body, queue_offset=offset)


def test_commit_offset_is_the_lowest_unfinished_message() -> None:
    pq = ProcessQueue(Q, 0)
    assert pq.commit_offset() is None
    messages = [message(i, b"abc") for i in range(5)]
    assert pq.add(messages) == messages
    assert pq.add(messages[:2]) == []  # already held
    assert (pq.cached_messages, pq.cached_bytes) == (5, 15)
    assert pq.remove(messages[3]) == 0
    assert pq.remove(messages[0]) == 1
    assert pq.remove(messages[1]) == 2
    assert pq.first() == messages[2]
    assert pq.remove(messages[2]) == 4
    assert pq.remove(messages[4]) == 5
    assert (pq.cached_messages, pq.cached_bytes) == (0, 0)
    pq.advance(9)  # a pull skipped 5..8 (other tags)
    assert pq.commit_offset() == 9


def test_local_offsets_file_round_trip(tmp_path: Path) -> None:
    offsets = LocalOffsets("G", str(tmp_path))
    offsets.save({Q: 7})
    assert LocalOffsets("G", str(tmp_path)).get(Q) == 7
    assert LocalOffsets("other", str(tmp_path)).get(Q) is None
    (tmp_path / "G.json").write_text("not json")
    assert LocalOffsets("G", str(tmp_path)).get(Q) is None
    assert LocalOffsets("G", None).get(Q) is None


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (None, ConsumeResult.SUCCESS),
        (True, ConsumeResult.SUCCESS),
        (False, ConsumeResult.RETRY),
        (ConsumeResult.SUSPEND, ConsumeResult.SUSPEND),
        ("odd", ConsumeResult.RETRY),
    ],
)
@pytest_twisted.ensureDeferred
async def test_listener_results(returned: object, expected: ConsumeResult) -> None:
    for listener in (
        lambda m: returned,
        lambda m: succeed(returned),
    ):
        consumer = PushConsumer("G", "127.0.0.1:1", listener, reactor=Clock())
        assert await consumer._call_listener(message(0)) is expected

    async def coroutine(m: MessageExt) -> object:
        return returned

    consumer = PushConsumer("G", "127.0.0.1:1", coroutine, reactor=Clock())
    assert await consumer._call_listener(message(0)) is expected


@pytest_twisted.ensureDeferred
async def test_a_listener_that_raises_means_retry() -> None:
    def listener(m: MessageExt) -> None:
        raise RuntimeError("boom")

    consumer = PushConsumer("G", "127.0.0.1:1", listener, reactor=Clock())
    assert await consumer._call_listener(message(0)) is ConsumeResult.RETRY


def test_edges_of_the_life_cycle() -> None:
    with pytest.raises(ValueError):
        PushConsumer("G", [], print)
    with pytest.raises(ValueError):
        PushConsumer("G", "127.0.0.1:1", print, concurrency=0)
    with pytest.raises(ValueError):
        PushConsumer("G", "127.0.0.1:1", reactor=Clock()).start()
    consumer = PushConsumer("G", "127.0.0.1:1", print, reactor=Clock())
    fired: list[object] = []
    consumer.shutdown().addCallback(fired.append)  # never started: fine, fires at once
    consumer.shutdown().addCallback(fired.append)
    assert fired == [None, None]


def test_retry_topic_only_in_clustering() -> None:
    clustering = PushConsumer("G", "127.0.0.1:1", print, reactor=Clock())
    clustering.subscribe("T", "A || B")
    assert set(clustering._all_subscriptions()) == {"T", "%RETRY%G"}
    data = clustering._consumer_data().to_json()
    assert data["consumeType"] == "CONSUME_PASSIVELY"
    assert data["messageModel"] == "CLUSTERING"
    assert {s["topic"] for s in data["subscriptionDataSet"]} == {"T", "%RETRY%G"}
    broadcasting = PushConsumer(
        "G", "127.0.0.1:1", print, reactor=Clock(), model=MessageModel.BROADCASTING
    )
    broadcasting.subscribe("T")
    assert set(broadcasting._all_subscriptions()) == {"T"}
    broadcasting.unsubscribe("T")
    assert broadcasting._all_subscriptions() == {}


def test_pull_loop_backs_off_jumps_and_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the Clock: an error waits 3 s, OFFSET_ILLEGAL jumps and commits, a queue at
    its cap pulls no more (looked at every 50 ms) until the listener drains it."""
    from twisted.internet.defer import Deferred, ensureDeferred

    from rmqtwist.consumer import _push_consume
    from rmqtwist.consumer._base import PullResult, PullStatus, Subscription

    clock = Clock()
    gates: list[Deferred[None]] = []

    def listener(m: MessageExt) -> Deferred[None]:
        gates.append(Deferred())
        return gates[-1]

    consumer = PushConsumer("G", "127.0.0.1:1", listener, reactor=clock, max_cached_messages=2)
    monkeypatch.setattr(consumer, "_address", lambda q: "broker:1")
    calls: list[tuple[float, int, int]] = []
    committed: list[int] = []
    pending: Deferred[PullResult] = Deferred()
    answers: list[object] = [
        RuntimeError("connection refused"),
        PullResult(PullStatus.OFFSET_ILLEGAL, 5, 5, 7, []),
        PullResult(PullStatus.FOUND, 7, 5, 7, [message(5), message(6)]),
        pending,
    ]

    async def fake_pull(
        client: object, address: str, group: str, queue: object, offset: int, **kw: int
    ) -> object:
        calls.append((clock.seconds(), offset, kw["max_nums"]))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Deferred):
            return await answer
        return answer

    async def fake_update(
        client: object, address: str, group: str, queue: object, offset: int, **kw: object
    ) -> None:
        committed.append(offset)

    monkeypatch.setattr(_push_consume, "pull", fake_pull)
    monkeypatch.setattr(_push_consume, "update_offset", fake_update)
    pq = ProcessQueue(Q, 0)
    consumer._queues[Q] = pq
    ensureDeferred(consumer._pull_loop(pq, Subscription("T")))
    assert calls == [(0.0, 0, 2)]
    clock.advance(2.9)
    assert len(calls) == 1
    clock.advance(0.1)  # 3 s after the error: the jump, then the messages
    assert calls[1:] == [(3.0, 0, 2), (3.0, 5, 2)]
    assert committed == [5]
    assert pq.cached_messages == 2 and len(gates) == 2
    clock.advance(0.5)
    assert len(calls) == 3  # paused at the cap
    gates[0].callback(None)
    assert consumer._offsets[Q] == 6  # 5 done, 6 still running
    clock.advance(0.05)
    assert calls[3][1:] == (7, 1)  # room for one
    gates[1].callback(None)
    assert consumer._offsets[Q] == 7
    pq.dropped = True
    pending.callback(PullResult(PullStatus.NO_NEW_MSG, 7, 5, 7, []))  # ignored


def test_a_failed_send_back_is_consumed_again_locally_after_5_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.internet.defer import ensureDeferred

    from rmqtwist.consumer import _push_consume

    clock = Clock()
    seen: list[tuple[float, int]] = []

    def listener(m: MessageExt) -> bool:
        seen.append((clock.seconds(), m.reconsume_times))
        return len(seen) > 1  # fails once

    consumer = PushConsumer("G", "127.0.0.1:1", listener, reactor=clock)
    monkeypatch.setattr(consumer, "_address", lambda q: "broker:1")

    async def broken_send_back(*args: object, **kw: object) -> None:
        raise ConnectionError("broker away")

    monkeypatch.setattr(_push_consume, "send_back", broken_send_back)
    pq = ProcessQueue(Q, 0)
    consumer._queues[Q] = pq
    pq.add([message(0)])
    ensureDeferred(consumer._consume_one(pq, message(0)))
    assert seen == [(0.0, 0)] and pq.cached_messages == 1  # not done: the offset holds
    clock.advance(5)
    assert seen == [(0.0, 0), (5.0, 1)]
    assert pq.cached_messages == 0 and consumer._offsets[Q] == 1
