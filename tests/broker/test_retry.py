"""CONSUMER_SEND_MSG_BACK (36): a failed message comes back through %RETRY%group after
3 + reconsumeTimes delay levels, counting attempts, until the limit sends it to %DLQ%group
(broker.md §1.2). Time is the harness Clock."""

from __future__ import annotations

import pytest

from rmqtwist.codes import RequestCode, ResponseCode, Version
from rmqtwist.message import MessageExt, decode_records

from .harness import BrokerHarness, Peer, json_body, ok

UNIQ = "FD00000000000000000000000000000244F65FFD2B2712E388170000"


def original(harness: BrokerHarness, peer: Peer) -> MessageExt:
    ok(
        peer.send_message(
            "T",
            b"retry me",
            tags="TagA",
            keys="k0",
            properties={"p": "v0", "UNIQ_KEY": UNIQ},
            queue_id=2,
            extra={"h": 5},
        )
    )
    [message] = harness.messages("T", 2)
    return message


def waiting(harness: BrokerHarness, level: int) -> list[MessageExt]:
    return harness.messages("SCHEDULE_TOPIC_XXXX", level - 1)


def test_send_back_waits_three_levels_then_arrives_in_the_retry_topic() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    message = original(harness, peer)
    response = ok(peer.send_back(message.physical_offset, "G", origin_msg_id=UNIQ))
    assert not response.ext_fields and response.body == b""
    [delayed] = waiting(harness, 3)
    assert delayed.properties["REAL_TOPIC"] == "%RETRY%G"
    assert delayed.properties["REAL_QID"] == "0"
    assert delayed.delay_level == 3
    assert harness.messages("%RETRY%G") == []
    # the retry topic is there for routes, with one queue
    retry_topic = harness.broker.topics.get("%RETRY%G")
    assert retry_topic is not None and retry_topic.queue_nums == 1
    harness.advance(9.99)
    assert harness.messages("%RETRY%G") == []
    harness.advance(0.02)
    [retry] = harness.messages("%RETRY%G")
    assert retry.topic == "%RETRY%G"
    assert retry.body == b"retry me"
    assert (retry.tags, retry.keys, retry.flag) == ("TagA", ("k0",), 5)
    assert retry.properties["p"] == "v0"
    assert retry.properties["UNIQ_KEY"] == UNIQ
    assert retry.properties["RETRY_TOPIC"] == "T"
    assert retry.properties["ORIGIN_MESSAGE_ID"] in (UNIQ, message.offset_msg_id)
    assert retry.reconsume_times == 1
    assert retry.born_timestamp == message.born_timestamp
    assert retry.born_host == message.born_host
    assert retry.physical_offset != message.physical_offset
    assert retry.offset_msg_id != message.offset_msg_id


def test_a_held_retry_pull_is_woken_by_the_delivery() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    message = original(harness, peer)
    ok(peer.heartbeat("c1", "G", {"T": "*", "%RETRY%G": "*"}))
    opaque = peer.hold("%RETRY%G", 0, 0, sys_flag=2, subscription=None, group="G")
    ok(peer.send_back(message.physical_offset, "G"))
    harness.advance(9)
    assert peer.response(opaque) is None
    harness.advance(1)
    response = peer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    [retry] = decode_records(response.body)
    assert (retry.topic, retry.reconsume_times, retry.body) == ("%RETRY%G", 1, b"retry me")


def test_each_attempt_waits_longer_and_keeps_the_first_ids() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    message = original(harness, peer)
    current = message
    due = {1: 10, 2: 30, 3: 60}  # levels 3, 4, 5
    for attempt in (1, 2, 3):
        ok(peer.send_back(current.physical_offset, "G"))
        harness.advance(due[attempt] - 0.01)
        assert len(harness.messages("%RETRY%G")) == attempt - 1
        harness.advance(0.02)
        current = harness.messages("%RETRY%G")[-1]
        assert current.reconsume_times == attempt
        assert current.delay_level == 2 + attempt
        assert current.properties["RETRY_TOPIC"] == "T"  # never %RETRY%G
    first = harness.messages("%RETRY%G")[0].properties["ORIGIN_MESSAGE_ID"]
    assert {m.properties["ORIGIN_MESSAGE_ID"] for m in harness.messages("%RETRY%G")} == {first}


def test_an_explicit_delay_level_is_used_as_given() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    message = original(harness, peer)
    ok(peer.send_back(message.physical_offset, "G", delay_level=1))
    harness.advance(1.01)
    [retry] = harness.messages("%RETRY%G")
    assert retry.delay_level == 1


def send_back_until_dead(
    harness: BrokerHarness, peer: Peer, max_times: int | None, version: int
) -> int:
    """Send the message back again and again; the number of retries made before it
    went to the DLQ."""
    current = original(harness, peer)
    for attempt in range(40):
        ok(
            peer.send_back(
                current.physical_offset, "G", max_reconsume_times=max_times, version=version
            )
        )
        harness.advance(7200)
        dead = harness.messages("%DLQ%G")
        if dead:
            [message] = dead
            assert message.reconsume_times == attempt + 1
            assert message.delay_level == 0 and "DELAY" not in message.properties
            assert message.properties["RETRY_TOPIC"] == "T"
            assert message.body == b"retry me"
            return attempt
        current = harness.messages("%RETRY%G")[-1]
    raise AssertionError("never went to the DLQ")


@pytest.mark.parametrize(
    ("max_times", "version", "retries"),
    [
        (2, Version.V4_9_8, 2),
        (5, Version.V3_4_9, 5),  # ali-ons: honoured from V3_4_9 (121) on
        (2, Version.V3_1_8, 16),  # C++ 1.2.x (63): the broker's 16
        (None, Version.V4_9_8, 16),  # C++ leaves the field out
    ],
)
def test_dead_letter_after_the_limit(max_times: int | None, version: int, retries: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    assert send_back_until_dead(harness, peer, max_times, version) == retries
    assert len(harness.messages("%RETRY%G")) == retries
    peer_route = peer.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "%DLQ%G"})
    [queue] = json_body(ok(peer_route))["queueDatas"]
    assert (queue["readQueueNums"], queue["perm"]) == (1, 6)


def test_a_negative_delay_level_goes_to_the_dlq_at_once() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    message = original(harness, peer)
    ok(peer.send_back(message.physical_offset, "G", delay_level=-1))
    [dead] = harness.messages("%DLQ%G")
    assert dead.reconsume_times == 1
    assert harness.messages("SCHEDULE_TOPIC_XXXX", 2) == []


def test_an_unknown_offset_is_a_system_error() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    message = original(harness, peer)
    response = peer.send_back(message.physical_offset + 1_000_000, "G")
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert "look message by offset failed" in (response.remark or "")
    assert harness.broker.topics.get("%RETRY%G") is None
