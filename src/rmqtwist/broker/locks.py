"""Queue locks for orderly consumers: LOCK_BATCH_MQ (41) grants 60 s leases on queues not
held by another live client of the group; UNLOCK_BATCH_MQ (42) gives them back."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

__all__ = ["MessageQueue", "QueueLocks"]


@dataclasses.dataclass(frozen=True, order=True)
class MessageQueue:
    """A queue as clients name it: topic, broker name, queue id."""

    topic: str
    broker_name: str
    queue_id: int

    def to_json(self) -> dict[str, object]:
        return {"brokerName": self.broker_name, "queueId": self.queue_id, "topic": self.topic}

    @classmethod
    def from_json(cls, data: object) -> MessageQueue:
        if not isinstance(data, dict):
            raise ValueError("a message queue must be a JSON object")
        return cls(str(data["topic"]), str(data.get("brokerName", "")), int(data["queueId"]))


class QueueLocks:
    """Leases by (group, queue): the client id holding it and when the lease ends."""

    def __init__(self, clock: Callable[[], float], lease: float) -> None:
        self._clock = clock
        self._lease = lease
        self._locks: dict[str, dict[MessageQueue, tuple[str, float]]] = {}

    def lock(
        self, group: str, client_id: str, queues: Iterable[MessageQueue]
    ) -> list[MessageQueue]:
        """Grant (or renew) each queue not held by another client; returns those granted."""
        now = self._clock()
        held = self._locks.setdefault(group, {})
        granted = []
        for queue in queues:
            owner = held.get(queue)
            if owner is None or owner[0] == client_id or owner[1] <= now:
                held[queue] = (client_id, now + self._lease)
                granted.append(queue)
        return granted

    def unlock(self, group: str, client_id: str, queues: Iterable[MessageQueue]) -> None:
        held = self._locks.get(group)
        if not held:
            return
        for queue in queues:
            owner = held.get(queue)
            if owner is not None and owner[0] == client_id:
                del held[queue]

    def owner(self, group: str, queue: MessageQueue) -> str | None:
        """The client holding an unexpired lease on ``queue``, or None."""
        owner = self._locks.get(group, {}).get(queue)
        if owner is None or owner[1] <= self._clock():
            return None
        return owner[0]

    def release_client(self, client_id: str) -> None:
        """Drop every lease of a client that is gone."""
        for held in self._locks.values():
            for queue in [q for q, (owner, _) in held.items() if owner == client_id]:
                del held[queue]
