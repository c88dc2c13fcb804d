"""An orderly ``PushConsumer``'s queue locks on a Clock: renewed every 20 s (the broker's
lease is 60 s), a queue the broker does not grant back is neither consumed nor pulled
until it is, a lock not renewed for 30 s is not trusted, and the locks are given back
on drop and shutdown. The broker side is the dev broker's lock table and processor
(:mod:`rmqtwist.broker.locks`) on the same Clock; pulls are faked."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.lock_processor import LockProcessor
from rmqtwist.broker.locks import MessageQueue as LockQueue
from rmqtwist.broker.locks import QueueLocks
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.consumer import ConsumeFrom, ConsumeResult, PushConsumer, _push_consume
from rmqtwist.consumer._base import PullResult, PullStatus
from rmqtwist.errors import ConnectError
from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue

ROUTE = {
    "brokerDatas": [{"brokerAddrs": {"0": "b:1"}, "brokerName": "b"}],
    "queueDatas": [{"brokerName": "b", "perm": 6, "readQueueNums": 2, "writeQueueNums": 2}],
}
Q0, Q1 = MessageQueue("T", "b", 0), MessageQueue("T", "b", 1)
L0, L1 = LockQueue("T", "b", 0), LockQueue("T", "b", 1)


class FakeBroker:
    """The consumer's client: name server and broker in one, with the dev broker's lock
    table on the test's Clock. Long-polling pulls are held 15 s or until a message."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.locks = QueueLocks(clock.seconds, BrokerConfig().lock_lease)
        self._lock_processor = LockProcessor(SimpleNamespace(locks=self.locks))  # type: ignore[arg-type]
        self.members = ["me"]
        #: None: LOCK_BATCH_MQ is answered; else how it fails ("unreachable", "error").
        self.lock_failure: str | None = None
        self.requests: list[tuple[float, RemotingCommand]] = []
        self.messages: dict[int, list[MessageExt]] = {0: [], 1: []}
        #: (time, queue id, offset, commit offset) of each pull
        self.pulls: list[tuple[float, int, int, int]] = []
        self._held: dict[int, tuple[int, Deferred[PullResult], IDelayedCall]] = {}

    # -- the client's face ------------------------------------------------------------

    def register_processor(self, code: int, processor: Any) -> None:
        pass

    def invoke(self, address: str, request: RemotingCommand, timeout: float) -> Deferred[Any]:
        self.requests.append((self.clock.seconds(), request))
        code = request.code
        ok = RemotingCommand.response_to
        if code == RequestCode.GET_ROUTEINFO_BY_TOPIC:
            if request.ext("topic") != "T":  # no retry topic: only T's queues
                return succeed(ok(request, ResponseCode.TOPIC_NOT_EXIST))
            return succeed(ok(request, 0, body=json.dumps(ROUTE).encode()))
        if code == RequestCode.GET_CONSUMER_LIST_BY_GROUP:
            body = json.dumps({"consumerIdList": self.members}).encode()
            return succeed(ok(request, 0, body=body))
        if code == RequestCode.QUERY_CONSUMER_OFFSET:  # none yet: from the first
            return succeed(ok(request, ResponseCode.QUERY_NOT_FOUND))
        if code == RequestCode.LOCK_BATCH_MQ:
            if self.lock_failure == "unreachable":
                return fail(ConnectError("connection refused"))
            if self.lock_failure == "error":
                return succeed(ok(request, ResponseCode.SYSTEM_ERROR, remark="store busy"))
            return succeed(self._lock_processor.lock(None, request))  # type: ignore[arg-type]
        if code == RequestCode.UNLOCK_BATCH_MQ:
            return succeed(self._lock_processor.unlock(None, request))  # type: ignore[arg-type]
        return succeed(ok(request, 0))

    def invoke_oneway(
        self, address: str, request: RemotingCommand, timeout: float
    ) -> Deferred[None]:
        self.requests.append((self.clock.seconds(), request))
        return succeed(None)

    # -- what the test looks at -------------------------------------------------------

    def locked_batches(self, code: int = RequestCode.LOCK_BATCH_MQ) -> list[tuple[float, set[int]]]:
        """When (UN)LOCK_BATCH_MQ was sent, and the queue ids it named."""
        return [
            (when, {q["queueId"] for q in json.loads(r.body or b"{}")["mqSet"]})
            for when, r in self.requests
            if r.code == code
        ]

    def owner(self, queue: LockQueue) -> str | None:
        return self.locks.owner("G", queue)

    # -- pulls (patched in for _push_consume.pull) ------------------------------------

    def put(self, queue_id: int, body: bytes) -> None:
        stored = self.messages[queue_id]
        stored.append(MessageExt("T", body, queue_id=queue_id, queue_offset=len(stored)))
        held = self._held.pop(queue_id, None)
        if held is not None:
            offset, waiting, timer = held
            timer.cancel()
            waiting.callback(self._found(queue_id, offset))

    def _found(self, queue_id: int, offset: int) -> PullResult:
        stored = self.messages[queue_id]
        if offset >= len(stored):
            return PullResult(PullStatus.NO_NEW_MSG, offset, 0, len(stored), [])
        return PullResult(PullStatus.FOUND, len(stored), 0, len(stored), stored[offset:])

    async def pull(
        self, client: object, address: str, group: str, queue: MessageQueue, offset: int, **kw: Any
    ) -> PullResult:
        self.pulls.append((self.clock.seconds(), queue.queue_id, offset, kw["commit_offset"]))
        if offset < len(self.messages[queue.queue_id]):
            return self._found(queue.queue_id, offset)
        waiting: Deferred[PullResult] = Deferred()

        def suspended() -> None:
            del self._held[queue.queue_id]
            waiting.callback(self._found(queue.queue_id, offset))

        timer = self.clock.callLater(kw["suspend"], suspended)
        self._held[queue.queue_id] = (offset, waiting, timer)
        return await waiting

    def close(self) -> None:
        """Answer the pulls still held (the consumer has stopped: it ignores them)."""
        for queue_id in list(self._held):
            offset, waiting, timer = self._held.pop(queue_id)
            timer.cancel()
            waiting.callback(self._found(queue_id, offset))


