"""The in-memory store's cap as clients see it: past ``max_bytes`` the oldest messages of
the largest queue go, min offsets move, and pulls and offset queries follow (broker.md §1.1
PULL_OFFSET_MOVED, §1.2 the young-queue rule)."""

from __future__ import annotations

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.message import decode_records

from .harness import BrokerHarness, ok

CAP = 64 * 300


def test_the_largest_queue_loses_its_oldest_messages() -> None:
    harness = BrokerHarness(BrokerConfig(max_message_size=CAP), max_bytes=CAP)
    peer = harness.peer()
    for i in range(5):
        ok(peer.send_message("T", b"small-%d" % i, queue_id=1))
    for i in range(200):
        ok(peer.send_message("T", b"%04d" % i + b"x" * 100, queue_id=0))
    store = harness.store
    assert store.stored_bytes <= CAP
    low = store.min_offset("T", 0)
    assert 0 < low < 200
    assert store.max_offset("T", 0) == 200
    # the small queue kept everything
    assert store.min_offset("T", 1) == 0
    assert [m.body for m in harness.messages("T", 1)] == [b"small-%d" % i for i in range(5)]
    assert store.message_count == 5 + 200 - low
    # what is left of queue 0 is its newest messages, in order
    bodies = [m.body[:4] for m in harness.messages("T", 0)]
    assert bodies == [b"%04d" % i for i in range(low, 200)]
    min_offset = ok(peer.request(RequestCode.GET_MIN_OFFSET, {"topic": "T", "queueId": 0}))
    assert min_offset.ext_fields == {"offset": str(low)}


def test_a_pull_at_an_evicted_offset_moves_to_the_min() -> None:
    harness = BrokerHarness(max_bytes=CAP)
    peer = harness.peer()
    for i in range(200):
        ok(peer.send_message("T", b"%04d" % i + b"x" * 100))
    low = harness.store.min_offset("T", 0)
    for offset in (0, low - 1):
        response = peer.pull("T", 0, offset)
        assert response.code == ResponseCode.PULL_OFFSET_MOVED
        assert response.remark == "OFFSET_TOO_SMALL"
        assert response.ext_fields == {
            "suggestWhichBrokerId": "0",
            "nextBeginOffset": str(low),
            "minOffset": str(low),
            "maxOffset": "200",
        }
    found = ok(peer.pull("T", 0, low, max_nums=2))
    assert [m.queue_offset for m in decode_records(found.body)] == [low, low + 1]
    assert [m.body[:4] for m in decode_records(found.body)] == [b"%04d" % low, b"%04d" % (low + 1)]
    # a group new to this queue is not told "0" any more
    assert peer.query_offset("G", "T", 0).code == ResponseCode.QUERY_NOT_FOUND


def test_eviction_keeps_going_as_messages_arrive() -> None:
    harness = BrokerHarness(max_bytes=CAP)
    peer = harness.peer()
    lows = []
    for _ in range(4):
        for _ in range(100):
            ok(peer.send_message("T", b"y" * 100))
        lows.append(harness.store.min_offset("T", 0))
        assert harness.store.stored_bytes <= CAP
    assert lows == sorted(lows) and lows[-1] > lows[0] > 0


def test_a_message_larger_than_the_cap_is_refused_as_service_not_available() -> None:
    harness = BrokerHarness(max_bytes=CAP)
    peer = harness.peer()
    ok(peer.send_message("T", b"kept"))
    response = peer.send_message("T", b"z" * (CAP + 1))
    assert response.code == ResponseCode.SERVICE_NOT_AVAILABLE
    assert "store cannot take the message" in (response.remark or "")
    assert [m.body for m in harness.messages("T")] == [b"kept"]
