"""What the broker asks of a message store, and the small values it gets back.

A store keeps stored-message records (broker.md §4) per (topic, queue id), gives each its
queue offset and a physical (commit-log) offset, and serves them back by queue offset, by
physical offset and by store time. It also keeps the broker's metadata (topics, consumer
offsets) as JSON-able values. :class:`~rmqtwist.broker.store.memory.MemoryStore` and
:class:`~rmqtwist.broker.store.disk.DiskStore` both provide :class:`IMessageStore`.
"""

# ruff: noqa: N805  (zope.interface methods take no self)

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["AppendResult", "IMessageStore", "ReadResult", "StoreError"]


class AppendResult(NamedTuple):
    """Where one appended record went: its queue offset, physical offset and size."""

    queue_offset: int
    physical_offset: int
    size: int


class ReadResult(NamedTuple):
    """The answer to :meth:`IMessageStore.read`."""

    #: Whole stored records, in queue order.
    records: list[bytes]
    #: The offset to read from next: the offset read from plus the entries scanned
    #: (filtered-out entries included).
    next_offset: int
    min_offset: int
    #: The next offset to be written in that queue (= the count ever written).
    max_offset: int


class StoreError(Exception):
    """The store cannot take a record: closed, not started, disk full, record too big."""


class IMessageStore(Interface):
    """The broker's message store (an in-memory one or a commit log on disk).

    Every method but :meth:`start`, :meth:`stop` and :meth:`when_durable` is synchronous
    and runs in the reactor thread.
    """

    message_count = Attribute("The number of messages currently held (int).")
    stored_bytes = Attribute("The bytes of records currently held (int).")

    def start() -> Deferred[None]:
        """Open the store (disk: recover, cutting a torn or corrupt tail, and load)."""

    def stop() -> Deferred[None]:
        """Flush and close; idempotent. Appends afterwards raise :class:`StoreError`."""

    def append(
        topic: str, queue_id: int, record: bytearray, tag_hash: int, store_timestamp: int
    ) -> AppendResult:
        """Store ``record``, a whole encoded record, in queue (topic, queue_id).

        Assigns the queue's next offset and the next physical offset and writes both into
        ``record[20:36]``. The record is visible to :meth:`read` at once. ``tag_hash`` is
        what :meth:`read` filters on. Raises :class:`StoreError` when it cannot be stored.
        """

    def append_batch(
        topic: str,
        queue_id: int,
        records: Sequence[bytearray],
        tag_hashes: Sequence[int],
        store_timestamp: int,
    ) -> list[AppendResult]:
        """Store several records in one queue at consecutive queue offsets (all or none)."""

    def when_durable(result: AppendResult) -> Deferred[None] | None:
        """None when there is nothing to wait for (memory, flush async, already synced);
        else a Deferred that fires once the record's bytes are fsynced (or errbacks with
        :class:`StoreError` on an I/O error). Concurrent appends share one fsync."""

    def read(
        topic: str,
        queue_id: int,
        offset: int,
        max_count: int,
        max_bytes: int,
        tag_hashes: frozenset[int] | None,
    ) -> ReadResult:
        """Up to ``max_count`` records from ``offset`` whose tag hash is in ``tag_hashes``
        (None: every record), at most ``max_bytes`` of them but at least one when one
        matches. Scanning also stops after a bounded number of entries. An offset outside
        [min, max) reads nothing and ``next_offset`` is ``offset``."""

    def read_at(physical_offset: int) -> bytes | None:
        """The record stored at ``physical_offset`` (any queue), or None."""

    def min_offset(topic: str, queue_id: int) -> int:
        """The oldest offset still held in the queue; 0 for an unknown queue."""

    def max_offset(topic: str, queue_id: int) -> int:
        """The next offset to be written in the queue; 0 for an unknown queue."""

    def offset_for_timestamp(topic: str, queue_id: int, timestamp: int) -> int:
        """The offset whose store time is nearest ``timestamp`` (an exact hit first, the
        earlier one on a tie, as Apache 4.9); 0 for an unknown queue."""

    def store_timestamp_at(topic: str, queue_id: int, offset: int) -> int | None:
        """The store time (ms) of the record at ``offset``, or None when not held."""

    def queue_ids(topic: str) -> list[int]:
        """The queue ids of ``topic`` that hold or have held messages, ascending."""

    def delete_topic(topic: str) -> None:
        """Forget ``topic``: its queues and messages are gone (offsets start again at 0)."""

    def load_metadata(name: str) -> Any | None:
        """The value last saved under ``name`` (a JSON-able value), or None."""

    def save_metadata(name: str, value: Any) -> None:
        """Keep ``value`` (JSON-able) under ``name``. On disk: replaced atomically, keeping
        the previous version for when the current one turns out unreadable."""
