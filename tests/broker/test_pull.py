"""PULL_MESSAGE (11) and LITE_PULL_MESSAGE (361): every status rule of broker.md §1.1, the
subscription rules for pulls without a subscription (J4 sysFlag 2/3), the commit-offset
flag, the caps, and long polling (wake-up, expiry, filters, stop)."""

from __future__ import annotations

import pytest

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.pull import HEARTBEAT_WAIT
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.message import Message, decode_records

from .harness import BrokerHarness, Peer, ok

PULL_HEADERS = {"suggestWhichBrokerId", "nextBeginOffset", "minOffset", "maxOffset"}


def status(response: RemotingCommand) -> tuple[int, str | None, dict[str, str]]:
    return response.code, response.remark, dict(response.ext_fields or {})


def headers(next_offset: int, low: int, high: int) -> dict[str, str]:
    return {
        "suggestWhichBrokerId": "0",
        "nextBeginOffset": str(next_offset),
        "minOffset": str(low),
        "maxOffset": str(high),
    }


def filled(count: int, queue_id: int = 0, **config: object) -> tuple[BrokerHarness, Peer]:
    harness = BrokerHarness(BrokerConfig(**config))  # type: ignore[arg-type]
    peer = harness.peer()
    for i in range(count):
        ok(peer.send_message("T", f"m{i}".encode(), tags="TagA", queue_id=queue_id))
    return harness, peer


# -- status rules -----------------------------------------------------------------------


def test_found_returns_the_messages_and_the_next_offset() -> None:
    _, peer = filled(5)
    code, remark, ext = status(peer.pull("T", 0, 2))
    assert (code, remark, ext) == (ResponseCode.SUCCESS, "FOUND", headers(5, 0, 5))
    response = peer.pull("T", 0, 2)
    assert [m.body for m in decode_records(response.body)] == [b"m2", b"m3", b"m4"]
    assert [m.queue_offset for m in decode_records(response.body)] == [2, 3, 4]


def test_empty_queue() -> None:
    _, peer = filled(1)
    assert status(peer.pull("T", 1, 0)) == (
        ResponseCode.PULL_NOT_FOUND,
        "NO_MESSAGE_IN_QUEUE",
        headers(0, 0, 0),
    )
    assert status(peer.pull("T", 1, 3)) == (
        ResponseCode.PULL_OFFSET_MOVED,
        "NO_MESSAGE_IN_QUEUE",
        headers(0, 0, 0),
    )


def test_offset_at_max_is_not_found_and_past_max_moves_to_min_when_min_is_zero() -> None:
    _, peer = filled(3)
    assert status(peer.pull("T", 0, 3)) == (
        ResponseCode.PULL_NOT_FOUND,
        "OFFSET_OVERFLOW_ONE",
        headers(3, 0, 3),
    )
    assert status(peer.pull("T", 0, 9)) == (
        ResponseCode.PULL_OFFSET_MOVED,
        "OFFSET_OVERFLOW_BADLY",
        headers(0, 0, 3),
    )


def evicted(count: int = 60) -> tuple[BrokerHarness, Peer, int, int]:
    """A queue whose oldest messages the store dropped: (harness, peer, min, max)."""
    harness = BrokerHarness(max_bytes=64 * 200)
    peer = harness.peer()
    for i in range(count):
        ok(peer.send_message("T", b"%04d" % i + b"x" * 100, tags="TagA"))
    low = harness.store.min_offset("T", 0)
    high = harness.store.max_offset("T", 0)
    assert 0 < low < high == count
    return harness, peer, low, high


def test_offset_below_min_moves_to_min_and_past_max_moves_to_max() -> None:
    _, peer, low, high = evicted()
    assert status(peer.pull("T", 0, 0)) == (
        ResponseCode.PULL_OFFSET_MOVED,
        "OFFSET_TOO_SMALL",
        headers(low, low, high),
    )
    assert status(peer.pull("T", 0, high + 5)) == (
        ResponseCode.PULL_OFFSET_MOVED,
        "OFFSET_OVERFLOW_BADLY",
        headers(high, low, high),
    )
    code, _, ext = status(peer.pull("T", 0, low))
    assert code == ResponseCode.SUCCESS and ext["minOffset"] == str(low)


def test_all_filtered_is_retry_immediately_past_the_scanned_entries() -> None:
    _, peer = filled(4)
    assert status(peer.pull("T", 0, 1, subscription="TagB || TagC")) == (
        ResponseCode.PULL_RETRY_IMMEDIATELY,
        "NO_MATCHED_MESSAGE",
        headers(4, 0, 4),
    )


