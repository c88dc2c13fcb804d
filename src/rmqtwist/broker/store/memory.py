"""``MemoryStore``: every record in memory, capped in bytes (the dev broker's default store).

Each queue keeps its records back to back in chunks and three ``array`` columns: where
each record starts, its tag hash, and its physical offset less its chunk's first one (for
:meth:`read_at`). A chunk is an anonymous ``mmap`` of ``chunk_size`` bytes filled in
place: the kernel gives it pages only as they are written, nothing is copied when it
fills up, and a dropped chunk goes back to the kernel at once, so the heap does not
fragment as the store grows and shrinks. A record costs its own bytes plus 16 bytes of
index, whatever the number of queues. Past the cap the oldest chunk of the largest queue
is dropped, so min offsets move.
"""

from __future__ import annotations

import json
import mmap
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from rmqtwist.broker.store._common import (
    SCAN_LIMIT,
    check_record,
    check_tag_hashes,
    nearest_index,
    set_offsets,
    store_timestamp_of,
)
from rmqtwist.broker.store.interface import AppendResult, IMessageStore, ReadResult, StoreError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["MemoryStore"]

_log = Logger()

_LOW = 0xFFFFFFFF
#: Dropped messages are logged at most this often (seconds), with a count.
_REPORT_INTERVAL = 10.0


class _Queue:
    """One queue's records and index.

    ``pos[i]`` is ``chunk_seq << 32 | start`` of the record at queue offset ``base + i``,
    ``tags[i]`` its tag hash and ``rel[i]`` its physical offset less its chunk's first;
    entries before ``first`` were dropped (the arrays are compacted once that is half).
    Chunk ``seq`` is ``chunks[seq - chunk_seq0]``, filled up to ``fills[seq - chunk_seq0]``;
    ``chunk_first`` and ``chunk_phys`` hold the queue offset and physical offset of each
    chunk's first record.
    """

    __slots__ = (
        "base",
        "chunk_first",
        "chunk_phys",
        "chunk_seq0",
        "chunks",
        "fills",
        "first",
        "pos",
        "rel",
        "stored",
        "tags",
    )

    def __init__(self) -> None:
        self.pos: array[int] = array("q")
        self.tags: array[int] = array("i")
        self.rel: array[int] = array("I")
        self.base = 0
        self.first = 0
        self.chunks: list[mmap.mmap] = []
        self.fills: list[int] = []
        self.chunk_seq0 = 0
        self.chunk_first: list[int] = []
        self.chunk_phys: list[int] = []
        self.stored = 0

    def locate(self, i: int) -> tuple[mmap.mmap, int, int]:
        """(chunk, start, end) of the record at index ``i``."""
        pos = self.pos
        p = pos[i]
        seq = p >> 32
        chunk = self.chunks[seq - self.chunk_seq0]
        if i + 1 < len(pos) and pos[i + 1] >> 32 == seq:
            return chunk, p & _LOW, pos[i + 1] & _LOW
        return chunk, p & _LOW, self.fills[seq - self.chunk_seq0]

    def record(self, i: int) -> bytes:
        """The record at index ``i`` as bytes."""
        chunk, start, end = self.locate(i)
        return chunk[start:end]

    def close(self) -> None:
        """Give every chunk back to the kernel."""
        for chunk in self.chunks:
            chunk.close()
        self.chunks.clear()
        self.fills.clear()

    def drop_oldest_chunk(self) -> tuple[int, int]:
        """Drop the oldest chunk; (messages, bytes) dropped."""
        chunk = self.chunks.pop(0)
        filled = self.fills.pop(0)
        chunk.close()
        first = self.chunk_first.pop(0)
        self.chunk_phys.pop(0)
        self.chunk_seq0 += 1
        end = self.chunk_first[0] if self.chunk_first else self.base + len(self.pos)
        count = end - first
        self.first += count
        self.stored -= filled
        if self.first >= 1024 and self.first * 2 >= len(self.pos):
            del self.pos[: self.first]
            del self.tags[: self.first]
            del self.rel[: self.first]
            self.base += self.first
            self.first = 0
        return count, filled


