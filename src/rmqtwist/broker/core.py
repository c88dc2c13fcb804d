"""``Broker``: the state every processor of the dev broker shares, and the one path by
which messages are stored (delay redirection, record encoding, waking held pulls)."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rmqtwist.broker.clients import ClientRegistry
from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.locks import QueueLocks
from rmqtwist.broker.longpoll import HeldPulls
from rmqtwist.broker.offsets import ConsumerOffsets
from rmqtwist.broker.topics import DELAY_TOPIC, TopicTable
from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand
from rmqtwist.headers import NotifyConsumerIdsChangedRequestHeader
from rmqtwist.message import (
    MessageSysFlag,
    Property,
    encode_properties,
    encode_record,
    offset_msg_id,
    tag_hash,
    transaction_type,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from rmqtwist.broker.store import AppendResult, IMessageStore
    from rmqtwist.interfaces import IChannel

__all__ = ["Broker", "Draft", "PutResult"]

_log = Logger()

_NOT_DELAYED = {
    int(MessageSysFlag.TRANSACTION_PREPARED),
    int(MessageSysFlag.TRANSACTION_ROLLBACK),
}


@dataclasses.dataclass(slots=True)
class Draft:
    """A message about to be stored: everything but the offsets and store time."""

    topic: str
    queue_id: int
    body: bytes
    properties: dict[str, str]
    born_timestamp: int
    born_host: str
    store_host: str
    flag: int = 0
    sys_flag: int = 0
    reconsume_times: int = 0
    prepared_transaction_offset: int = 0


@dataclasses.dataclass(slots=True)
class PutResult:
    """Where a message went: its queue, offsets, offset msgId, and a Deferred firing when
    it is durable (None when there is nothing to wait for)."""

    topic: str
    queue_id: int
    queue_offset: int
    physical_offset: int
    msg_id: str
    durable: Deferred[None] | None


@functools.lru_cache(maxsize=1024)
def _is_ip_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return False
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


class Broker:
    """The dev broker's state: config, store, topics, clients, offsets, held pulls, locks."""

    def __init__(
        self, store: IMessageStore, config: BrokerConfig | None = None, reactor: Any = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.config = config if config is not None else BrokerConfig()
        self.store = store
        self.topics = TopicTable(self.config, store)
        self.offsets = ConsumerOffsets(store)
        self.clients = ClientRegistry(self.clock.seconds, self.notify_consumer_ids_changed)
        self.pulls = HeldPulls(self.clock)
        self.locks = QueueLocks(self.clock.seconds, self.config.lock_lease)
        #: Called with a delay level when a message is stored in the delay topic.
        self.delay_wake: Callable[[int], None] | None = None
        #: True once the broker is stopping: pulls are answered at once, not held.
        self.stopping = False
        self.boot_time = self.clock.seconds()
        self.random = random.Random()
        # counters for GET_BROKER_RUNTIME_INFO and tests
        self.messages_put = 0
        self.messages_got = 0
        self.notifications_sent = 0

    def load(self) -> None:
        """Read what the store kept (after ``store.start()``), then create the topics the
        configuration names."""
        self.topics.load()
        self.offsets.load()
        for name, queues in self.config.topics:
            self.topics.ensure(name, queues)

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def route_address(self, channel: IChannel) -> str:
        """The address a client reaches this broker at, as routes name it: ``advertise``,
        else the address ``channel`` connected to."""
        return self.config.advertise or channel.local_address

    def store_host(self, channel: IChannel) -> str:
        """The ``ip:port`` written into stored messages (and so into offset msgIds): the
        advertised address when it is an IP address, else the address ``channel``
        connected to (a record holds an IP, never a host name); ``127.0.0.1:0`` for a
        connection that has no IP address (a UNIX socket)."""
        advertise = self.config.advertise
        if advertise is not None and _is_ip_address(advertise):
            return advertise
        local = channel.local_address
        return local if _is_ip_address(local) else "127.0.0.1:0"

    # -- storing ----------------------------------------------------------------------

    def _redirect_delayed(self, draft: Draft) -> None:
        level_text = draft.properties.get(Property.DELAY)
        if not level_text or transaction_type(draft.sys_flag) in _NOT_DELAYED:
            return
        try:
            level = int(level_text)
        except ValueError:
            return
        if level <= 0:
            return
        level = min(level, len(self.config.delay_levels))
        draft.properties[Property.DELAY] = str(level)
        draft.properties[Property.REAL_TOPIC] = draft.topic
        draft.properties[Property.REAL_QID] = str(draft.queue_id)
        draft.topic = DELAY_TOPIC
        draft.queue_id = level - 1

    def _encode(self, draft: Draft, now: int) -> bytearray:
        return encode_record(
            topic=draft.topic,
            body=draft.body,
            properties=encode_properties(draft.properties),
            queue_id=draft.queue_id,
            flag=draft.flag,
            sys_flag=draft.sys_flag,
            born_timestamp=draft.born_timestamp,
            born_host=draft.born_host,
            store_timestamp=now,
            store_host=draft.store_host,
            reconsume_times=draft.reconsume_times,
            prepared_transaction_offset=draft.prepared_transaction_offset,
        )

    def put(self, draft: Draft, *, delay: bool = True) -> PutResult:
        """Store one message (a delayed one goes to the delay topic first); raises
        :class:`~rmqtwist.broker.store.StoreError` when the store cannot take it."""
        if delay:
            self._redirect_delayed(draft)
        now = self.now_ms()
        record = self._encode(draft, now)
        code = tag_hash(draft.properties.get(Property.TAGS))
        result = self.store.append(draft.topic, draft.queue_id, record, code, now)
        self.messages_put += 1
        self.pulls.notify(draft.topic, draft.queue_id, result.queue_offset + 1, code)
        if draft.topic == DELAY_TOPIC and self.delay_wake is not None:
            self.delay_wake(draft.queue_id + 1)
        return self._result(draft, result)

    def put_batch(self, drafts: Sequence[Draft]) -> list[PutResult]:
        """Store messages into one queue with consecutive offsets (no delay redirection)."""
        if not drafts:
            return []
        first = drafts[0]
        now = self.now_ms()
        records = [self._encode(draft, now) for draft in drafts]
        codes = [tag_hash(draft.properties.get(Property.TAGS)) for draft in drafts]
        results = self.store.append_batch(first.topic, first.queue_id, records, codes, now)
        self.messages_put += len(results)
        # Wake held pulls with each distinct tag hash, as Apache notifies message by
        # message: a pull filtering the batch's tags out stays held.
        top = results[-1].queue_offset + 1
        for code in dict.fromkeys(codes):
            self.pulls.notify(first.topic, first.queue_id, top, code)
        return [self._result(draft, result) for draft, result in zip(drafts, results, strict=True)]

    def _result(self, draft: Draft, result: AppendResult) -> PutResult:
        return PutResult(
            draft.topic,
            draft.queue_id,
            result.queue_offset,
            result.physical_offset,
            offset_msg_id(draft.store_host, result.physical_offset),
            self.store.when_durable(result),
        )

    def pick_queue(self, write_queue_nums: int) -> int:
        return self.random.randrange(max(write_queue_nums, 1))

    # -- pushing to clients -----------------------------------------------------------

    def notify_consumer_ids_changed(self, group: str) -> None:
        """Push NOTIFY_CONSUMER_IDS_CHANGED (40) oneway to every member of ``group``."""
        request = NotifyConsumerIdsChangedRequestHeader(consumer_group=group).to_request(
            RequestCode.NOTIFY_CONSUMER_IDS_CHANGED
        )
        for channel in self.clients.group_channels(group):
            self.send_oneway(channel, request)

    def send_oneway(self, channel: IChannel, request: RemotingCommand) -> None:
        """Send ``request`` oneway to a client, logging (not raising) a failure."""
        if not channel.is_connected:
            return
        self.notifications_sent += 1
        deferred = channel.invoke_oneway(request)
        deferred.addErrback(
            lambda failure: _log.info(
                "Could not send {code} to {peer}: {error}",
                code=request.code,
                peer=channel.remote_address,
                error=failure.getErrorMessage(),
            )
        )

    def channel_closed(self, channel: IChannel) -> None:
        """A client connection went away."""
        client_ids = {
            member.client_id
            for group in self.clients.consumers.values()
            for ch, member in group.members.items()
            if ch is channel
        }
        self.clients.channel_closed(channel)
        still_here = {
            member.client_id
            for group in self.clients.consumers.values()
            for member in group.members.values()
        }
        for client_id in client_ids - still_here:
            self.locks.release_client(client_id)