def test_tag_filter_uses_each_tag_of_the_expression() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for tags in ("TagA", "TagB", "TagC", None, "TagB"):
        ok(peer.send_message("T", (tags or "none").encode(), tags=tags))
    response = ok(peer.pull("T", 0, 0, subscription=" TagB ||TagC "))
    assert [m.body for m in decode_records(response.body)] == [b"TagB", b"TagC", b"TagB"]
    assert response.ext_fields is not None and response.ext_fields["nextBeginOffset"] == "5"
    every = ok(peer.pull("T", 0, 0, subscription=""))
    assert len(decode_records(every.body)) == 5


def test_unknown_topic_is_17_and_a_queue_past_the_read_queues_is_1() -> None:
    _, peer = filled(1)
    code, remark, _ = status(peer.pull("Nope", 0, 0))
    assert code == ResponseCode.TOPIC_NOT_EXIST
    assert "topic[Nope] not exist" in (remark or "")
    code, remark, _ = status(peer.pull("T", 4, 0))
    assert code == ResponseCode.SYSTEM_ERROR
    assert "queueId[4] is illegal" in (remark or "")


def test_a_write_only_topic_cannot_be_pulled() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    create = {
        "topic": "W",
        "defaultTopic": "TBW102",
        "readQueueNums": 1,
        "writeQueueNums": 1,
        "perm": 2,
        "topicFilterType": "SINGLE_TAG",
        "order": False,
    }
    ok(peer.request(RequestCode.UPDATE_AND_CREATE_TOPIC, create))
    ok(peer.send_message("W"))
    assert peer.pull("W").code == ResponseCode.NO_PERMISSION


def test_sql92_subscription_is_23() -> None:
    _, peer = filled(1)
    response = peer.pull("T", subscription="a > 1", expression_type="SQL92")
    assert response.code == ResponseCode.SUBSCRIPTION_PARSE_FAILED
    assert "SQL92" in (response.remark or "")


def test_every_answer_of_a_status_rule_carries_the_four_pull_headers() -> None:
    _, peer, low, high = evicted()
    for offset in (0, low, high, high + 3):
        response = peer.pull("T", 0, offset)
        assert response.ext_fields is not None
        assert set(response.ext_fields) == PULL_HEADERS
        assert all(isinstance(v, str) for v in response.ext_fields.values())
    assert set(peer.pull("T", 0, low, subscription="Other").ext_fields or {}) == PULL_HEADERS


# -- subscriptions from the heartbeat (J4/J5 postSubscriptionWhenPull=false) ------------


def test_pull_without_subscription_needs_the_group_registered() -> None:
    _, peer = filled(2)
    response = peer.pull("T", sys_flag=2, subscription=None, group="J4")
    assert response.code == ResponseCode.SUBSCRIPTION_NOT_EXIST
    assert "J4" in (response.remark or "")
    ok(peer.heartbeat("c1", "J4", {"Other": "*"}))
    response = peer.pull("T", sys_flag=2, subscription=None, group="J4")
    assert response.code == ResponseCode.SUBSCRIPTION_NOT_EXIST


def test_pull_without_subscription_uses_the_heartbeat_one_and_its_version() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for tags in ("TagA", "TagB", "TagA"):
        ok(peer.send_message("T", tags.encode(), tags=tags))
    ok(peer.heartbeat("c1", "J4", {"T": "TagB"}, sub_version=100))
    # a newer subVersion than the heartbeat's waits a moment for the heartbeat, then 25
    opaque = peer.send(
        peer.pull_request("T", sys_flag=2, subscription=None, group="J4", sub_version=101)
    )
    assert peer.response(opaque) is None
    harness.clock.advance(HEARTBEAT_WAIT)
    newer = peer.response(opaque)
    assert newer is not None and newer.code == ResponseCode.SUBSCRIPTION_NOT_LATEST
    response = ok(peer.pull("T", sys_flag=2, subscription=None, group="J4", sub_version=100))
    assert [m.body for m in decode_records(response.body)] == [b"TagB"]
    # the pull's own subscription is ignored without the SUBSCRIPTION flag
    response = ok(peer.pull("T", sys_flag=2, subscription="TagA", group="J4", sub_version=99))
    assert [m.body for m in decode_records(response.body)] == [b"TagB"]
    ok(peer.heartbeat("c1", "J4", {"T": "*"}, sub_version=101))
    response = ok(peer.pull("T", sys_flag=2, subscription=None, group="J4", sub_version=101))
    assert len(decode_records(response.body)) == 3


