"""What every consumer needs: one call per broker request, subscriptions, allocation.

Each ``async`` function here is one request to one broker through a
:class:`~rmqtwist.client.RemotingClient` and checks the answer's code; the consumers
(push and lite pull) add the state, the timers and the decisions. The bodies and headers
are those of Java's 4.9 client (``MQClientAPIImpl``), as the Java transcripts show them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import RemotingError
from rmqtwist.headers import (
    ConsumerSendMsgBackRequestHeader,
    GetConsumerListByGroupRequestHeader,
    GetMaxOffsetRequestHeader,
    GetMaxOffsetResponseHeader,
    GetMinOffsetRequestHeader,
    GetMinOffsetResponseHeader,
    PullMessageRequestHeader,
    PullMessageResponseHeader,
    QueryConsumerOffsetRequestHeader,
    QueryConsumerOffsetResponseHeader,
    SearchOffsetRequestHeader,
    SearchOffsetResponseHeader,
    UnregisterClientRequestHeader,
    UpdateConsumerOffsetRequestHeader,
)
from rmqtwist.message import MessageExt, Property, decode_records, tag_hash
from rmqtwist.routing import MessageQueue

__all__ = [
    "RETRY_PREFIX",
    "BrokerAnswerError",
    "ConsumerClosedError",
    "ConsumerData",
    "ConsumerError",
    "PullResult",
    "PullStatus",
    "Subscription",
    "allocate_averagely",
    "consumer_ids",
    "heartbeat_request",
    "lock_queues",
    "max_offset",
    "min_offset",
    "parse_expression",
    "pull",
    "query_offset",
    "restore_retry_topic",
    "retry_topic",
    "search_offset",
    "send_back",
    "unlock_queues",
    "unregister_request",
    "update_offset",
]

#: The prefix of a consumer group's retry topic (``%RETRY%<group>``).
RETRY_PREFIX: Final = "%RETRY%"

# PullSysFlag bits (Java's PullSysFlag).
_FLAG_COMMIT_OFFSET: Final = 0x1
_FLAG_SUSPEND: Final = 0x2
_FLAG_SUBSCRIPTION: Final = 0x4
# The compression bits of a stored message's sysFlag: cleared once the body is inflated.
_COMPRESSION_BITS: Final = 0x1 | 0x700


class ConsumerError(RemotingError):
    """Base of the consumers' errors."""


class ConsumerClosedError(ConsumerError):
    """The consumer is not started, or has been shut down."""


class BrokerAnswerError(ConsumerError):
    """A broker answered a consumer's request with a code that request does not expect."""

    def __init__(self, what: str, code: int, remark: str | None) -> None:
        self.what = what
        self.code = code
        self.remark = remark
        try:
            name = ResponseCode(code).name
        except ValueError:
            name = "UNKNOWN"
        super().__init__(f"{what}: {name} ({code}) {remark or ''}".rstrip())


def retry_topic(group: str) -> str:
    """The retry topic of consumer group ``group``."""
    return RETRY_PREFIX + group


# -- subscriptions ------------------------------------------------------------------------


def parse_expression(expression: str) -> frozenset[str]:
    """The tags of a tag expression: ``"A || B"`` gives {"A", "B"}; ``"*"`` or ``""``
    give the empty set, which means every message."""
    expression = expression.strip()
    if expression in ("", "*"):
        return frozenset()
    return frozenset(t.strip() for t in expression.split("||") if t.strip())


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    """A topic and the tag expression a consumer takes from it; ``version`` is the time
    (ms) it was made, which the broker compares to tell newer subscriptions apart."""

    topic: str
    expression: str = "*"
    version: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "expression", self.expression.strip() or "*")

    @property
    def tags(self) -> frozenset[str]:
        """The tags taken; empty means every message."""
        return parse_expression(self.expression)

    @property
    def code_set(self) -> list[int]:
        """The tags' hash codes, sorted: what the broker filters on."""
        return sorted(tag_hash(t) for t in self.tags)

    def matches(self, tags: str | None) -> bool:
        """Whether a message with ``tags`` is taken (the broker filters by hash only)."""
        wanted = self.tags
        return not wanted or (tags is not None and tags in wanted)

    def to_json(self) -> dict[str, Any]:
        """The SubscriptionData a heartbeat carries."""
        return {
            "classFilterMode": False,
            "codeSet": self.code_set,
            "expressionType": "TAG",
            "subString": self.expression,
            "subVersion": self.version,
            "tagsSet": sorted(self.tags),
            "topic": self.topic,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerData:
    """One consumer group's part of a heartbeat (Java's ``ConsumerData``)."""

    group: str
    consume_type: str = "CONSUME_PASSIVELY"  # or CONSUME_ACTIVELY (pull consumers)
    message_model: str = "CLUSTERING"  # or BROADCASTING
    consume_from_where: str = "CONSUME_FROM_LAST_OFFSET"
    subscriptions: tuple[Subscription, ...] = ()
    unit_mode: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "consumeFromWhere": self.consume_from_where,
            "consumeType": self.consume_type,
            "groupName": self.group,
            "messageModel": self.message_model,
            "subscriptionDataSet": [s.to_json() for s in self.subscriptions],
            "unitMode": self.unit_mode,
        }


