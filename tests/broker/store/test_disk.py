"""What only the disk store does: reopening, recovery from damage, metadata versions,
group-commit fsync and its failures."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from rmqtwist.broker.store import DiskStore, StoreError, _commitlog, _jsonfile, disk
from rmqtwist.broker.store.disk import TRAILER_SIZE
from rmqtwist.message import decode_records, tag_hash

from .helpers import CapturedLog, FakeThreadPool, ThreadlessReactor, fired, make_record, put

EVERYTHING = 1 << 30


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> CapturedLog:
    captured = CapturedLog()
    for module in (disk, _commitlog, _jsonfile):
        monkeypatch.setattr(module, "_log", captured.logger)
    return captured


def open_store(path: Path, **kw: Any) -> DiskStore:
    kw.setdefault("reactor", Clock())
    store = DiskStore(path, **kw)
    assert fired(store.start()) is None
    return store


def close(store: DiskStore) -> None:
    assert fired(store.stop()) is None


def bodies(store: DiskStore, topic: str = "T", queue_id: int = 0) -> list[bytes]:
    result = store.read(topic, queue_id, store.min_offset(topic, queue_id), 1000, EVERYTHING, None)
    return [m.body for m in decode_records(b"".join(result.records))]


def segments(path: Path) -> list[Path]:
    return sorted((path / "commitlog").glob("*.log"))


def test_reopen_keeps_records_index_and_tag_codes(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_size=1000)
    results = []
    for i in range(30):
        record = make_record("T", i % 3, b"m%d" % i, store_timestamp=1000 + i)
        # Whatever code the broker gives is kept, even one no TAGS hashes to.
        results.append(store.append("T", i % 3, record, 0x7FFFFFF0 + i % 2, 0))
    batch = [make_record("U", 0, b"u%d" % i, tags="X") for i in range(3)]
    store.append_batch("U", 0, batch, [tag_hash("X")] * 3, 0)
    store.save_metadata("topics", {"a": 1})
    before = {
        (t, q): store.read(t, q, 0, 100, EVERYTHING, None)
        for t, q in [("T", 0), ("T", 1), ("U", 0)]
    }
    counts = (store.message_count, store.stored_bytes)
    close(store)
    assert len(segments(tmp_path)) > 3

    store = open_store(tmp_path, segment_size=1000)
    for (t, q), result in before.items():
        assert store.read(t, q, 0, 100, EVERYTHING, None) == result
    assert (store.message_count, store.stored_bytes) == counts
    odd = store.read("T", 1, 0, 100, EVERYTHING, frozenset({0x7FFFFFF1}))
    assert [m.body for m in decode_records(b"".join(odd.records))] == [
        b"m%d" % i for i in range(30) if i % 3 == 1 and i % 2 == 1
    ]
    for result in results:
        record = store.read_at(result.physical_offset)
        assert record is not None
        assert decode_records(record)[0].physical_offset == result.physical_offset
    assert store.offset_for_timestamp("T", 2, 1011) == 3
    assert store.load_metadata("topics") == {"a": 1}
    nxt = put(store, "T", 0, b"next")
    assert nxt.queue_offset == 10
    end = sum(p.stat().st_size for p in segments(tmp_path)) - nxt.size - TRAILER_SIZE
    assert nxt.physical_offset == end
    close(store)


def test_segments_are_named_by_their_first_physical_offset(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_size=1000)
    for i in range(20):
        put(store, body=b"x" * (50 + i))
    close(store)
    for path in segments(tmp_path):
        first = decode_records(path.read_bytes()[: int.from_bytes(path.read_bytes()[:4], "big")])
        assert first[0].physical_offset == int(path.stem)
        assert path.stem == f"{int(path.stem):020d}"


def test_a_process_crash_loses_nothing_appended(tmp_path: Path) -> None:
    store = open_store(tmp_path / "live", segment_size=4096)
    for i in range(50):
        put(store, "T", 0, b"m%d" % i)
    # What the OS holds at the moment of a kill -9: the files as they are now.
    shutil.copytree(tmp_path / "live", tmp_path / "crashed")
    copy = open_store(tmp_path / "crashed")
    assert bodies(copy) == [b"m%d" % i for i in range(50)]
    close(copy)
    close(store)


def test_a_torn_tail_is_cut_and_never_served(tmp_path: Path, log: CapturedLog) -> None:
    store = open_store(tmp_path)
    results = [put(store, body=b"m%d" % i) for i in range(5)]
    close(store)
    (path,) = segments(tmp_path)
    cut_at = results[-1].physical_offset
    with path.open("r+b") as f:
        f.truncate(cut_at + 50)  # mid-record

    store = open_store(tmp_path)
    assert bodies(store) == [b"m%d" % i for i in range(4)]
    assert store.read_at(cut_at) is None
    assert path.stat().st_size == cut_at
    (text,) = [t for t in log.texts if "Cut" in t]
    assert str(path) in text
    assert f"offset {cut_at}" in text
    assert "truncated mid-record" in text
    assert (tmp_path / "damaged" / f"{path.name}.from-{cut_at}").stat().st_size == 50
    again = put(store, body=b"after")
    assert (again.queue_offset, again.physical_offset) == (4, cut_at)
    close(store)
    store = open_store(tmp_path)
    assert bodies(store)[-1] == b"after"
    assert len([t for t in log.texts if "Cut" in t]) == 1
    close(store)


def test_a_flipped_byte_in_the_last_record_is_cut(tmp_path: Path, log: CapturedLog) -> None:
    store = open_store(tmp_path)
    results = [put(store, body=b"m%d" % i + b"x" * 100) for i in range(5)]
    close(store)
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    middle = results[-1].physical_offset + results[-1].size // 2
    data[middle] ^= 0x40
    path.write_bytes(data)

    store = open_store(tmp_path)
    assert [b[:2] for b in bodies(store)] == [b"m0", b"m1", b"m2", b"m3"]
    assert store.max_offset("T", 0) == 4
    (text,) = [t for t in log.texts if "Cut" in t]
    assert "CRC mismatch" in text
    assert f"offset {results[-1].physical_offset}" in text
    close(store)


def test_damage_in_an_early_segment_moves_the_later_ones_aside(
    tmp_path: Path, log: CapturedLog
) -> None:
    store = open_store(tmp_path, segment_size=1000)
    results = [put(store, body=b"m%d" % i + b"x" * 100) for i in range(30)]
    close(store)
    paths = segments(tmp_path)
    assert len(paths) >= 4
    damaged = paths[1]
    data = bytearray(damaged.read_bytes())
    data[200] ^= 0xFF
    damaged.write_bytes(data)

    store = open_store(tmp_path, segment_size=1000)
    held = bodies(store)
    assert 0 < len(held) < 30
    assert held == [b"m%d" % i + b"x" * 100 for i in range(len(held))]
    assert segments(tmp_path) == paths[:2]
    moved = {p.name for p in (tmp_path / "damaged").iterdir()}
    assert {p.name for p in paths[2:]} <= moved
    assert len([t for t in log.texts if "Moved the commit-log segment" in t]) == len(paths) - 2
    nxt = put(store, body=b"new")
    assert nxt.queue_offset == len(held)
    assert store.read_at(results[-1].physical_offset) is None
    close(store)
    store = open_store(tmp_path, segment_size=1000)
    assert bodies(store)[-1] == b"new"
    close(store)


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (bytes(3000), "zero bytes"),
        (b"\x7f\xff\xff\xff" + bytes(200), "impossible record length"),
        (b"\x00\x00", "truncated in a length field"),
    ],
)
def test_junk_after_the_last_record_is_cut(
    tmp_path: Path, log: CapturedLog, tail: bytes, reason: str
) -> None:
    store = open_store(tmp_path)
    results = [put(store, body=b"m%d" % i) for i in range(3)]
    close(store)
    (path,) = segments(tmp_path)
    with path.open("ab") as f:
        f.write(tail)
    store = open_store(tmp_path)
    assert bodies(store) == [b"m0", b"m1", b"m2"]
    (text,) = [t for t in log.texts if "Cut" in t]
    assert reason in text
    assert path.stat().st_size == results[-1].physical_offset + results[-1].size + TRAILER_SIZE
    close(store)


def test_a_segment_that_does_not_follow_on_is_moved_aside(tmp_path: Path, log: CapturedLog) -> None:
    store = open_store(tmp_path, segment_size=500)
    for i in range(10):
        put(store, body=b"m%d" % i + b"x" * 100)
    close(store)
    paths = segments(tmp_path)
    last = paths[-1]
    last.rename(last.with_name(f"{int(last.stem) + 7:020d}.log"))
    store = open_store(tmp_path, segment_size=500)
    assert len(bodies(store)) < 10
    assert any("does not start where" in t for t in log.texts)
    close(store)


def test_corrupt_metadata_falls_back_to_the_previous_version(
    tmp_path: Path, log: CapturedLog
) -> None:
    store = open_store(tmp_path)
    store.save_metadata("offsets", {"v": 1})
    store.save_metadata("offsets", {"v": 2})
    close(store)
    path = tmp_path / "metadata" / "offsets.json"
    assert json.loads((tmp_path / "metadata" / "offsets.json.bak").read_text()) == {"v": 1}
    path.write_bytes(b'{"v": 2, "trunc')

    store = open_store(tmp_path)
    assert store.load_metadata("offsets") == {"v": 1}
    assert any("offsets.json is unreadable" in t for t in log.texts)
    # The damaged file is replaced, not kept as the previous version.
    store.save_metadata("offsets", {"v": 3})
    assert json.loads((tmp_path / "metadata" / "offsets.json.bak").read_text()) == {"v": 1}
    assert store.load_metadata("offsets") == {"v": 3}
    close(store)


def test_metadata_missing_or_both_versions_bad(tmp_path: Path, log: CapturedLog) -> None:
    store = open_store(tmp_path)
    store.save_metadata("a", [1])
    store.save_metadata("a", [2])
    (tmp_path / "metadata" / "a.json").unlink()  # a crash between the two renames
    assert store.load_metadata("a") == [1]
    (tmp_path / "metadata" / "a.json").write_bytes(b"\xff\xfe")
    (tmp_path / "metadata" / "a.json.bak").write_bytes(b"[")
    assert store.load_metadata("a") is None
    assert len([t for t in log.texts if "a.json" in t]) == 2
    with pytest.raises(ValueError, match="metadata name"):
        store.save_metadata("../escape", 1)
    with pytest.raises(TypeError):
        store.save_metadata("b", object())
    close(store)


def test_deleted_topics_stay_deleted_after_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for name in ("A", "B", "C"):
        put(store, name, 0, b"old " + name.encode())
    store.delete_topic("A")
    store.delete_topic("B")
    put(store, "A", 0, b"new A")
    close(store)
    store = open_store(tmp_path)
    assert bodies(store, "A") == [b"new A"]
    assert store.min_offset("A", 0) == 0
    assert bodies(store, "B") == []
    assert store.queue_ids("B") == []
    assert bodies(store, "C") == [b"old C"]
    assert store.message_count == 2
    close(store)


def test_a_corrupt_store_state_uses_its_previous_version(tmp_path: Path, log: CapturedLog) -> None:
    store = open_store(tmp_path)
    for name in ("A", "B"):
        put(store, name, 0, name.encode())
    store.delete_topic("A")
    store.delete_topic("B")
    close(store)
    (tmp_path / "store-state.json").write_bytes(b"garbage")
    store = open_store(tmp_path)
    assert bodies(store, "A") == []  # the previous version knew A was deleted
    assert bodies(store, "B") == [b"B"]  # but not B
    assert any("store-state.json is unreadable" in t for t in log.texts)
    close(store)


def test_one_store_per_directory(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    put(store)
    other = DiskStore(tmp_path, reactor=Clock())
    failure = fired(other.start())
    assert isinstance(failure, Failure)
    assert failure.check(StoreError)
    assert "in use" in str(failure.value)
    close(store)
    assert fired(other.start()) is None  # a failed start can be tried again
    assert other.message_count == 1
    close(other)


def test_an_unusable_directory_fails_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    failure = fired(DiskStore(tmp_path / "file", reactor=Clock()).start())
    assert isinstance(failure, Failure)
    assert failure.check(StoreError)


def test_append_before_start_raises(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, reactor=Clock())
    with pytest.raises(StoreError, match="not open"):
        put(store)
    assert fired(store.stop()) is None


def test_a_failed_write_leaves_no_torn_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path)
    put(store, body=b"first")
    real_writev = os.writev

    def half_then_full(fd: int, parts: list[bytes]) -> int:
        os.write(fd, b"".join(parts)[:40])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", half_then_full)
    with pytest.raises(StoreError, match="No space"):
        put(store, body=b"lost")
    monkeypatch.setattr(os, "writev", real_writev)
    assert store.max_offset("T", 0) == 1
    put(store, body=b"second")
    close(store)
    store = open_store(tmp_path)
    assert bodies(store) == [b"first", b"second"]
    close(store)


class Synced:
    """A sync-mode store on a fake reactor and thread pool, counting fsync calls."""

    def __init__(self, path: Path, fsync_error: OSError | None = None) -> None:
        self.reactor = ThreadlessReactor()
        self.pool = FakeThreadPool()
        self.fsyncs: list[int] = []
        self.error = fsync_error

        def fsync(fd: int) -> None:
            if self.error is not None:
                raise self.error
            self.fsyncs.append(fd)
            os.fsync(fd)

        self.store = open_store(
            path, flush="sync", reactor=self.reactor, threadpool=self.pool, fsync=fsync
        )


def test_sync_appends_share_an_fsync(tmp_path: Path) -> None:
    s = Synced(tmp_path)
    waits = [s.store.when_durable(put(s.store, body=b"%d" % i)) for i in range(10)]
    assert s.pool.jobs == []  # the fsync starts at the end of the reactor turn
    s.reactor.advance(0)
    assert len(s.pool.jobs) == 1
    late = [put(s.store, body=b"late%d" % i) for i in range(3)]
    late_waits = [s.store.when_durable(r) for r in late]
    assert len(s.pool.jobs) == 1  # one fsync at a time
    assert not any(d.called for d in waits)
    s.pool.run_one()
    assert len(s.fsyncs) == 1
    assert all(fired(d) is None for d in waits)
    assert not any(d.called for d in late_waits)
    assert len(s.pool.jobs) == 1  # those that came during the fsync share the next
    s.pool.run_one()
    assert len(s.fsyncs) == 2
    assert all(fired(d) is None for d in late_waits)
    assert s.store.when_durable(late[0]) is None  # already durable
    s.reactor.advance(1)
    assert s.pool.jobs == []
    close(s.store)


def test_sync_fsyncs_the_sealed_segment_too(tmp_path: Path) -> None:
    s = Synced(tmp_path)
    s.store._log._segment_size = 600
    waits = [s.store.when_durable(put(s.store, body=b"x" * 200)) for _ in range(4)]
    assert len(segments(tmp_path)) > 1
    s.reactor.advance(0)
    s.pool.run_one()
    assert len(s.fsyncs) == len(segments(tmp_path))
    assert all(fired(d) is None for d in waits)
    close(s.store)


def test_an_fsync_error_fails_the_waiters_and_further_appends(
    tmp_path: Path, log: CapturedLog
) -> None:
    s = Synced(tmp_path, fsync_error=OSError(errno.EIO, "Input/output error"))
    d = s.store.when_durable(put(s.store))
    s.reactor.advance(0)
    s.pool.run_one()
    failure = fired(d)
    assert isinstance(failure, Failure)
    assert failure.check(StoreError)
    assert "Input/output error" in str(failure.value)
    with pytest.raises(StoreError, match="fsync"):
        put(s.store)
    assert any("fsync of" in t for t in log.texts)
    s.error = None
    close(s.store)


def test_stop_waits_for_a_running_fsync_and_syncs_the_rest(tmp_path: Path) -> None:
    s = Synced(tmp_path)
    first = s.store.when_durable(put(s.store, body=b"1"))
    s.reactor.advance(0)
    second = s.store.when_durable(put(s.store, body=b"2"))
    stopped = s.store.stop()
    again = s.store.stop()
    assert not stopped.called
    with pytest.raises(StoreError):
        put(s.store)
    s.pool.run_one()
    assert fired(first) is None
    assert fired(second) is None  # synced by stop itself
    assert fired(stopped) is None
    assert fired(again) is None
    assert s.pool.jobs == []
    assert len(s.fsyncs) == 2


def test_async_flush_fsyncs_every_interval_when_dirty(tmp_path: Path) -> None:
    reactor = ThreadlessReactor()
    pool = FakeThreadPool()
    fsyncs: list[int] = []
    store = open_store(
        tmp_path, reactor=reactor, threadpool=pool, fsync=fsyncs.append, flush_interval=0.5
    )
    assert store.when_durable(put(store)) is None
    reactor.advance(0.4)
    assert pool.jobs == []
    reactor.advance(0.1)
    assert len(pool.jobs) == 1
    reactor.advance(0.5)  # still running: no second one
    assert len(pool.jobs) == 1
    pool.run_one()
    assert len(fsyncs) == 1
    reactor.advance(5)
    assert pool.jobs == []  # nothing new to sync
    put(store)
    reactor.advance(0.5)
    pool.run_one()
    assert len(fsyncs) == 2
    close(store)
    assert reactor.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_sync_flush_with_the_real_thread_pool(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, flush="sync")
    await store.start()
    try:
        results = [put(store, body=b"%d" % i) for i in range(20)]
        waits = [store.when_durable(r) for r in results]
        for d in waits:
            assert d is not None
            await d
        assert store.when_durable(results[-1]) is None
    finally:
        await store.stop()


def test_sync_mode_also_syncs_appends_nobody_waits_for(tmp_path: Path) -> None:
    s = Synced(tmp_path)
    put(s.store)
    s.reactor.advance(0.5)
    s.pool.run_one()
    assert len(s.fsyncs) == 1
    assert s.store.when_durable(put(s.store, body=b"x")) is not None
    close(s.store)


def test_after_stop_reads_and_start_raise(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    put(store)
    close(store)
    with pytest.raises(StoreError):
        store.read("T", 0, 0, 1, EVERYTHING, None)
    failure = fired(store.start())
    assert isinstance(failure, Failure)
    assert failure.check(StoreError)


def test_metadata_that_cannot_be_written_raises_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path)
    store.save_metadata("a", 1)

    def broken(*args: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(StoreError, match="Read-only"):
        store.save_metadata("a", 2)
    with pytest.raises(StoreError, match="Read-only"):
        store.delete_topic("T")
    monkeypatch.undo()
    assert store.load_metadata("a") == 1
    close(store)


_WRITER = """
import sys
from twisted.internet import reactor, defer
from rmqtwist.broker.store import DiskStore
from tests.broker.store.helpers import make_record

