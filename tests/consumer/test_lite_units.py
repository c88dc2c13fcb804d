"""``PullConsumer`` timing and bookkeeping with a Clock and a fake client (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock

from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.consumer import ConsumeFrom, PullConsumer
from rmqtwist.consumer._notify import notify_router
from rmqtwist.errors import ConnectError
from rmqtwist.routing import MessageQueue

ROUTE = {
    "brokerDatas": [{"brokerAddrs": {"0": "b:1"}, "brokerName": "b"}],
    "queueDatas": [{"brokerName": "b", "perm": 6, "readQueueNums": 2, "writeQueueNums": 2}],
}
Q0, Q1 = MessageQueue("T", "b", 0), MessageQueue("T", "b", 1)


class FakeClient:
    """Answers the consumer's requests; pulls are held until the test answers them."""

    def __init__(self) -> None:
        self.requests: list[RemotingCommand] = []
        self.pulls: list[tuple[RemotingCommand, Deferred[RemotingCommand]]] = []
        self.processors: dict[int, Any] = {}
        self.members = ["me"]
        self.committed: dict[int, int] = {}
        self.fail_pulls = False
        self.closed = False

    def register_processor(self, code: int, processor: Any) -> None:
        self.processors[code] = processor

    def codes(self) -> list[int]:
        return [r.code for r in self.requests]

    def invoke(self, address: str, request: RemotingCommand, timeout: float) -> Deferred[Any]:
        self.requests.append(request)
        code = request.code
        ok = RemotingCommand.response_to
        if code == RequestCode.GET_ROUTEINFO_BY_TOPIC:
            return succeed(ok(request, 0, body=json.dumps(ROUTE).encode()))
        if code == RequestCode.GET_CONSUMER_LIST_BY_GROUP:
            body = json.dumps({"consumerIdList": self.members}).encode()
            return succeed(ok(request, 0, body=body))
        if code == RequestCode.QUERY_CONSUMER_OFFSET:
            queue_id = int(request.ext("queueId") or 0)
            if queue_id in self.committed:
                return succeed(ok(request, 0, ext_fields={"offset": self.committed[queue_id]}))
            return succeed(ok(request, ResponseCode.QUERY_NOT_FOUND))
        if code in (RequestCode.GET_MAX_OFFSET, RequestCode.GET_MIN_OFFSET):
            value = 100 if code == RequestCode.GET_MAX_OFFSET else 7
            return succeed(ok(request, 0, ext_fields={"offset": value}))
        if code == RequestCode.UPDATE_CONSUMER_OFFSET:
            self.committed[int(request.ext("queueId") or 0)] = int(request.ext("commitOffset") or 0)
            return succeed(ok(request, 0))
        if code == RequestCode.PULL_MESSAGE:
            if self.fail_pulls:
                return fail(ConnectError("refused"))
            d: Deferred[RemotingCommand] = Deferred()
            self.pulls.append((request, d))
            return d
        return succeed(ok(request, 0))

    def invoke_oneway(
        self, address: str, request: RemotingCommand, timeout: float
    ) -> Deferred[None]:
        self.requests.append(request)
        return succeed(None)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def answer_pull(self, index: int, next_offset: int) -> None:
        request, d = self.pulls[index]
        fields = {
            "suggestWhichBrokerId": 0,
            "nextBeginOffset": next_offset,
            "minOffset": 0,
            "maxOffset": next_offset,
        }
        d.callback(
            RemotingCommand.response_to(request, ResponseCode.PULL_NOT_FOUND, ext_fields=fields)
        )


def make(clock: Clock, client: FakeClient, **kw: Any) -> PullConsumer:
    kw.setdefault("consume_from", ConsumeFrom.LAST)
    return PullConsumer("G", "ns:1", reactor=clock, client=client, client_id="me", **kw)  # type: ignore[arg-type]