def heartbeat_request(
    client_id: str, consumers: Iterable[ConsumerData], producer_groups: Iterable[str] = ()
) -> RemotingCommand:
    """A HEART_BEAT (34) naming this client's consumer groups and producer groups."""
    body = {
        "clientID": client_id,
        "consumerDataSet": [c.to_json() for c in consumers],
        "producerDataSet": [{"groupName": g} for g in producer_groups],
    }
    return RemotingCommand.request(RequestCode.HEART_BEAT, body=json.dumps(body).encode())


def unregister_request(
    client_id: str, *, producer_group: str | None = None, consumer_group: str | None = None
) -> RemotingCommand:
    """An UNREGISTER_CLIENT (35) for a producer or consumer group of this client."""
    header = UnregisterClientRequestHeader(
        client_id=client_id, producer_group=producer_group, consumer_group=consumer_group
    )
    return header.to_request(RequestCode.UNREGISTER_CLIENT)


def allocate_averagely(
    queues: Sequence[MessageQueue], client_ids: Sequence[str], client_id: str
) -> list[MessageQueue]:
    """``client_id``'s share of ``queues`` among ``client_ids``, as Java's
    ``AllocateMessageQueueAveragely`` gives it: both lists sorted, a contiguous block each,
    the first ``len(queues) % len(client_ids)`` clients one queue more. Every member that
    sees the same lists computes a disjoint share; an unknown ``client_id`` gets none."""
    all_queues = sorted(set(queues))
    ids = sorted(set(client_ids))
    if client_id not in ids or not all_queues:
        return []
    index = ids.index(client_id)
    count, members = len(all_queues), len(ids)
    mod = count % members
    if count <= members:
        size = 1
    elif mod > 0 and index < mod:
        size = count // members + 1
    else:
        size = count // members
    start = index * size if mod > 0 and index < mod else index * size + mod
    return [all_queues[(start + i) % count] for i in range(min(size, count - start))]


# -- pulling ------------------------------------------------------------------------------


class PullStatus(enum.Enum):
    """What a pull found (Java's ``PullStatus``)."""

    FOUND = "FOUND"
    NO_NEW_MSG = "NO_NEW_MSG"
    NO_MATCHED_MSG = "NO_MATCHED_MSG"
    OFFSET_ILLEGAL = "OFFSET_ILLEGAL"


_PULL_STATUS: Final = {
    ResponseCode.SUCCESS: PullStatus.FOUND,
    ResponseCode.PULL_NOT_FOUND: PullStatus.NO_NEW_MSG,
    ResponseCode.PULL_RETRY_IMMEDIATELY: PullStatus.NO_MATCHED_MSG,
    ResponseCode.PULL_OFFSET_MOVED: PullStatus.OFFSET_ILLEGAL,
}


@dataclasses.dataclass(frozen=True, slots=True)
class PullResult:
    """A pull's answer: ``messages`` (FOUND only) are tag-filtered, inflated and have
    their retry topic renamed back; ``next_begin_offset`` is where the next pull starts."""

    status: PullStatus
    next_begin_offset: int
    min_offset: int
    max_offset: int
    messages: list[MessageExt]
    suggest_which_broker_id: int = 0


def restore_retry_topic(message: MessageExt, group: str) -> MessageExt:
    """A message of ``group``'s retry topic with its original topic back (from its
    RETRY_TOPIC property), as Java's client gives it to the listener."""
    original = message.properties.get(Property.RETRY_TOPIC)
    if original and message.topic == RETRY_PREFIX + group:
        return dataclasses.replace(message, topic=original)
    return message


def _for_user(message: MessageExt, group: str) -> MessageExt:
    if message.sys_flag & 0x1:
        message = dataclasses.replace(
            message, body=message.decoded_body(), sys_flag=message.sys_flag & ~_COMPRESSION_BITS
        )
    return restore_retry_topic(message, group)


