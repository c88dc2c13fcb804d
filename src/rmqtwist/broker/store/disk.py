"""``DiskStore``: an append-only commit log in segment files, for ``--data-dir``.

Layout of the data directory::

    commitlog/00000000000000000000.log   segments, named by the physical offset they start at
    metadata/NAME.json, NAME.json.bak    what save_metadata kept, and its previous version
    store-state.json(.bak)               the store's own state: deleted-topic tombstones
    damaged/                             what recovery cut off or moved aside (never deleted)
    lock                                 flock()ed while a store has the directory open

A segment is a run of entries, each a stored record (broker.md §4) followed by a 16-byte
trailer: the tag hash given to append (an int32, kept as int64), the record's length again
(uint32) and a CRC32 of the record and those 12 bytes (uint32), all big-endian. A record's
physical offset is where its entry starts in the log (segment base + position in the file).
The commit log itself is :class:`~rmqtwist.broker.store._commitlog.CommitLog`; this module
keeps the per-queue index (rebuilt from the log on start), the metadata and the tombstones.

On :meth:`DiskStore.start` every entry is checked (length, trailer, CRC, magic, the
physical offset written in it) while the per-queue index is rebuilt from the records. The
first bad entry ends the log: the file is cut there (the cut bytes are saved in
``damaged/``, the cut is logged with the file, offset and reason) and any later segment is
moved to ``damaged/``. Nothing past the cut is ever served. New records then reuse the
offsets after the cut.

What each flush mode loses:

- ``flush="async"`` (default): an append is written to the OS before it returns, and the
  log is fsynced every ``flush_interval`` seconds. A crash of the process loses nothing
  that was appended; a power failure or kernel crash loses up to ``flush_interval`` of
  acknowledged messages (and recovery cuts whatever was torn).
- ``flush="sync"``: :meth:`DiskStore.when_durable` fires only once the record's bytes are
  fsynced, so a broker that answers a send then loses nothing it acknowledged, on a
  process crash or a power failure. Appends made while an fsync runs share the next one
  (group commit; one fsync in a thread at a time). Appends nobody waits for are fsynced
  every ``flush_interval`` as in async mode.

After a failed fsync nobody can tell what reached the disk, so the store then refuses
appends (StoreError) and fails the waiting Deferreds; a restart recovers what is there.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from rmqtwist.broker.store._commitlog import TRAILER_SIZE, CommitLog
from rmqtwist.broker.store._common import (
    MAX_RECORD_SIZE,
    MIN_RECORD_SIZE,
    SCAN_LIMIT,
    check_record,
    check_tag_hashes,
    nearest_index,
    record_key,
    set_offsets,
    store_timestamp_of,
)
from rmqtwist.broker.store._jsonfile import fsync_directory, load_json, save_json
from rmqtwist.broker.store.interface import AppendResult, IMessageStore, ReadResult, StoreError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.python.threadpool import ThreadPool

__all__ = ["TRAILER_SIZE", "DiskStore"]

_log = Logger()

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_METADATA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Header bytes read to find a record's store time (enough for an IPv6 born host).
_TIME_HEAD = 76


class _Index:
    """One queue's index: physical offset, size and tag hash of each record from ``base``."""

    __slots__ = ("base", "phys", "sizes", "stored", "tags")

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.phys: array[int] = array("q")
        self.sizes: array[int] = array("I")
        self.tags: array[int] = array("i")
        self.stored = 0

    def add(self, phys: int, size: int, tag: int) -> None:
        self.phys.append(phys)
        self.sizes.append(size)
        self.tags.append(tag)
        self.stored += size