def test_poll_waits_then_gives_empty_and_cancel_fires_once() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client)
    consumer.assign([Q0])
    consumer.start()
    polled = consumer.poll(2.0)
    clock.advance(1.9)
    assert not polled.called
    clock.advance(0.1)
    assert polled.result == []
    cancelled = consumer.poll(2.0)
    cancelled.cancel()
    failure: list[Any] = []
    cancelled.addErrback(failure.append)
    assert failure and failure[0].check(CancelledError)
    clock.advance(5)  # the cancelled poll's timer is gone: nothing fires twice
    pending = consumer.poll(10)
    done = consumer.shutdown()
    assert pending.result == [] and done.called
    assert client.closed is False  # a shared client stays open


def test_start_offsets_follow_consume_from() -> None:
    clock, client = Clock(), FakeClient()
    client.committed = {0: 42}
    consumer = make(clock, client)
    consumer.assign([Q0, Q1])
    consumer.start()
    offsets = {int(r.ext("queueId") or 0): int(r.ext("queueOffset") or 0) for r, _ in client.pulls}
    assert offsets == {0: 42, 1: 100}  # committed, else the end (max offset) for LAST
    consumer.shutdown()
    client2 = FakeClient()
    first = make(clock, client2, consume_from=ConsumeFrom.FIRST)
    first.assign([Q1])
    first.start()
    assert client2.pulls[0][0].ext("queueOffset") == "0"
    first.shutdown()


def test_auto_commit_sends_positions_on_its_interval() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client, auto_commit_interval=5.0)
    consumer.assign([Q0])
    consumer.start()
    client.answer_pull(0, 120)  # the queue moved on (filtered or nothing new)
    clock.advance(4.9)
    assert client.committed == {}
    clock.advance(0.1)
    assert client.committed == {0: 120}
    commits = client.codes().count(RequestCode.UPDATE_CONSUMER_OFFSET)
    clock.advance(5)
    assert client.codes().count(RequestCode.UPDATE_CONSUMER_OFFSET) == commits  # unchanged
    consumer.shutdown()


def test_without_auto_commit_shutdown_commits_nothing() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client, auto_commit=False)
    consumer.assign([Q0])
    consumer.start()
    client.answer_pull(0, 120)
    clock.advance(60)
    consumer.shutdown()
    assert client.committed == {}
    assert RequestCode.UNREGISTER_CLIENT not in client.codes()  # never joined the group


def test_a_failed_pull_is_retried_after_retry_delay() -> None:
    clock, client = Clock(), FakeClient()
    client.fail_pulls = True
    consumer = make(clock, client, retry_delay=3.0)
    consumer.assign([Q0])
    consumer.start()
    assert client.codes().count(RequestCode.PULL_MESSAGE) == 1
    clock.advance(2.9)
    assert client.codes().count(RequestCode.PULL_MESSAGE) == 1
    client.fail_pulls = False
    clock.advance(0.1)
    assert client.codes().count(RequestCode.PULL_MESSAGE) == 2 and len(client.pulls) == 1
    consumer.shutdown()


def test_seek_ignores_the_pull_in_flight() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client)
    consumer.assign([Q0])
    consumer.start()
    consumer.seek(Q0, 5)
    assert client.pulls[-1][0].ext("queueOffset") == "5"
    with pytest.raises(ValueError):
        consumer.seek(Q0, -1)
    d = consumer.seek_to_begin(Q0)
    assert d.called and client.pulls[-1][0].ext("queueOffset") == "7"
    consumer.shutdown()


def test_subscribe_rebalances_on_timer_and_on_notify() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client, rebalance_interval=20.0, heartbeat_interval=1000.0)
    consumer.subscribe("T", "A || B")
    started = consumer.start()
    assert started.called and consumer.assignment() == {Q0, Q1}
    heartbeat = next(r for r in client.requests if r.code == RequestCode.HEART_BEAT)
    data = json.loads(heartbeat.body)["consumerDataSet"][0]
    assert data["consumeType"] == "CONSUME_ACTIVELY" and data["messageModel"] == "CLUSTERING"
    assert data["subscriptionDataSet"][0]["subString"] == "A || B"
    client.members = ["me", "zz"]
    notify = RemotingCommand.request(
        RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, {"consumerGroup": "G"}
    )
    client.processors[RequestCode.NOTIFY_CONSUMER_IDS_CHANGED].process_request(None, notify)
    clock.advance(0)
    assert consumer.assignment() == {Q0}  # "me" sorts first: the first queue
    client.members = ["a", "me"]
    clock.advance(20)
    assert consumer.assignment() == {Q1}
    client.members = ["other"]  # the broker lost us (restart): keep the queues, heartbeat
    beats = client.codes().count(RequestCode.HEART_BEAT)
    clock.advance(20)
    assert consumer.assignment() == {Q1}
    assert client.codes().count(RequestCode.HEART_BEAT) == beats + 1
    consumer.shutdown()
    assert client.codes()[-1] == RequestCode.UNREGISTER_CLIENT


