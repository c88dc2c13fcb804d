"""One suite that every IMessageStore passes: the in-memory store and the disk store."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from rmqtwist.broker.store import (
    AppendResult,
    DiskStore,
    IMessageStore,
    MemoryStore,
    ReadResult,
    StoreError,
)
from rmqtwist.broker.store._common import SCAN_LIMIT
from rmqtwist.message import decode_records, tag_hash

from .helpers import fired, make_record, put

EVERYTHING = 1 << 30


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    clock = Clock()
    if request.param == "memory":
        s: Any = MemoryStore(clock=clock, chunk_size=1024)
    else:
        s = DiskStore(tmp_path / "data", reactor=clock, segment_size=4096)
    assert fired(s.start()) is None
    yield s
    assert fired(s.stop()) is None


def bodies(result: ReadResult) -> list[bytes]:
    return [m.body for m in decode_records(b"".join(result.records))]


def test_provides_the_interface(store: Any) -> None:
    assert verifyObject(IMessageStore, store)


def test_append_assigns_queue_and_physical_offsets(store: Any) -> None:
    results = [put(store, "T", i % 2, b"m%d" % i) for i in range(6)]
    assert [r.queue_offset for r in results] == [0, 0, 1, 1, 2, 2]
    physical = [r.physical_offset for r in results]
    assert physical == sorted(set(physical))
    record = make_record("T", 1, b"x")
    result = store.append("T", 1, record, 0, 1000)
    assert result == AppendResult(3, result.physical_offset, len(record))
    assert result.physical_offset > physical[-1]
    assert record[20:28] == (3).to_bytes(8, "big")
    assert record[28:36] == result.physical_offset.to_bytes(8, "big")
    assert store.read("T", 1, 3, 1, EVERYTHING, None).records == [bytes(record)]


def test_read_returns_whole_records_in_queue_order(store: Any) -> None:
    for i in range(5):
        put(store, "T", 0, b"body %d" % i)
        put(store, "Other", 0, b"other %d" % i)
    result = store.read("T", 0, 0, 32, EVERYTHING, None)
    assert bodies(result) == [b"body %d" % i for i in range(5)]
    assert all(type(r) is bytes for r in result.records)
    messages = decode_records(b"".join(result.records))
    assert [m.queue_offset for m in messages] == list(range(5))
    assert result[1:] == (5, 0, 5)
    assert bodies(store.read("T", 0, 3, 32, EVERYTHING, None)) == [b"body 3", b"body 4"]


def test_read_of_unknown_queue_or_outside_the_offsets(store: Any) -> None:
    assert store.read("Nope", 0, 7, 32, EVERYTHING, None) == ReadResult([], 7, 0, 0)
    put(store, "T", 0)
    put(store, "T", 0)
    assert store.read("T", 1, 0, 32, EVERYTHING, None) == ReadResult([], 0, 0, 0)
    assert store.read("T", 0, 2, 32, EVERYTHING, None) == ReadResult([], 2, 0, 2)
    assert store.read("T", 0, 9, 32, EVERYTHING, None) == ReadResult([], 9, 0, 2)
    assert store.read("T", 0, -1, 32, EVERYTHING, None) == ReadResult([], -1, 0, 2)


def test_read_max_count(store: Any) -> None:
    for i in range(10):
        put(store, body=b"%d" % i)
    result = store.read("T", 0, 2, 3, EVERYTHING, None)
    assert bodies(result) == [b"2", b"3", b"4"]
    assert result.next_offset == 5


def test_read_max_bytes_but_always_one(store: Any) -> None:
    sizes = [put(store, body=b"x" * (100 + i)).size for i in range(4)]
    result = store.read("T", 0, 0, 32, sizes[0] + sizes[1], None)
    assert len(result.records) == 2
    assert result.next_offset == 2
    result = store.read("T", 0, 0, 32, sizes[0] + sizes[1] - 1, None)
    assert len(result.records) == 1
    assert result.next_offset == 1
    result = store.read("T", 0, 1, 32, 10, None)
    assert len(result.records) == 1
    assert result.next_offset == 2


def test_read_filters_on_tag_hashes(store: Any) -> None:
    tags = ["TagA", "TagB", None, "TagA", "TagC", "TagB"]
    for i, t in enumerate(tags):
        put(store, body=b"%d" % i, tags=t)
    wanted = frozenset({tag_hash("TagB"), tag_hash("TagC")})
    result = store.read("T", 0, 0, 32, EVERYTHING, wanted)
    assert bodies(result) == [b"1", b"4", b"5"]
    assert result.next_offset == 6
    result = store.read("T", 0, 0, 2, EVERYTHING, wanted)
    assert bodies(result) == [b"1", b"4"]
    assert result.next_offset == 5
    untagged = store.read("T", 0, 0, 32, EVERYTHING, frozenset({0}))
    assert bodies(untagged) == [b"2"]
    assert store.read("T", 0, 0, 32, EVERYTHING, frozenset({12345})) == ReadResult([], 6, 0, 6)


def test_filtered_read_scans_a_bounded_number_of_entries(store: Any) -> None:
    records = [make_record(body=b"%d" % i, tags="Skip") for i in range(SCAN_LIMIT + 10)]
    hashes = [tag_hash("Skip")] * len(records)
    records.append(make_record(body=b"wanted", tags="Want"))
    hashes.append(tag_hash("Want"))
    store.append_batch("T", 0, records, hashes, 1000)
    want = frozenset({tag_hash("Want")})
    first = store.read("T", 0, 0, 32, EVERYTHING, want)
    assert first == ReadResult([], SCAN_LIMIT, 0, len(records))
    second = store.read("T", 0, first.next_offset, 32, EVERYTHING, want)
    assert bodies(second) == [b"wanted"]
    assert second.next_offset == len(records)


def test_min_and_max_offsets(store: Any) -> None:
    assert (store.min_offset("T", 0), store.max_offset("T", 0)) == (0, 0)
    for _ in range(3):
        put(store, "T", 2)
    assert (store.min_offset("T", 2), store.max_offset("T", 2)) == (0, 3)
    assert store.max_offset("T", 0) == 0


def test_offset_for_timestamp(store: Any) -> None:
    assert store.offset_for_timestamp("T", 0, 1234) == 0
    for ts in (1000, 1010, 1010, 1020, 1040):
        put(store, store_timestamp=ts)
    find = lambda ts: store.offset_for_timestamp("T", 0, ts)  # noqa: E731
    assert find(1010) == 1  # an exact hit: the first with that time
    assert find(1040) == 4
    assert find(1014) == 2  # nearer the earlier
    assert find(1016) == 3  # nearer the later
    assert find(1030) == 3  # a tie: the earlier
    assert find(5) == 0
    assert find(99_999) == 4


def test_store_timestamp_at(store: Any) -> None:
    put(store, store_timestamp=1500)
    put(store, store_timestamp=1600, born_host="[::1]:5000")  # the store time moves by 12
    assert store.store_timestamp_at("T", 0, 0) == 1500
    assert store.store_timestamp_at("T", 0, 1) == 1600
    assert store.store_timestamp_at("T", 0, 2) is None
    assert store.store_timestamp_at("T", 0, -1) is None
    assert store.store_timestamp_at("U", 0, 0) is None
    assert store.offset_for_timestamp("T", 0, 1590) == 1


def test_read_at_finds_a_record_of_any_queue(store: Any) -> None:
    results = {}
    for i in range(40):
        topic, queue_id = ("A", "B", "C")[i % 3], i % 4
        results[i] = (put(store, topic, queue_id, b"m%d" % i), topic, queue_id)
    for i, (result, topic, queue_id) in results.items():
        record = store.read_at(result.physical_offset)
        assert record is not None
        (message,) = decode_records(record)
        assert (message.body, message.topic, message.queue_id) == (b"m%d" % i, topic, queue_id)
        assert message.physical_offset == result.physical_offset
    last = results[39][0]
    assert store.read_at(last.physical_offset + 1) is None
    assert store.read_at(last.physical_offset + last.size + 10_000) is None
    assert store.read_at(-5) is None


def test_queue_ids(store: Any) -> None:
    assert store.queue_ids("T") == []
    for queue_id in (3, 0, 2):
        put(store, "T", queue_id)
    put(store, "U", 7)
    assert store.queue_ids("T") == [0, 2, 3]
    assert store.queue_ids("U") == [7]


def test_delete_topic(store: Any) -> None:
    old = [put(store, "T", i % 2, b"old") for i in range(4)]
    put(store, "Kept", 0, b"kept")
    count, size = store.message_count, store.stored_bytes
    store.delete_topic("T")
    assert store.queue_ids("T") == []
    assert (store.min_offset("T", 0), store.max_offset("T", 0)) == (0, 0)
    assert store.read("T", 0, 0, 32, EVERYTHING, None) == ReadResult([], 0, 0, 0)
    assert store.read_at(old[0].physical_offset) is None
    assert store.message_count == count - 4
    assert store.stored_bytes == size - sum(r.size for r in old)
    again = put(store, "T", 0, b"new")
    assert again.queue_offset == 0
    assert again.physical_offset > old[-1].physical_offset
    assert bodies(store.read("T", 0, 0, 32, EVERYTHING, None)) == [b"new"]
    assert bodies(store.read("Kept", 0, 0, 32, EVERYTHING, None)) == [b"kept"]
    store.delete_topic("never-there")


def test_metadata(store: Any) -> None:
    assert store.load_metadata("offsets") is None
    value = {"offsetTable": {"T@g": {"0": 5}}, "list": [1, "two", None, True]}
    store.save_metadata("offsets", value)
    value["offsetTable"]["T@g"]["0"] = 99
    assert store.load_metadata("offsets") == {
        "offsetTable": {"T@g": {"0": 5}},
        "list": [1, "two", None, True],
    }
    loaded = store.load_metadata("offsets")
    loaded["list"].append(3)
    assert store.load_metadata("offsets")["list"] == [1, "two", None, True]
    store.save_metadata("offsets", {"v": 2})
    assert store.load_metadata("offsets") == {"v": 2}
    assert store.load_metadata("topics") is None


def test_append_batch(store: Any) -> None:
    put(store, "T", 1)
    records = [make_record("T", 1, b"b%d" % i, tags="X") for i in range(5)]
    results = store.append_batch("T", 1, records, [tag_hash("X")] * 5, 1000)
    assert [r.queue_offset for r in results] == [1, 2, 3, 4, 5]
    assert [r.size for r in results] == [len(r) for r in records]
    assert [r.physical_offset for r in results] == sorted(r.physical_offset for r in results)
    assert bodies(store.read("T", 1, 1, 32, EVERYTHING, frozenset({tag_hash("X")}))) == [
        b"b%d" % i for i in range(5)
    ]
    assert store.append_batch("T", 1, [], [], 1000) == []


def test_append_batch_is_all_or_nothing(store: Any) -> None:
    good = make_record("T", 0, b"good")
    wrong_queue = make_record("T", 1, b"bad")
    with pytest.raises(StoreError):
        store.append_batch("T", 0, [good, wrong_queue], [0, 0], 1000)
    with pytest.raises(StoreError):
        store.append_batch("T", 0, [good], [0, 0], 1000)
    assert store.max_offset("T", 0) == 0
    assert store.message_count == 0


def test_append_refuses_what_is_not_a_record_of_that_queue(store: Any) -> None:
    with pytest.raises(StoreError, match="queue"):
        store.append("T", 1, make_record("T", 0), 0, 1000)
    with pytest.raises(StoreError, match="queue"):
        store.append("U", 0, make_record("T", 0), 0, 1000)
    record = make_record()
    record += b"junk"
    with pytest.raises(StoreError, match="length"):
        store.append("T", 0, record, 0, 1000)
    with pytest.raises(StoreError):
        store.append("T", 0, bytearray(b"\x00\x00\x00\x08tooshort"), 0, 1000)
    for bad in (1 << 31, -(1 << 31) - 1):
        with pytest.raises(StoreError, match="tag hash"):
            store.append("T", 0, make_record(), bad, 1000)
        with pytest.raises(StoreError, match="tag hash"):
            store.append_batch("T", 0, [make_record()], [bad], 1000)
    assert store.message_count == 0
    assert store.queue_ids("T") == []
    store.append("T", 0, make_record(), -(1 << 31), 1000)
    store.append("T", 0, make_record(), (1 << 31) - 1, 1000)
    lowest = store.read("T", 0, 0, 5, EVERYTHING, frozenset({-(1 << 31)}))
    assert [m.queue_offset for m in decode_records(b"".join(lowest.records))] == [0]


def test_counts(store: Any) -> None:
    assert (store.message_count, store.stored_bytes) == (0, 0)
    sizes = [put(store, "T", i % 3, b"x" * i).size for i in range(7)]
    assert (store.message_count, store.stored_bytes) == (7, sum(sizes))


def test_when_durable_is_none_without_sync_flush(store: Any) -> None:
    assert store.when_durable(put(store)) is None


def test_append_after_stop_raises(store: Any) -> None:
    put(store, body=b"kept")
    assert fired(store.stop()) is None
    assert fired(store.stop()) is None
    with pytest.raises(StoreError):
        put(store)


def test_random_operations_match_a_model(store: Any) -> None:
    """Random appends, batches and reads, checked against lists."""
    rng = random.Random(12)
    model: dict[tuple[str, int], list[tuple[bytes, str | None]]] = {}
    tag_choices = ["A", "B", "C", None]
    for step in range(600):
        topic, queue_id = rng.choice(["T", "U"]), rng.randrange(3)
        queue = model.setdefault((topic, queue_id), [])
        if rng.random() < 0.6:
            n = rng.choice([1, 1, 1, 3])
            items = [(b"%d:" % step + b"x" * rng.randrange(200), rng.choice(tag_choices))]
            items += [(b"%d-%d" % (step, k), rng.choice(tag_choices)) for k in range(1, n)]
            records = [make_record(topic, queue_id, b, tags=t) for b, t in items]
            store.append_batch(topic, queue_id, records, [tag_hash(t) for _, t in items], 1000)
            queue.extend(items)
        else:
            offset = rng.randrange(len(queue) + 2)
            max_count = rng.randrange(1, 40)
            max_bytes = rng.choice([1, 500, 5000, EVERYTHING])
            wanted = rng.choice([None, frozenset({tag_hash("A")}), frozenset({tag_hash("B"), 0})])
            result = store.read(topic, queue_id, offset, max_count, max_bytes, wanted)
            expected = []
            total = 0
            next_offset = offset
            for i in range(offset, min(len(queue), offset + max(max_count, SCAN_LIMIT))):
                body, tag = queue[i]
                if wanted is not None and tag_hash(tag) not in wanted:
                    next_offset = i + 1
                    continue
                size = len(make_record(topic, queue_id, body, tags=tag))
                if expected and total + size > max_bytes:
                    break
                if wanted is None and len(expected) == max_count:
                    break
                total += size
                expected.append(body)
                next_offset = i + 1
                if len(expected) == max_count:
                    break
            assert bodies(result) == expected
            if offset < len(queue):
                assert result.next_offset == next_offset
            else:
                assert result.next_offset == offset
            assert result.max_offset == len(queue)
