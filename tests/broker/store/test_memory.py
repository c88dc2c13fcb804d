"""What only the in-memory store does: its byte cap, the drop log, its memory per message."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest
from twisted.internet.task import Clock

from rmqtwist.broker.store import MemoryStore, StoreError, memory
from rmqtwist.message import decode_records, encode_properties, encode_record, tag_hash

from .helpers import CapturedLog, make_record, put

EVERYTHING = 1 << 30
SIZE = len(make_record(body=b"x" * 100))


def bodies(records: list[bytes]) -> list[bytes]:
    return [m.body for m in decode_records(b"".join(records))]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> CapturedLog:
    captured = CapturedLog()
    monkeypatch.setattr(memory, "_log", captured.logger)
    return captured


def put_sized(store: MemoryStore, queue_id: int, n: int, topic: str = "T") -> list[Any]:
    return [put(store, topic, queue_id, b"%03d" % i + b"x" * 97) for i in range(n)]


def test_past_the_cap_the_oldest_of_the_largest_queue_go(log: CapturedLog) -> None:
    store = MemoryStore(max_bytes=10 * SIZE, clock=Clock())
    first = put_sized(store, 0, 7)
    put_sized(store, 1, 3)
    assert store.stored_bytes == 10 * SIZE
    assert log.texts == []
    put_sized(store, 1, 1)  # queue 0 is the largest: its oldest goes
    assert (store.min_offset("T", 0), store.max_offset("T", 0)) == (1, 7)
    assert (store.min_offset("T", 1), store.max_offset("T", 1)) == (0, 4)
    assert store.read("T", 0, 0, 32, EVERYTHING, None).records == []
    assert store.read("T", 0, 0, 32, EVERYTHING, None).next_offset == 0
    assert bodies(store.read("T", 0, 1, 1, EVERYTHING, None).records) == [b"001" + b"x" * 97]
    assert store.read_at(first[0].physical_offset) is None
    assert store.read_at(first[1].physical_offset) is not None
    assert store.offset_for_timestamp("T", 0, 0) == 1
    assert store.store_timestamp_at("T", 0, 0) is None
    assert (store.message_count, store.stored_bytes) == (10, 10 * SIZE)
    put_sized(store, 1, 4)  # 6+5: drop from 0; 5+6 (a tie went to 0); then 1 is larger
    assert store.min_offset("T", 0) == 3
    assert store.min_offset("T", 1) == 2
    assert store.stored_bytes <= 10 * SIZE
    assert len(log.texts) == 1
    assert "dropped the oldest 1 messages" in log.texts[0]


def test_a_queue_can_lose_everything_and_go_on() -> None:
    store = MemoryStore(max_bytes=SIZE, clock=Clock())
    put_sized(store, 0, 3)
    assert (store.min_offset("T", 0), store.max_offset("T", 0)) == (2, 3)
    put_sized(store, 1, 1)
    assert (store.min_offset("T", 0), store.max_offset("T", 0)) == (3, 3)
    assert store.read("T", 0, 3, 32, EVERYTHING, None).records == []
    assert store.offset_for_timestamp("T", 0, 1000) == 3
    assert store.queue_ids("T") == [0, 1]
    assert put(store, "T", 0, b"%03d" % 3 + b"x" * 97).queue_offset == 3
    assert (store.min_offset("T", 0), store.max_offset("T", 0)) == (3, 4)
    assert (store.min_offset("T", 1), store.max_offset("T", 1)) == (1, 1)
    assert store.message_count == 1


def test_the_drop_log_is_rate_limited(log: CapturedLog) -> None:
    clock = Clock()
    store = MemoryStore(max_bytes=4 * SIZE, clock=clock)
    put_sized(store, 0, 5)
    assert len(log.texts) == 1
    put_sized(store, 0, 3)
    clock.advance(9)
    put_sized(store, 0, 2)
    assert len(log.texts) == 1
    clock.advance(1)
    put_sized(store, 0, 1)
    assert len(log.texts) == 2
    assert "dropped the oldest 6 messages" in log.texts[1]
    put_sized(store, 0, 2)
    store.stop()
    assert len(log.texts) == 3
    assert "dropped the oldest 2 messages" in log.texts[2]


def test_a_record_over_the_cap_is_refused() -> None:
    store = MemoryStore(max_bytes=SIZE - 1, clock=Clock())
    with pytest.raises(StoreError, match="cap"):
        put(store, body=b"x" * 100)
    assert store.message_count == 0


def test_many_drops_compact_the_index() -> None:
    store = MemoryStore(max_bytes=50 * SIZE, clock=Clock(), chunk_size=SIZE * 4)
    for i in range(3000):
        put(store, "T", 0, b"%04d" % i + b"x" * 96, store_timestamp=10_000 + i)
    low = store.min_offset("T", 0)
    assert store.max_offset("T", 0) == 3000
    assert 2950 <= low <= 2952
    assert store.stored_bytes <= 50 * SIZE
    assert store.message_count == 3000 - low
    result = store.read("T", 0, low, 3, EVERYTHING, None)
    assert bodies(result.records) == [b"%04d" % i + b"x" * 96 for i in range(low, low + 3)]
    assert store.offset_for_timestamp("T", 0, 12_990) == 2990
    assert store.offset_for_timestamp("T", 0, 0) == low
    assert store.store_timestamp_at("T", 0, 2999) == 12_999


def test_stop_then_start_again() -> None:
    store = MemoryStore(clock=Clock())
    put(store, body=b"kept")
    store.stop()
    with pytest.raises(StoreError):
        put(store)
    assert bodies(store.read("T", 0, 0, 32, EVERYTHING, None).records) == [b"kept"]
    store.start()
    assert put(store).queue_offset == 1


def test_memory_per_message_with_a_tag_and_a_key() -> None:
    """The issue's target: at most 250 bytes beyond the body, the record included."""
    properties = encode_properties(
        {
            "TAGS": "TagA",
            "KEYS": "order-000001",
            "UNIQ_KEY": "7F0000010C8F18B4AAC2A1B2C3D40000",
            "CLUSTER": "DefaultCluster",
        }
    )
    templates = [
        encode_record(
            topic="TopicTest",
            body=b"x" * 128,
            properties=properties,
            queue_id=queue_id,
            born_timestamp=1,
            born_host="127.0.0.1:40000",
            store_timestamp=2,
            store_host="127.0.0.1:10911",
        )
        for queue_id in range(4)
    ]
    n = 20_000
    records = [bytearray(templates[i % 4]) for i in range(n)]
    code = tag_hash("TagA")
    gc.collect()
    tracemalloc.start()
    try:
        store = MemoryStore(clock=Clock(), chunk_size=64 * 1024)
        before = tracemalloc.get_traced_memory()[0]
        for i, record in enumerate(records):
            store.append("TopicTest", i % 4, record, code, 2)
        del records, record
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.message_count == n
    assert used / n - 128 <= 250


def test_read_at_after_4_gib_of_other_traffic() -> None:
    """A chunk's records keep physical offsets as 32-bit deltas: past that, a new chunk."""
    store = MemoryStore(clock=Clock())
    first = put(store, "A", 0, b"first")
    store._next_physical += 1 << 32  # as if 4 GiB went to other queues meanwhile
    second = put(store, "A", 0, b"second")
    assert second.physical_offset > 1 << 32
    for result, body in ((first, b"first"), (second, b"second")):
        record = store.read_at(result.physical_offset)
        assert record is not None
        assert bodies([record]) == [body]
    assert bodies(store.read("A", 0, 0, 5, EVERYTHING, None).records) == [b"first", b"second"]
