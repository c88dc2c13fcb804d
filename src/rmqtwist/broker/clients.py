"""Producer and consumer groups: who is connected, what they subscribe to, and the
NOTIFY_CONSUMER_IDS_CHANGED (40) push when a consumer group's membership changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from rmqtwist._logsafe import clip
from rmqtwist.errors import BodyError
from rmqtwist.message import tag_hash

if TYPE_CHECKING:
    from rmqtwist.interfaces import IChannel

__all__ = [
    "CONSUME_FROM_WHERE",
    "ClientInfo",
    "ClientRegistry",
    "ConsumerGroup",
    "Subscription",
    "parse_heartbeat",
    "parse_subscription",
]

_log = Logger()

#: Apache's ConsumeFromWhere names in ordinal order (the C++ client sends the ordinal).
CONSUME_FROM_WHERE = (
    "CONSUME_FROM_LAST_OFFSET",
    "CONSUME_FROM_LAST_OFFSET_AND_FROM_MIN_WHEN_BOOT_FIRST",
    "CONSUME_FROM_MIN_OFFSET",
    "CONSUME_FROM_MAX_OFFSET",
    "CONSUME_FROM_FIRST_OFFSET",
    "CONSUME_FROM_TIMESTAMP",
)
_CONSUME_TYPES = ("CONSUME_ACTIVELY", "CONSUME_PASSIVELY")
_MESSAGE_MODELS = ("BROADCASTING", "CLUSTERING")


@dataclasses.dataclass(frozen=True)
class Subscription:
    """What a consumer group takes from one topic: ``*`` (everything) or a set of tags."""

    topic: str
    expression: str = "*"
    expression_type: str = "TAG"
    tags: frozenset[str] = frozenset()
    #: Java String.hashCode of each tag; None: every message matches.
    codes: frozenset[int] | None = None
    version: int = 0

    def matches(self, tags: str | None) -> bool:
        """True when a message with ``tags`` is wanted (the exact check, not the hash)."""
        return self.codes is None or (tags is not None and tags in self.tags)


def parse_subscription(
    topic: str, expression: str | None, expression_type: str | None = None, version: int = 0
) -> Subscription:
    """A TAG subscription from its expression (``*``, empty, or ``A || B``).

    Raises ValueError for SQL92 and other filters the dev broker does not support.
    """
    kind = (expression_type or "TAG").upper()
    if kind != "TAG":
        raise ValueError(f"{kind} filtering is not supported by the rmqtwist dev broker")
    text = (expression or "").strip()
    if text in ("", "*"):
        return Subscription(topic, "*", "TAG", version=version)
    tags = frozenset(part.strip() for part in text.split("||") if part.strip())
    if not tags:
        return Subscription(topic, "*", "TAG", version=version)
    return Subscription(topic, text, "TAG", tags, frozenset(tag_hash(tag) for tag in tags), version)


@dataclasses.dataclass
class ClientInfo:
    """One client connection in a group."""

    client_id: str
    channel: IChannel
    language: int
    version: int
    last_seen: float


@dataclasses.dataclass
class ConsumerGroup:
    """A consumer group: its settings (from the latest heartbeat) and its members."""

    name: str
    consume_type: str = "CONSUME_PASSIVELY"
    message_model: str = "CLUSTERING"
    consume_from_where: str = "CONSUME_FROM_LAST_OFFSET"
    subscriptions: dict[str, Subscription] = dataclasses.field(default_factory=dict)
    members: dict[IChannel, ClientInfo] = dataclasses.field(default_factory=dict)

    def client_ids(self) -> list[str]:
        return sorted({member.client_id for member in self.members.values()})


@dataclasses.dataclass(frozen=True)
class _ConsumerData:
    group: str
    consume_type: str
    message_model: str
    consume_from_where: str
    subscriptions: tuple[Subscription, ...]


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """A HEART_BEAT body, read leniently (names or ordinals, strings or numbers)."""

    client_id: str
    producer_groups: tuple[str, ...]
    consumers: tuple[_ConsumerData, ...]


def _enum(value: Any, names: tuple[str, ...], default: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str):
        if value.isdigit() and int(value) < len(names):
            return names[int(value)]
        if value in names:
            return value
    return default


def parse_heartbeat(data: Any) -> Heartbeat:
    """Read a HeartbeatData JSON value; BodyError when it is not one."""
    if not isinstance(data, dict):
        raise BodyError("the HEART_BEAT body is not a JSON object")
    client_id = data.get("clientID")
    if not isinstance(client_id, str) or not client_id:
        raise BodyError("the HEART_BEAT body has no clientID")
    producers = []
    for item in data.get("producerDataSet") or []:
        if isinstance(item, dict) and isinstance(item.get("groupName"), str):
            producers.append(item["groupName"])
    consumers = []
    for item in data.get("consumerDataSet") or []:
        if not isinstance(item, dict) or not isinstance(item.get("groupName"), str):
            continue
        subscriptions = []
        for sub in item.get("subscriptionDataSet") or []:
            if not isinstance(sub, dict) or not isinstance(sub.get("topic"), str):
                continue
            try:
                version = int(sub.get("subVersion") or 0)
            except (TypeError, ValueError):
                version = 0
            try:
                subscriptions.append(
                    parse_subscription(
                        sub["topic"],
                        str(sub.get("subString") or "*"),
                        sub.get("expressionType"),
                        version,
                    )
                )
            except ValueError as e:
                _log.warn(
                    "{client} subscribes to {topic} with a filter the broker cannot apply: {error}",
                    client=clip(str(client_id)),
                    topic=clip(str(sub["topic"])),
                    error=clip(str(e)),
                )
        consumers.append(
            _ConsumerData(
                item["groupName"],
                _enum(item.get("consumeType"), _CONSUME_TYPES, "CONSUME_PASSIVELY"),
                _enum(item.get("messageModel"), _MESSAGE_MODELS, "CLUSTERING"),
                _enum(item.get("consumeFromWhere"), CONSUME_FROM_WHERE, CONSUME_FROM_WHERE[0]),
                tuple(subscriptions),
            )
        )
    return Heartbeat(client_id, tuple(producers), tuple(consumers))


class ClientRegistry:
    """The broker's producer and consumer groups.

    ``on_change(group)`` is called when a consumer group's members or subscribed topics
    change; the broker then pushes NOTIFY_CONSUMER_IDS_CHANGED to the group.
    """

    def __init__(self, clock: Callable[[], float], on_change: Callable[[str], None]) -> None:
        self._clock = clock
        self._on_change = on_change
        self.consumers: dict[str, ConsumerGroup] = {}
        self.producers: dict[str, dict[IChannel, ClientInfo]] = {}
        self._heartbeat_waiters: dict[str, list[Callable[[], None]]] = {}

    def wait_for_heartbeat(self, group: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after the next heartbeat naming consumer group ``group``;
        returns a function that forgets it."""
        waiters = self._heartbeat_waiters.setdefault(group, [])
        waiters.append(callback)

        def forget() -> None:
            if callback in waiters:
                waiters.remove(callback)
            if not waiters and self._heartbeat_waiters.get(group) is waiters:
                del self._heartbeat_waiters[group]

        return forget

    def heartbeat(
        self, channel: IChannel, heartbeat: Heartbeat, language: int, version: int
    ) -> list[str]:
        """Register what ``heartbeat`` says; returns the consumer groups that changed."""
        now = self._clock()
        changed = []
        for group_name in heartbeat.producer_groups:
            members = self.producers.setdefault(group_name, {})
            members[channel] = ClientInfo(heartbeat.client_id, channel, language, version, now)
        for data in heartbeat.consumers:
            group = self.consumers.get(data.group)
            if group is None:
                group = self.consumers[data.group] = ConsumerGroup(data.group)
            group.consume_type = data.consume_type
            group.message_model = data.message_model
            group.consume_from_where = data.consume_from_where
            member = group.members.get(channel)
            new_member = member is None or member.client_id != heartbeat.client_id
            group.members[channel] = ClientInfo(
                heartbeat.client_id, channel, language, version, now
            )
            new_topics = {sub.topic: sub for sub in data.subscriptions}
            topics_changed = set(new_topics) != set(group.subscriptions)
            # Keep the newest version of each topic's subscription, as Apache does: a
            # member started earlier heartbeats an older subVersion, which must not make
            # the newer members' pulls SUBSCRIPTION_NOT_LATEST.
            for topic, sub in new_topics.items():
                old = group.subscriptions.get(topic)
                if old is not None and old.version > sub.version:
                    new_topics[topic] = old
            group.subscriptions = new_topics
            if new_member or topics_changed:
                changed.append(data.group)
        for group_name in changed:
            self._on_change(group_name)
        for data in heartbeat.consumers:
            # a copy: each callback forgets itself from the list it was in
            for callback in list(self._heartbeat_waiters.pop(data.group, [])):
                callback()
        return changed

    def unregister(
        self,
        channel: IChannel,
        producer_group: str | None,
        consumer_group: str | None,
    ) -> None:
        """UNREGISTER_CLIENT: forget ``channel`` in the groups named."""
        if producer_group:
            members = self.producers.get(producer_group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self.producers[producer_group]
        if consumer_group:
            self._leave(consumer_group, channel)

    def _leave(self, group_name: str, channel: IChannel) -> None:
        group = self.consumers.get(group_name)
        if group is None or group.members.pop(channel, None) is None:
            return
        if group.members:
            self._on_change(group_name)
        # An empty group keeps its subscriptions: its offsets and retry topic stay useful,
        # and a pull that arrives late still finds the subscription.

    def channel_closed(self, channel: IChannel) -> None:
        """A connection went away: it leaves every group it was in."""
        for members in list(self.producers.values()):
            members.pop(channel, None)
        for name in [name for name, members in self.producers.items() if not members]:
            del self.producers[name]
        for group_name in list(self.consumers):
            self._leave(group_name, channel)

    def expire(self, older_than: float) -> list[ClientInfo]:
        """Drop members last heard from before ``older_than``; returns them."""
        dropped = []
        for members in self.producers.values():
            for channel, info in list(members.items()):
                if info.last_seen < older_than:
                    dropped.append(members.pop(channel))
        for name in [name for name, members in self.producers.items() if not members]:
            del self.producers[name]
        for group in list(self.consumers.values()):
            for channel, info in list(group.members.items()):
                if info.last_seen < older_than:
                    dropped.append(info)
                    self._leave(group.name, channel)
        return dropped

    def consumer_ids(self, group: str) -> list[str]:
        found = self.consumers.get(group)
        return found.client_ids() if found is not None else []

    def subscription(self, group: str, topic: str) -> Subscription | None:
        found = self.consumers.get(group)
        return found.subscriptions.get(topic) if found is not None else None

    def group_channels(self, group: str) -> list[IChannel]:
        found = self.consumers.get(group)
        return list(found.members) if found is not None else []

    def producer_channels(self, group: str) -> list[IChannel]:
        return [channel for channel in self.producers.get(group, {}) if channel.is_connected]

    def all_channels(self) -> Iterable[IChannel]:
        seen: set[IChannel] = set()
        for members in self.producers.values():
            seen.update(members)
        for group in self.consumers.values():
            seen.update(group.members)
        return seen