def test_commit_offset_flag_stores_the_offset() -> None:
    harness, peer = filled(5)
    ok(peer.heartbeat("c1", "J4", {"T": "*"}))
    ok(peer.pull("T", 0, 2, sys_flag=3, subscription=None, group="J4", commit_offset=2))
    assert harness.broker.offsets.query("J4", "T", 0) == 2
    # without the flag the commitOffset field is ignored
    ok(peer.pull("T", 0, 3, sys_flag=2, subscription=None, group="J4", commit_offset=4))
    assert harness.broker.offsets.query("J4", "T", 0) == 2
    # a negative commit offset is not an offset
    ok(peer.pull("T", 0, 3, sys_flag=5, group="J4", commit_offset=-1))
    assert harness.broker.offsets.query("J4", "T", 0) == 2
    ok(peer.pull("T", 0, 3, sys_flag=5, group="J4", commit_offset=3))
    query = ok(peer.query_offset("J4", "T", 0))
    assert query.ext_fields == {"offset": "3"}


# -- caps -------------------------------------------------------------------------------


def test_count_cap_is_the_smaller_of_the_request_and_the_config() -> None:
    _, peer = filled(40, pull_max_count=32)
    response = ok(peer.pull("T", 0, 0, max_nums=3))
    assert len(decode_records(response.body)) == 3
    assert response.ext_fields is not None and response.ext_fields["nextBeginOffset"] == "3"
    response = ok(peer.pull("T", 0, 0, max_nums=100))
    assert len(decode_records(response.body)) == 32
    assert response.ext_fields is not None and response.ext_fields["nextBeginOffset"] == "32"


def test_byte_cap_limits_a_pull_but_never_below_one_message() -> None:
    harness = BrokerHarness(BrokerConfig(pull_max_bytes=1000))
    peer = harness.peer()
    for i in range(10):
        ok(peer.send_message("T", bytes([65 + i]) * 300))
    response = ok(peer.pull("T"))
    messages = decode_records(response.body)
    assert 1 <= len(messages) < 10
    assert len(response.body) <= 1000
    assert response.ext_fields is not None
    assert response.ext_fields["nextBeginOffset"] == str(len(messages))
    ok(peer.send_message("T", b"z" * 5000, queue_id=1))
    big = ok(peer.pull("T", 1))
    assert [m.body for m in decode_records(big.body)] == [b"z" * 5000]
    # J5's maxMsgBytes narrows it further
    response = ok(peer.pull("T", extra={"maxMsgBytes": 400}))
    assert len(decode_records(response.body)) == 1


def test_lite_pull_361_answers_as_pull() -> None:
    _, peer = filled(3)
    request = peer.pull_request(
        "T", 0, 1, sys_flag=22, max_nums=10, code=RequestCode.LITE_PULL_MESSAGE
    )
    response = ok(peer.call(request))
    assert [m.body for m in decode_records(response.body)] == [b"m1", b"m2"]
    assert response.ext_fields == headers(3, 0, 3)
    held = peer.send(
        peer.pull_request(
            "T", 0, 3, sys_flag=22, suspend_ms=20000, code=RequestCode.LITE_PULL_MESSAGE
        )
    )
    assert peer.response(held) is None


# -- long polling -----------------------------------------------------------------------


def test_every_held_pull_of_a_queue_wakes_and_others_stay() -> None:
    harness, producer = filled(1)
    one, two, other = harness.peer(), harness.peer(), harness.peer()
    a = one.hold("T", 0, 1)
    b = two.hold("T", 0, 1)
    c = other.hold("T", 1, 0)
    assert harness.broker.pulls.waiting() == {("T", 0): 2, ("T", 1): 1}
    ok(producer.send_message("T", b"new", queue_id=0))
    for peer, opaque in ((one, a), (two, b)):
        response = peer.response(opaque)
        assert response is not None and response.code == ResponseCode.SUCCESS
        assert [m.body for m in decode_records(response.body)] == [b"new"]
    assert other.response(c) is None
    assert harness.broker.pulls.waiting() == {("T", 1): 1}


def test_a_batch_wakes_a_held_pull() -> None:
    harness, producer = filled(1)
    consumer = harness.peer()
    opaque = consumer.hold("T", 0, 1)
    ok(producer.send_batch("T", [Message("T", b"b0"), Message("T", b"b1")]))
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in decode_records(response.body)] == [b"b0", b"b1"]


def test_expiry_follows_the_suspend_timeout() -> None:
    harness, _ = filled(1)
    consumer = harness.peer()
    opaque = consumer.hold("T", 0, 1, suspend_ms=20000)
    harness.advance(19.99)
    assert consumer.response(opaque) is None
    harness.advance(0.02)
    response = consumer.response(opaque)
    assert response is not None
    assert status(response) == (
        ResponseCode.PULL_NOT_FOUND,
        "OFFSET_OVERFLOW_ONE",
        headers(1, 0, 1),
    )
    assert harness.broker.pulls.count == 0


def test_a_pull_without_the_suspend_flag_is_answered_at_once() -> None:
    _, peer = filled(1)
    response = peer.pull("T", 0, 1, sys_flag=4)
    assert response.code == ResponseCode.PULL_NOT_FOUND


