"""Consumer offsets: the next offset each group will consume from each queue, kept in the
store's metadata and saved every few seconds when they changed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from rmqtwist.broker.store import IMessageStore

__all__ = ["ConsumerOffsets"]

_log = Logger()
_METADATA = "consumerOffset"


class ConsumerOffsets:
    """``topic@group`` -> queue id -> offset, as Apache's ConsumerOffsetManager keys it."""

    def __init__(self, store: IMessageStore) -> None:
        self._store = store
        self._table: dict[str, dict[int, int]] = {}
        self.dirty = False

    def load(self) -> None:
        saved = self._store.load_metadata(_METADATA)
        if not isinstance(saved, dict):
            return
        for key, queues in (saved.get("offsetTable") or {}).items():
            if not isinstance(key, str) or "@" not in key or not isinstance(queues, dict):
                continue
            try:
                self._table[key] = {int(q): int(o) for q, o in queues.items()}
            except (TypeError, ValueError):
                _log.warn("Ignoring the saved offsets of {key}", key=key)

    def save(self) -> None:
        """Save the table now (the broker calls it periodically when dirty, and on stop)."""
        table = {key: {str(q): o for q, o in queues.items()} for key, queues in self._table.items()}
        self._store.save_metadata(_METADATA, {"offsetTable": table})
        self.dirty = False

    def save_if_dirty(self) -> None:
        if self.dirty:
            self.save()

    def query(self, group: str, topic: str, queue_id: int) -> int | None:
        """The committed offset, or None (a negative one counts as none, as ali-ons sends -1)."""
        offset = self._table.get(f"{topic}@{group}", {}).get(queue_id)
        return offset if offset is not None and offset >= 0 else None

    def commit(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        queues = self._table.setdefault(f"{topic}@{group}", {})
        if queues.get(queue_id) != offset:
            queues[queue_id] = offset
            self.dirty = True

    def of_group(self, group: str) -> dict[str, dict[int, int]]:
        """topic -> queue id -> offset, for one group."""
        found: dict[str, dict[int, int]] = {}
        for key, queues in self._table.items():
            topic, _, owner = key.rpartition("@")
            if owner == group:
                found[topic] = dict(queues)
        return found

    def delete_topic(self, topic: str) -> None:
        for key in [key for key in self._table if key.rpartition("@")[0] == topic]:
            del self._table[key]
            self.dirty = True

    def snapshot(self) -> dict[str, Any]:
        return {key: dict(queues) for key, queues in self._table.items()}
