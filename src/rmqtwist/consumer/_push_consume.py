"""The consuming half of :class:`~rmqtwist.consumer.PushConsumer`: the pull loop of each
queue, the listener calls (concurrent or orderly), send-backs and offset commits."""

from __future__ import annotations

import dataclasses
import enum
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Final

from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from rmqtwist.client import RemotingClient
from rmqtwist.consumer._base import (
    ConsumerError,
    PullStatus,
    Subscription,
    lock_queues,
    pull,
    send_back,
    unlock_queues,
    update_offset,
)
from rmqtwist.consumer._process_queue import LocalOffsets, ProcessQueue
from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue, RouteTable

_log = Logger()

#: Seconds a pull waits before trying again after an error (Java's 3 s).
PULL_ERROR_BACKOFF: Final = 3.0
#: Seconds a queue past its cache caps waits before looking again (Java's 50 ms).
FLOW_CONTROL_PAUSE: Final = 0.05
#: Seconds before a message whose send-back failed is consumed again locally.
SEND_BACK_RETRY: Final = 5.0
#: How long the broker holds a pull with nothing to give, and the pull's timeout.
PULL_SUSPEND: Final = 15.0
PULL_TIMEOUT: Final = 30.0
#: Seconds an orderly queue's lock is trusted after the broker last granted it (Java's
#: client-side REBALANCE_LOCK_MAX_LIVE_TIME): the broker's lease is 60 s, renewed every
#: ``lock_interval`` (20 s); past this the queue waits for a renewal.
LOCK_MAX_LIVE: Final = 30.0


class ConsumeResult(enum.Enum):
    """What a listener may return besides None/True (consumed) and False (retry)."""

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    #: Orderly only: try the same message again after ``suspend_time``, no send-back.
    SUSPEND = "SUSPEND"


