"""Offsets: QUERY_CONSUMER_OFFSET (14) with Apache's young-queue rule, UPDATE_CONSUMER_OFFSET
(15), GET_MAX/MIN_OFFSET (30/31), SEARCH_OFFSET_BY_TIMESTAMP (29), and offsets (and topics)
surviving a restart over the same store (broker.md §1.2)."""

from __future__ import annotations

from rmqtwist.codes import RequestCode, ResponseCode

from .harness import BrokerHarness, Peer, ok

NOT_FOUND_REMARK = "Not found, V3_0_6_SNAPSHOT maybe this group consumer boot first"


def offset_of(peer: Peer, code: int, topic: str, queue_id: int = 0, **extra: object) -> str:
    response = ok(peer.request(code, {"topic": topic, "queueId": queue_id, **extra}))
    assert response.ext_fields is not None
    return response.ext_fields["offset"]


def old_queue() -> tuple[BrokerHarness, Peer]:
    """A queue whose first messages the (small) store has dropped: not young any more."""
    harness = BrokerHarness(max_bytes=64 * 200)
    peer = harness.peer()
    for i in range(60):
        ok(peer.send_message("T", b"%04d" % i + b"x" * 100))
    assert harness.store.min_offset("T", 0) > 0
    return harness, peer


def test_a_young_queue_answers_zero_for_a_new_group() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"m"))
    assert ok(peer.query_offset("G", "T", 0)).ext_fields == {"offset": "0"}
    # an empty queue and an unknown topic are young too (min offset 0)
    assert ok(peer.query_offset("G", "T", 3)).ext_fields == {"offset": "0"}
    assert ok(peer.query_offset("G", "Nope", 0)).ext_fields == {"offset": "0"}
    # answering does not store anything
    assert harness.broker.offsets.query("G", "T", 0) is None


def test_a_queue_whose_first_message_is_gone_answers_22() -> None:
    _, peer = old_queue()
    response = peer.query_offset("G", "T", 0)
    assert response.code == ResponseCode.QUERY_NOT_FOUND
    assert response.remark == NOT_FOUND_REMARK
    # a stored offset is answered whatever the queue's age
    peer.commit_offset("G", "T", 0, 42)
    assert ok(peer.query_offset("G", "T", 0)).ext_fields == {"offset": "42"}


def test_j5_set_zero_if_not_found_false_always_gets_22() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"m"))
    response = peer.query_offset("G", "T", 0, setZeroIfNotFound=False)
    assert response.code == ResponseCode.QUERY_NOT_FOUND
    assert ok(peer.query_offset("G", "T", 0, setZeroIfNotFound=True)).ext_fields == {"offset": "0"}
    peer.commit_offset("G", "T", 0, 1)
    assert ok(peer.query_offset("G", "T", 0, setZeroIfNotFound=False)).ext_fields == {"offset": "1"}


def test_update_stores_per_group_topic_and_queue() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    peer.commit_offset("G", "T", 0, 5)
    peer.commit_offset("G", "T", 1, 7)
    peer.commit_offset("H", "T", 0, 9)
    peer.commit_offset("G", "U", 0, 11)
    assert harness.broker.offsets.of_group("G") == {"T": {0: 5, 1: 7}, "U": {0: 11}}
    assert ok(peer.query_offset("H", "T", 0)).ext_fields == {"offset": "9"}
    # a two-way 15 (ali-ons) is answered 0 without fields
    response = ok(
        peer.request(
            RequestCode.UPDATE_CONSUMER_OFFSET,
            {"consumerGroup": "G", "topic": "T", "queueId": 0, "commitOffset": 6},
        )
    )
    assert not response.ext_fields
    assert harness.broker.offsets.query("G", "T", 0) == 6


def test_a_negative_commit_is_ignored() -> None:
    harness, peer = old_queue()
    peer.commit_offset("G", "T", 0, -1)  # ali-ons on close
    assert peer.query_offset("G", "T", 0).code == ResponseCode.QUERY_NOT_FOUND
    peer.commit_offset("G", "T", 0, 30)
    peer.commit_offset("G", "T", 0, -1)
    assert ok(peer.query_offset("G", "T", 0)).ext_fields == {"offset": "30"}
    assert harness.broker.offsets.query("G", "T", 0) == 30


def test_max_and_min_offsets() -> None:
    harness, peer = old_queue()
    low = harness.store.min_offset("T", 0)
    assert offset_of(peer, RequestCode.GET_MAX_OFFSET, "T") == "60"
    assert offset_of(peer, RequestCode.GET_MIN_OFFSET, "T") == str(low)
    assert offset_of(peer, RequestCode.GET_MAX_OFFSET, "T", 2) == "0"
    assert offset_of(peer, RequestCode.GET_MIN_OFFSET, "Nope") == "0"
    # J5's committed flag does not change the answer
    assert offset_of(peer, RequestCode.GET_MAX_OFFSET, "T", committed=False) == "60"


def test_search_by_timestamp_finds_the_nearest_store_time() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    start = int(harness.clock.seconds() * 1000)
    for _ in range(3):  # stored at start, start + 10 s, start + 20 s
        ok(peer.send_message("T"))
        harness.advance(10)

    def search(timestamp: int, queue_id: int = 0) -> str:
        return offset_of(
            peer, RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, "T", queue_id, timestamp=timestamp
        )

    assert search(start) == "0"
    assert search(start - 60_000) == "0"
    assert search(start + 4_000) == "0"
    assert search(start + 6_000) == "1"
    assert search(start + 10_000) == "1"
    assert search(start + 15_000) == "1"  # a tie goes to the earlier one
    assert search(start + 16_000) == "2"
    assert search(start + 3_600_000) == "2"
    assert search(start, queue_id=3) == "0"  # empty queue


def test_offsets_and_topics_survive_a_restart_over_the_same_store() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    create = {
        "topic": "Made",
        "defaultTopic": "TBW102",
        "readQueueNums": 3,
        "writeQueueNums": 3,
        "perm": 6,
        "topicFilterType": "SINGLE_TAG",
        "order": False,
    }
    ok(peer.request(RequestCode.UPDATE_AND_CREATE_TOPIC, create))
    ok(peer.send_message("Made", queue_id=2))
    peer.commit_offset("G", "Made", 2, 1)
    peer.commit_offset("G", "Other", 0, 8)
    assert harness.broker.offsets.dirty

    restarted = harness.reopen()
    assert restarted.broker is not harness.broker
    again = restarted.peer()
    assert ok(again.query_offset("G", "Made", 2)).ext_fields == {"offset": "1"}
    assert ok(again.query_offset("G", "Other", 0)).ext_fields == {"offset": "8"}
    made = restarted.broker.topics.get("Made")
    assert made is not None and made.queue_nums == 3
    assert len(restarted.messages("Made", 2)) == 1


def test_save_if_dirty_saves_only_changes() -> None:
    harness = BrokerHarness()
    offsets = harness.broker.offsets
    offsets.commit("G", "T", 0, 3)
    assert offsets.dirty
    offsets.save_if_dirty()
    assert not offsets.dirty
    assert harness.store.load_metadata("consumerOffset") == {"offsetTable": {"T@G": {"0": 3}}}
    offsets.commit("G", "T", 0, 3)  # the same value: nothing to save
    assert not offsets.dirty