@implementer(IMessageStore)
class MemoryStore:
    """Records in memory, at most ``max_bytes`` of them (the oldest of the largest queue
    go first). Nothing survives the process. ``clock`` times the dropped-message log.
    """

    message_count: int
    stored_bytes: int

    def __init__(
        self,
        max_bytes: int = 512 * 1024 * 1024,
        clock: IReactorTime | None = None,
        *,
        chunk_size: int = 1024 * 1024,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self._clock = clock
        self._max_bytes = max_bytes
        # Dropping happens a chunk at a time, so keep chunks small next to the cap.
        self._chunk_size = max(1, min(chunk_size, max_bytes // 64))
        self._topics: dict[str, dict[int, _Queue]] = {}
        self._next_physical = 0
        self._metadata: dict[str, str] = {}
        self._closed = False
        self.message_count = 0
        self.stored_bytes = 0
        self._dropped_messages = 0
        self._dropped_bytes = 0
        self._last_report: float | None = None

    # -- life cycle

    def start(self) -> Deferred[None]:
        """Nothing to open: a new store is usable at once. Reopens a stopped one."""
        self._closed = False
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Refuse further appends (what is held stays readable); logs pending drops."""
        self._closed = True
        self._report_drops(force=True)
        return succeed(None)

    # -- writing

    def append(
        self, topic: str, queue_id: int, record: bytearray, tag_hash: int, store_timestamp: int
    ) -> AppendResult:
        """Store ``record`` in (topic, queue_id); see :meth:`IMessageStore.append`.
        The store time is read from the record itself."""
        size = check_record(topic, queue_id, record)
        check_tag_hashes((tag_hash,))
        self._make_room(size)
        queue = self._queue(topic, queue_id)
        return self._put(queue, record, size, tag_hash)

    def append_batch(
        self,
        topic: str,
        queue_id: int,
        records: Sequence[bytearray],
        tag_hashes: Sequence[int],
        store_timestamp: int,
    ) -> list[AppendResult]:
        """Store ``records`` at consecutive offsets of one queue (all or none)."""
        if len(records) != len(tag_hashes):
            raise StoreError("a tag hash is needed for each record")
        sizes = [check_record(topic, queue_id, r) for r in records]
        check_tag_hashes(tag_hashes)
        self._make_room(sum(sizes))
        queue = self._queue(topic, queue_id)
        return [
            self._put(queue, r, size, h)
            for r, size, h in zip(records, sizes, tag_hashes, strict=True)
        ]

    def when_durable(self, result: AppendResult) -> Deferred[None] | None:
        """Always None: memory is as durable as this store gets."""
        return None

    def _queue(self, topic: str, queue_id: int) -> _Queue:
        queues = self._topics.get(topic)
        if queues is None:
            queues = self._topics[topic] = {}
        queue = queues.get(queue_id)
        if queue is None:
            queue = queues[queue_id] = _Queue()
        return queue

    def _put(self, queue: _Queue, record: bytearray, size: int, tag_hash: int) -> AppendResult:
        offset = queue.base + len(queue.pos)
        physical = self._next_physical
        self._next_physical = physical + size
        set_offsets(record, offset, physical)
        chunks = queue.chunks
        fills = queue.fills
        if (
            not chunks
            or fills[-1] + size > len(chunks[-1])
            or physical - queue.chunk_phys[-1] > _LOW
        ):
            chunks.append(mmap.mmap(-1, max(self._chunk_size, size)))
            fills.append(0)
            queue.chunk_first.append(offset)
            queue.chunk_phys.append(physical)
        active = chunks[-1]
        fill = fills[-1]
        seq = queue.chunk_seq0 + len(chunks) - 1
        queue.pos.append(seq << 32 | fill)
        queue.tags.append(tag_hash)
        queue.rel.append(physical - queue.chunk_phys[-1])
        active[fill : fill + size] = record
        fills[-1] = fill + size
        queue.stored += size
        self.stored_bytes += size
        self.message_count += 1
        return AppendResult(offset, physical, size)

    def _make_room(self, size: int) -> None:
        if self._closed:
            raise StoreError("the store is stopped")
        if size > self._max_bytes:
            raise StoreError(f"{size} bytes is more than the store's cap")
        while self.stored_bytes + size > self._max_bytes:
            largest = max(
                (q for queues in self._topics.values() for q in queues.values() if q.chunks),
                key=lambda q: q.stored,
            )
            count, dropped = largest.drop_oldest_chunk()
            self.message_count -= count
            self.stored_bytes -= dropped
            self._dropped_messages += count
            self._dropped_bytes += dropped
        if self._dropped_messages:
            self._report_drops()

    def _report_drops(self, force: bool = False) -> None:
        if not self._dropped_messages:
            return
        now = self._clock.seconds()
        recent = self._last_report is not None and now - self._last_report < _REPORT_INTERVAL
        if recent and not force:
            return
        _log.warn(
            "The in-memory store is at its cap of {max_bytes} bytes: dropped the oldest"
            " {count} messages ({bytes} bytes) of the largest queues",
            max_bytes=self._max_bytes,
            count=self._dropped_messages,
            bytes=self._dropped_bytes,
        )
        self._last_report = now
        self._dropped_messages = self._dropped_bytes = 0

    # -- reading

    def read(
        self,
        topic: str,
        queue_id: int,
        offset: int,
        max_count: int,
        max_bytes: int,
        tag_hashes: frozenset[int] | None,
    ) -> ReadResult:
        """Records from ``offset`` on; see :meth:`IMessageStore.read`."""
        queues = self._topics.get(topic)
        queue = queues.get(queue_id) if queues is not None else None
        if queue is None:
            return ReadResult([], offset, 0, 0)
        pos = queue.pos
        count = len(pos)
        base = queue.base
        low = base + queue.first
        high = base + count
        if offset < low or offset >= high or max_count <= 0:
            return ReadResult([], offset, low, high)
        i = offset - base
        if tag_hashes is None:
            stop = min(count, i + max_count)
        else:
            stop = min(count, i + max(max_count, SCAN_LIMIT))
        records: list[bytes] = []
        chunks = queue.chunks
        fills = queue.fills
        seq0 = queue.chunk_seq0
        tags = queue.tags
        total = 0
        current = -1
        chunk_end = 0
        chunk: mmap.mmap | None = None
        while i < stop:
            if tag_hashes is not None and tags[i] not in tag_hashes:
                i += 1
                continue
            p = pos[i]
            seq = p >> 32
            if seq != current:
                current = seq
                chunk = chunks[seq - seq0]
                chunk_end = fills[seq - seq0]
            assert chunk is not None
            start = p & _LOW
            end = pos[i + 1] & _LOW if i + 1 < count and pos[i + 1] >> 32 == seq else chunk_end
            total += end - start
            if total > max_bytes and records:
                break
            records.append(chunk[start:end])  # a slice of an mmap is bytes: one copy
            i += 1
            if len(records) >= max_count:
                break
        return ReadResult(records, base + i, low, high)

    def read_at(self, physical_offset: int) -> bytes | None:
        """The record at ``physical_offset``: a bisect in each queue's chunk holding it."""
        for queues in self._topics.values():
            for queue in queues.values():
                found = self._find_physical(queue, physical_offset)
                if found is not None:
                    return queue.record(found)
        return None

    def _find_physical(self, queue: _Queue, physical_offset: int) -> int | None:
        k = bisect_right(queue.chunk_phys, physical_offset) - 1
        if k < 0:
            return None
        delta = physical_offset - queue.chunk_phys[k]
        if delta > _LOW:
            return None
        low = queue.chunk_first[k] - queue.base
        high = (
            queue.chunk_first[k + 1] - queue.base
            if k + 1 < len(queue.chunk_first)
            else len(queue.pos)
        )
        rel = queue.rel
        i = bisect_left(rel, delta, low, high)
        return i if i < high and rel[i] == delta else None

    def min_offset(self, topic: str, queue_id: int) -> int:
        """The oldest offset held; 0 for an unknown queue."""
        queue = self._find(topic, queue_id)
        return 0 if queue is None else queue.base + queue.first

    def max_offset(self, topic: str, queue_id: int) -> int:
        """The next offset to be written; 0 for an unknown queue."""
        queue = self._find(topic, queue_id)
        return 0 if queue is None else queue.base + len(queue.pos)

    def offset_for_timestamp(self, topic: str, queue_id: int, timestamp: int) -> int:
        """The offset stored nearest ``timestamp``; 0 for an unknown queue, the max offset
        when nothing is held any more."""
        queue = self._find(topic, queue_id)
        if queue is None:
            return 0
        if queue.first == len(queue.pos):
            return queue.base + queue.first

        def time_at(i: int) -> int:
            chunk, start, _end = queue.locate(i)
            return store_timestamp_of(chunk, start)

        return queue.base + nearest_index(queue.first, len(queue.pos), timestamp, time_at)

    def store_timestamp_at(self, topic: str, queue_id: int, offset: int) -> int | None:
        """The store time of the record at ``offset``, or None when not held."""
        queue = self._find(topic, queue_id)
        if queue is None:
            return None
        i = offset - queue.base
        if i < queue.first or i >= len(queue.pos):
            return None
        chunk, start, _end = queue.locate(i)
        return store_timestamp_of(chunk, start)

    def queue_ids(self, topic: str) -> list[int]:
        """The queue ids of ``topic`` that hold or have held messages."""
        return sorted(self._topics.get(topic, ()))

    def _find(self, topic: str, queue_id: int) -> _Queue | None:
        queues = self._topics.get(topic)
        return queues.get(queue_id) if queues is not None else None

    def delete_topic(self, topic: str) -> None:
        """Drop ``topic``'s queues and records."""
        for queue in self._topics.pop(topic, {}).values():
            self.message_count -= len(queue.pos) - queue.first
            self.stored_bytes -= queue.stored
            queue.close()

    # -- metadata

    def load_metadata(self, name: str) -> Any | None:
        """A fresh copy of the value saved under ``name``, or None."""
        text = self._metadata.get(name)
        return None if text is None else json.loads(text)

    def save_metadata(self, name: str, value: Any) -> None:
        """Keep a JSON copy of ``value`` (so later changes to it are not seen)."""
        self._metadata[name] = json.dumps(value)