@implementer(IMessageStore)
class DiskStore:
    """Records in a commit log under ``directory``; see the module docstring for the
    format and what ``flush="async"`` or ``"sync"`` lose on a crash or a power failure.

    ``reactor`` gives the timers and the thread pool the fsyncs run in (``threadpool``
    overrides the pool); ``fsync`` is what syncs the commit log (tests count or fail it).
    Start-up rebuilds the index by reading every segment, in the reactor thread: about
    400,000 records (135 MB) a second on the 2-core machine this was written on.
    """

    message_count: int
    stored_bytes: int

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        flush: str = "async",
        flush_interval: float = 0.5,
        segment_size: int = 64 * 1024 * 1024,
        reactor: IReactorTime | None = None,
        threadpool: ThreadPool | None = None,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        if flush not in ("async", "sync"):
            raise ValueError(f"flush must be 'async' or 'sync', not {flush!r}")
        if flush_interval <= 0 or segment_size <= 0:
            raise ValueError("flush_interval and segment_size must be positive")
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast("IReactorTime", default_reactor)
        self._sync_mode = flush == "sync"
        self._dir = Path(directory)
        self._meta_dir = self._dir / "metadata"
        self._state_path = self._dir / "store-state.json"
        self._new_log: Callable[[], CommitLog] = lambda: CommitLog(
            self._dir / "commitlog",
            self._dir / "damaged",
            segment_size=segment_size,
            flush_interval=flush_interval,
            reactor=reactor,
            threadpool=threadpool,
            fsync=fsync,
        )
        self._log = self._new_log()
        self.message_count = 0
        self.stored_bytes = 0
        self._queues: dict[str, dict[int, _Index]] = {}
        self._tombstones: dict[str, int] = {}
        self._lock_fd = -1
        self._started = False
        self._stopping: list[Deferred[None]] | None = None
        self._stopped = False

    # -- life cycle

    def start(self) -> Deferred[None]:
        """Open the directory, recover the log and rebuild the index. A damaged log or
        metadata is logged and repaired; a directory that cannot be used at all (no
        permission, another store has it) fails the Deferred with StoreError."""
        if self._stopped:
            return fail(StoreError("a stopped DiskStore cannot start again; make a new one"))
        if self._started:
            return succeed(None)
        began = time.monotonic()
        try:
            created = not self._meta_dir.exists()
            self._meta_dir.mkdir(parents=True, exist_ok=True)
            if created:
                fsync_directory(self._dir)
            self._lock()
            state = load_json(self._state_path)
            if isinstance(state, dict) and isinstance(state.get("deleted_topics"), dict):
                self._tombstones = {str(k): int(v) for k, v in state["deleted_topics"].items()}
            checked = self._log.open(self._index_entry)
        except (OSError, StoreError, ValueError, TypeError) as e:
            self._log.release()
            self._log = self._new_log()
            self._queues = {}
            self.message_count = self.stored_bytes = 0
            self._unlock()
            return fail(e if isinstance(e, StoreError) else StoreError(f"{self._dir}: {e}"))
        self._started = True
        _log.info(
            "Opened {dir}: {count} messages ({bytes} bytes) in {queues} queues, {segments}"
            " segments, {checked} bytes checked in {seconds:.2f} s",
            dir=str(self._dir),
            count=self.message_count,
            bytes=self.stored_bytes,
            queues=sum(len(q) for q in self._queues.values()),
            segments=self._log.segment_count,
            checked=checked,
            seconds=time.monotonic() - began,
        )
        return succeed(None)

    def _index_entry(
        self, topic: str, queue_id: int, queue_offset: int, physical: int, size: int, tag: int
    ) -> None:
        """Recovery found a good entry: index it, unless its topic was deleted after it."""
        deleted = self._tombstones.get(topic)
        if deleted is not None and physical < deleted:
            return
        by_id = self._queues.get(topic)
        if by_id is None:
            by_id = self._queues[topic] = {}
        index = by_id.get(queue_id)
        if index is None:
            index = by_id[queue_id] = _Index(queue_offset)
        elif index.base + len(index.phys) != queue_offset:
            _log.warn(
                "Queue {topic}:{queue_id} goes from offset {expected} to {offset} at"
                " physical offset {physical}; keeping only what follows",
                topic=topic,
                queue_id=queue_id,
                expected=index.base + len(index.phys),
                offset=queue_offset,
                physical=physical,
            )
            self.message_count -= len(index.phys)
            self.stored_bytes -= index.stored
            index = by_id[queue_id] = _Index(queue_offset)
        index.add(physical, size, tag)
        self.message_count += 1
        self.stored_bytes += size

    def _lock(self) -> None:
        self._lock_fd = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{self._dir} is in use by another store") from None

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # which releases the flock
            self._lock_fd = -1

    def stop(self) -> Deferred[None]:
        """Stop the flusher, wait for a running fsync, fsync what is left, close the files.
        Idempotent; appends and reads afterwards raise StoreError."""
        if self._stopped or not self._started:
            self._stopped = True
            return succeed(None)
        done: Deferred[None] = Deferred()
        if self._stopping is not None:
            self._stopping.append(done)
            return done
        self._stopping = [done]
        self._log.close().addCallback(self._closed)
        return done

    def _closed(self, _: None) -> None:
        self._unlock()
        self._stopped = True
        waiting, self._stopping = self._stopping or [], None
        for d in waiting:
            d.callback(None)

    # -- writing

    def append(
        self, topic: str, queue_id: int, record: bytearray, tag_hash: int, store_timestamp: int
    ) -> AppendResult:
        """Write ``record`` (and its trailer) to the log; see :meth:`IMessageStore.append`.
        The record is in the OS when this returns; :meth:`when_durable` waits for the disk.
        The store time is read from the record itself."""
        self._check_writable()
        size = check_record(topic, queue_id, record)
        check_tag_hashes((tag_hash,))
        return self._write(topic, queue_id, [record], [size], [tag_hash])[0]

    def append_batch(
        self,
        topic: str,
        queue_id: int,
        records: Sequence[bytearray],
        tag_hashes: Sequence[int],
        store_timestamp: int,
    ) -> list[AppendResult]:
        """Write ``records`` at consecutive offsets of one queue, in one write (all or none)."""
        self._check_writable()
        if len(records) != len(tag_hashes):
            raise StoreError("a tag hash is needed for each record")
        if not records:
            return []
        sizes = [check_record(topic, queue_id, r) for r in records]
        check_tag_hashes(tag_hashes)
        return self._write(topic, queue_id, records, sizes, tag_hashes)

    def _check_writable(self) -> None:
        if not self._started or self._stopping is not None or self._stopped:
            raise StoreError("the store is not open")

    def _write(
        self,
        topic: str,
        queue_id: int,
        records: Sequence[bytearray],
        sizes: Sequence[int],
        tag_hashes: Sequence[int],
    ) -> list[AppendResult]:
        index = self._find(topic, queue_id)
        offset = 0 if index is None else index.base + len(index.phys)
        physical = self._log.end
        results = []
        for record, size in zip(records, sizes, strict=True):
            set_offsets(record, offset, physical)
            results.append(AppendResult(offset, physical, size))
            offset += 1
            physical += size + TRAILER_SIZE
        self._log.write(records, sizes, tag_hashes)
        if index is None:
            index = self._queues.setdefault(topic, {})[queue_id] = _Index()
        for result, tag in zip(results, tag_hashes, strict=True):
            index.add(result.physical_offset, result.size, tag)
        self.message_count += len(results)
        self.stored_bytes += sum(sizes)
        return results

    def when_durable(self, result: AppendResult) -> Deferred[None] | None:
        """With ``flush="sync"``, a Deferred firing once the record is fsynced (None when
        it already is; StoreError after an fsync error); with ``flush="async"``, None."""
        if not self._sync_mode:
            return None
        return self._log.wait_synced(result.physical_offset + result.size + TRAILER_SIZE)

    # -- reading

    def _find(self, topic: str, queue_id: int) -> _Index | None:
        queues = self._queues.get(topic)
        return queues.get(queue_id) if queues is not None else None

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
        index = self._find(topic, queue_id)
        if index is None:
            return ReadResult([], offset, 0, 0)
        phys = index.phys
        count = len(phys)
        low = index.base
        high = low + count
        if offset < low or offset >= high or max_count <= 0:
            return ReadResult([], offset, low, high)
        i = offset - low
        if tag_hashes is None:
            stop = min(count, i + max_count)
        else:
            stop = min(count, i + max(max_count, SCAN_LIMIT))
        sizes = index.sizes
        tags = index.tags
        picked: list[int] = []
        total = 0
        while i < stop:
            if tag_hashes is not None and tags[i] not in tag_hashes:
                i += 1
                continue
            total += sizes[i]
            if total > max_bytes and picked:
                break
            picked.append(i)
            i += 1
            if len(picked) >= max_count:
                break
        return ReadResult(self._log.fetch_many(phys, sizes, picked), low + i, low, high)

    def read_at(self, physical_offset: int) -> bytes | None:
        """The record at ``physical_offset``, when one of a live queue starts there."""
        if not self._log.start_offset <= physical_offset < self._log.end:
            return None
        try:
            size = _I32.unpack(self._log.fetch(physical_offset, 4))[0]
            if not MIN_RECORD_SIZE <= size <= MAX_RECORD_SIZE:
                return None
            record = self._log.fetch(physical_offset, size)
            topic, queue_id = record_key(record, 0, len(record))
            index = self._find(topic.decode("utf-8"), queue_id)
        except (ValueError, UnicodeDecodeError, struct.error):
            return None
        if index is None:
            return None
        i = _I64.unpack_from(record, 20)[0] - index.base
        if 0 <= i < len(index.phys) and index.phys[i] == physical_offset:
            return record
        return None

    def min_offset(self, topic: str, queue_id: int) -> int:
        """The oldest offset held; 0 for an unknown queue."""
        index = self._find(topic, queue_id)
        return 0 if index is None else index.base

    def max_offset(self, topic: str, queue_id: int) -> int:
        """The next offset to be written; 0 for an unknown queue."""
        index = self._find(topic, queue_id)
        return 0 if index is None else index.base + len(index.phys)

    def offset_for_timestamp(self, topic: str, queue_id: int, timestamp: int) -> int:
        """The offset stored nearest ``timestamp``; 0 for an unknown queue."""
        index = self._find(topic, queue_id)
        if index is None:
            return 0
        if not index.phys:
            return index.base

        def time_at(i: int) -> int:
            return store_timestamp_of(self._log.fetch(index.phys[i], _TIME_HEAD), 0)

        return index.base + nearest_index(0, len(index.phys), timestamp, time_at)

    def store_timestamp_at(self, topic: str, queue_id: int, offset: int) -> int | None:
        """The store time of the record at ``offset``, or None when not held."""
        index = self._find(topic, queue_id)
        if index is None or not index.base <= offset < index.base + len(index.phys):
            return None
        return store_timestamp_of(self._log.fetch(index.phys[offset - index.base], _TIME_HEAD), 0)

    def queue_ids(self, topic: str) -> list[int]:
        """The queue ids of ``topic`` that hold or have held messages."""
        return sorted(self._queues.get(topic, ()))

    def delete_topic(self, topic: str) -> None:
        """Forget ``topic``: a tombstone (the log's end now) in the store state makes
        recovery skip its older records, which stay in the log."""
        self._tombstones[topic] = self._log.end
        for index in self._queues.pop(topic, {}).values():
            self.message_count -= len(index.phys)
            self.stored_bytes -= index.stored
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            save_json(self._state_path, {"version": 1, "deleted_topics": self._tombstones})
        except OSError as e:
            _log.error(
                "Cannot record the deletion of {topic} in {dir} ({error}): its messages"
                " come back after a restart",
                topic=topic,
                dir=str(self._dir),
                error=e,
            )
            raise StoreError(f"cannot save the store state: {e}") from None

    # -- metadata

    def _metadata_path(self, name: str) -> Path:
        if not _METADATA_NAME.match(name):
            raise ValueError(f"not a metadata name: {name!r}")
        return self._meta_dir / f"{name}.json"

    def load_metadata(self, name: str) -> Any | None:
        """The value in ``metadata/NAME.json``; if it is unreadable, logged, the one in
        ``NAME.json.bak``; else None."""
        return load_json(self._metadata_path(name))

    def save_metadata(self, name: str, value: Any) -> None:
        """Replace ``metadata/NAME.json`` atomically (it is fsynced: this blocks for a
        moment), keeping the previous version as ``NAME.json.bak``. StoreError when the
        file cannot be written, TypeError or ValueError when ``value`` is not JSON-able."""
        path = self._metadata_path(name)
        try:
            self._meta_dir.mkdir(parents=True, exist_ok=True)
            save_json(path, value)
        except OSError as e:
            raise StoreError(f"cannot save {path}: {e}") from None