class Run:
    """A started orderly consumer of T's two queues, its fake broker and its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> None:
        self.clock = Clock()
        self.broker = FakeBroker(self.clock)
        monkeypatch.setattr(_push_consume, "pull", self.broker.pull)
        #: (time, queue id, body, owner of the queue's broker lock at the call)
        self.calls: list[tuple[float, int, bytes, str | None]] = []
        #: body -> what the listener answers (default SUCCESS)
        self.answers: dict[bytes, ConsumeResult] = {}
        #: body -> seconds the listener blocks the reactor (time moves, no timer runs)
        self.blocks: dict[bytes, float] = {}
        kw.setdefault("suspend_time", 1.0)
        self.consumer = PushConsumer(
            "G",
            "ns:1",
            self.listener,
            reactor=self.clock,
            client=self.broker,  # type: ignore[arg-type]
            orderly=True,
            client_id="me",
            consume_from=ConsumeFrom.FIRST,
            rebalance_interval=600,
            persist_interval=600,
            heartbeat_interval=600,
            route_refresh=600,
            **kw,
        )
        self.consumer.subscribe("T")
        started: list[object] = []
        self.consumer.start().addCallback(started.append)
        assert started == [None]
        assert self.consumer.assigned_queues == {Q0, Q1}

    def listener(self, message: MessageExt) -> ConsumeResult:
        queue = LockQueue("T", "b", message.queue_id)
        owner = self.broker.owner(queue)
        self.calls.append((self.clock.seconds(), message.queue_id, message.body, owner))
        self.clock.rightNow += self.blocks.pop(message.body, 0.0)
        return self.answers.get(message.body, ConsumeResult.SUCCESS)

    def until(self, when: float) -> None:
        """Let the Clock run to ``when``, stopping at each whole second on the way."""
        while self.clock.seconds() < when:
            now = self.clock.seconds()
            self.clock.advance(min(math.floor(now) + 1.0, when) - now)

    def called(self, body: bytes) -> list[float]:
        return [when for when, _, b, _ in self.calls if b == body]

    def stop(self) -> None:
        stopped: list[object] = []
        self.consumer.shutdown().addCallback(stopped.append)
        assert stopped == [None]
        self.broker.close()
        self.clock.advance(10)  # the pull loops' pauses end; they see the consumer stopped
        assert self.clock.getDelayedCalls() == []


def test_locks_are_renewed_every_20_s_and_outlive_the_60_s_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Run(monkeypatch)
    broker = run.broker
    run.until(19)
    assert broker.locked_batches() == [(0.0, {0, 1})]
    run.until(85)
    assert broker.locked_batches() == [(t, {0, 1}) for t in (0.0, 20.0, 40.0, 60.0, 80.0)]
    # 85 s of broker time after the first grant: the lease has been renewed, still ours.
    assert broker.owner(L0) == broker.owner(L1) == "me"
    assert broker.locks.lock("G", "thief", [L0, L1]) == []
    broker.put(0, b"late-0")
    broker.put(1, b"late-1")
    assert run.calls == [(85.0, 0, b"late-0", "me"), (85.0, 1, b"late-1", "me")]
    run.stop()
    # Given back on shutdown with UNLOCK_BATCH_MQ (the client is not closed: the broker
    # does not release them because a connection went away).
    assert broker.locked_batches(RequestCode.UNLOCK_BATCH_MQ) == [(85.0, {0, 1})]
    assert broker.owner(L0) is broker.owner(L1) is None


def test_a_queue_the_renewal_does_not_get_back_waits_until_a_later_one_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Run(monkeypatch)
    broker = run.broker
    run.until(5)
    broker.put(0, b"a")
    assert run.called(b"a") == [5.0]
    run.until(10)
    # The broker forgets our lease of queue 0 (a restart, say) and another member takes it.
    broker.locks.unlock("G", "me", [L0])
    assert broker.locks.lock("G", "thief", [L0]) == [L0]
    run.until(21)  # the renewal at 20 s gets queue 1 only
    assert broker.locked_batches()[-1] == (20.0, {0, 1})
    assert (broker.owner(L0), broker.owner(L1)) == ("thief", "me")
    broker.put(0, b"b")
    broker.put(1, b"c")
    assert run.called(b"c") == [21.0]  # queue 1 goes on
    pulls_before = len(broker.pulls)
    run.until(30)
    broker.locks.unlock("G", "thief", [L0])
    run.until(39.5)
    assert run.called(b"b") == []  # never while another member holds queue 0
    # Nor pulled: a pull commits our offset of queue 0 over the holder's.
    assert [p for p in broker.pulls[pulls_before:] if p[1] == 0] == []
    run.until(45)  # the renewal at 40 s gets queue 0 back: it goes on
    assert broker.owner(L0) == "me"
    (when,) = run.called(b"b")
    assert 40.0 <= when <= 43.0  # within a pull pause (3 s) of the lock
    assert all(owner == "me" for when, _, _, owner in run.calls if when > 10.0)
    run.stop()


def test_a_message_being_retried_waits_for_the_lock_as_well(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Run(monkeypatch, suspend_time=1.0)
    broker = run.broker
    run.answers[b"r"] = ConsumeResult.SUSPEND
    run.until(15)
    broker.put(0, b"r")  # tried again every second
    run.until(19.5)
    broker.locks.unlock("G", "me", [L0])
    assert broker.locks.lock("G", "thief", [L0]) == [L0]
    run.until(30)
    broker.locks.unlock("G", "thief", [L0])
    run.until(41)
    tries = run.called(b"r")
    assert tries[:5] == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert [t for t in tries if 20.0 < t < 40.0] == []  # not while the lock is lost
    assert tries[-2:] == [40.0, 41.0]  # tried again once the renewal at 40 s got it
    run.stop()


@pytest.mark.parametrize("failure", ["unreachable", "error"])
def test_failed_renewals_stop_consumption_when_the_lock_is_30_s_old(
    monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    run = Run(monkeypatch)
    broker = run.broker
    broker.lock_failure = failure
    run.until(25)
    assert broker.locked_batches() == [(0.0, {0, 1}), (20.0, {0, 1})]  # 20 s: failed
    broker.put(0, b"within")
    assert run.called(b"within") == [25.0]  # locked 25 s ago: the broker's lease holds
    run.until(31)
    broker.put(0, b"expired")
    broker.put(1, b"expired-too")
    run.until(55)
    assert run.called(b"expired") == run.called(b"expired-too") == []
    broker.lock_failure = None
    run.until(61)  # the renewal at 60 s succeeds: both go on
    assert run.called(b"expired") == run.called(b"expired-too") == [60.0]
    assert all(owner == "me" for _, _, _, owner in run.calls)
    run.stop()


def test_a_listener_that_blocks_past_the_lease_does_not_consume_on_unlocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Run(monkeypatch)
    broker = run.broker
    run.until(5)
    run.blocks[b"slow"] = 70.0  # a listener holding the reactor for 70 s: no timer runs
    broker.put(0, b"slow")
    broker.put(0, b"next")
    assert run.calls == [(5.0, 0, b"slow", "me")]  # "next" waits: the lock is 75 s old
    assert broker.owner(L0) is None  # and the broker's lease ran out meanwhile
    run.clock.advance(0)  # the overdue renewal runs first, then "next"
    assert run.calls[1:] == [(75.0, 0, b"next", "me")]
    run.stop()


@pytest_twisted.ensureDeferred
async def test_a_dropped_queue_is_unlocked(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch)
    broker = run.broker
    broker.members = ["me", "zz"]  # another member came: it gets queue 1
    await run.consumer._rebalance_now()
    assert run.consumer.assigned_queues == {Q0}
    assert broker.locked_batches(RequestCode.UNLOCK_BATCH_MQ) == [(0.0, {1})]
    assert (broker.owner(L0), broker.owner(L1)) == ("me", None)
    run.stop()
