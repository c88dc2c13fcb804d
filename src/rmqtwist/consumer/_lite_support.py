"""Pieces of the lite pull consumer (see :mod:`rmqtwist.consumer._lite`): the per-queue
state, taking a fair batch from the buffers, the start offset of a queue, and the
NOTIFY_CONSUMER_IDS_CHANGED router."""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand
from rmqtwist.consumer._base import (
    Subscription,
    max_offset,
    query_offset,
    search_offset,
)

# The push consumer's module holds ConsumeFrom and the code-40 router of a client that
# the lite consumers' router hands requests on to.
from rmqtwist.consumer._push import ConsumeFrom as ConsumeFrom
from rmqtwist.consumer._push import _router as _push_router
from rmqtwist.headers import NotifyConsumerIdsChangedRequestHeader
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
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


@implementer(IRequestProcessor)
class NotifyRouter:
    """The NOTIFY_CONSUMER_IDS_CHANGED (40) processor of one client: calls the callback
    of the request's consumer group, so several consumers may share a client, and hands
    the request on to the push consumers' router (one processor per code per client)."""

    def __init__(self, push: IRequestProcessor) -> None:
        self.groups: dict[str, Callable[[], None]] = {}
        self.push = push

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        try:
            group = NotifyConsumerIdsChangedRequestHeader.from_command(request).consumer_group
        except ValueError as error:
            _log.info("Ignoring an unreadable NOTIFY_CONSUMER_IDS_CHANGED: {e}", e=error)
            return None
        callback = self.groups.get(group)
        if callback is not None:
            callback()
        self.push.process_request(context, request)
        return None

    def reject_request(self) -> bool:
        return False


_ROUTERS: weakref.WeakKeyDictionary[Any, NotifyRouter] = weakref.WeakKeyDictionary()


def notify_router(client: RemotingClient) -> NotifyRouter:
    """``client``'s NOTIFY_CONSUMER_IDS_CHANGED router, registered on it the first time
    (after the push consumers' own, which it then calls: either kind may come first)."""
    router = _ROUTERS.get(client)
    if router is None:
        router = _ROUTERS[client] = NotifyRouter(_push_router(client))
        client.register_processor(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, router)
    return router