async def pull(
    client: RemotingClient,
    address: str,
    group: str,
    queue: MessageQueue,
    offset: int,
    *,
    subscription: Subscription,
    max_nums: int = 32,
    commit_offset: int = 0,
    suspend: float = 15.0,
    timeout: float = 30.0,
) -> PullResult:
    """PULL_MESSAGE (11) from ``queue`` at ``offset``: the broker holds it up to
    ``suspend`` seconds when there is nothing yet (0: answer at once). ``commit_offset``
    > 0 also commits that offset. ``timeout`` must exceed ``suspend``.

    Raises :class:`BrokerAnswerError` for any code but the four pull statuses, and
    :class:`~rmqtwist.errors.MalformedMessage` for a body that does not decode.
    """
    sys_flag = _FLAG_SUBSCRIPTION
    if suspend > 0:
        sys_flag |= _FLAG_SUSPEND
    if commit_offset > 0:
        sys_flag |= _FLAG_COMMIT_OFFSET
    header = PullMessageRequestHeader(
        consumer_group=group,
        topic=queue.topic,
        queue_id=queue.queue_id,
        queue_offset=offset,
        max_msg_nums=max_nums,
        sys_flag=sys_flag,
        commit_offset=commit_offset,
        suspend_timeout_millis=int(suspend * 1000),
        subscription=subscription.expression,
        sub_version=subscription.version,
        expression_type="TAG",
    )
    response = await client.invoke(address, header.to_request(RequestCode.PULL_MESSAGE), timeout)
    status = _PULL_STATUS.get(response.code)  # type: ignore[call-overload]
    if status is None:
        raise BrokerAnswerError(f"pull {queue} at {offset}", response.code, response.remark)
    answer = PullMessageResponseHeader.from_command(response)
    messages: list[MessageExt] = []
    if status is PullStatus.FOUND:
        messages = [
            _for_user(m, group)
            for m in decode_records(response.body or b"")
            if subscription.matches(m.tags)
        ]
    return PullResult(
        status,
        answer.next_begin_offset,
        answer.min_offset,
        answer.max_offset,
        messages,
        answer.suggest_which_broker_id,
    )


# -- offsets ------------------------------------------------------------------------------


def _check(what: str, response: RemotingCommand) -> RemotingCommand:
    if response.code != ResponseCode.SUCCESS:
        raise BrokerAnswerError(what, response.code, response.remark)
    return response


async def query_offset(
    client: RemotingClient,
    address: str,
    group: str,
    queue: MessageQueue,
    timeout: float = 3.0,
    *,
    set_zero_if_not_found: bool | None = None,
) -> int | None:
    """QUERY_CONSUMER_OFFSET (14): ``group``'s committed offset of ``queue``, or None when
    it has none (QUERY_NOT_FOUND, 22).

    ``set_zero_if_not_found=False`` asks as Java 5 does: a group new to a queue then gets
    None, so the consumer's ``consume_from`` decides where it starts. (A 4.x broker
    ignores the field and answers 0 for a queue whose first message it still holds,
    which is what Java 4.9's consumers see.)"""
    header = QueryConsumerOffsetRequestHeader(
        consumer_group=group,
        topic=queue.topic,
        queue_id=queue.queue_id,
        set_zero_if_not_found=set_zero_if_not_found,
    )
    request = header.to_request(RequestCode.QUERY_CONSUMER_OFFSET)
    response = await client.invoke(address, request, timeout)
    if response.code == ResponseCode.QUERY_NOT_FOUND:
        return None
    _check(f"query the offset of {queue}", response)
    return QueryConsumerOffsetResponseHeader.from_command(response).offset


async def update_offset(
    client: RemotingClient,
    address: str,
    group: str,
    queue: MessageQueue,
    offset: int,
    *,
    oneway: bool = True,
    timeout: float = 3.0,
) -> None:
    """UPDATE_CONSUMER_OFFSET (15): commit ``offset`` (the next one to consume) of
    ``queue``. Oneway as Java sends it, or (``oneway=False``) waiting for SUCCESS."""
    header = UpdateConsumerOffsetRequestHeader(
        consumer_group=group, topic=queue.topic, queue_id=queue.queue_id, commit_offset=offset
    )
    if oneway:
        request = header.to_request(RequestCode.UPDATE_CONSUMER_OFFSET, oneway=True)
        await client.invoke_oneway(address, request, timeout)
        return
    request = header.to_request(RequestCode.UPDATE_CONSUMER_OFFSET)
    _check(f"commit offset {offset} of {queue}", await client.invoke(address, request, timeout))


async def max_offset(
    client: RemotingClient, address: str, queue: MessageQueue, timeout: float = 3.0
) -> int:
    """GET_MAX_OFFSET (30): the offset the next message of ``queue`` will get."""
    header = GetMaxOffsetRequestHeader(topic=queue.topic, queue_id=queue.queue_id)
    response = await client.invoke(address, header.to_request(RequestCode.GET_MAX_OFFSET), timeout)
    _check(f"max offset of {queue}", response)
    return GetMaxOffsetResponseHeader.from_command(response).offset


