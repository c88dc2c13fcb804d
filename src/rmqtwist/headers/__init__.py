"""Typed "custom headers": the ext_fields of a command, as frozen dataclasses.

Java flattens each request's ``CommandCustomHeader`` object into the string map
``extFields``; a header here is the same object on the Python side::

    @dataclass(frozen=True, slots=True, kw_only=True)
    class GetMaxOffsetRequestHeader(CommandHeader):
        topic: str
        queue_id: JavaInt
        committed: bool = field(default=True, metadata=wire(required=False))

    GetMaxOffsetRequestHeader(topic="T", queue_id=0).to_ext_fields()
    # {'topic': 'T', 'queueId': '0', 'committed': 'true'}

Rules, per field:

- The wire name is the camelCase of the Python name (``queue_id`` -> ``queueId``), or
  the name given with ``field(metadata=wire("a"))``.
- Types: ``str``, ``bool``, :data:`JavaInt` (int32), :data:`JavaLong` (int64), each
  optionally ``| None``. A bare ``int`` is refused: say which Java type it is.
- ``X | None`` fields are optional: None is not written, absent reads as None. Every
  other field is required on the wire (Java's ``@CFNotNull``) even if it has a Python
  default, unless it is declared ``wire(required=False)``; then an absent value reads
  as the default (Java's primitive ``boolean k = false`` fields).
- Values are written as Java writes them: decimal ints, ``true``/``false``.
- Reading is strict where Java is strict and lenient where real clients need it: ints
  as ``Integer.parseInt``/``Long.parseLong`` (optional sign, ASCII digits, in range);
  bools ``true``/``false`` in any case, and also ``1``/``0`` because the C++ client sends
  them. Java's ``Boolean.parseBoolean`` would read ``"1"`` as *false* (see broker.md);
  anything else is an error here rather than Java's silent false. Keys the header does
  not know (``AccessKey``, ``Signature``, ``bname``, ...) are ignored.

Failures to read raise :class:`~rmqtwist.errors.HeaderError` naming the Java field;
a header that cannot be written (a value out of range, None in a required field)
raises :class:`~rmqtwist.errors.EncodeError`. The per-class field plan is built once,
on first use, and cached.
"""

from rmqtwist.headers.base import (
    CommandHeader,
    HeaderField,
    Int32,
    Int64,
    IntRange,
    JavaInt,
    JavaLong,
    header_fields,
    wire,
)
from rmqtwist.headers.definitions import (
    CheckTransactionStateRequestHeader,
    ConsumerSendMsgBackRequestHeader,
    CreateTopicRequestHeader,
    DeleteTopicRequestHeader,
    EndTransactionRequestHeader,
    GetConsumerListByGroupRequestHeader,
    GetMaxOffsetRequestHeader,
    GetMaxOffsetResponseHeader,
    GetMinOffsetRequestHeader,
    GetMinOffsetResponseHeader,
    GetRouteInfoRequestHeader,
    NotifyConsumerIdsChangedRequestHeader,
    PullMessageRequestHeader,
    PullMessageResponseHeader,
    QueryConsumerOffsetRequestHeader,
    QueryConsumerOffsetResponseHeader,
    SearchOffsetRequestHeader,
    SearchOffsetResponseHeader,
    SendMessageRequestHeader,
    SendMessageRequestHeaderV2,
    SendMessageResponseHeader,
    UnregisterClientRequestHeader,
    UpdateConsumerOffsetRequestHeader,
)

__all__ = [
    "CheckTransactionStateRequestHeader",
    "CommandHeader",
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
    "HeaderField",
    "Int32",
    "Int64",
    "IntRange",
    "JavaInt",
    "JavaLong",
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
    "header_fields",
    "wire",
]