def test_short_polling_holds_for_short_polling_time() -> None:
    harness, _ = filled(1, long_polling=False, short_polling_time=1.0)
    consumer = harness.peer()
    opaque = consumer.hold("T", 0, 1, suspend_ms=15000)
    harness.advance(0.99)
    assert consumer.response(opaque) is None
    harness.advance(0.02)
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.PULL_NOT_FOUND


def test_an_arrival_the_filter_rejects_does_not_wake_and_a_match_later_does() -> None:
    harness, producer = filled(1)
    consumer = harness.peer()
    opaque = consumer.hold("T", 0, 1, subscription="TagZ")
    for _ in range(3):
        ok(producer.send_message("T", b"other", tags="TagA"))
    assert consumer.response(opaque) is None
    harness.advance(5)
    ok(producer.send_message("T", b"wanted", tags="TagZ"))
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in decode_records(response.body)] == [b"wanted"]
    assert response.ext_fields is not None and response.ext_fields["nextBeginOffset"] == "5"


def test_held_pulls_are_answered_when_the_broker_stops() -> None:
    harness, _ = filled(1)
    consumer = harness.peer()
    held = [consumer.hold("T", 0, 1), consumer.hold("T", 1, 0)]
    harness.broker.stopping = True
    harness.broker.pulls.release_all()
    answers = [consumer.response(opaque) for opaque in held]
    assert [a.code if a else None for a in answers] == [ResponseCode.PULL_NOT_FOUND] * 2
    assert harness.broker.pulls.count == 0
    # while stopping, a pull that finds nothing is answered at once, not held
    response = consumer.call(consumer.pull_request("T", 0, 1, sys_flag=6))
    assert response.code == ResponseCode.PULL_NOT_FOUND
    harness.advance(30)  # no timer is left to fire twice
    assert consumer.responses == {}


def test_a_held_pull_of_a_closed_connection_expires_quietly() -> None:
    harness, producer = filled(1)
    consumer = harness.peer()
    consumer.hold("T", 0, 1)
    consumer.close()
    harness.advance(16)
    assert harness.broker.pulls.count == 0
    ok(producer.send_message("T"))


@pytest.mark.parametrize("suspend_ms", [0, 1])
def test_a_tiny_suspend_time_is_still_held_then_answered(suspend_ms: int) -> None:
    harness, _ = filled(1)
    consumer = harness.peer()
    opaque = consumer.hold("T", 0, 1, suspend_ms=suspend_ms)
    harness.advance(0.01)
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.PULL_NOT_FOUND


def test_a_batch_the_filter_rejects_does_not_wake_a_held_pull() -> None:
    # Apache notifies held pulls message by message with each one's tag hash, so a
    # filtered pull stays held through a batch of other tags (no extra round trip).
    harness, producer = filled(1)
    consumer = harness.peer()
    opaque = consumer.hold("T", 0, 1, subscription="TagZ")
    ok(producer.send_batch("T", [Message("T", b"a", tags="TagA"), Message("T", b"b", tags="TagB")]))
    assert consumer.response(opaque) is None
    ok(producer.send_batch("T", [Message("T", b"c", tags="TagA"), Message("T", b"z", tags="TagZ")]))
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in decode_records(response.body)] == [b"z"]


def test_a_pull_ahead_of_its_heartbeat_is_answered_when_the_heartbeat_comes() -> None:
    # J4 at start-up: a pull carrying the new subVersion overtakes the heartbeat that
    # registers it. Apache answers 25 (and the client waits 3 s) when it loses that race.
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"m", tags="TagA"))
    ok(peer.heartbeat("c1", "J4", {"T": "TagB"}, sub_version=100))
    opaque = peer.send(
        peer.pull_request("T", sys_flag=2, subscription=None, group="J4", sub_version=101)
    )
    assert peer.response(opaque) is None
    ok(peer.heartbeat("c1", "J4", {"T": "*"}, sub_version=101))
    response = peer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in decode_records(response.body)] == [b"m"]
    harness.clock.advance(HEARTBEAT_WAIT)  # the timer was cancelled: no second answer
    assert peer.response(opaque) is None


def test_every_pull_waiting_for_the_heartbeat_is_answered() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for queue_id in range(4):
        ok(peer.send_message("T", b"m", queue_id=queue_id))
    ok(peer.heartbeat("c1", "J4", {"T": "*"}, sub_version=100))
    opaques = [
        peer.send(
            peer.pull_request("T", q, sys_flag=2, subscription=None, group="J4", sub_version=101)
        )
        for q in range(4)
    ]
    ok(peer.heartbeat("c1", "J4", {"T": "*"}, sub_version=101))
    answers = [peer.response(opaque) for opaque in opaques]
    assert [a.code if a else None for a in answers] == [ResponseCode.SUCCESS] * 4
