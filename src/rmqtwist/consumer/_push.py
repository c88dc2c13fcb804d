"""The :class:`PushConsumer`: long-polling pulls per queue, a listener called for each
message, offsets committed up to the lowest unfinished message (see :mod:`rmqtwist.consumer`)."""

from __future__ import annotations

import enum
import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any, Union

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rmqtwist._setup import client_setup
from rmqtwist.acl import Credentials
from rmqtwist.client import RemotingClient
from rmqtwist.consumer._base import (
    ConsumerData,
    ConsumerError,
    Subscription,
    allocate_averagely,
    consumer_ids,
    heartbeat_request,
    max_offset,
    query_offset,
    retry_topic,
    search_offset,
    unregister_request,
)
from rmqtwist.consumer._notify import notify_router
from rmqtwist.consumer._process_queue import LocalOffsets, ProcessQueue
from rmqtwist.consumer._push_consume import ConsumeResult, _Consuming
from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue, RouteTable, TopicRoute

_log = Logger()


class MessageModel(enum.Enum):
    """Whether a group shares its queues (CLUSTERING) or every member reads all of them."""

    CLUSTERING = "CLUSTERING"
    BROADCASTING = "BROADCASTING"


class ConsumeFrom(enum.Enum):
    """Where a group with no committed offset of a queue starts."""

    FIRST = "CONSUME_FROM_FIRST_OFFSET"
    LAST = "CONSUME_FROM_LAST_OFFSET"
    TIMESTAMP = "CONSUME_FROM_TIMESTAMP"


ListenerResult = Union[None, bool, ConsumeResult]  # noqa: UP007 (a runtime alias)
#: The listener: a plain function, a coroutine function or one returning a Deferred.
Listener = Callable[[MessageExt], Any]


