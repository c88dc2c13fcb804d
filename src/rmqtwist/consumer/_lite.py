"""The lite pull consumer: :class:`PullConsumer` (Java's ``DefaultLitePullConsumer``).

The consumer pulls in the background, one long-polling pull at a time per assigned queue,
into a buffer per queue (pulling pauses while a buffer holds ``max_cached_messages``);
:meth:`PullConsumer.poll` takes batches from the buffers, in turn across the queues. The
queues come from :meth:`~PullConsumer.subscribe` (the group shares the topic's read
queues: heartbeats as CONSUME_ACTIVELY / CLUSTERING, and a rebalance with Java's average
allocation every ``rebalance_interval`` and whenever a broker sends
NOTIFY_CONSUMER_IDS_CHANGED) or from :meth:`~PullConsumer.assign` (fixed queues, no
group membership). A queue starts at the group's committed offset, else where
``consume_from`` says. :meth:`~PullConsumer.commit` stores, per queue, the offset of the
first message :meth:`~PullConsumer.poll` has not returned yet; with ``auto_commit`` that
happens every ``auto_commit_interval``, when a queue is taken away and at shutdown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any, Final

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    fail,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from rmqtwist._setup import client_setup
from rmqtwist.acl import Credentials
from rmqtwist.client import RemotingClient
from rmqtwist.codes import ResponseCode
from rmqtwist.consumer._base import (
    BrokerAnswerError,
    ConsumerClosedError,
    ConsumerError,
    PullStatus,
    Subscription,
    max_offset,
    min_offset,
    pull,
    query_offset,
    unregister_request,
    update_offset,
)
from rmqtwist.consumer._lite_group import LiteGroup
from rmqtwist.consumer._lite_support import (
    ConsumeFrom,
    QueueState,
    Room,
    start_offset,
    take_batch,
)
from rmqtwist.consumer._notify import notify_router
from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue, RouteError, RouteTable

__all__ = ["PullConsumer"]

_log = Logger()

#: How far back ``ConsumeFrom.TIMESTAMP`` starts when no ``consume_timestamp`` is given.
_DEFAULT_LOOKBACK: Final = 30 * 60.0


class PullConsumer(LiteGroup):
    """A lite pull consumer of ``group``: :meth:`subscribe` or :meth:`assign`, then
    :meth:`start`, then :meth:`poll` batches of
    :class:`~rmqtwist.message.MessageExt` (see the module doc).

    ``client`` is a :class:`~rmqtwist.client.RemotingClient` to share (not closed by
    :meth:`shutdown`); by default one is made on ``reactor``. ``consume_timestamp``
    (seconds since the epoch) is where ``ConsumeFrom.TIMESTAMP`` starts (default: 30
    minutes ago). ``pull_suspend`` is how long a broker holds a pull that finds nothing,
    ``pull_timeout`` how long a pull may take in all, ``retry_delay`` the pause after a
    failed pull or offset lookup. With ``credentials`` (:class:`~rmqtwist.acl.Credentials`)
    every request is signed for a broker with ACL.
    """

    def __init__(
        self,
        group: str,
        name_servers: str | Iterable[str],
        *,
        reactor: Any = None,
        client: RemotingClient | None = None,
        auto_commit: bool = True,
        auto_commit_interval: float = 5.0,
        consume_from: ConsumeFrom = ConsumeFrom.LAST,
        consume_timestamp: float | None = None,
        pull_batch_size: int = 32,
        max_cached_messages: int = 1000,
        poll_batch_size: int = 32,
        rebalance_interval: float = 20.0,
        heartbeat_interval: float = 30.0,
        client_id: str | None = None,
        pull_suspend: float = 15.0,
        pull_timeout: float = 30.0,
        retry_delay: float = 3.0,
        request_timeout: float = 3.0,
        credentials: Credentials | None = None,
    ) -> None:
        if pull_timeout <= pull_suspend:
            raise ValueError("pull_timeout must exceed pull_suspend")
        if min(pull_batch_size, max_cached_messages, poll_batch_size) < 1:
            raise ValueError("batch sizes and max_cached_messages must be at least 1")
        self.group = group
        self.name_servers, self.reactor, self.client, self._own_client = client_setup(
            "a consumer", name_servers, reactor, client, credentials
        )
        self.auto_commit = auto_commit
        self.auto_commit_interval = auto_commit_interval
        self.consume_from = consume_from
        self.consume_timestamp = consume_timestamp
        self.pull_batch_size = pull_batch_size
        self.max_cached_messages = max_cached_messages
        self.poll_batch_size = poll_batch_size
        self.rebalance_interval = rebalance_interval
        self.heartbeat_interval = heartbeat_interval
        self.pull_suspend = pull_suspend
        self.pull_timeout = pull_timeout
        self.retry_delay = retry_delay
        self.request_timeout = request_timeout
        self.client_id = client_id or f"127.0.0.1@{os.getpid()}#{id(self)}@lite"
        #: The routes of the topics used, fetched from the name servers and cached.
        self.routes = RouteTable(self.client, self.name_servers, timeout=request_timeout)
        self._subscriptions: dict[str, Subscription] = {}
        self._assigned: dict[MessageQueue, Subscription] | None = None  # assign() mode
        self._queues: dict[MessageQueue, QueueState] = {}
        self._waiters: list[tuple[Deferred[list[MessageExt]], IDelayedCall | None]] = []
        #: A request refused NO_PERMISSION since the last poll: the next poll fails with it.
        self._refused: Exception | None = None
        self._turn = 0
        self._loops: list[LoopingCall] = []
        self._registered: set[str] = set()  # broker addresses sent a heartbeat
        self._rebalancing: Deferred[None] | None = None
        self._rebalance_again = False
        self._state = "new"  # then "running", "stopping", "stopped"
        self._stopped: Deferred[None] | None = None

    # -- choosing queues --------------------------------------------------------------

    def subscribe(self, topic: str, expression: str = "*") -> None:
        """Take messages of ``topic`` matching ``expression`` (``"*"`` or
        ``"TagA || TagB"``) from the queues the group gives this consumer."""
        if self._assigned is not None:
            raise ValueError("this consumer uses assign(): subscribe() cannot be mixed with it")
        version = int(self.reactor.seconds() * 1000)
        self._subscriptions[topic] = Subscription(topic, expression, version)
        for state in self._queues.values():
            if state.queue.topic == topic:
                state.subscription = self._subscriptions[topic]
        if self._state == "running":
            self._background(self._join(), "subscribe to {topic}", topic=topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop taking ``topic``: its queues are dropped (committed first with auto-commit)."""
        if self._subscriptions.pop(topic, None) is None:
            return
        self._drop([q for q in self._queues if q.topic == topic])
        if self._state == "running":
            self._background(self._heartbeat_all(), "heartbeat")

    def assign(self, queues: Iterable[MessageQueue], expression: str = "*") -> None:
        """Consume exactly ``queues`` (replacing an earlier assignment), with no group
        rebalance; ``expression`` filters tags as in :meth:`subscribe`."""
        if self._subscriptions:
            raise ValueError("this consumer uses subscribe(): assign() cannot be mixed with it")
        version = int(self.reactor.seconds() * 1000)
        subs: dict[str, Subscription] = {}
        wanted = {
            q: subs.setdefault(q.topic, Subscription(q.topic, expression, version)) for q in queues
        }
        self._assigned = wanted
        if self._state == "running":
            self._apply(wanted)

    def assignment(self) -> frozenset[MessageQueue]:
        """The queues this consumer pulls now."""
        return frozenset(self._queues)

    def fetch_queues(self, topic: str) -> Deferred[list[MessageQueue]]:
        """The read queues of ``topic``'s route, freshly asked of the name servers."""

        async def fetch() -> list[MessageQueue]:
            route = await self.routes.route(topic, refresh=True)
            return list(route.read_queues)

        return ensureDeferred(fetch())

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start pulling; fires after the first heartbeat and rebalance (subscribe) or
        at once (assign). Fails with ConsumerClosedError after :meth:`shutdown`."""
        if self._state == "running":
            return succeed(None)
        if self._state != "new":
            return fail(ConsumerClosedError("the consumer has been shut down"))
        self._state = "running"
        notify_router(self.client).watch(self.group, self._notified)
        timers = [
            (self.heartbeat_interval, lambda: ensureDeferred(self._heartbeat_all())),
            (self.rebalance_interval, self.rebalance),
        ]
        if self.auto_commit:
            timers.append((self.auto_commit_interval, self._auto_commit))
        for interval, function in timers:
            loop = LoopingCall(function)
            loop.clock = self.reactor
            loop.start(interval, now=False).addErrback(
                lambda f: _log.failure("lite pull consumer timer failed", f)
            )
            self._loops.append(loop)
        if self._assigned is not None:
            self._apply(self._assigned)
            return succeed(None)
        return self._join()

    def _join(self) -> Deferred[None]:
        async def join() -> None:
            for topic in list(self._subscriptions):
                try:
                    await self.routes.route(topic, refresh=True)
                except RouteError as error:
                    _log.warn("No route for {topic} yet: {error}", topic=topic, error=error)
                    if ResponseCode.NO_PERMISSION in error.codes:
                        self._refuse(error)
            await self._heartbeat_all()
            await self.rebalance()

        return ensureDeferred(join())

    def shutdown(self) -> Deferred[None]:
        """Stop pulling, commit (with auto-commit), send UNREGISTER_CLIENT to the brokers
        and close the consumer's own client. Pending polls fire with []. Calling it again
        waits for the first call."""
        if self._stopped is None:
            self._stopped = ensureDeferred(self._shutdown())
            self._stopped.addErrback(lambda f: _log.failure("shutdown failed", f))
        done: Deferred[None] = Deferred()

        def finished(result: None) -> None:
            done.callback(None)

        self._stopped.addCallback(finished)
        return done

    async def _shutdown(self) -> None:
        was_running = self._state == "running"
        self._state = "stopping"
        if was_running:
            notify_router(self.client).unwatch(self.group, self._notified)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        waiters, self._waiters = self._waiters, []
        for waiter, timer in waiters:
            if timer is not None and timer.active():
                timer.cancel()
            waiter.callback([])
        for state in self._queues.values():
            state.stop()
        if was_running and self.auto_commit:
            try:
                await self._commit(list(self._queues.values()))
            except ConsumerError as error:
                _log.warn("Final commit failed: {error}", error=error)
        self._queues.clear()
        if self._rebalancing is not None:
            self._rebalancing.cancel()
        calls = [
            self.client.invoke(
                address,
                unregister_request(self.client_id, consumer_group=self.group),
                self.request_timeout,
            )
            for address in sorted(self._registered)
        ]
        await DeferredList(calls, consumeErrors=True)
        self._state = "stopped"
        if self._own_client:
            await self.client.close()

    # -- polling ----------------------------------------------------------------------

    def poll(self, timeout: float = 5.0) -> Deferred[list[MessageExt]]:
        """Up to ``poll_batch_size`` messages, taken in turn from the queues' buffers;
        when none is buffered, waits up to ``timeout`` seconds for some (``[]`` then).
        Fails with ConsumerClosedError before :meth:`start` or after :meth:`shutdown`,
        and with the error of a request refused NO_PERMISSION since the last poll (an
        ACL denies the group or topic): a :class:`~rmqtwist.consumer.BrokerAnswerError`
        (pull, heartbeat, rebalance) or a :class:`~rmqtwist.routing.RouteError` (the
        route), each time it is refused again; the consumer goes on retrying meanwhile.
        A pending poll gets ``[]`` at shutdown, and may be cancelled."""
        if self._state != "running":
            return fail(ConsumerClosedError("the consumer is not started or has been shut down"))
        if self._refused is not None:
            refused, self._refused = self._refused, None
            return fail(refused)
        batch = self._take()
        if batch or timeout <= 0:
            return succeed(batch)

        def cancel(d: Deferred[list[MessageExt]]) -> None:
            for entry in self._waiters:
                if entry[0] is d:
                    self._waiters.remove(entry)
                    if entry[1] is not None and entry[1].active():
                        entry[1].cancel()
                    break

        waiter: Deferred[list[MessageExt]] = Deferred(cancel)
        timer = self.reactor.callLater(timeout, self._timed_out, waiter)
        self._waiters.append((waiter, timer))
        return waiter

    def _refuse(self, error: Exception) -> None:
        """A request was refused NO_PERMISSION (an ACL): tell the caller of :meth:`poll`,
        now if one waits, else at the next poll, rather than retrying in silence. The
        requests go on being retried, so that a fixed ACL lets the consumer carry on."""
        if self._waiters:
            waiter, timer = self._waiters.pop(0)
            if timer is not None and timer.active():
                timer.cancel()
            waiter.errback(error)
        else:
            self._refused = error

    def _timed_out(self, waiter: Deferred[list[MessageExt]]) -> None:
        self._waiters = [w for w in self._waiters if w[0] is not waiter]
        waiter.callback([])

    def _take(self) -> list[MessageExt]:
        self._turn += 1
        return take_batch(
            self._queues.values(), self.poll_batch_size, self._turn, self.max_cached_messages
        )

    def _deliver(self) -> None:
        while self._waiters and any(s.buffer for s in self._queues.values()):
            waiter, timer = self._waiters.pop(0)
            if timer is not None and timer.active():
                timer.cancel()
            waiter.callback(self._take())

    # -- offsets ----------------------------------------------------------------------

    def commit(self) -> Deferred[None]:
        """Commit, for each queue, the offset after everything :meth:`poll` has returned
        from it; fires once the brokers took them (ConsumerError naming the failures)."""
        return ensureDeferred(self._commit(list(self._queues.values())))

    async def _commit(self, states: list[QueueState]) -> None:
        todo: list[tuple[QueueState, int]] = []
        for state in states:
            position = state.position()
            if position is not None and position != state.last_committed:
                todo.append((state, position))
        if not todo:
            return
        failures: list[str] = []

        async def one(state: QueueState, offset: int) -> None:
            try:
                address = await self._address(state.queue)
                await update_offset(
                    self.client,
                    address,
                    self.group,
                    state.queue,
                    offset,
                    oneway=False,
                    timeout=self.request_timeout,
                )
            except Exception as error:
                failures.append(f"{state.queue}: {error}")
            else:
                state.last_committed = offset

        await DeferredList([ensureDeferred(one(s, p)) for s, p in todo])
        if failures:
            raise ConsumerError(f"commit of {self.group} failed for {'; '.join(failures)}")

    def _auto_commit(self) -> Deferred[None]:
        d = self.commit()
        d.addErrback(lambda f: _log.info("auto-commit failed: {e}", e=f.value))
        return d

    def committed(self, queue: MessageQueue) -> Deferred[int | None]:
        """The group's committed offset of ``queue`` at its broker (None: none)."""

        async def ask() -> int | None:
            address = await self._address(queue)
            return await query_offset(self.client, address, self.group, queue, self.request_timeout)

        return ensureDeferred(ask())

    def seek(self, queue: MessageQueue, offset: int) -> None:
        """Pull ``queue`` from ``offset`` next: its buffered messages are dropped, and a
        pull in flight is ignored. Raises ValueError for a queue not assigned."""
        state = self._queues.get(queue)
        if state is None:
            raise ValueError(f"{queue} is not assigned to this consumer")
        if offset < 0:
            raise ValueError("an offset cannot be negative")
        state.epoch += 1
        state.buffer.clear()
        state.offset = offset
        waiting, state.waiting = state.waiting, None
        if waiting is not None:
            waiting.cancel()  # the loop goes on from the new offset

    def seek_to_begin(self, queue: MessageQueue) -> Deferred[None]:
        """:meth:`seek` to the oldest offset ``queue`` still holds (GET_MIN_OFFSET)."""
        return self._seek_to(queue, min_offset)

    def seek_to_end(self, queue: MessageQueue) -> Deferred[None]:
        """:meth:`seek` past the last message of ``queue`` (GET_MAX_OFFSET)."""
        return self._seek_to(queue, max_offset)

    def _seek_to(self, queue: MessageQueue, which: Any) -> Deferred[None]:
        if queue not in self._queues:
            return fail(ValueError(f"{queue} is not assigned to this consumer"))

        async def seek() -> None:
            address = await self._address(queue)
            offset = await which(self.client, address, queue, self.request_timeout)
            if queue in self._queues:
                self.seek(queue, offset)

        return ensureDeferred(seek())

    async def _start_offset(self, queue: MessageQueue) -> int:
        address = await self._address(queue)
        when = self.consume_timestamp
        if when is None:
            when = self.reactor.seconds() - _DEFAULT_LOOKBACK
        return await start_offset(
            self.client,
            address,
            self.group,
            queue,
            self.consume_from.value,
            when,
            self.request_timeout,
        )

    async def _address(self, queue: MessageQueue) -> str:
        route = self.routes.cached(queue.topic)
        address = route.address(queue.broker_name) if route is not None else None
        if address is None:
            route = await self.routes.route(queue.topic, refresh=True)
            address = route.address(queue.broker_name)
        if address is None:
            raise ConsumerError(f"no address for broker {queue.broker_name!r} of {queue}")
        return address

    # -- pulling ----------------------------------------------------------------------

    def _apply(self, wanted: dict[MessageQueue, Subscription]) -> None:
        """Pull exactly the queues of ``wanted``: stop the others, start the new ones."""
        self._drop([q for q in self._queues if q not in wanted])
        for queue, subscription in sorted(wanted.items()):
            state = self._queues.get(queue)
            if state is None:
                state = self._queues[queue] = QueueState(queue, subscription)
                state.loop = ensureDeferred(self._pull_loop(state))
                state.loop.addErrback(lambda f: _log.failure("pull loop failed", f))
            else:
                state.subscription = subscription

    def _drop(self, queues: list[MessageQueue]) -> None:
        states = [self._queues.pop(q) for q in queues if q in self._queues]
        for state in states:
            state.stop()
        if states and self.auto_commit:
            self._background(self._commit(states), "commit of dropped queues")

    def _background(self, work: Any, what: str, **fields: Any) -> None:
        d = work if isinstance(work, Deferred) else ensureDeferred(work)
        d.addErrback(lambda f: _log.info(what + " failed: {e}", e=f.value, **fields))

    async def _wait(self, state: QueueState, waiting: Deferred[Any]) -> Any:
        state.waiting = waiting
        try:
            return await waiting
        finally:
            if state.waiting is waiting:
                state.waiting = None

    async def _pull_loop(self, state: QueueState) -> None:
        queue = state.queue
        while not state.stopped:
            epoch = state.epoch
            try:
                if len(state.buffer) >= self.max_cached_messages:
                    await self._wait(state, Room())
                    continue
                if state.offset is None:
                    offset = await self._wait(state, ensureDeferred(self._start_offset(queue)))
                    if epoch == state.epoch and state.offset is None:
                        state.offset = offset
                    continue
                address = await self._address(queue)
                if state.stopped or epoch != state.epoch:
                    continue
                result = await self._wait(
                    state,
                    ensureDeferred(
                        pull(
                            self.client,
                            address,
                            self.group,
                            queue,
                            state.offset,
                            subscription=state.subscription,
                            max_nums=self.pull_batch_size,
                            suspend=self.pull_suspend,
                            timeout=self.pull_timeout,
                        )
                    ),
                )
            except CancelledError:
                continue  # stopped, or a seek: the loop looks again
            except Exception as error:
                if state.stopped or epoch != state.epoch:
                    continue
                _log.info("pull of {queue} failed: {error}", queue=queue, error=error)
                if (
                    isinstance(error, BrokerAnswerError)
                    and error.code == ResponseCode.NO_PERMISSION
                ):
                    self._refuse(error)
                with contextlib.suppress(CancelledError):
                    await self._wait(state, deferLater(self.reactor, self.retry_delay))
                continue
            if state.stopped or epoch != state.epoch:
                continue
            if result.status is PullStatus.OFFSET_ILLEGAL:
                _log.info(
                    "offset {offset} of {queue} is out of range; going on from {next}",
                    offset=state.offset,
                    queue=queue,
                    next=result.next_begin_offset,
                )
            state.offset = result.next_begin_offset
            if result.messages:
                state.buffer.extend(result.messages)
                self._deliver()
