"""A push consumer's per-queue state and its offset stores (see :mod:`rmqtwist.consumer`)."""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterable

from twisted.logger import Logger

from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue

_log = Logger()


class ProcessQueue:
    """The messages of one assigned queue pulled but not yet consumed.

    The offset that may be committed is the lowest offset still in flight, or one past
    the highest offset seen when nothing is: a message that finished early never moves
    the offset past one still running (Java's TreeMap, here a heap with lazy deletion).
    """

    def __init__(self, queue: MessageQueue, next_offset: int) -> None:
        self.queue = queue
        #: Where the next pull starts.
        self.next_offset = next_offset
        #: Set when the queue is taken away or the consumer stops: its work is ignored.
        self.dropped = False
        #: Orderly: the broker granted this client the queue's lock.
        self.locked = False
        #: Orderly: when (reactor seconds) the broker last granted it.
        self.lock_time = 0.0
        #: Orderly: a consume loop runs for this queue.
        self.consuming = False
        self._messages: dict[int, MessageExt] = {}
        self._heap: list[int] = []
        self._max_seen = -1
        self.cached_bytes = 0

    @property
    def cached_messages(self) -> int:
        return len(self._messages)

    def add(self, messages: Iterable[MessageExt]) -> list[MessageExt]:
        """Keep ``messages``; gives those that were not already held."""
        added = []
        for message in messages:
            offset = message.queue_offset
            if offset in self._messages:
                continue
            self._messages[offset] = message
            heapq.heappush(self._heap, offset)
            self._max_seen = max(self._max_seen, offset)
            self.cached_bytes += len(message.body)
            added.append(message)
        return added

    def advance(self, next_offset: int) -> None:
        """A pull answered up to ``next_offset``: what it skipped (other tags, nothing
        new) counts as done once the messages before it are."""
        self._max_seen = max(self._max_seen, next_offset - 1)

    def _trim(self) -> None:
        while self._heap and self._heap[0] not in self._messages:
            heapq.heappop(self._heap)

    def first(self) -> MessageExt | None:
        """The held message with the lowest offset (orderly consumption takes it next)."""
        self._trim()
        return self._messages[self._heap[0]] if self._heap else None

    def remove(self, message: MessageExt) -> int | None:
        """Forget a consumed message; gives the offset that may be committed now, or
        None when nothing was ever held."""
        held = self._messages.pop(message.queue_offset, None)
        if held is not None:
            self.cached_bytes -= len(held.body)
        return self.commit_offset()

    def commit_offset(self) -> int | None:
        """The lowest unfinished offset, or the highest seen + 1 when none is in flight."""
        self._trim()
        if self._heap:
            return self._heap[0]
        return self._max_seen + 1 if self._max_seen >= 0 else None


class LocalOffsets:
    """Broadcasting offsets: in memory, or in ``<offset_dir>/<group>.json`` when given."""

    def __init__(self, group: str, offset_dir: str | None) -> None:
        self.path = os.path.join(offset_dir, f"{group}.json") if offset_dir else None
        self.offsets: dict[MessageQueue, int] = {}
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as file:
                    for entry in json.load(file):
                        queue = MessageQueue(entry["topic"], entry["brokerName"], entry["queueId"])
                        self.offsets[queue] = int(entry["offset"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                _log.warn(
                    "Ignoring unreadable offsets file {path}: {error}", path=self.path, error=error
                )

    def get(self, queue: MessageQueue) -> int | None:
        return self.offsets.get(queue)

    def save(self, offsets: dict[MessageQueue, int]) -> None:
        """Remember ``offsets`` (and write the file, atomically, when there is one)."""
        self.offsets.update(offsets)
        if not self.path:
            return
        entries = [
            {"topic": q.topic, "brokerName": q.broker_name, "queueId": q.queue_id, "offset": o}
            for q, o in sorted(self.offsets.items())
        ]
        temporary = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(entries, file)
            os.replace(temporary, self.path)
        except OSError as error:
            _log.warn("Cannot write offsets file {path}: {error}", path=self.path, error=error)