class PushConsumer(_Consuming):
    """Consumes the topics it subscribes to for consumer ``group``, calling ``listener``
    with each :class:`~rmqtwist.message.MessageExt`.

    The listener is a plain function, a coroutine function or returns a Deferred; None,
    True or :attr:`ConsumeResult.SUCCESS` mean consumed; False,
    :attr:`ConsumeResult.RETRY` or an exception mean retry (see the how-to). ``client``
    is a :class:`~rmqtwist.client.RemotingClient` to share (not closed by
    :meth:`shutdown`). With ``credentials`` (:class:`~rmqtwist.acl.Credentials`) every
    request is signed for a broker with ACL.
    """

    def __init__(
        self,
        group: str,
        name_servers: str | Iterable[str],
        listener: Listener | None = None,
        *,
        reactor: Any = None,
        client: RemotingClient | None = None,
        model: MessageModel = MessageModel.CLUSTERING,
        orderly: bool = False,
        consume_from: ConsumeFrom = ConsumeFrom.LAST,
        consume_timestamp: float | None = None,
        concurrency: int = 20,
        pull_batch_size: int = 32,
        max_cached_messages: int = 1000,
        max_cached_bytes: int = 100 * 1024 * 1024,
        max_reconsume_times: int = 16,
        rebalance_interval: float = 20.0,
        persist_interval: float = 5.0,
        heartbeat_interval: float = 30.0,
        route_refresh: float = 30.0,
        suspend_time: float = 1.0,
        lock_interval: float = 20.0,
        client_id: str | None = None,
        offset_dir: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        if concurrency < 1 or pull_batch_size < 1 or max_cached_messages < 1:
            raise ValueError("concurrency, pull_batch_size and max_cached_messages must be >= 1")
        self.group = group
        self.name_servers, reactor, self.client, self._own_client = client_setup(
            "a consumer", name_servers, reactor, client, credentials
        )
        self.reactor = reactor
        self.listener = listener
        self.model = model
        self.orderly = orderly
        self.consume_from = consume_from
        if consume_timestamp is None:
            consume_timestamp = reactor.seconds() - 30 * 60
        self.consume_timestamp = consume_timestamp
        self.concurrency = concurrency
        self.pull_batch_size = pull_batch_size
        self.max_cached_messages = max_cached_messages
        self.max_cached_bytes = max_cached_bytes
        self.max_reconsume_times = max_reconsume_times
        self.rebalance_interval = rebalance_interval
        self.persist_interval = persist_interval
        self.heartbeat_interval = heartbeat_interval
        self.route_refresh = route_refresh
        self.suspend_time = suspend_time
        self.lock_interval = lock_interval
        self.client_id = client_id or f"127.0.0.1@{os.getpid()}#{id(self)}"
        self.routes = RouteTable(self.client, self.name_servers)
        self._subscriptions: dict[str, Subscription] = {}
        self._retry_version = int(reactor.seconds() * 1000)  # as Java: when it was made
        self._queues: dict[MessageQueue, ProcessQueue] = {}
        self._offsets: dict[MessageQueue, int] = {}  # what to commit
        self._persisted: dict[MessageQueue, int] = {}  # what was committed
        self._local = (
            LocalOffsets(group, offset_dir) if model is MessageModel.BROADCASTING else None
        )
        self._slots = DeferredSemaphore(concurrency)
        self._inflight = 0
        self._loops: list[LoopingCall] = []
        self._rebalance_call: Any = None
        self._rebalancing = False
        self._rebalance_again = False
        self._rebalance_waiters: list[Deferred[None]] = []
        self._running = False
        self._stopping = False
        self._stopped: list[Deferred[None]] | None = None  # waiters once shutdown began
        self._stop_done = False

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, topic: str, expression: str = "*") -> None:
        """Take ``topic``'s messages matching ``expression`` (``"A || B"`` or ``"*"``);
        after :meth:`start` the queues follow at the next heartbeat and rebalance."""
        now_ms = int(self.reactor.seconds() * 1000)
        self._subscriptions[topic] = Subscription(topic, expression, now_ms)
        if self._running:
            ensureDeferred(self._resubscribed()).addErrback(self._log_failure, "subscribe")

    def unsubscribe(self, topic: str) -> None:
        """Stop taking ``topic``: its queues are dropped (offsets committed) at once."""
        self._subscriptions.pop(topic, None)
        if self._running:
            ensureDeferred(self._resubscribed()).addErrback(self._log_failure, "unsubscribe")

    async def _resubscribed(self) -> None:
        await self._fetch_routes()
        await self._heartbeat_all()
        self._request_rebalance(0)

    def _all_subscriptions(self) -> dict[str, Subscription]:
        subscriptions = dict(self._subscriptions)
        if self.clustering and subscriptions:
            retry = retry_topic(self.group)
            subscriptions.setdefault(retry, Subscription(retry, "*", self._retry_version))
        return subscriptions

    @property
    def assigned_queues(self) -> frozenset[MessageQueue]:
        """The queues this consumer pulls now."""
        return frozenset(self._queues)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Heartbeat to the brokers of the subscribed topics' routes, take this member's
        queues, and start the timers; fires once the first rebalance is done."""
        if self._running or self._stopped is not None:
            return succeed(None)
        if self.listener is None:
            raise ValueError("a PushConsumer needs a listener before start()")
        self._running = True
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        notify_router(self.client).watch(self.group, self._notified)
        await self._fetch_routes()
        await self._heartbeat_all()
        await self._rebalance_now()
        timers: list[tuple[float, Callable[[], Any]]] = [
            (self.rebalance_interval, lambda: self._request_rebalance(0)),
            (self.persist_interval, lambda: self._persist(wait=False)),
            (self.heartbeat_interval, self._heartbeat_all),
            (self.route_refresh, self._refresh_routes),
        ]
        if self.orderly and self.clustering:
            timers.append((self.lock_interval, self._renew_locks))
        for interval, function in timers:
            loop = LoopingCall(lambda f=function: ensureDeferred(self._guarded(f)))
            loop.clock = self.reactor
            loop.start(interval, now=False)
            self._loops.append(loop)

    async def _guarded(self, function: Callable[[], Any]) -> None:
        try:
            result = function()
            if isinstance(result, Deferred) or inspect.isawaitable(result):
                await result
        except Exception as error:
            _log.warn("Consumer {group} timer task failed: {error}", group=self.group, error=error)

    def shutdown(self, timeout: float = 30.0) -> Deferred[None]:
        """Stop pulling, wait (up to ``timeout`` s) for the listener calls running, commit
        the offsets, unlock (orderly), unregister from the brokers, close our client."""
        done: Deferred[None] = Deferred()
        if self._stop_done or (self._stopped is None and not self._running):
            self._stop_done = True
            return succeed(None)
        if self._stopped is not None:
            self._stopped.append(done)
            return done
        self._stopped = [done]

        def finish(_: object) -> None:
            self._stop_done = True
            waiters, self._stopped = self._stopped or [], []
            for waiter in waiters:
                waiter.callback(None)

        ensureDeferred(self._shutdown(timeout)).addErrback(self._log_failure, "shutdown").addBoth(
            finish
        )
        return done

    async def _shutdown(self, timeout: float) -> None:
        self._stopping = True
        self._running = False
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self._rebalance_call is not None and self._rebalance_call.active():
            self._rebalance_call.cancel()
        deadline = self.reactor.seconds() + timeout
        while self._inflight and self.reactor.seconds() < deadline:
            await self._sleep(0.02)
        if self._inflight:
            _log.warn(
                "Consumer {group} stopped with {n} listener calls still running",
                group=self.group,
                n=self._inflight,
            )
        await self._rebalance_finished()
        queues = list(self._queues)
        for queue in queues:
            self._queues[queue].dropped = True
        await self._persist(queues, wait=True)
        if self.orderly and self.clustering:
            await self._unlock([q for q in queues if self._queues[q].locked])
        self._queues.clear()
        notify_router(self.client).unwatch(self.group, self._notified)
        request = unregister_request(self.client_id, consumer_group=self.group)
        await DeferredList(
            [self.client.invoke(a, request, 3.0) for a in self._broker_addresses()],
            consumeErrors=True,
        )
        if self._own_client:
            # Held long polls are abandoned: their answers no longer matter.
            await self.client.close(timeout=0)

    # -- helpers ----------------------------------------------------------------------

    def _broker_addresses(self) -> list[str]:
        return sorted({a for ids in self.routes.brokers().values() for a in ids.values()})

    async def _fetch_routes(self) -> None:
        for topic in self._all_subscriptions():
            try:
                await self.routes.route(topic)
            except Exception as error:
                _log.info("No route for {topic} yet: {error}", topic=topic, error=error)

    async def _refresh_routes(self) -> None:
        for topic in self._all_subscriptions():
            try:
                await self.routes.route(topic, refresh=True)
            except Exception as error:
                _log.info("Route refresh of {topic} failed: {error}", topic=topic, error=error)

    def _consumer_data(self) -> ConsumerData:
        return ConsumerData(
            group=self.group,
            consume_type="CONSUME_PASSIVELY",
            message_model=self.model.value,
            consume_from_where=self.consume_from.value,
            subscriptions=tuple(self._all_subscriptions().values()),
        )

    async def _heartbeat_all(self) -> None:
        request = heartbeat_request(self.client_id, [self._consumer_data()])
        results = await DeferredList(
            [self.client.invoke(a, request, 3.0) for a in self._broker_addresses()],
            consumeErrors=True,
        )
        for ok, outcome in results:
            if not ok:
                _log.info("Heartbeat failed: {error}", error=getattr(outcome, "value", outcome))

    # -- rebalance --------------------------------------------------------------------

    def _notified(self) -> None:
        # NOTIFY_CONSUMER_IDS_CHANGED for this group: a member came or went.
        self._request_rebalance(0.1)

    def _request_rebalance(self, delay: float) -> None:
        """Rebalance after ``delay`` s (once, however often asked meanwhile)."""
        if not self._running or self._stopping:
            return
        if self._rebalance_call is not None and self._rebalance_call.active():
            return
        self._rebalance_call = self.reactor.callLater(
            delay, lambda: self._rebalance_now().addErrback(self._log_failure, "rebalance")
        )

    def _rebalance_now(self) -> Deferred[None]:
        """Rebalance now (or once more after the one running); fires when done. A failed
        rebalance is logged: the next one tries again."""
        if self._rebalancing:
            self._rebalance_again = True
            return self._rebalance_finished()

        async def run() -> None:
            try:
                while True:
                    self._rebalance_again = False
                    await self._rebalance()
                    if not self._rebalance_again or self._stopping:
                        break
            except Exception as error:
                _log.warn("Rebalance of {group} failed: {error}", group=self.group, error=error)
            finally:
                self._rebalancing = False
                waiters, self._rebalance_waiters = self._rebalance_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

        self._rebalancing = True
        finished = self._rebalance_finished()
        ensureDeferred(run())
        return finished

    def _rebalance_finished(self) -> Deferred[None]:
        """Fires once the rebalance running now (and any rerun it was asked for) ends."""
        if not self._rebalancing:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._rebalance_waiters.append(waiter)
        return waiter

    async def _rebalance(self) -> None:
        subscriptions = self._all_subscriptions()
        for topic, subscription in subscriptions.items():
            if self._stopping:
                return
            try:
                route = await self.routes.route(topic)
            except Exception as error:
                _log.info("Rebalance of {topic}: no route: {error}", topic=topic, error=error)
                continue
            mine = await self._allocate(route)
            if mine is not None:
                await self._update_queues(topic, subscription, mine)
        for queue in [q for q in self._queues if q.topic not in subscriptions]:
            await self._drop(queue)

    async def _allocate(self, route: TopicRoute) -> set[MessageQueue] | None:
        queues = route.read_queues
        if not self.clustering:
            return set(queues)
        addresses = [a for a in (route.address(n) for n in sorted(route.brokers)) if a]
        for address in addresses:
            try:
                ids = await consumer_ids(self.client, address, self.group)
            except Exception as error:
                _log.info(
                    "Consumer list of {group} from {address} failed: {error}",
                    group=self.group,
                    address=address,
                    error=error,
                )
                continue
            return set(allocate_averagely(queues, ids, self.client_id))
        return None

    async def _update_queues(
        self, topic: str, subscription: Subscription, mine: set[MessageQueue]
    ) -> None:
        current = {q for q in self._queues if q.topic == topic}
        for queue in sorted(current - mine):
            await self._drop(queue)
        added = sorted(mine - current)
        locked_at = self.reactor.seconds()  # (orderly) the broker's lease starts after
        if self.orderly and self.clustering and added:
            added = sorted(await self._lock(added))
        for queue in added:
            if self._stopping:
                return
            try:
                offset = await self._initial_offset(queue)
            except Exception as error:
                _log.warn("Cannot find where to start {queue}: {error}", queue=queue, error=error)
                continue
            if self._stopping:
                return
            if queue in self._queues:
                continue
            process_queue = ProcessQueue(queue, offset)
            process_queue.locked = True
            process_queue.lock_time = locked_at
            self._queues[queue] = process_queue
            self._offsets[queue] = offset
            _log.info(
                "Consumer {group} takes {queue} from offset {offset}",
                group=self.group,
                queue=queue,
                offset=offset,
            )
            ensureDeferred(self._pull_loop(process_queue, subscription)).addErrback(
                self._log_failure, f"pulling {queue}"
            )

    async def _drop(self, queue: MessageQueue) -> None:
        """Stop pulling ``queue`` and commit its offset before another member takes it."""
        process_queue = self._queues.pop(queue, None)
        if process_queue is None:
            return
        process_queue.dropped = True
        _log.info("Consumer {group} drops {queue}", group=self.group, queue=queue)
        await self._persist([queue], wait=True)
        self._offsets.pop(queue, None)
        self._persisted.pop(queue, None)
        if self.orderly and self.clustering and process_queue.locked:
            await self._unlock([queue])

    async def _initial_offset(self, queue: MessageQueue) -> int:
        """The committed offset, else where ``consume_from`` says (Java's rules)."""
        address = self._address(queue)
        if address is None:
            raise ConsumerError(f"no broker address for {queue}")
        if self._local is not None:
            local = self._local.get(queue)
            if local is not None:
                return local
        else:
            committed = await query_offset(
                self.client, address, self.group, queue, set_zero_if_not_found=False
            )
            if committed is not None and committed >= 0:
                self._persisted[queue] = committed
                return committed
        retrying = queue.topic == retry_topic(self.group)
        if self.consume_from is ConsumeFrom.FIRST or (
            retrying and self.consume_from is ConsumeFrom.LAST
        ):
            return 0
        if self.consume_from is ConsumeFrom.LAST or retrying:
            return await max_offset(self.client, address, queue)
        return await search_offset(self.client, address, queue, int(self.consume_timestamp * 1000))