class _Consuming:
    """Pulling and consuming, mixed into :class:`~rmqtwist.consumer.PushConsumer`, which
    sets these attributes."""

    group: str
    client: RemotingClient
    reactor: Any
    routes: RouteTable
    listener: Callable[[MessageExt], Any] | None
    orderly: bool
    pull_batch_size: int
    max_cached_messages: int
    max_cached_bytes: int
    max_reconsume_times: int
    suspend_time: float
    _queues: dict[MessageQueue, ProcessQueue]
    _offsets: dict[MessageQueue, int]
    _persisted: dict[MessageQueue, int]
    _local: LocalOffsets | None
    _slots: DeferredSemaphore
    _inflight: int
    _stopping: bool
    client_id: str

    @property
    def clustering(self) -> bool:
        """Whether the group shares its queues (else every member reads all)."""
        return self._local is None

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.reactor, seconds, lambda: None)

    def _log_failure(self, failure: Any, what: str) -> None:
        _log.warn(
            "Consumer {group}: {what} failed: {error}",
            group=self.group,
            what=what,
            error=failure.value,
        )

    def _may_consume(self, pq: ProcessQueue) -> bool:
        """Whether ``pq``'s messages may go to the listener now: not dropped and, orderly
        in clustering, locked at the broker no more than :data:`LOCK_MAX_LIVE` s ago."""
        if pq.dropped or self._stopping:
            return False
        if not (self.orderly and self.clustering):
            return True
        return pq.locked and self.reactor.seconds() - pq.lock_time <= LOCK_MAX_LIVE

    def _address(self, queue: MessageQueue) -> str | None:
        route = self.routes.cached(queue.topic)
        return route.address(queue.broker_name) if route is not None else None

    # -- pulling ----------------------------------------------------------------------

    async def _pull_loop(self, pq: ProcessQueue, subscription: Subscription) -> None:
        queue = pq.queue
        while not pq.dropped and not self._stopping:
            if self.orderly and self.clustering and not pq.locked:
                # Another member holds it: no pull (its commit offset would overwrite
                # the holder's) until a renewal gets the lock back, as Java does.
                await self._sleep(PULL_ERROR_BACKOFF)
                continue
            room = min(
                self.max_cached_messages - pq.cached_messages,
                self.pull_batch_size,
            )
            if room <= 0 or pq.cached_bytes >= self.max_cached_bytes:
                await self._sleep(FLOW_CONTROL_PAUSE)
                continue
            address = self._address(queue)
            if address is None:
                await self._sleep(PULL_ERROR_BACKOFF)
                continue
            commit = self._offsets.get(queue, 0) if self.clustering else 0
            try:
                result = await pull(
                    self.client,
                    address,
                    self.group,
                    queue,
                    pq.next_offset,
                    subscription=subscription,
                    max_nums=room,
                    commit_offset=commit,
                    suspend=PULL_SUSPEND,
                    timeout=PULL_TIMEOUT,
                )
            except Exception as error:
                if pq.dropped or self._stopping:
                    return
                _log.info("Pull of {queue} failed: {error}", queue=queue, error=error)
                await self._sleep(PULL_ERROR_BACKOFF)
                continue
            if pq.dropped or self._stopping:
                return
            if result.status is PullStatus.OFFSET_ILLEGAL:
                _log.warn(
                    "Offset {offset} of {queue} is illegal; going on from {next}",
                    offset=pq.next_offset,
                    queue=queue,
                    next=result.next_begin_offset,
                )
                pq.next_offset = result.next_begin_offset
                if pq.cached_messages == 0:
                    self._offsets[queue] = result.next_begin_offset
                    await self._persist([queue], wait=False)
                continue
            pq.next_offset = result.next_begin_offset
            fresh = pq.add(result.messages)
            pq.advance(result.next_begin_offset)
            if pq.cached_messages == 0:
                # Nothing (or nothing matching the tags) to consume: move the offset on.
                self._offsets[queue] = result.next_begin_offset
            if self.orderly:
                self._kick_orderly(pq)
            else:
                for message in fresh:
                    ensureDeferred(self._consume_one(pq, message)).addErrback(
                        self._log_failure, "consuming"
                    )

    # -- consuming --------------------------------------------------------------------

    async def _call_listener(self, message: MessageExt) -> ConsumeResult:
        assert self.listener is not None
        try:
            result: Any = self.listener(message)
            if isinstance(result, Deferred) or inspect.isawaitable(result):
                result = await result
        except Exception as error:
            _log.warn(
                "Listener of {group} raised on {msg_id}: {kind}: {error}",
                group=self.group,
                msg_id=message.msg_id,
                kind=type(error).__name__,
                error=error,
            )
            return ConsumeResult.RETRY
        if result is None or result is True:
            return ConsumeResult.SUCCESS
        if result is False:
            return ConsumeResult.RETRY
        if isinstance(result, ConsumeResult):
            return result
        _log.warn(
            "Listener of {group} returned {result!r}; taken as RETRY",
            group=self.group,
            result=result,
        )
        return ConsumeResult.RETRY

    async def _listen(self, pq: ProcessQueue, message: MessageExt) -> ConsumeResult | None:
        """Call the listener within the concurrency cap; None when the queue was dropped,
        the consumer stops or (orderly) the lock is gone before its turn came."""
        await self._slots.acquire()
        try:
            if not self._may_consume(pq):
                return None
            self._inflight += 1
            try:
                return await self._call_listener(message)
            finally:
                self._inflight -= 1
        finally:
            self._slots.release()

    def _done(self, pq: ProcessQueue, message: MessageExt) -> None:
        offset = pq.remove(message)
        if offset is not None and not pq.dropped and self._queues.get(pq.queue) is pq:
            self._offsets[pq.queue] = offset

    async def _consume_one(self, pq: ProcessQueue, message: MessageExt) -> None:
        while True:
            result = await self._listen(pq, message)
            if result is None:
                return
            if result is not ConsumeResult.RETRY and result is not ConsumeResult.SUSPEND:
                break
            if not self.clustering:
                _log.warn(
                    "Broadcasting consumer {group} drops failed message {msg_id}",
                    group=self.group,
                    msg_id=message.msg_id,
                )
                break
            if await self._send_back(pq.queue, message, 0):
                break
            await self._sleep(SEND_BACK_RETRY)
            message = dataclasses.replace(message, reconsume_times=message.reconsume_times + 1)
        self._done(pq, message)

    async def _send_back(self, queue: MessageQueue, message: MessageExt, level: int) -> bool:
        address = self._address(queue)
        try:
            if address is None:
                raise ConsumerError(f"no broker address for {queue}")
            await send_back(
                self.client, address, self.group, message, level, self.max_reconsume_times
            )
        except Exception as error:
            _log.warn(
                "Send-back of {msg_id} failed ({error}); consuming it again locally",
                msg_id=message.msg_id,
                error=error,
            )
            return False
        return True

    def _kick_orderly(self, pq: ProcessQueue) -> None:
        if not pq.consuming and self._may_consume(pq):
            ensureDeferred(self._consume_orderly(pq)).addErrback(self._log_failure, "consuming")

    async def _consume_orderly(self, pq: ProcessQueue) -> None:
        pq.consuming = True
        try:
            while self._may_consume(pq):
                message = pq.first()
                if message is None:
                    return
                attempts = 0
                while True:
                    result = await self._listen(pq, message)
                    if result is None:
                        return
                    if result is ConsumeResult.SUCCESS:
                        break
                    attempts += 1
                    if attempts > self.max_reconsume_times and self.clustering:
                        # Past the limit: to the dead-letter queue, and the queue goes on.
                        if await self._send_back(pq.queue, message, -1):
                            break
                    elif attempts > self.max_reconsume_times:
                        _log.warn(
                            "Broadcasting consumer {group} drops failed message {msg_id}",
                            group=self.group,
                            msg_id=message.msg_id,
                        )
                        break
                    await self._sleep(self.suspend_time)
                    if pq.dropped or self._stopping:
                        return
                    message = dataclasses.replace(
                        message, reconsume_times=message.reconsume_times + 1
                    )
                self._done(pq, message)
        finally:
            pq.consuming = False

    # -- offsets ----------------------------------------------------------------------

    async def _persist(
        self, queues: Iterable[MessageQueue] | None = None, *, wait: bool = False
    ) -> None:
        chosen = list(self._offsets) if queues is None else list(queues)
        changed = {
            q: self._offsets[q]
            for q in chosen
            if q in self._offsets and self._persisted.get(q) != self._offsets[q]
        }
        if not changed:
            return
        if self._local is not None:
            self._local.save(changed)
            self._persisted.update(changed)
            return
        for queue, offset in changed.items():
            address = self._address(queue)
            if address is None:
                continue
            try:
                await update_offset(
                    self.client, address, self.group, queue, offset, oneway=not wait
                )
            except Exception as error:
                _log.info(
                    "Commit of {queue} at {offset} failed: {error}",
                    queue=queue,
                    offset=offset,
                    error=error,
                )
                continue
            self._persisted[queue] = offset

    # -- locks (orderly clustering) ---------------------------------------------------

    def _by_broker(self, queues: Iterable[MessageQueue]) -> dict[str, list[MessageQueue]]:
        grouped: dict[str, list[MessageQueue]] = {}
        for queue in queues:
            address = self._address(queue)
            if address is not None:
                grouped.setdefault(address, []).append(queue)
        return grouped

    async def _lock(
        self, queues: Iterable[MessageQueue], answered: set[MessageQueue] | None = None
    ) -> set[MessageQueue]:
        """Lock ``queues``; gives those granted. The queues of the brokers that answered
        (granted or not) are added to ``answered``."""
        granted: set[MessageQueue] = set()
        for address, batch in self._by_broker(queues).items():
            try:
                granted |= await lock_queues(
                    self.client, address, self.group, self.client_id, batch
                )
            except Exception as error:
                _log.info("Lock at {address} failed: {error}", address=address, error=error)
                continue
            if answered is not None:
                answered.update(batch)
        return granted

    async def _unlock(self, queues: Iterable[MessageQueue]) -> None:
        for address, batch in self._by_broker(queues).items():
            try:
                await unlock_queues(self.client, address, self.group, self.client_id, batch)
            except Exception as error:
                _log.info("Unlock at {address} failed: {error}", address=address, error=error)

    async def _renew_locks(self) -> None:
        """Java's lockAll: a queue granted is locked as of now (and consumed again if it
        had stopped); one its broker left out is not; when a broker did not answer,
        its queues stay as they were, consumed until their locks are too old."""
        held = list(self._queues)
        answered: set[MessageQueue] = set()
        sent = self.reactor.seconds()  # the broker's lease starts after this
        granted = await self._lock(held, answered)
        for queue in held:
            process_queue = self._queues.get(queue)
            if process_queue is None:
                continue
            if queue in granted:
                process_queue.locked = True
                process_queue.lock_time = sent
                self._kick_orderly(process_queue)
            elif queue in answered:
                if process_queue.locked:
                    _log.info(
                        "Consumer {group} lost the lock of {queue}", group=self.group, queue=queue
                    )
                process_queue.locked = False
