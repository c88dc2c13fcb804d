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

import contextlib
import fcntl
import json
import mmap
import os
import re
import struct
import time
import zlib
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

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
from rmqtwist.broker.store.interface import AppendResult, IMessageStore, ReadResult, StoreError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
    from twisted.python.failure import Failure
    from twisted.python.threadpool import ThreadPool

__all__ = ["TRAILER_SIZE", "DiskStore"]

_log = Logger()

#: Bytes after each record in a segment: tag hash, length, CRC32.
TRAILER_SIZE = 16
_TRAILER_HEAD = struct.Struct(">qI")
_U32 = struct.Struct(">I")
_TRAILER = struct.Struct(">qII")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")
_METADATA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Header bytes read to find a record's store time (enough for an IPv6 born host).
_TIME_HEAD = 76
#: Active-segment records closer than this are fetched with one pread.
_COALESCE_GAP = 16 * 1024
_IOV_MAX = 1024


class _Index:
    """One queue's index: physical offset, size and tag hash of each record from ``base``."""

    __slots__ = ("base", "phys", "sizes", "stored", "tags")

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.phys: array[int] = array("q")
        self.sizes: array[int] = array("I")
        self.tags: array[int] = array("q")
        self.stored = 0

    def add(self, phys: int, size: int, tag: int) -> None:
        self.phys.append(phys)
        self.sizes.append(size)
        self.tags.append(tag)
        self.stored += size


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON atomically (tmp, fsync, rename, fsync the
    directory), first moving a readable current version to ``path.bak``."""
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if _read_json(path)[1] is None:
        # Only a good version becomes the previous one: a damaged file is overwritten.
        os.replace(path, path.with_name(path.name + ".bak"))
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why not)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, str(e) or type(e).__name__


def _load_json(path: Path) -> Any | None:
    """The value in ``path``, else (logged) the one in ``path.bak``, else None."""
    value, problem = _read_json(path)
    if problem is None:
        return value
    backup = path.with_name(path.name + ".bak")
    previous, backup_problem = _read_json(backup)
    if problem != "missing":
        _log.warn(
            "{path} is unreadable ({problem}); using its previous version {backup}"
            " ({backup_state})",
            path=str(path),
            problem=problem,
            backup=str(backup),
            backup_state="readable" if backup_problem is None else backup_problem,
        )
    elif backup_problem is None:
        _log.warn(
            "{path} is missing; using its previous version {backup}",
            path=str(path),
            backup=str(backup),
        )
    return previous if backup_problem is None else None


@implementer(IMessageStore)
class DiskStore:
    """Records in a commit log under ``directory``; see the module docstring for the
    format and what ``flush="async"`` or ``"sync"`` lose on a crash or a power failure.

    ``reactor`` gives the timers and the thread pool the fsyncs run in (``threadpool``
    overrides the pool); ``fsync`` is what syncs the commit log (tests count or fail it).
    Start-up rebuilds the index by reading every segment, in the reactor thread: about
    350,000 records (120 MB) a second on the 2-core machine this was written on.
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
        self._reactor = reactor
        self._threadpool = threadpool
        self._fsync = fsync
        self._sync_mode = flush == "sync"
        self._flush_interval = flush_interval
        self._segment_size = segment_size
        self._dir = Path(directory)
        self._log_dir = self._dir / "commitlog"
        self._meta_dir = self._dir / "metadata"
        self._damaged_dir = self._dir / "damaged"
        self._state_path = self._dir / "store-state.json"
        self.message_count = 0
        self.stored_bytes = 0
        self._queues: dict[str, dict[int, _Index]] = {}
        self._tombstones: dict[str, int] = {}
        # Segments: bases ascending; maps of the sealed ones; the active one is written.
        self._bases: list[int] = []
        self._maps: list[mmap.mmap | None] = []
        self._fd = -1
        self._active_base = 0
        self._active_size = 0
        self._end = 0  # the next physical offset
        self._durable = 0  # every byte before this is fsynced
        self._unsynced_fds: list[int] = []  # sealed segments not fsynced yet
        self._dir_dirty = False
        self._waiters: deque[tuple[int, Deferred[None]]] = deque()
        self._syncing: Deferred[None] | None = None
        self._sync_call: IDelayedCall | None = None
        self._flusher: LoopingCall | None = None
        self._broken: StoreError | None = None
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
        try:
            created = not self._log_dir.exists() or not self._meta_dir.exists()
            for path in (self._dir, self._log_dir, self._meta_dir):
                path.mkdir(parents=True, exist_ok=True)
            if created:
                _fsync_directory(self._dir)
            self._lock()
            state = _load_json(self._state_path)
            if isinstance(state, dict) and isinstance(state.get("deleted_topics"), dict):
                self._tombstones = {str(k): int(v) for k, v in state["deleted_topics"].items()}
            self._recover()
        except (OSError, StoreError, ValueError, TypeError) as e:
            self._close_files()
            self._queues, self._bases, self._maps = {}, [], []
            self.message_count = self.stored_bytes = self._end = self._durable = 0
            return fail(e if isinstance(e, StoreError) else StoreError(f"{self._dir}: {e}"))
        self._started = True
        # Async mode's flush; in sync mode a backstop for appends nobody waits for.
        self._flusher = LoopingCall(self._tick)
        self._flusher.clock = self._reactor
        self._flusher.start(self._flush_interval, now=False)
        return succeed(None)

    def _lock(self) -> None:
        self._lock_fd = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{self._dir} is in use by another store") from None

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
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        self._sync_call = None
        running = self._syncing if self._syncing is not None else succeed(None)
        running.addBoth(lambda _: self._finish_stop())
        return done

    def _finish_stop(self) -> None:
        if self._broken is None and self._needs_sync():
            try:
                self._sync_files(list(self._unsynced_fds), self._fd, self._dir_dirty)
                self._durable = self._end
            except OSError as e:
                self._broken = StoreError(f"fsync of the commit log failed: {e}")
                _log.error("Final fsync of {dir} failed: {error}", dir=str(self._dir), error=e)
        self._settle_waiters()
        while self._waiters:
            self._waiters.popleft()[1].errback(StoreError("the store stopped before the fsync"))
        self._close_files()
        self._stopped = True
        waiting, self._stopping = self._stopping or [], None
        for d in waiting:
            d.callback(None)

    def _close_files(self) -> None:
        for m in self._maps:
            if m is not None:
                m.close()
        self._maps = [None] * len(self._maps)
        for fd in [*self._unsynced_fds, self._fd, self._lock_fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._unsynced_fds = []
        self._fd = self._lock_fd = -1

    # -- recovery

    def _recover(self) -> None:
        started = time.monotonic()
        segments = sorted(
            (int(m.group(1)), p)
            for p in self._log_dir.iterdir()
            if (m := _SEGMENT_NAME.match(p.name)) and p.is_file()
        )
        scanned = 0
        for k, (base, path) in enumerate(segments):
            if self._bases and base != self._end:
                self._set_aside(
                    segments[k:], f"{path.name} does not start where the segment before it ends"
                )
                break
            size = path.stat().st_size
            good, problem = self._scan(path, base, size)
            scanned += good
            self._bases.append(base)
            self._end = base + good
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
        self._durable = self._end
        elapsed = time.monotonic() - started
        _log.info(
            "Opened {dir}: {count} messages ({bytes} bytes) in {queues} queues, {segments}"
            " segments, {scanned} bytes checked in {seconds:.2f} s",
            dir=str(self._dir),
            count=self.message_count,
            bytes=self.stored_bytes,
            queues=sum(len(q) for q in self._queues.values()),
            segments=len(self._bases),
            scanned=scanned,
            seconds=elapsed,
        )

    def _scan(self, path: Path, base: int, size: int) -> tuple[int, str | None]:
        """Index the entries of one segment; (bytes of good entries, why the rest is bad)."""
        if size == 0:
            return 0, None
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                return self._scan_entries(m, view, base, size)
            finally:
                view.release()

    def _scan_entries(
        self, m: mmap.mmap, view: memoryview, base: int, size: int
    ) -> tuple[int, str | None]:
        topics: dict[bytes, str] = {}
        tombstones = self._tombstones
        queues = self._queues
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
            physical = base + pos
            if unpack_i64(m, pos + 28)[0] != physical:
                return pos, "the record holds another physical offset"
            try:
                topic_bytes, queue_id = record_key(m, pos, end)
                topic = topics.get(topic_bytes)
                if topic is None:
                    topic = topics[topic_bytes] = topic_bytes.decode("utf-8")
            except (ValueError, UnicodeDecodeError) as e:
                return pos, f"not a record: {e}"
            pos = end + TRAILER_SIZE
            deleted = tombstones.get(topic)
            if deleted is not None and physical < deleted:
                continue
            queue_offset = unpack_i64(m, physical - base + 20)[0]
            by_id = queues.get(topic)
            if by_id is None:
                by_id = queues[topic] = {}
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
            index.add(physical, length, tag)
            self.message_count += 1
            self.stored_bytes += length
        return pos, None

    def _cut(self, path: Path, good: int, size: int, problem: str) -> None:
        """Truncate ``path`` at ``good``, keeping the cut bytes in damaged/."""
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
            _fsync_directory(self._log_dir)

    def _aside_path(self, name: str) -> Path:
        self._damaged_dir.mkdir(exist_ok=True)
        target = self._damaged_dir / name
        n = 0
        while target.exists():
            n += 1
            target = self._damaged_dir / f"{name}.{n}"
        return target

    def _segment_path(self, base: int) -> Path:
        return self._log_dir / f"{base:020d}.log"

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
        if self._broken is not None:
            raise self._broken

    def _write(
        self,
        topic: str,
        queue_id: int,
        records: Sequence[bytearray],
        sizes: Sequence[int],
        tag_hashes: Sequence[int],
    ) -> list[AppendResult]:
        total = sum(sizes) + TRAILER_SIZE * len(sizes)
        if self._active_size and self._active_size + total > self._segment_size:
            self._roll()
        index = self._find(topic, queue_id)
        offset = 0 if index is None else index.base + len(index.phys)
        physical = self._end
        parts: list[bytes | bytearray] = []
        results = []
        for record, size, tag in zip(records, sizes, tag_hashes, strict=True):
            set_offsets(record, offset, physical)
            head = _TRAILER_HEAD.pack(tag, size)
            parts.append(record)
            parts.append(head + _U32.pack(zlib.crc32(head, zlib.crc32(record))))
            results.append(AppendResult(offset, physical, size))
            offset += 1
            physical += size + TRAILER_SIZE
        try:
            self._write_all(parts, total)
        except OSError as e:
            self._undo_write(e)
            raise StoreError(f"cannot write to the commit log: {e}") from None
        if index is None:
            index = self._queues.setdefault(topic, {})[queue_id] = _Index()
        for result, tag in zip(results, tag_hashes, strict=True):
            index.add(result.physical_offset, result.size, tag)
        self._end = physical
        self._active_size += total
        self.message_count += len(results)
        self.stored_bytes += total - TRAILER_SIZE * len(results)
        return results

    def _write_all(self, parts: list[bytes | bytearray], total: int) -> None:
        written = 0
        for i in range(0, len(parts), _IOV_MAX):
            written += os.writev(self._fd, parts[i : i + _IOV_MAX])
        if written < total:  # a short write (rare: a signal, or the disk filling up)
            rest = b"".join(parts)[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]

    def _undo_write(self, error: OSError) -> None:
        """Cut what a failed write left so no torn entry sits before later ones."""
        try:
            os.ftruncate(self._fd, self._active_size)
        except OSError as e:
            self._broken = StoreError(f"the commit log is damaged after a failed write: {e}")
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
        self._bases.append(self._end)
        self._maps.append(None)
        self._active_base = self._end
        self._fd = -1
        self._open_active()

    # -- durability

    def when_durable(self, result: AppendResult) -> Deferred[None] | None:
        """With ``flush="sync"``, a Deferred firing once the record is fsynced (None when
        it already is); with ``flush="async"``, None."""
        if not self._sync_mode:
            return None
        end = result.physical_offset + result.size + TRAILER_SIZE
        if end <= self._durable:
            return None
        if self._broken is not None:
            return fail(self._broken)
        if self._stopped:
            return fail(StoreError("the store is stopped"))
        d: Deferred[None] = Deferred()
        self._waiters.append((end, d))
        if self._syncing is None and self._sync_call is None and self._stopping is None:
            # At the end of this reactor turn, so that every append of the turn shares it.
            self._sync_call = self._reactor.callLater(0, self._sync)
        return d

    def _tick(self) -> None:
        if self._needs_sync():
            self._sync()

    def _needs_sync(self) -> bool:
        return self._end > self._durable or bool(self._unsynced_fds) or self._dir_dirty

    def _sync(self) -> None:
        """Start an fsync of everything written so far in a thread (one at a time)."""
        self._sync_call = None
        if self._syncing is not None or self._broken is not None or self._fd < 0:
            return
        target = self._end
        sealed, self._unsynced_fds = self._unsynced_fds, []
        directory, self._dir_dirty = self._dir_dirty, False
        active = self._fd
        reactor = cast("IReactorFromThreads", self._reactor)
        pool = self._threadpool
        if pool is None:
            pool = cast("Any", self._reactor).getThreadPool()
        d = deferToThreadPool(reactor, pool, self._sync_files, sealed, active, directory)
        self._syncing = d
        d.addCallbacks(self._synced, self._sync_failed, (target, sealed), {}, (sealed,))

    def _sync_files(self, sealed: list[int], active: int, directory: bool) -> None:
        """In a thread: fsync the sealed segments, the active one and the log directory."""
        for fd in sealed:
            self._fsync(fd)
        self._fsync(active)
        if directory:
            _fsync_directory(self._log_dir)

    def _synced(self, _: None, target: int, sealed: list[int]) -> None:
        self._syncing = None
        for fd in sealed:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._durable = max(self._durable, target)
        self._settle_waiters()
        if self._waiters and self._stopping is None:
            self._sync()  # the appends that came during that fsync share the next one

    def _sync_failed(self, failure: Failure, sealed: list[int]) -> None:
        self._syncing = None
        self._unsynced_fds = sealed + self._unsynced_fds
        self._broken = StoreError(f"fsync of the commit log failed: {failure.value}")
        _log.failure(
            "fsync of {dir} failed; the store refuses further appends",
            failure,
            dir=str(self._dir),
        )
        waiters, self._waiters = self._waiters, deque()
        for _end, d in waiters:
            d.errback(self._broken)

    def _settle_waiters(self) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._durable:
            waiters.popleft()[1].callback(None)

    # -- reading

    def _find(self, topic: str, queue_id: int) -> _Index | None:
        queues = self._queues.get(topic)
        return queues.get(queue_id) if queues is not None else None

    def _fetch(self, physical: int, size: int) -> bytes:
        k = bisect_right(self._bases, physical) - 1
        start = physical - self._bases[k]
        mapped = self._maps[k]
        if mapped is not None:
            return mapped[start : start + size]
        if k != len(self._bases) - 1 or self._fd < 0:
            raise StoreError("the store is closed")
        return os.pread(self._fd, size, start)

    def _fetch_many(self, phys: array[int], sizes: array[int], picked: list[int]) -> list[bytes]:
        """The records at ``picked`` indexes, one pread for close ones in the active segment."""
        records: list[bytes] = []
        active = self._active_base
        i = 0
        while i < len(picked):
            j = picked[i]
            start = phys[j]
            if start < active:
                records.append(self._fetch(start, sizes[j]))
                i += 1
                continue
            # A run of records near each other: one read, then slices.
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
        return ReadResult(self._fetch_many(phys, sizes, picked), low + i, low, high)

    def read_at(self, physical_offset: int) -> bytes | None:
        """The record at ``physical_offset``, when one of a live queue starts there."""
        if not self._bases or not self._bases[0] <= physical_offset < self._end:
            return None
        try:
            size = _I32.unpack(self._fetch(physical_offset, 4))[0]
            if not MIN_RECORD_SIZE <= size <= MAX_RECORD_SIZE:
                return None
            record = self._fetch(physical_offset, size)
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
            return store_timestamp_of(self._fetch(index.phys[i], _TIME_HEAD), 0)

        return index.base + nearest_index(0, len(index.phys), timestamp, time_at)

    def store_timestamp_at(self, topic: str, queue_id: int, offset: int) -> int | None:
        """The store time of the record at ``offset``, or None when not held."""
        index = self._find(topic, queue_id)
        if index is None or not index.base <= offset < index.base + len(index.phys):
            return None
        return store_timestamp_of(self._fetch(index.phys[offset - index.base], _TIME_HEAD), 0)

    def queue_ids(self, topic: str) -> list[int]:
        """The queue ids of ``topic`` that hold or have held messages."""
        return sorted(self._queues.get(topic, ()))

    def delete_topic(self, topic: str) -> None:
        """Forget ``topic``: a tombstone (the log's end now) in the store state makes
        recovery skip its older records, which stay in the log."""
        self._tombstones[topic] = self._end
        for index in self._queues.pop(topic, {}).values():
            self.message_count -= len(index.phys)
            self.stored_bytes -= index.stored
        try:
            self._save_state()
        except OSError as e:
            _log.error(
                "Cannot record the deletion of {topic} in {dir} ({error}): its messages"
                " come back after a restart",
                topic=topic,
                dir=str(self._dir),
                error=e,
            )
            raise StoreError(f"cannot save the store state: {e}") from None

    def _save_state(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        _write_json(self._state_path, {"version": 1, "deleted_topics": self._tombstones})

    # -- metadata

    def _metadata_path(self, name: str) -> Path:
        if not _METADATA_NAME.match(name):
            raise ValueError(f"not a metadata name: {name!r}")
        return self._meta_dir / f"{name}.json"

    def load_metadata(self, name: str) -> Any | None:
        """The value in ``metadata/NAME.json``; if it is unreadable, logged, the one in
        ``NAME.json.bak``; else None."""
        return _load_json(self._metadata_path(name))

    def save_metadata(self, name: str, value: Any) -> None:
        """Replace ``metadata/NAME.json`` atomically (it is fsynced: this blocks for a
        moment), keeping the previous version as ``NAME.json.bak``. StoreError when the
        file cannot be written, TypeError or ValueError when ``value`` is not JSON-able."""
        path = self._metadata_path(name)
        try:
            self._meta_dir.mkdir(parents=True, exist_ok=True)
            _write_json(path, value)
        except OSError as e:
            raise StoreError(f"cannot save {path}: {e}") from None
