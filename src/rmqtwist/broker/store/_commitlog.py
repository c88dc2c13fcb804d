"""The disk store's commit log: segment files of checked entries, their recovery, and
fsync with group commit.

An entry is a stored record followed by a 16-byte trailer: the tag hash given to append
(int64), the record's length again (uint32) and a CRC32 of the record and those 12 bytes
(uint32), all big-endian. A record's physical offset is where its entry starts in the
log: the segment's base (its file name) plus the position in the file. Segments are
written through an ``O_APPEND`` descriptor, read back with ``pread`` while active and
through a read-only ``mmap`` once sealed.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
import zlib
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from rmqtwist.broker.store._common import MAX_RECORD_SIZE, MIN_RECORD_SIZE, record_key
from rmqtwist.broker.store._jsonfile import fsync_directory
from rmqtwist.broker.store.interface import StoreError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
    from twisted.python.failure import Failure
    from twisted.python.threadpool import ThreadPool

__all__ = ["TRAILER_SIZE", "CommitLog", "EntryHandler"]

_log = Logger()

#: Bytes after each record in a segment: tag hash, length, CRC32.
TRAILER_SIZE = 16
_TRAILER_HEAD = struct.Struct(">qI")
_U32 = struct.Struct(">I")
_TRAILER = struct.Struct(">qII")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")
#: Active-segment records closer than this are fetched with one pread.
_COALESCE_GAP = 16 * 1024
_IOV_MAX = 1024

#: Called by :meth:`CommitLog.open` for each good entry:
#: (topic, queue id, queue offset, physical offset, record size, tag hash).
EntryHandler = Callable[[str, int, int, int, int, int], None]


class CommitLog:
    """Segment files under ``directory``; what recovery cuts goes to ``damaged``.

    Appends are written to the OS at once. fsyncs run in ``threadpool`` (else the
    reactor's), one at a time: every ``flush_interval`` when something is unsynced, and
    as soon as the reactor turn ends when someone waits (:meth:`wait_synced`); waiters
    that come during an fsync share the next one.
    """

    def __init__(
        self,
        directory: Path,
        damaged: Path,
        *,
        segment_size: int,
        flush_interval: float,
        reactor: IReactorTime,
        threadpool: ThreadPool | None,
        fsync: Callable[[int], None],
    ) -> None:
        self._dir = directory
        self._damaged = damaged
        self._segment_size = segment_size
        self._flush_interval = flush_interval
        self._reactor = reactor
        self._threadpool = threadpool
        self._fsync = fsync
        # Segments: bases ascending; maps of the sealed ones; the active one is written.
        self._bases: list[int] = []
        self._maps: list[mmap.mmap | None] = []
        self._fd = -1
        self._active_base = 0
        self._active_size = 0
        #: The next physical offset.
        self.end = 0
        #: Every byte before this is fsynced.
        self.durable = 0
        #: Set once a write or fsync failed in a way that leaves the disk unknown.
        self.broken: StoreError | None = None
        self._unsynced_fds: list[int] = []  # sealed segments not fsynced yet
        self._dir_dirty = False
        self._waiters: deque[tuple[int, Deferred[None]]] = deque()
        self._syncing: Deferred[None] | None = None
        self._sync_call: IDelayedCall | None = None
        self._flusher: LoopingCall | None = None
        self._closing = False

    @property
    def segment_count(self) -> int:
        """The number of segment files in use."""
        return len(self._bases)

    @property
    def start_offset(self) -> int:
        """The physical offset the first segment starts at."""
        return self._bases[0] if self._bases else 0

    # -- recovery

    def open(self, on_entry: EntryHandler) -> int:
        """Check every entry, calling ``on_entry`` for each good one; cut the log at the
        first bad one (logged; later segments moved aside); open the last segment for
        appends and start the periodic flush. Returns the bytes of good entries."""
        self._dir.mkdir(parents=True, exist_ok=True)
        segments = sorted(
            (int(m.group(1)), p)
            for p in self._dir.iterdir()
            if (m := _SEGMENT_NAME.match(p.name)) and p.is_file()
        )
        checked = 0
        for k, (base, path) in enumerate(segments):
            if self._bases and base != self.end:
                self._set_aside(
                    segments[k:], f"{path.name} does not start where the segment before it ends"
                )
                break
            size = path.stat().st_size
            good, problem = self._scan(path, base, size, on_entry)
            checked += good
            self._bases.append(base)
            self.end = base + good
            if problem is not None:
                self._cut(path, good, size, problem)
                self._set_aside(segments[k + 1 :], f"they follow the damage in {path.name}")
                break
        if not self._bases:
            self._bases.append(0)
        self._active_base = self._bases[-1]
        for base in self._bases[:-1]:
            self._maps.append(self._map(self._segment_path(base)))
        self._maps.append(None)
        self._open_active()
        self.durable = self.end
        self._flusher = LoopingCall(self._tick)
        self._flusher.clock = self._reactor
        self._flusher.start(self._flush_interval, now=False)
        return checked

    def _scan(
        self, path: Path, base: int, size: int, on_entry: EntryHandler
    ) -> tuple[int, str | None]:
        """Check one segment's entries; (bytes of good entries, why the rest is bad)."""
        if size == 0:
            return 0, None
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                return _scan_entries(m, view, base, size, on_entry)
            finally:
                view.release()

    def _cut(self, path: Path, good: int, size: int, problem: str) -> None:
        """Truncate ``path`` at ``good``, keeping the cut bytes in the damaged directory."""
        kept = self._aside_path(f"{path.name}.from-{good}")
        with path.open("rb") as f:
            f.seek(good)
            kept.write_bytes(f.read())
        with path.open("r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        _log.warn(
            "Cut the commit log {file} at offset {offset} ({problem}): {count} bytes after"
            " it are not served (kept in {kept})",
            file=str(path),
            offset=good,
            problem=problem,
            count=size - good,
            kept=str(kept),
        )

    def _set_aside(self, segments: Sequence[tuple[int, Path]], why: str) -> None:
        for _base, path in segments:
            target = self._aside_path(path.name)
            os.replace(path, target)
            _log.warn(
                "Moved the commit-log segment {file} to {target}: {why}",
                file=str(path),
                target=str(target),
                why=why,
            )
        if segments:
            fsync_directory(self._dir)

    def _aside_path(self, name: str) -> Path:
        self._damaged.mkdir(exist_ok=True)
        target = self._damaged / name
        n = 0
        while target.exists():
            n += 1
            target = self._damaged / f"{name}.{n}"
        return target

    def _segment_path(self, base: int) -> Path:
        return self._dir / f"{base:020d}.log"

    @staticmethod
    def _map(path: Path) -> mmap.mmap | None:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _open_active(self) -> None:
        path = self._segment_path(self._active_base)
        existed = path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._active_size = os.fstat(self._fd).st_size
        if not existed:
            self._dir_dirty = True

    # -- writing

    def write(
        self, records: Sequence[bytearray], sizes: Sequence[int], tag_hashes: Sequence[int]
    ) -> None:
        """Append entries for ``records`` (offsets already set: the first at :attr:`end`)
        in one write; StoreError, with nothing left of them in the file, if that fails."""
        if self.broken is not None:
            raise self.broken
        if self._fd < 0:
            raise StoreError("the commit log is closed")
        total = sum(sizes) + TRAILER_SIZE * len(sizes)
        if self._active_size and self._active_size + total > self._segment_size:
            self._roll()
        parts: list[bytes | bytearray] = []
        for record, size, tag in zip(records, sizes, tag_hashes, strict=True):
            head = _TRAILER_HEAD.pack(tag, size)
            parts.append(record)
            parts.append(head + _U32.pack(zlib.crc32(head, zlib.crc32(record))))
        try:
            self._write_all(parts, total)
        except OSError as e:
            self._undo_write(e)
            raise StoreError(f"cannot write to the commit log: {e}") from None
        self.end += total
        self._active_size += total

    def _write_all(self, parts: list[bytes | bytearray], total: int) -> None:
        written = 0
        for i in range(0, len(parts), _IOV_MAX):
            written += os.writev(self._fd, parts[i : i + _IOV_MAX])
        if written < total:  # a short write (rare: a signal, or the disk filling up)
            rest = b"".join(parts)[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]

    def _undo_write(self, error: OSError) -> None:
        """Cut what a failed write left, so that no torn entry sits before later ones."""
        try:
            os.ftruncate(self._fd, self._active_size)
        except OSError as e:
            self.broken = StoreError(f"the commit log is damaged after a failed write: {e}")
            _log.error(
                "Write to {dir} failed ({error}) and the partial entry cannot be removed"
                " ({truncate_error}); the store refuses further appends",
                dir=str(self._dir),
                error=error,
                truncate_error=e,
            )

    def _roll(self) -> None:
        """Seal the active segment (mapped for reads, fsynced later) and start the next."""
        self._unsynced_fds.append(self._fd)
        self._maps[-1] = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        self._bases.append(self.end)
        self._maps.append(None)
        self._active_base = self.end
        self._fd = -1
        self._open_active()

    # -- durability

    def wait_synced(self, end: int) -> Deferred[None] | None:
        """None if every byte before ``end`` is fsynced; else a Deferred firing once it
        is (the fsync starts when this reactor turn ends, to take the turn's appends)."""
        if end <= self.durable:
            return None
        if self.broken is not None:
            d: Deferred[None] = Deferred()
            d.errback(self.broken)
            return d
        d = Deferred()
        self._waiters.append((end, d))
        if self._syncing is None and self._sync_call is None and not self._closing:
            self._sync_call = self._reactor.callLater(0, self._sync)
        return d

    def _tick(self) -> None:
        if self._needs_sync():
            self._sync()

    def _needs_sync(self) -> bool:
        return self.end > self.durable or bool(self._unsynced_fds) or self._dir_dirty

    def _sync(self) -> None:
        """Start an fsync of everything written so far, in a thread (one at a time)."""
        self._sync_call = None
        if self._syncing is not None or self.broken is not None or self._fd < 0:
            return
        target = self.end
        sealed, self._unsynced_fds = self._unsynced_fds, []
        directory, self._dir_dirty = self._dir_dirty, False
        pool = self._threadpool
        if pool is None:
            pool = cast("Any", self._reactor).getThreadPool()
        d = deferToThreadPool(
            cast("IReactorFromThreads", self._reactor),
            pool,
            self._sync_files,
            sealed,
            self._fd,
            directory,
        )
        self._syncing = d
        d.addCallbacks(self._synced, self._sync_failed, (target, sealed), {}, (sealed,))

    def _sync_files(self, sealed: list[int], active: int, directory: bool) -> None:
        """(In a thread) fsync the sealed segments, the active one and the directory."""
        for fd in sealed:
            self._fsync(fd)
        self._fsync(active)
        if directory:
            fsync_directory(self._dir)

    def _synced(self, _: None, target: int, sealed: list[int]) -> None:
        self._syncing = None
        for fd in sealed:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.durable = max(self.durable, target)
        self._settle_waiters()
        if self._waiters and not self._closing:
            self._sync()  # those that came during that fsync share the next

    def _sync_failed(self, failure: Failure, sealed: list[int]) -> None:
        self._syncing = None
        self._unsynced_fds = sealed + self._unsynced_fds
        self.broken = StoreError(f"fsync of the commit log failed: {failure.value}")
        _log.failure(
            "fsync of {dir} failed; the store refuses further appends",
            failure,
            dir=str(self._dir),
        )
        waiters, self._waiters = self._waiters, deque()
        for _end, d in waiters:
            d.errback(self.broken)

    def _settle_waiters(self) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.durable:
            waiters.popleft()[1].callback(None)

    def close(self) -> Deferred[None]:
        """Stop the flush timer, let a running fsync end, fsync the rest, close the files.
        Call once."""
        self._closing = True
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        self._sync_call = None
        running = self._syncing if self._syncing is not None else succeed(None)
        done: Deferred[None] = Deferred()
        running.addBoth(lambda _: self._finish_close(done))
        return done

    def _finish_close(self, done: Deferred[None]) -> None:
        if self.broken is None and self._fd >= 0 and self._needs_sync():
            try:
                self._sync_files(list(self._unsynced_fds), self._fd, self._dir_dirty)
                self.durable = self.end
            except OSError as e:
                self.broken = StoreError(f"fsync of the commit log failed: {e}")
                _log.error("Final fsync of {dir} failed: {error}", dir=str(self._dir), error=e)
        self._settle_waiters()
        while self._waiters:
            self._waiters.popleft()[1].errback(StoreError("the store stopped before the fsync"))
        self.release()
        done.callback(None)

    def release(self) -> None:
        """Close every file and map at once (no fsync)."""
        for m in self._maps:
            if m is not None:
                m.close()
        self._maps = [None] * len(self._maps)
        for fd in [*self._unsynced_fds, self._fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._unsynced_fds = []
        self._fd = -1

    # -- reading

    def fetch(self, physical: int, size: int) -> bytes:
        """``size`` bytes from ``physical`` (fewer at the end of a segment)."""
        k = bisect_right(self._bases, physical) - 1
        start = physical - self._bases[k]
        mapped = self._maps[k]
        if mapped is not None:
            return mapped[start : start + size]
        if k != len(self._bases) - 1 or self._fd < 0:
            raise StoreError("the store is closed")
        return os.pread(self._fd, size, start)

    def fetch_many(self, phys: array[int], sizes: array[int], picked: list[int]) -> list[bytes]:
        """The records at the ``picked`` indexes of ``phys``/``sizes``: slices of a map in
        sealed segments, one pread for each run of close ones in the active segment."""
        records: list[bytes] = []
        active = self._active_base
        i = 0
        while i < len(picked):
            j = picked[i]
            start = phys[j]
            if start < active:
                records.append(self.fetch(start, sizes[j]))
                i += 1
                continue
            run_end = i + 1
            end = start + sizes[j]
            while run_end < len(picked):
                nxt = picked[run_end]
                if phys[nxt] - end > _COALESCE_GAP:
                    break
                end = phys[nxt] + sizes[nxt]
                run_end += 1
            if self._fd < 0:
                raise StoreError("the store is closed")
            blob = os.pread(self._fd, end - start, start - active)
            for k in picked[i:run_end]:
                at = phys[k] - start
                records.append(blob[at : at + sizes[k]])
            i = run_end
        return records


def _scan_entries(
    m: mmap.mmap, view: memoryview, base: int, size: int, on_entry: EntryHandler
) -> tuple[int, str | None]:
    """Check the entries of one mapped segment in order, handing each good one to
    ``on_entry``; (bytes of good entries, why the next one is bad or None)."""
    topics: dict[bytes, str] = {}
    unpack_size = _I32.unpack_from
    unpack_trailer = _TRAILER.unpack_from
    unpack_i64 = _I64.unpack_from
    crc32 = zlib.crc32
    pos = 0
    while pos < size:
        if size - pos < 4:
            return pos, "truncated in a length field"
        length = unpack_size(m, pos)[0]
        if length < MIN_RECORD_SIZE or length > MAX_RECORD_SIZE:
            if not any(view[pos : pos + 4096]):
                return pos, "zero bytes where a record should start"
            return pos, f"impossible record length {length}"
        end = pos + length
        if end + TRAILER_SIZE > size:
            return pos, f"truncated mid-record ({size - pos} of {length + 16} bytes)"
        tag, trailer_length, crc = unpack_trailer(m, end)
        if trailer_length != length:
            return pos, "the trailer's length differs from the record's"
        if crc32(view[pos : end + 12]) != crc:
            return pos, "CRC mismatch"
        if unpack_i64(m, pos + 28)[0] != base + pos:
            return pos, "the record holds another physical offset"
        try:
            topic_bytes, queue_id = record_key(m, pos, end)
            topic = topics.get(topic_bytes)
            if topic is None:
                topic = topics[topic_bytes] = topic_bytes.decode("utf-8")
        except (ValueError, UnicodeDecodeError) as e:
            return pos, f"not a record: {e}"
        on_entry(topic, queue_id, unpack_i64(m, pos + 20)[0], base + pos, length, tag)
        pos = end + TRAILER_SIZE
    return pos, None