async def main():
    store = DiskStore(sys.argv[1], flush="sync")
    await store.start()
    n = 0
    while True:
        waits = []
        for _ in range(8):
            body = b"m%d" % n
            store.append("T", 0, make_record("T", 0, body), 0, 0)
            result = store.append("T", 1, make_record("T", 1, body), 0, 0)
            waits.append((body, store.when_durable(result)))
            n += 1
        for body, d in waits:
            if d is not None:
                await d
            sys.stdout.write(body.decode() + "\\n")
        sys.stdout.flush()

reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
reactor.run()
"""


def test_kill_9_loses_no_acknowledged_append(tmp_path: Path) -> None:
    """A writer in sync mode prints what it was told is durable; after a kill -9 in the
    middle, a restart finds all of that, once each, in order."""
    import select
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        cwd=root,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}"},
    )
    assert writer.stdout is not None
    acknowledged: list[bytes] = []
    try:
        while len(acknowledged) < 400:
            ready, _, _ = select.select([writer.stdout], [], [], 20)
            assert ready, "the writer is stuck"
            line = writer.stdout.readline()
            assert line, "the writer died"
            acknowledged.append(line.strip())
    finally:
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate(timeout=10)
    acknowledged += rest.split()
    store = open_store(tmp_path)
    for queue_id in (0, 1):
        held = bodies(store, "T", queue_id)
        assert held[: len(acknowledged)] == acknowledged
        assert held == [b"m%d" % i for i in range(len(held))]
    close(store)