def test_start_after_shutdown_fails() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client)
    consumer.assign([Q0])
    consumer.start()
    consumer.shutdown()
    consumer.shutdown()
    errors: list[Any] = []
    consumer.start().addErrback(errors.append)
    assert errors and "shut down" in str(errors[0].value)
    assert not clock.getDelayedCalls()


def test_notify_router_calls_only_its_group() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client, rebalance_interval=1000.0)
    consumer.subscribe("T")
    consumer.start()
    router = client.processors[RequestCode.NOTIFY_CONSUMER_IDS_CHANGED]
    before = client.codes().count(RequestCode.GET_CONSUMER_LIST_BY_GROUP)
    other = RemotingCommand.request(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, {"consumerGroup": "X"})
    router.process_request(None, other)
    router.process_request(None, RemotingCommand.request(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED))
    clock.advance(0)
    assert client.codes().count(RequestCode.GET_CONSUMER_LIST_BY_GROUP) == before
    assert router.reject_request() is False
    assert router.watching("G") == 1
    consumer.shutdown()
    assert router.watching("G") == 0


def test_a_shared_client_notifies_push_consumers_too() -> None:
    clock, client = Clock(), FakeClient()
    calls: list[float] = []

    class Push:
        def _notified(self) -> None:
            calls.append(0.1)

    push = Push()
    notify_router(client).watch("P", push._notified)  # type: ignore[arg-type]
    consumer = make(clock, client)
    consumer.subscribe("T")
    consumer.start()
    router = client.processors[RequestCode.NOTIFY_CONSUMER_IDS_CHANGED]
    notify = RemotingCommand.request(
        RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, {"consumerGroup": "P"}
    )
    router.process_request(None, notify)
    assert calls == [0.1]
    consumer.shutdown()


def test_heartbeats_on_their_interval() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client, heartbeat_interval=30.0, rebalance_interval=1000.0)
    consumer.subscribe("T")
    consumer.start()
    assert client.codes().count(RequestCode.HEART_BEAT) == 1
    clock.advance(30)
    assert client.codes().count(RequestCode.HEART_BEAT) == 2
    consumer.shutdown()


def test_a_pull_refused_no_permission_fails_the_poll_once_and_pulling_goes_on() -> None:
    clock, client = Clock(), FakeClient()
    consumer = make(clock, client, retry_delay=1.0)
    consumer.assign([Q0])
    consumer.start()
    waiting = consumer.poll(10.0)
    request, d = client.pulls[0]
    d.callback(
        RemotingCommand.response_to(request, ResponseCode.NO_PERMISSION, "ACL: no SUB for G")
    )
    # the waiting poll fails at once, not after its 10 s
    errors: list[Any] = []
    waiting.addErrback(errors.append)
    assert len(errors) == 1
    assert errors[0].value.code == ResponseCode.NO_PERMISSION
    assert "ACL: no SUB for G" in str(errors[0].value)
    # refused again while nobody polls: the next poll fails with it, the one after waits
    clock.advance(1.0)
    request, d = client.pulls[1]
    d.callback(RemotingCommand.response_to(request, ResponseCode.NO_PERMISSION, "again"))
    again: list[Any] = []
    consumer.poll(1.0).addErrback(again.append)
    assert len(again) == 1 and "again" in str(again[0].value)
    later = consumer.poll(1.0)
    clock.advance(1.0)
    assert later.result == []
    # the pulls went on: the ACL fixed, the next pull is answered
    assert len(client.pulls) == 3
    client.answer_pull(2, 101)
    consumer.shutdown()
