"""The concrete custom headers of the name-server and broker requests rmqtwist uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from rmqtwist.headers.base import CommandHeader, JavaInt, JavaLong, header_converter, wire

__all__ = [
    "CheckTransactionStateRequestHeader",
    "ConsumerSendMsgBackRequestHeader",
    "CreateTopicRequestHeader",
    "DeleteTopicRequestHeader",
    "EndTransactionRequestHeader",
    "GetConsumerListByGroupRequestHeader",
    "GetMaxOffsetRequestHeader",
    "GetMaxOffsetResponseHeader",
    "GetMinOffsetRequestHeader",
    "GetMinOffsetResponseHeader",
    "GetRouteInfoRequestHeader",
    "NotifyConsumerIdsChangedRequestHeader",
    "PullMessageRequestHeader",
    "PullMessageResponseHeader",
    "QueryConsumerOffsetRequestHeader",
    "QueryConsumerOffsetResponseHeader",
    "SearchOffsetRequestHeader",
    "SearchOffsetResponseHeader",
    "SendMessageRequestHeader",
    "SendMessageRequestHeaderV2",
    "SendMessageResponseHeader",
    "UnregisterClientRequestHeader",
    "UpdateConsumerOffsetRequestHeader",
]


# --- concrete headers ----------------------------------------------------------------
# Java classes are in org.apache.rocketmq.common.protocol.header (4.9.x) and
# org.apache.rocketmq.remoting.protocol.header (5.x). "J5" marks fields only 5.x sends.


@dataclass(frozen=True, slots=True, kw_only=True)
class GetRouteInfoRequestHeader(CommandHeader):
    """GET_ROUTEINFO_BY_TOPIC (105), client -> name server (Java ``GetRouteInfoRequestHeader``)."""

    topic: str
    #: 4.9.4+; no client sets it.
    accept_standard_json_only: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendMessageRequestHeader(CommandHeader):
    """SEND_MESSAGE (10), producer -> broker, long field names; the C++ client uses only
    this. (Java ``SendMessageRequestHeader``; :meth:`to_v2` gives the code-310 form.)"""

    producer_group: str
    topic: str
    default_topic: str = "TBW102"
    default_topic_queue_nums: JavaInt = 4
    queue_id: JavaInt
    sys_flag: JavaInt = 0
    born_timestamp: JavaLong
    flag: JavaInt = 0
    properties: str | None = None
    reconsume_times: JavaInt | None = None
    #: Java primitive ``boolean``: always written, absent reads as False.
    unit_mode: bool = field(default=False, metadata=wire(required=False))
    max_reconsume_times: JavaInt | None = None
    #: Java primitive ``boolean``; the C++ client sends ``"1"``, read here as True.
    batch: bool = field(default=False, metadata=wire(required=False))
    #: Broker name (from Java's ``RpcRequestHeader``; 4.9.8+/J5). V2's ``n``.
    bname: str | None = None

    def to_v2(self) -> SendMessageRequestHeaderV2:
        """The short-name form (Java ``createSendMessageRequestHeaderV2``)."""
        header: SendMessageRequestHeaderV2 = _V1_TO_V2(self)
        return header


@dataclass(frozen=True, slots=True, kw_only=True)
class SendMessageRequestHeaderV2(CommandHeader):
    """SEND_MESSAGE_V2 (310) and SEND_BATCH_MESSAGE (320), producer -> broker: the
    one-letter form Java and ali-ons send (Java ``SendMessageRequestHeaderV2``).

    The broker tells single from batch by ``m``, not by the code. :meth:`to_v1` gives
    the long-name form; the field names here are the wire names.
    """

    a: str  # producerGroup
    b: str  # topic
    c: str = "TBW102"  # defaultTopic
    d: JavaInt = 4  # defaultTopicQueueNums
    e: JavaInt  # queueId
    f: JavaInt = 0  # sysFlag
    g: JavaLong  # bornTimestamp
    h: JavaInt = 0  # flag
    i: str | None = None  # properties
    j: JavaInt | None = None  # reconsumeTimes
    k: bool = field(default=False, metadata=wire(required=False))  # unitMode
    l: JavaInt | None = None  # maxReconsumeTimes  # noqa: E741
    m: bool = field(default=False, metadata=wire(required=False))  # batch
    n: str | None = None  # brokerName (4.9.8+/J5)

    def to_v1(self) -> SendMessageRequestHeader:
        """The long-name form (Java ``createSendMessageRequestHeaderV1``)."""
        header: SendMessageRequestHeader = _V2_TO_V1(self)
        return header


#: V1 field -> V2 field: the two forms of a send header carry the same values.
_SEND_V1_V2 = {
    "producer_group": "a",
    "topic": "b",
    "default_topic": "c",
    "default_topic_queue_nums": "d",
    "queue_id": "e",
    "sys_flag": "f",
    "born_timestamp": "g",
    "flag": "h",
    "properties": "i",
    "reconsume_times": "j",
    "unit_mode": "k",
    "max_reconsume_times": "l",
    "batch": "m",
    "bname": "n",
}
# Copied slot by slot: the broker turns every SEND_MESSAGE_V2 header into the V1 form.
_V2_TO_V1 = header_converter(SendMessageRequestHeaderV2, SendMessageRequestHeader, _SEND_V1_V2)
_V1_TO_V2 = header_converter(
    SendMessageRequestHeader, SendMessageRequestHeaderV2, {v: k for k, v in _SEND_V1_V2.items()}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendMessageResponseHeader(CommandHeader):
    """Broker -> producer, answering 10/310/320 (Java ``SendMessageResponseHeader``).

    Always send it on success: the C++ client dereferences a missing header.
    """

    #: Offset msgId; for a batch, the comma-joined list.
    msg_id: str
    queue_id: JavaInt
    queue_offset: JavaLong
    transaction_id: str | None = None
    batch_uniq_id: str | None = None  # J5
    recall_handle: str | None = None  # J5


@dataclass(frozen=True, slots=True, kw_only=True)
class PullMessageRequestHeader(CommandHeader):
    """PULL_MESSAGE (11), consumer -> broker (Java ``PullMessageRequestHeader``)."""

    consumer_group: str
    topic: str
    queue_id: JavaInt
    queue_offset: JavaLong
    max_msg_nums: JavaInt
    #: PullSysFlag bits: 0x1 commit offset, 0x2 suspend, 0x4 subscription, ...
    sys_flag: JavaInt
    commit_offset: JavaLong
    suspend_timeout_millis: JavaLong
    subscription: str | None = None
    sub_version: JavaLong
    #: "TAG" or "SQL92".
    expression_type: str | None = None
    max_msg_bytes: JavaInt | None = None  # J5
    request_source: JavaInt | None = None  # J5
    #: J5; the Java field name has the typo.
    proxy_forward_client_id: str | None = field(default=None, metadata=wire("proxyFrowardClientId"))


@dataclass(frozen=True, slots=True, kw_only=True)
class PullMessageResponseHeader(CommandHeader):
    """Broker -> consumer, answering 11 with any code (Java ``PullMessageResponseHeader``).

    All four required fields go on every pull response, whatever the code.
    """

    suggest_which_broker_id: JavaLong
    next_begin_offset: JavaLong
    min_offset: JavaLong
    max_offset: JavaLong
    offset_delta: JavaLong | None = None  # J5
    topic_sys_flag: JavaInt | None = None  # J5
    group_sys_flag: JavaInt | None = None  # J5
    forbidden_type: JavaInt | None = None  # J5


@dataclass(frozen=True, slots=True, kw_only=True)
class UnregisterClientRequestHeader(CommandHeader):
    """UNREGISTER_CLIENT (35), client -> broker (Java ``UnregisterClientRequestHeader``)."""

    client_id: str = field(metadata=wire("clientID"))
    producer_group: str | None = None
    #: The C++ client sends "" when it has none.
    consumer_group: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GetConsumerListByGroupRequestHeader(CommandHeader):
    """GET_CONSUMER_LIST_BY_GROUP (38), consumer -> broker
    (Java ``GetConsumerListByGroupRequestHeader``; the answer is a JSON body)."""

    consumer_group: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyConsumerIdsChangedRequestHeader(CommandHeader):
    """NOTIFY_CONSUMER_IDS_CHANGED (40), broker -> consumer, oneway
    (Java ``NotifyConsumerIdsChangedRequestHeader``)."""

    consumer_group: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryConsumerOffsetRequestHeader(CommandHeader):
    """QUERY_CONSUMER_OFFSET (14), consumer -> broker
    (Java ``QueryConsumerOffsetRequestHeader``)."""

    consumer_group: str
    topic: str
    queue_id: JavaInt
    set_zero_if_not_found: bool | None = None  # J5


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryConsumerOffsetResponseHeader(CommandHeader):
    """Broker -> consumer, answering 14 with SUCCESS
    (Java ``QueryConsumerOffsetResponseHeader``)."""

    offset: JavaLong


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateConsumerOffsetRequestHeader(CommandHeader):
    """UPDATE_CONSUMER_OFFSET (15), consumer -> broker, oneway from Java
    (Java ``UpdateConsumerOffsetRequestHeader``). ali-ons may send -1: no offset."""

    consumer_group: str
    topic: str
    queue_id: JavaInt
    commit_offset: JavaLong


@dataclass(frozen=True, slots=True, kw_only=True)
class GetMaxOffsetRequestHeader(CommandHeader):
    """GET_MAX_OFFSET (30), client -> broker (Java ``GetMaxOffsetRequestHeader``)."""

    topic: str
    queue_id: JavaInt
    #: J5 primitive ``boolean committed = true``: written always, absent reads as True.
    committed: bool = field(default=True, metadata=wire(required=False))


@dataclass(frozen=True, slots=True, kw_only=True)
class GetMaxOffsetResponseHeader(CommandHeader):
    """Broker -> client, answering 30: the next logical offset of the queue
    (Java ``GetMaxOffsetResponseHeader``)."""

    offset: JavaLong


@dataclass(frozen=True, slots=True, kw_only=True)
class GetMinOffsetRequestHeader(CommandHeader):
    """GET_MIN_OFFSET (31), client -> broker (Java ``GetMinOffsetRequestHeader``)."""

    topic: str
    queue_id: JavaInt


@dataclass(frozen=True, slots=True, kw_only=True)
class GetMinOffsetResponseHeader(CommandHeader):
    """Broker -> client, answering 31 (Java ``GetMinOffsetResponseHeader``)."""

    offset: JavaLong


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchOffsetRequestHeader(CommandHeader):
    """SEARCH_OFFSET_BY_TIMESTAMP (29), client -> broker (Java ``SearchOffsetRequestHeader``)."""

    topic: str
    queue_id: JavaInt
    #: Milliseconds since the epoch.
    timestamp: JavaLong
    #: J5: "lower" or "upper".
    boundary_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchOffsetResponseHeader(CommandHeader):
    """Broker -> client, answering 29 (Java ``SearchOffsetResponseHeader``)."""

    offset: JavaLong


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSendMsgBackRequestHeader(CommandHeader):
    """CONSUMER_SEND_MSG_BACK (36), consumer -> broker: give a failed message back for
    retry (Java ``ConsumerSendMsgBackRequestHeader``)."""

    #: Commit-log physical offset of the message.
    offset: JavaLong
    group: str
    #: 0: the broker picks 3 + reconsumeTimes.
    delay_level: JavaInt
    origin_msg_id: str | None = None
    origin_topic: str | None = None
    #: Java primitive ``boolean``: always written, absent reads as False.
    unit_mode: bool = field(default=False, metadata=wire(required=False))
    #: The C++ client leaves it out.
    max_reconsume_times: JavaInt | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateTopicRequestHeader(CommandHeader):
    """UPDATE_AND_CREATE_TOPIC (17), admin -> broker (Java ``CreateTopicRequestHeader``)."""

    topic: str
    default_topic: str = "TBW102"
    read_queue_nums: JavaInt
    write_queue_nums: JavaInt
    #: PermName bits: 2 writeable, 4 readable, 6 both.
    perm: JavaInt = 6
    #: "SINGLE_TAG" or "MULTI_TAG".
    topic_filter_type: str = "SINGLE_TAG"
    topic_sys_flag: JavaInt | None = None
    #: Required on the wire (``@CFNotNull Boolean order = false``).
    order: bool = False
    attributes: str | None = None  # J5
    #: J5 ``Boolean force = false``: written always, absent reads as False.
    force: bool = field(default=False, metadata=wire(required=False))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteTopicRequestHeader(CommandHeader):
    """DELETE_TOPIC_IN_BROKER (215) and DELETE_TOPIC_IN_NAMESRV (216), admin -> broker / name
    server (Java ``DeleteTopicRequestHeader``)."""

    topic: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckTransactionStateRequestHeader(CommandHeader):
    """CHECK_TRANSACTION_STATE (39), broker -> producer, oneway: ask for a half
    message's outcome (Java ``CheckTransactionStateRequestHeader``)."""

    tran_state_table_offset: JavaLong
    commit_log_offset: JavaLong
    msg_id: str | None = None
    transaction_id: str | None = None
    offset_msg_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndTransactionRequestHeader(CommandHeader):
    """END_TRANSACTION (37), producer -> broker, oneway: commit or roll back a half
    message (Java ``EndTransactionRequestHeader``)."""

    #: Later J5 releases (and rocketmq-rust) carry it for ACL; 4.9 does not.
    topic: str | None = None
    producer_group: str
    tran_state_table_offset: JavaLong
    commit_log_offset: JavaLong
    #: MessageSysFlag: 0 none (unknown), 0x8 commit, 0xC rollback.
    commit_or_rollback: JavaInt
    #: ``Boolean fromTransactionCheck = false``: Java always writes it; absent reads False.
    from_transaction_check: bool = field(default=False, metadata=wire(required=False))
    msg_id: str
    transaction_id: str | None = None
