"""The lite pull consumer's group membership (see :mod:`rmqtwist.consumer._lite`):
heartbeats, and rebalancing the subscribed topics' read queues among the group."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.client import RemotingClient
from rmqtwist.codes import ResponseCode
from rmqtwist.consumer._base import (
    BrokerAnswerError,
    ConsumerData,
    ConsumerError,
    Subscription,
    allocate_averagely,
    consumer_ids,
    heartbeat_request,
)
from rmqtwist.consumer._lite_support import QueueState
from rmqtwist.routing import MessageQueue, RouteError, RouteTable

_log = Logger()


class LiteGroup:
    """Heartbeats and rebalancing, mixed into :class:`~rmqtwist.consumer.PullConsumer`."""

    group: str
    client: RemotingClient
    client_id: str
    reactor: Any
    routes: RouteTable
    consume_from: Any
    request_timeout: float
    _state: str
    _subscriptions: dict[str, Subscription]
    _assigned: dict[MessageQueue, Subscription] | None
    _queues: dict[MessageQueue, QueueState]
    _registered: set[str]
    _rebalancing: Deferred[None] | None
    _rebalance_again: bool

    def _apply(self, wanted: dict[MessageQueue, Subscription]) -> None:
        raise NotImplementedError

    def _refuse(self, error: Exception) -> None:
        raise NotImplementedError

    # -- the group --------------------------------------------------------------------

    def _consumer_data(self) -> ConsumerData:
        return ConsumerData(
            self.group,
            consume_type="CONSUME_ACTIVELY",
            message_model="CLUSTERING",
            consume_from_where=self.consume_from.value,
            subscriptions=tuple(self._subscriptions.values()),
        )

    async def _heartbeat_all(self) -> None:
        if self._assigned is not None or self._state != "running":
            return
        addresses = {a for ids in self.routes.brokers().values() for a in ids.values()}
        request = heartbeat_request(self.client_id, [self._consumer_data()])

        async def one(address: str) -> None:
            try:
                response = await self.client.invoke(address, request, self.request_timeout)
            except Exception as error:
                _log.info("heartbeat to {a} failed: {e}", a=address, e=error)
                return
            if response.code == ResponseCode.SUCCESS:
                self._registered.add(address)
                return
            refused = BrokerAnswerError(f"heartbeat to {address}", response.code, response.remark)
            _log.info("{e}", e=refused)
            if response.code == ResponseCode.NO_PERMISSION:
                self._refuse(refused)

        await DeferredList([ensureDeferred(one(a)) for a in sorted(addresses)])

    def _notified(self) -> None:
        """A broker said the group's members changed: rebalance soon."""
        if self._state == "running":
            self.reactor.callLater(0, self.rebalance)

    def rebalance(self) -> Deferred[None]:
        """Share the subscribed topics' read queues with the group's members now (also
        done every ``rebalance_interval`` and when a broker says the members changed)."""
        if self._state != "running" or self._assigned is not None:
            return succeed(None)
        if self._rebalancing is not None:
            self._rebalance_again = True
            return succeed(None)

        async def run() -> None:
            try:
                while True:
                    self._rebalance_again = False
                    for topic in list(self._subscriptions):
                        await self._rebalance_topic(topic)
                    if not self._rebalance_again or self._state != "running":
                        break
            finally:
                self._rebalancing = None

        d = ensureDeferred(run())
        if not d.called:  # (a run that finished at once has already cleared it)
            self._rebalancing = d
        d.addErrback(_ignore_cancelled)
        return d

    async def _rebalance_topic(self, topic: str) -> None:
        try:
            route = await self.routes.route(topic, refresh=True)
            addresses = sorted(filter(None, (route.address(b) for b in route.brokers)))
            if not addresses:
                raise ConsumerError(f"no broker address in the route of {topic}")
            ids = await consumer_ids(
                self.client, random.choice(addresses), self.group, self.request_timeout
            )
        except CancelledError:
            raise
        except Exception as error:
            _log.info("rebalance of {topic} skipped: {error}", topic=topic, error=error)
            if isinstance(
                error, (BrokerAnswerError, RouteError)
            ) and ResponseCode.NO_PERMISSION in _codes(error):
                self._refuse(error)
            return
        if self.client_id not in ids:
            # The broker does not know us (restarted, or our heartbeat went elsewhere):
            # allocating now would give nothing; register and keep our queues this round.
            _log.info("rebalance of {topic} skipped: not yet a member", topic=topic)
            await self._heartbeat_all()
            return
        subscription = self._subscriptions.get(topic)
        if subscription is None or self._state != "running":
            return
        mine = allocate_averagely(route.read_queues, ids, self.client_id)
        wanted = {q: subscription for q in mine}
        wanted.update({q: s.subscription for q, s in self._queues.items() if q.topic != topic})
        self._apply(wanted)


def _codes(error: BrokerAnswerError | RouteError) -> frozenset[int]:
    return frozenset({error.code}) if isinstance(error, BrokerAnswerError) else error.codes


def _ignore_cancelled(failure: Failure) -> Failure | None:
    return None if isinstance(failure.value, CancelledError) else failure
