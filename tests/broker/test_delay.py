"""Delay levels: a message with DELAY waits in SCHEDULE_TOPIC_XXXX (queue = level - 1) and is
stored in its real topic/queue when due, never earlier, in order, driven by the Clock; the
scheduler's progress survives a restart (broker.md §1.2)."""

from __future__ import annotations

import pytest

from rmqtwist.broker.config import DEFAULT_DELAY_LEVELS
from rmqtwist.codes import ResponseCode
from rmqtwist.message import decode_records

from .harness import BrokerHarness, Peer, ok

DELAY_TOPIC = "SCHEDULE_TOPIC_XXXX"


def send_delayed(peer: Peer, body: bytes, level: str, queue_id: int = 1) -> None:
    ok(
        peer.send_message(
            "T",
            body,
            tags="TagD",
            keys="d0",
            properties={"DELAY": level, "u": "1"},
            queue_id=queue_id,
        )
    )


def test_the_levels_are_apaches() -> None:
    assert DEFAULT_DELAY_LEVELS[0] == 1
    assert DEFAULT_DELAY_LEVELS[2] == 10
    assert DEFAULT_DELAY_LEVELS[-1] == 7200
    assert len(DEFAULT_DELAY_LEVELS) == 18


@pytest.mark.parametrize("level", range(1, 19))
def test_each_level_is_delivered_when_due_and_not_before(level: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_delayed(peer, b"later", str(level))
    [waiting] = harness.messages(DELAY_TOPIC, level - 1)
    assert waiting.properties["REAL_TOPIC"] == "T"
    assert waiting.properties["REAL_QID"] == "1"
    due = DEFAULT_DELAY_LEVELS[level - 1]
    harness.advance(due - 0.01)
    assert harness.messages("T", 1) == []
    harness.advance(0.01)
    [message] = harness.messages("T", 1)
    assert message.body == b"later"
    assert message.store_timestamp - waiting.store_timestamp == due * 1000


def test_a_level_past_the_last_waits_as_the_last() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_delayed(peer, b"clamped", "25")
    [waiting] = harness.messages(DELAY_TOPIC, 17)
    assert waiting.delay_level == 18
    harness.advance(7199.9)
    assert harness.messages("T", 1) == []
    harness.advance(0.1)
    assert len(harness.messages("T", 1)) == 1


@pytest.mark.parametrize("level", ["0", "-3", "soon"])
def test_no_real_delay_is_stored_at_once(level: str) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_delayed(peer, b"now", level)
    assert [m.body for m in harness.messages("T", 1)] == [b"now"]
    assert harness.store.max_offset(DELAY_TOPIC, 0) == 0


def test_the_delivered_copy_keeps_the_message_and_the_delay_properties() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_delayed(peer, b"later", "2")
    [waiting] = harness.messages(DELAY_TOPIC, 1)
    harness.advance(5)
    [message] = harness.messages("T", 1)
    assert (message.topic, message.queue_id, message.queue_offset) == ("T", 1, 0)
    assert (message.tags, message.keys) == ("TagD", ("d0",))
    # as Apache 4.9.8 delivers it (transcripts/java-4.9.8/02, delayed-0)
    assert message.properties["REAL_TOPIC"] == "T"
    assert message.properties["REAL_QID"] == "1"
    assert message.delay_level == 2
    assert message.properties["u"] == "1"
    assert message.born_timestamp == waiting.born_timestamp
    assert message.physical_offset > waiting.physical_offset
    assert message.offset_msg_id != waiting.offset_msg_id


def test_order_is_kept_within_a_level_each_at_its_own_time() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for i in range(3):
        send_delayed(peer, b"m%d" % i, "2")
        harness.advance(1)
    # stored at 0, 1, 2 s: due at 5, 6, 7 s; now is 3 s
    harness.advance(1.99)
    assert harness.messages("T", 1) == []
    harness.advance(0.01)
    assert [m.body for m in harness.messages("T", 1)] == [b"m0"]
    harness.advance(1)
    assert [m.body for m in harness.messages("T", 1)] == [b"m0", b"m1"]
    harness.advance(1)
    assert [m.body for m in harness.messages("T", 1)] == [b"m0", b"m1", b"m2"]


def test_levels_do_not_wait_for_each_other() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_delayed(peer, b"slow", "4", queue_id=0)  # 30 s
    send_delayed(peer, b"fast", "1", queue_id=0)  # 1 s
    harness.advance(1)
    assert [m.body for m in harness.messages("T", 0)] == [b"fast"]
    harness.advance(29)
    assert [m.body for m in harness.messages("T", 0)] == [b"fast", b"slow"]


def test_a_held_pull_is_woken_by_a_delivery() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"first", queue_id=1))
    consumer = harness.peer()
    opaque = consumer.hold("T", 1, 1, suspend_ms=15000)
    send_delayed(peer, b"later", "3")
    harness.advance(9.9)
    assert consumer.response(opaque) is None
    harness.advance(0.1)
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in decode_records(response.body)] == [b"later"]


def test_progress_is_saved_and_a_new_scheduler_resumes_it() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_delayed(peer, b"a", "3")
    harness.advance(5)
    send_delayed(peer, b"b", "3")
    harness.advance(5)  # a is due and delivered; b is due in 5 s
    assert [m.body for m in harness.messages("T", 1)] == [b"a"]
    assert harness.delays.offsets() == {3: 1}
    assert harness.delays.dirty
    restarted = harness.reopen()
    assert restarted.store.load_metadata("delayOffset") == {"offsetTable": {"3": 1}}
    assert restarted.delays.offsets() == {3: 1}
    harness.advance(4.99)  # the same Clock
    assert [m.body for m in restarted.messages("T", 1)] == [b"a"]
    harness.advance(0.01)
    assert [m.body for m in restarted.messages("T", 1)] == [b"a", b"b"]


def test_messages_due_while_stopped_are_delivered_once_on_start() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_delayed(peer, b"a", "1")
    send_delayed(peer, b"b", "2")
    harness.delays.stop()
    harness.advance(60)
    assert harness.messages("T", 1) == []
    restarted = harness.reopen()
    assert [m.body for m in restarted.messages("T", 1)] == [b"a", b"b"]
    harness.advance(7200)
    again = restarted.reopen()
    assert [m.body for m in again.messages("T", 1)] == [b"a", b"b"]
    assert again.delays.delivered == 0


def test_the_send_answer_names_the_queue_asked_for_not_the_delay_queue() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = ok(peer.send_message("T", properties={"DELAY": "3"}, queue_id=0))
    assert response.ext_fields is not None
    # Apache answers with the producer's queue (the message waits in delay queue 2)
    assert response.ext_fields["queueId"] == "0"
    assert response.ext_fields["queueOffset"] == "0"
    [waiting] = harness.messages(DELAY_TOPIC, 2)
    assert response.ext_fields["msgId"] == waiting.offset_msg_id
