"""Pieces of the lite pull consumer (see :mod:`rmqtwist.consumer._lite`): the per-queue
state, taking a fair batch from the buffers, the start offset of a queue, and the
NOTIFY_CONSUMER_IDS_CHANGED router."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rmqtwist.client import RemotingClient
from rmqtwist.consumer._base import (
    Subscription,
    max_offset,
    query_offset,
    search_offset,
)

# The push consumer's module holds ConsumeFrom and the code-40 router of a client that
# the lite consumers' router hands requests on to.
from rmqtwist.consumer._push import ConsumeFrom as ConsumeFrom
from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue

_log = Logger()


class QueueState:
    """One assigned queue: where its next pull starts, the messages pulled and not yet
    polled, and the pull loop's current wait (cancelled to stop it)."""

    __slots__ = (
        "buffer",
        "epoch",
        "last_committed",
        "loop",
        "offset",
        "queue",
        "stopped",
        "subscription",
        "waiting",
    )

    def __init__(self, queue: MessageQueue, subscription: Subscription) -> None:
        self.queue = queue
        self.subscription = subscription
        #: The offset the next pull asks for; None until the start offset is known.
        self.offset: int | None = None
        self.buffer: deque[MessageExt] = deque()
        #: Bumped by a seek, so that a pull in flight from the old offset is dropped.
        self.epoch = 0
        #: The last offset the broker took for this queue from us (None: none yet).
        self.last_committed: int | None = None
        self.loop: Deferred[None] | None = None
        #: What the pull loop awaits now (a pull, a retry delay, room in the buffer).
        self.waiting: Deferred[Any] | None = None
        self.stopped = False

    def position(self) -> int | None:
        """The offset to commit: the first message pulled and not yet returned by a poll
        or, with none buffered, where the next pull starts (filtered messages skipped)."""
        if self.buffer:
            return self.buffer[0].queue_offset
        return self.offset

    def stop(self) -> None:
        """Stop the pull loop. The buffer stays, so that :meth:`position` still tells
        what was returned (a commit after stopping must not skip buffered messages)."""
        self.stopped = True
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.cancel()


class Room(Deferred[None]):
    """What a pull loop waits on while its queue's buffer is full: fired by a poll."""


def take_batch(
    states: Iterable[QueueState], limit: int, turn: int, max_cached: int
) -> list[MessageExt]:
    """Up to ``limit`` buffered messages, one from each queue in turn (starting at queue
    number ``turn``, so no queue always goes first), each queue's in order. A queue whose
    buffer falls below ``max_cached`` resumes pulling."""
    states = list(states)
    having = [s for s in states if s.buffer]
    batch: list[MessageExt] = []
    if having:
        start = turn % len(having)
        having = having[start:] + having[:start]
    while len(batch) < limit and having:
        for state in having:
            batch.append(state.buffer.popleft())
            if len(batch) == limit:
                break
        having = [s for s in having if s.buffer]
    for state in states:
        waiting = state.waiting
        if isinstance(waiting, Room) and len(state.buffer) < max_cached:
            state.waiting = None
            waiting.callback(None)
    return batch


async def start_offset(
    client: RemotingClient,
    address: str,
    group: str,
    queue: MessageQueue,
    consume_from: str,
    timestamp: float,
    timeout: float,
) -> int:
    """Where ``group`` starts ``queue``: its committed offset, else by ``consume_from``
    (a ConsumeFrom value): 0, the offset stored nearest ``timestamp`` (s), or the end.
    The query says setZeroIfNotFound=false, as the push consumer's does."""
    committed = await query_offset(
        client, address, group, queue, timeout, set_zero_if_not_found=False
    )
    if committed is not None and committed >= 0:
        return committed
    if consume_from == "CONSUME_FROM_FIRST_OFFSET":
        return 0
    if consume_from == "CONSUME_FROM_TIMESTAMP":
        return await search_offset(client, address, queue, int(timestamp * 1000), timeout)
    return await max_offset(client, address, queue, timeout)
