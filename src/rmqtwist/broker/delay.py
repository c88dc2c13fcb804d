"""Delay levels: a delayed message waits in ``SCHEDULE_TOPIC_XXXX`` (one queue per level,
so each queue is in due order) and is stored again in its real topic when due. Timers
come from the broker's injected clock, so tests need no sleeping."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from rmqtwist.broker.core import Draft
from rmqtwist.broker.store import StoreError
from rmqtwist.broker.topics import DELAY_TOPIC
from rmqtwist.errors import MalformedMessage
from rmqtwist.message import Property, decode_record

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from rmqtwist.broker.core import Broker

__all__ = ["DelayScheduler"]

_log = Logger()
_METADATA = "delayOffset"
_RETRY_AFTER_ERROR = 1.0


class DelayScheduler:
    """Moves due messages from the delay topic to their real topics, level by level."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._offsets: dict[int, int] = {}
        self._timers: dict[int, IDelayedCall] = {}
        self.running = False
        self.delivered = 0
        self.dirty = False

    def start(self) -> None:
        saved = self.broker.store.load_metadata(_METADATA)
        if isinstance(saved, dict):
            for level, offset in (saved.get("offsetTable") or {}).items():
                try:
                    self._offsets[int(level)] = int(offset)
                except (TypeError, ValueError):
                    continue
        self.running = True
        for level in range(1, len(self.broker.config.delay_levels) + 1):
            self.wake(level)

    def stop(self) -> None:
        self.running = False
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self.save()

    def save(self) -> None:
        table = {str(level): offset for level, offset in self._offsets.items()}
        self.broker.store.save_metadata(_METADATA, {"offsetTable": table})
        self.dirty = False

    def save_if_dirty(self) -> None:
        if self.dirty:
            self.save()

    def offsets(self) -> dict[int, int]:
        """Level -> the next offset to deliver in that level's queue."""
        return dict(self._offsets)

    def wake(self, level: int) -> None:
        """Look at ``level``'s queue now (a message was added, or a timer ran)."""
        if not self.running or level in self._timers:
            return
        self._run(level)

    def _run(self, level: int) -> None:
        self._timers.pop(level, None)
        if not self.running:
            return
        broker = self.broker
        store = broker.store
        queue_id = level - 1
        delay_ms = int(broker.config.delay_of(level) * 1000)
        offset = max(self._offsets.get(level, 0), store.min_offset(DELAY_TOPIC, queue_id))
        moved = False
        while True:
            result = store.read(DELAY_TOPIC, queue_id, offset, 1, 1 << 30, None)
            if not result.records:
                break
            record = result.records[0]
            try:
                message, _ = decode_record(record)
            except MalformedMessage as e:
                _log.error(
                    "Skipping a bad record in {topic} queue {queue} at {offset}: {error}",
                    topic=DELAY_TOPIC,
                    queue=queue_id,
                    offset=offset,
                    error=e,
                )
                offset = result.next_offset
                moved = True
                continue
            due = message.store_timestamp + delay_ms
            now = broker.now_ms()
            if due > now:
                self._timers[level] = broker.clock.callLater((due - now) / 1000.0, self._run, level)
                break
            try:
                self._deliver(message)
            except StoreError as e:
                _log.warn("Could not deliver a delayed message yet: {error}", error=e)
                self._timers[level] = broker.clock.callLater(_RETRY_AFTER_ERROR, self._run, level)
                break
            offset = result.next_offset
            moved = True
        if moved:
            self._offsets[level] = offset
            self.dirty = True

    def _deliver(self, message: Any) -> None:
        properties = dict(message.wire_properties())
        topic = properties.get(Property.REAL_TOPIC)
        try:
            queue_id = int(properties.get(Property.REAL_QID, "0"))
        except ValueError:
            queue_id = 0
        if not topic:
            _log.error("A delayed message has no REAL_TOPIC; dropping it")
            return
        draft = Draft(
            topic=topic,
            queue_id=queue_id,
            body=message.body,
            properties=properties,
            born_timestamp=message.born_timestamp,
            born_host=message.born_host,
            store_host=message.store_host,
            flag=message.flag,
            sys_flag=message.sys_flag,
            reconsume_times=message.reconsume_times,
            prepared_transaction_offset=message.prepared_transaction_offset,
        )
        self.broker.put(draft, delay=False)
        self.delivered += 1