async def min_offset(
    client: RemotingClient, address: str, queue: MessageQueue, timeout: float = 3.0
) -> int:
    """GET_MIN_OFFSET (31): the oldest offset ``queue`` still holds."""
    header = GetMinOffsetRequestHeader(topic=queue.topic, queue_id=queue.queue_id)
    response = await client.invoke(address, header.to_request(RequestCode.GET_MIN_OFFSET), timeout)
    _check(f"min offset of {queue}", response)
    return GetMinOffsetResponseHeader.from_command(response).offset


async def search_offset(
    client: RemotingClient,
    address: str,
    queue: MessageQueue,
    timestamp_ms: int,
    timeout: float = 3.0,
) -> int:
    """SEARCH_OFFSET_BY_TIMESTAMP (29): the offset of ``queue`` stored nearest to
    ``timestamp_ms`` (ms since the epoch)."""
    header = SearchOffsetRequestHeader(
        topic=queue.topic, queue_id=queue.queue_id, timestamp=timestamp_ms
    )
    request = header.to_request(RequestCode.SEARCH_OFFSET_BY_TIMESTAMP)
    response = await client.invoke(address, request, timeout)
    _check(f"search the offset of {queue} at {timestamp_ms}", response)
    return SearchOffsetResponseHeader.from_command(response).offset


# -- the group ----------------------------------------------------------------------------


async def consumer_ids(
    client: RemotingClient, address: str, group: str, timeout: float = 3.0
) -> list[str]:
    """GET_CONSUMER_LIST_BY_GROUP (38): the client ids of ``group``'s live consumers."""
    header = GetConsumerListByGroupRequestHeader(consumer_group=group)
    request = header.to_request(RequestCode.GET_CONSUMER_LIST_BY_GROUP)
    response = _check(f"the consumers of {group}", await client.invoke(address, request, timeout))
    try:
        data = json.loads((response.body or b"{}").decode("utf-8"))
        return [str(i) for i in data.get("consumerIdList") or ()]
    except (ValueError, AttributeError, TypeError) as error:
        raise ConsumerError(f"unreadable consumer list of {group}: {error}") from None


async def send_back(
    client: RemotingClient,
    address: str,
    group: str,
    message: MessageExt,
    delay_level: int = 0,
    max_reconsume_times: int = 16,
    timeout: float = 3.0,
) -> None:
    """CONSUMER_SEND_MSG_BACK (36): hand a message that failed back to the broker, which
    stores it in ``group``'s retry topic (delay level 0: 3 + reconsume times) or, past
    ``max_reconsume_times``, in its dead-letter topic."""
    header = ConsumerSendMsgBackRequestHeader(
        offset=message.physical_offset,
        group=group,
        delay_level=delay_level,
        origin_msg_id=message.msg_id,
        origin_topic=message.topic,
        max_reconsume_times=max_reconsume_times,
    )
    request = header.to_request(RequestCode.CONSUMER_SEND_MSG_BACK)
    _check(f"send back {message.msg_id}", await client.invoke(address, request, timeout))


def _queues_body(group: str, client_id: str, queues: Iterable[MessageQueue]) -> bytes:
    body = {
        "clientId": client_id,
        "consumerGroup": group,
        "mqSet": [
            {"brokerName": q.broker_name, "queueId": q.queue_id, "topic": q.topic}
            for q in sorted(set(queues))
        ],
    }
    return json.dumps(body).encode()


async def lock_queues(
    client: RemotingClient,
    address: str,
    group: str,
    client_id: str,
    queues: Iterable[MessageQueue],
    timeout: float = 3.0,
) -> set[MessageQueue]:
    """LOCK_BATCH_MQ (41): lock ``queues`` of one broker for ``client_id``; gives the
    queues the broker granted (a queue another client holds is left out)."""
    body = _queues_body(group, client_id, queues)
    request = RemotingCommand.request(RequestCode.LOCK_BATCH_MQ, body=body)
    response = _check(f"lock queues of {group}", await client.invoke(address, request, timeout))
    try:
        data = json.loads((response.body or b"{}").decode("utf-8"))
        return {
            MessageQueue(str(q["topic"]), str(q["brokerName"]), int(q["queueId"]))
            for q in data.get("lockOKMQSet") or ()
        }
    except (ValueError, KeyError, AttributeError, TypeError) as error:
        raise ConsumerError(f"unreadable lock answer for {group}: {error!r}") from None


async def unlock_queues(
    client: RemotingClient,
    address: str,
    group: str,
    client_id: str,
    queues: Iterable[MessageQueue],
    timeout: float = 3.0,
) -> None:
    """UNLOCK_BATCH_MQ (42): release ``queues`` of one broker held by ``client_id``."""
    body = _queues_body(group, client_id, queues)
    request = RemotingCommand.request(RequestCode.UNLOCK_BATCH_MQ, body=body)
    _check(f"unlock queues of {group}", await client.invoke(address, request, timeout))
