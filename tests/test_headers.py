"""Typed custom headers <-> ext_fields: Java's wire names and spelling, errors, leniency."""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rmqtwist.headers as headers_module
from rmqtwist import (
    EncodeError,
    HeaderError,
    RemotingCommand,
    RequestCode,
    ResponseCode,
    SerializeType,
)
from rmqtwist.headers import (
    CheckTransactionStateRequestHeader,
    CommandHeader,
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
    HeaderField,
    Int32,
    Int64,
    JavaInt,
    JavaLong,
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
    header_fields,
    wire,
)

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
BORN = 1700000000000
PROPS = "UNIQ_KEY\x017F0000010B6818B4AAC2\x02WAIT\x01true\x02TAGS\x01TagA"

# Every concrete header, fully populated, with the ext_fields Java would send for it:
# the keys are the Java field names verbatim (broker.md section 1 and the Java classes).
FULL: list[tuple[CommandHeader, dict[str, str]]] = [
    (
        GetRouteInfoRequestHeader(topic="T", accept_standard_json_only=True),
        {"topic": "T", "acceptStandardJsonOnly": "true"},
    ),
    (
        SendMessageRequestHeader(
            producer_group="PG",
            topic="T",
            default_topic="TBW102",
            default_topic_queue_nums=4,
            queue_id=3,
            sys_flag=0x301,
            born_timestamp=BORN,
            flag=7,
            properties=PROPS,
            reconsume_times=2,
            unit_mode=False,
            max_reconsume_times=16,
            batch=True,
            bname="broker-a",
        ),
        {
            "producerGroup": "PG",
            "topic": "T",
            "defaultTopic": "TBW102",
            "defaultTopicQueueNums": "4",
            "queueId": "3",
            "sysFlag": "769",
            "bornTimestamp": "1700000000000",
            "flag": "7",
            "properties": PROPS,
            "reconsumeTimes": "2",
            "unitMode": "false",
            "maxReconsumeTimes": "16",
            "batch": "true",
            "bname": "broker-a",
        },
    ),
    (
        SendMessageRequestHeaderV2(
            a="PG",
            b="T",
            c="TBW102",
            d=4,
            e=3,
            f=0x301,
            g=BORN,
            h=7,
            i=PROPS,
            j=2,
            k=False,
            l=16,
            m=True,
            n="broker-a",
        ),
        {
            "a": "PG",
            "b": "T",
            "c": "TBW102",
            "d": "4",
            "e": "3",
            "f": "769",
            "g": "1700000000000",
            "h": "7",
            "i": PROPS,
            "j": "2",
            "k": "false",
            "l": "16",
            "m": "true",
            "n": "broker-a",
        },
    ),
    (
        SendMessageResponseHeader(
            msg_id="7F00000100002A9F0000000000000000",
            queue_id=1,
            queue_offset=42,
            transaction_id="tx",
            batch_uniq_id="bu",
            recall_handle="rh",
        ),
        {
            "msgId": "7F00000100002A9F0000000000000000",
            "queueId": "1",
            "queueOffset": "42",
            "transactionId": "tx",
            "batchUniqId": "bu",
            "recallHandle": "rh",
        },
    ),
    (
        PullMessageRequestHeader(
            consumer_group="CG",
            topic="T",
            queue_id=2,
            queue_offset=100,
            max_msg_nums=32,
            sys_flag=7,
            commit_offset=99,
            suspend_timeout_millis=15000,
            subscription="TagA || TagB",
            sub_version=BORN,
            expression_type="TAG",
            max_msg_bytes=1 << 20,
            request_source=-1,
            proxy_forward_client_id="cid",
        ),
        {
            "consumerGroup": "CG",
            "topic": "T",
            "queueId": "2",
            "queueOffset": "100",
            "maxMsgNums": "32",
            "sysFlag": "7",
            "commitOffset": "99",
            "suspendTimeoutMillis": "15000",
            "subscription": "TagA || TagB",
            "subVersion": "1700000000000",
            "expressionType": "TAG",
            "maxMsgBytes": "1048576",
            "requestSource": "-1",
            "proxyFrowardClientId": "cid",
        },
    ),
    (
        PullMessageResponseHeader(
            suggest_which_broker_id=0,
            next_begin_offset=1,
            min_offset=0,
            max_offset=1,
            offset_delta=5,
            topic_sys_flag=1,
            group_sys_flag=2,
            forbidden_type=3,
        ),
        {
            "suggestWhichBrokerId": "0",
            "nextBeginOffset": "1",
            "minOffset": "0",
            "maxOffset": "1",
            "offsetDelta": "5",
            "topicSysFlag": "1",
            "groupSysFlag": "2",
            "forbiddenType": "3",
        },
    ),
    (
        UnregisterClientRequestHeader(
            client_id="10.0.0.1@123", producer_group="PG", consumer_group=""
        ),
        {"clientID": "10.0.0.1@123", "producerGroup": "PG", "consumerGroup": ""},
    ),
    (GetConsumerListByGroupRequestHeader(consumer_group="CG"), {"consumerGroup": "CG"}),
    (NotifyConsumerIdsChangedRequestHeader(consumer_group="CG"), {"consumerGroup": "CG"}),
    (
        QueryConsumerOffsetRequestHeader(
            consumer_group="CG", topic="T", queue_id=0, set_zero_if_not_found=False
        ),
        {"consumerGroup": "CG", "topic": "T", "queueId": "0", "setZeroIfNotFound": "false"},
    ),
    (QueryConsumerOffsetResponseHeader(offset=12), {"offset": "12"}),
    (
        UpdateConsumerOffsetRequestHeader(
            consumer_group="CG", topic="T", queue_id=1, commit_offset=-1
        ),
        {"consumerGroup": "CG", "topic": "T", "queueId": "1", "commitOffset": "-1"},
    ),
    (
        GetMaxOffsetRequestHeader(topic="T", queue_id=1, committed=False),
        {"topic": "T", "queueId": "1", "committed": "false"},
    ),
    (GetMaxOffsetResponseHeader(offset=INT64_MAX), {"offset": str(INT64_MAX)}),
    (GetMinOffsetRequestHeader(topic="T", queue_id=1), {"topic": "T", "queueId": "1"}),
    (GetMinOffsetResponseHeader(offset=0), {"offset": "0"}),
    (
        SearchOffsetRequestHeader(topic="T", queue_id=1, timestamp=BORN, boundary_type="lower"),
        {"topic": "T", "queueId": "1", "timestamp": "1700000000000", "boundaryType": "lower"},
    ),
    (SearchOffsetResponseHeader(offset=-(2**63)), {"offset": str(-(2**63))}),
    (
        ConsumerSendMsgBackRequestHeader(
            offset=123456,
            group="CG",
            delay_level=0,
            origin_msg_id="OID",
            origin_topic="T",
            unit_mode=False,
            max_reconsume_times=16,
        ),
        {
            "offset": "123456",
            "group": "CG",
            "delayLevel": "0",
            "originMsgId": "OID",
            "originTopic": "T",
            "unitMode": "false",
            "maxReconsumeTimes": "16",
        },
    ),
    (
        CreateTopicRequestHeader(
            topic="T",
            default_topic="TBW102",
            read_queue_nums=8,
            write_queue_nums=8,
            perm=6,
            topic_filter_type="SINGLE_TAG",
            topic_sys_flag=0,
            order=True,
            attributes="+message.type=NORMAL",
            force=True,
        ),
        {
            "topic": "T",
            "defaultTopic": "TBW102",
            "readQueueNums": "8",
            "writeQueueNums": "8",
            "perm": "6",
            "topicFilterType": "SINGLE_TAG",
            "topicSysFlag": "0",
            "order": "true",
            "attributes": "+message.type=NORMAL",
            "force": "true",
        },
    ),
    (
        CheckTransactionStateRequestHeader(
            tran_state_table_offset=5,
            commit_log_offset=6,
            msg_id="M",
            transaction_id="TX",
            offset_msg_id="OM",
        ),
        {
            "tranStateTableOffset": "5",
            "commitLogOffset": "6",
            "msgId": "M",
            "transactionId": "TX",
            "offsetMsgId": "OM",
        },
    ),
    (
        EndTransactionRequestHeader(
            topic="T",
            producer_group="PG",
            tran_state_table_offset=5,
            commit_log_offset=6,
            commit_or_rollback=8,
            from_transaction_check=True,
            msg_id="M",
            transaction_id="TX",
        ),
        {
            "topic": "T",
            "producerGroup": "PG",
            "tranStateTableOffset": "5",
            "commitLogOffset": "6",
            "commitOrRollback": "8",
            "fromTransactionCheck": "true",
            "msgId": "M",
            "transactionId": "TX",
        },
    ),
]

# The same headers with only what the wire requires, and what such a header reads back as.
MINIMAL: list[tuple[dict[str, str], CommandHeader]] = [
    ({"topic": "T"}, GetRouteInfoRequestHeader(topic="T")),
    (
        {"a": "PG", "b": "T", "c": "TBW102", "d": "4", "e": "0", "f": "0", "g": "1", "h": "0"},
        SendMessageRequestHeaderV2(a="PG", b="T", e=0, g=1),
    ),
    (
        {"msgId": "M", "queueId": "0", "queueOffset": "0"},
        SendMessageResponseHeader(msg_id="M", queue_id=0, queue_offset=0),
    ),
    (
        {"clientID": "C"},
        UnregisterClientRequestHeader(client_id="C"),
    ),
    (
        {"topic": "T", "queueId": "3"},
        GetMaxOffsetRequestHeader(topic="T", queue_id=3, committed=True),
    ),
    (
        {"offset": "1", "group": "G", "delayLevel": "3"},
        ConsumerSendMsgBackRequestHeader(offset=1, group="G", delay_level=3, unit_mode=False),
    ),
    (
        {
            "producerGroup": "PG",
            "tranStateTableOffset": "1",
            "commitLogOffset": "2",
            "commitOrRollback": "12",
            "msgId": "M",
        },
        EndTransactionRequestHeader(
            producer_group="PG",
            tran_state_table_offset=1,
            commit_log_offset=2,
            commit_or_rollback=12,
            msg_id="M",
        ),
    ),
]


def _concrete_header_classes() -> list[type[CommandHeader]]:
    return [
        obj
        for name in headers_module.__all__
        if isinstance(obj := getattr(headers_module, name), type)
        and issubclass(obj, CommandHeader)
        and obj is not CommandHeader
    ]


FULL.append((DeleteTopicRequestHeader(topic="T"), {"topic": "T"}))

FULL_IDS = [type(header).__name__ for header, _ in FULL]
MINIMAL_IDS = [type(header).__name__ for _, header in MINIMAL]


def test_every_concrete_header_has_a_full_case() -> None:
    assert sorted(c.__name__ for c in _concrete_header_classes()) == sorted(
        type(h).__name__ for h, _ in FULL
    )


@pytest.mark.parametrize("header, ext", FULL, ids=FULL_IDS)
def test_full_header_writes_java_names_and_spelling(
    header: CommandHeader, ext: dict[str, str]
) -> None:
    assert header.to_ext_fields() == ext
    # The case covers every field, so the table pins every wire name.
    assert {f.wire for f in header_fields(type(header))} == set(ext)


@pytest.mark.parametrize("header, ext", FULL, ids=FULL_IDS)
def test_full_header_reads_back(header: CommandHeader, ext: dict[str, str]) -> None:
    assert type(header).from_ext_fields(ext) == header


@pytest.mark.parametrize("ext, header", MINIMAL, ids=MINIMAL_IDS)
def test_minimal_ext_fields_read_with_defaults(ext: dict[str, str], header: CommandHeader) -> None:
    assert type(header).from_ext_fields(ext) == header


def test_none_fields_are_left_out() -> None:
    header = SendMessageResponseHeader(msg_id="M", queue_id=0, queue_offset=7)
    assert header.to_ext_fields() == {"msgId": "M", "queueId": "0", "queueOffset": "7"}
    assert GetRouteInfoRequestHeader(topic="T").to_ext_fields() == {"topic": "T"}


def test_java_primitive_booleans_are_always_written() -> None:
    # Java's `boolean k`/`boolean m` are never null, so Java always writes them.
    v2 = SendMessageRequestHeaderV2(a="PG", b="T", e=0, g=BORN)
    assert v2.to_ext_fields() == {
        "a": "PG",
        "b": "T",
        "c": "TBW102",
        "d": "4",
        "e": "0",
        "f": "0",
        "g": "1700000000000",
        "h": "0",
        "k": "false",
        "m": "false",
    }


# --- errors ----------------------------------------------------------------------------


def _v2_ext(**changes: str | None) -> dict[str, str]:
    ext = {"a": "PG", "b": "T", "c": "TBW102", "d": "4", "e": "1", "f": "0", "g": "1", "h": "0"}
    for key, value in changes.items():
        if value is None:
            ext.pop(key)
        else:
            ext[key] = value
    return ext


@pytest.mark.parametrize("missing", ["a", "b", "c", "d", "e", "f", "g", "h"])
def test_missing_required_field_names_the_java_field(missing: str) -> None:
    with pytest.raises(HeaderError) as info:
        SendMessageRequestHeaderV2.from_ext_fields(_v2_ext(**{missing: None}))
    assert info.value.field == missing
    assert info.value.header == "SendMessageRequestHeaderV2"
    assert "missing required field" in str(info.value)


def test_missing_field_uses_overridden_wire_name() -> None:
    with pytest.raises(HeaderError) as info:
        UnregisterClientRequestHeader.from_ext_fields({"clientId": "wrong case"})
    assert info.value.field == "clientID"


def test_missing_camel_case_field() -> None:
    with pytest.raises(HeaderError) as info:
        PullMessageResponseHeader.from_ext_fields(
            {"suggestWhichBrokerId": "0", "nextBeginOffset": "1", "maxOffset": "1"}
        )
    assert info.value.field == "minOffset"


@pytest.mark.parametrize(
    "ext",
    [None, {}],
    ids=["none", "empty"],
)
def test_no_ext_fields_at_all(ext: dict[str, str] | None) -> None:
    with pytest.raises(HeaderError) as info:
        GetRouteInfoRequestHeader.from_ext_fields(ext)
    assert info.value.field == "topic"


NOT_JAVA_INTS = [
    "",
    "+",
    "-",
    "abc",
    " 5",
    "5 ",
    "1_000",
    "1.0",
    "0x10",
    "1e3",
    "\uff15",
    "\u00b2",
    "--1",
    "+-1",
    "\u0661",
]


@pytest.mark.parametrize("text", NOT_JAVA_INTS)
def test_bad_int_names_field_and_shows_value(text: str) -> None:
    with pytest.raises(HeaderError) as info:
        SendMessageRequestHeaderV2.from_ext_fields(_v2_ext(e=text))
    assert info.value.field == "e"
    assert repr(text) in str(info.value)
    assert "not a Java int" in str(info.value)


@pytest.mark.parametrize(
    "key, text, java_type",
    [
        ("e", str(INT32_MAX + 1), "int"),
        ("e", str(-(2**31) - 1), "int"),
        ("d", "99999999999999999999999", "int"),
        ("g", str(INT64_MAX + 1), "long"),
        ("g", str(-(2**63) - 1), "long"),
        ("g", "9" * 5000, "long"),  # far beyond int()'s digit limit: still a clean error
    ],
)
def test_out_of_range_int(key: str, text: str, java_type: str) -> None:
    with pytest.raises(HeaderError) as info:
        SendMessageRequestHeaderV2.from_ext_fields(_v2_ext(**{key: text}))
    assert info.value.field == key
    assert f"out of range for a Java {java_type}" in str(info.value)
    assert len(str(info.value)) < 200  # the value is shown, cut short


@pytest.mark.parametrize(
    "key, text, value",
    [
        ("e", str(INT32_MAX), INT32_MAX),
        ("e", str(-(2**31)), -(2**31)),
        ("e", "+7", 7),
        ("e", "-0", 0),
        ("e", "007", 7),
        ("g", str(INT64_MAX), INT64_MAX),
        ("g", str(-(2**63)), -(2**63)),
        ("g", "0" * 30 + "1", 1),  # Long.parseLong takes leading zeros
    ],
)
def test_java_int_edges_parse(key: str, text: str, value: int) -> None:
    header = SendMessageRequestHeaderV2.from_ext_fields(_v2_ext(**{key: text}))
    assert getattr(header, key) == value


@given(st.text(st.sampled_from("+-0123456789 _.\uff15a"), max_size=24))
def test_int_parsing_agrees_with_java_parse_long(text: str) -> None:
    # Oracle: java.lang.Long.parseLong accepts [+-]?[0-9]+ within the long range.
    java_ok = re.fullmatch(r"[+-]?[0-9]+", text) is not None and -(2**63) <= int(text) < 2**63
    try:
        value = SearchOffsetResponseHeader.from_ext_fields({"offset": text}).offset
    except HeaderError as e:
        assert not java_ok
        assert e.field == "offset"
    else:
        assert java_ok
        assert value == int(text)


@pytest.mark.parametrize("text", ["", "yes", "no", "2", "tru", "t", " true", "false ", "01"])
def test_bad_bool_names_field(text: str) -> None:
    with pytest.raises(HeaderError) as info:
        SendMessageRequestHeaderV2.from_ext_fields(_v2_ext(k=text))
    assert info.value.field == "k"
    assert repr(text) in str(info.value)
    assert "not a boolean" in str(info.value)


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        ("tRuE", True),
        # The C++ client's spelling. Java's Boolean.parseBoolean("1") is false; we say True.
        ("1", True),
        ("0", False),
    ],
)
def test_bool_spellings(text: str, value: bool) -> None:
    assert SendMessageRequestHeaderV2.from_ext_fields(_v2_ext(m=text)).m is value
    assert (
        GetRouteInfoRequestHeader.from_ext_fields(
            {"topic": "T", "acceptStandardJsonOnly": text}
        ).accept_standard_json_only
        is value
    )


def test_unknown_keys_are_ignored() -> None:
    ext = _v2_ext(
        AccessKey="ak",
        Signature="c2ln",
        OnsChannel="ALIYUN",
        SecurityToken="st",
        bname="broker-a",
        ns="n",
        nsd="false",
        oway="true",
        lo="whatever",
        z="not a header field",
    )
    header = SendMessageRequestHeaderV2.from_ext_fields(ext)
    assert header == SendMessageRequestHeaderV2(a="PG", b="T", e=1, g=1)


def test_empty_strings_are_values_not_absence() -> None:
    header = UnregisterClientRequestHeader.from_ext_fields({"clientID": "C", "consumerGroup": ""})
    assert header.consumer_group == ""
    assert header.producer_group is None


# --- what real clients send ----------------------------------------------------------------

# The C++ client (1.2.x) on SEND_MESSAGE (10): long names, "0"/"1" booleans, plus its
# AccessKey/OnsChannel/Signature. Values as its JSON has them: ints for the int fields.
CPP_SEND_RAW: dict[str, Any] = {
    "AccessKey": "",
    "OnsChannel": "ALIYUN",
    "Signature": "",
    "batch": "1",
    "bornTimestamp": "1700000000000",
    "defaultTopic": "TBW102",
    "defaultTopicQueueNums": 4,
    "flag": 0,
    "producerGroup": "cpp-pg",
    "properties": "TAGS\x01TagA\x02UNIQ_KEY\x01AB\x02",
    "queueId": 1,
    "reconsumeTimes": 0,
    "sysFlag": 0,
    "topic": "T",
    "unitMode": "0",
}

CPP_SEND = SendMessageRequestHeader(
    producer_group="cpp-pg",
    topic="T",
    queue_id=1,
    born_timestamp=BORN,
    properties="TAGS\x01TagA\x02UNIQ_KEY\x01AB\x02",
    reconsume_times=0,
    unit_mode=False,
    batch=True,
)

# ali-ons on SEND_MESSAGE_V2 (310): letters a..l, JSON numbers and booleans.
ONS_SEND_RAW: dict[str, Any] = {
    "a": "ons-pg",
    "b": "T",
    "c": "TBW102",
    "d": 4,
    "e": 2,
    "f": 0,
    "g": BORN,
    "h": 0,
    "i": "TAGS\x01TagA\x02",
    "j": 0,
    "k": False,
    "l": 16,
}

ONS_SEND = SendMessageRequestHeaderV2(
    a="ons-pg", b="T", e=2, g=BORN, i="TAGS\x01TagA\x02", j=0, k=False, l=16
)


@pytest.mark.parametrize(
    "cls, raw, expected",
    [
        (SendMessageRequestHeader, CPP_SEND_RAW, CPP_SEND),
        (SendMessageRequestHeaderV2, ONS_SEND_RAW, ONS_SEND),
    ],
    ids=["cpp", "ali-ons"],
)
def test_real_client_ext_fields_decode(
    cls: type[CommandHeader], raw: dict[str, Any], expected: CommandHeader
) -> None:
    # After a decode into a RemotingCommand (values spelled as strings, as Java would)...
    command = RemotingCommand.request(RequestCode.SEND_MESSAGE, raw)
    assert cls.from_command(command) == expected
    # ... and straight from the raw JSON values, should a caller pass those.
    assert cls.from_ext_fields(raw) == expected


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("e", 2.5, "not a string, integer or boolean"),
        ("i", ["x"], "not a string, integer or boolean"),
        ("d", True, "'true' is not a Java int"),  # JSON true, spelled as Java would
    ],
)
def test_raw_json_values_of_the_wrong_kind(key: str, value: object, message: str) -> None:
    raw: dict[str, Any] = {**ONS_SEND_RAW, key: value}
    with pytest.raises(HeaderError, match=message) as info:
        SendMessageRequestHeaderV2.from_ext_fields(raw)
    assert info.value.field == key


def test_cpp_pull_request_decodes() -> None:
    raw: dict[str, Any] = {
        "consumerGroup": "cpp-cg",
        "topic": "T",
        "queueId": 0,
        "queueOffset": "10",
        "maxMsgNums": 32,
        "sysFlag": 6,
        "commitOffset": "0",
        "suspendTimeoutMillis": "15000",
        "subscription": "*",
        "subVersion": "1700000000000",
        "AccessKey": "",
        "Signature": "",
        "OnsChannel": "ALIYUN",
    }
    header = PullMessageRequestHeader.from_command(RemotingCommand.request(11, raw))
    assert header == PullMessageRequestHeader(
        consumer_group="cpp-cg",
        topic="T",
        queue_id=0,
        queue_offset=10,
        max_msg_nums=32,
        sys_flag=6,
        commit_offset=0,
        suspend_timeout_millis=15000,
        subscription="*",
        sub_version=BORN,
    )


# --- V1 <-> V2 ---------------------------------------------------------------------------

LONG_TO_LETTER = {
    "producerGroup": "a",
    "topic": "b",
    "defaultTopic": "c",
    "defaultTopicQueueNums": "d",
    "queueId": "e",
    "sysFlag": "f",
    "bornTimestamp": "g",
    "flag": "h",
    "properties": "i",
    "reconsumeTimes": "j",
    "unitMode": "k",
    "maxReconsumeTimes": "l",
    "batch": "m",
    "bname": "n",
}


def test_v1_v2_conversion_of_the_full_case() -> None:
    (v1, v1_ext), (v2, v2_ext) = FULL[1], FULL[2]
    assert isinstance(v1, SendMessageRequestHeader)
    assert isinstance(v2, SendMessageRequestHeaderV2)
    assert v1.to_v2() == v2
    assert v2.to_v1() == v1
    assert {LONG_TO_LETTER[k]: v for k, v in v1_ext.items()} == v2_ext


# --- encoding errors ---------------------------------------------------------------------


def test_encode_out_of_range_names_field() -> None:
    with pytest.raises(EncodeError, match=r"SendMessageRequestHeaderV2\.e: .*Java int"):
        SendMessageRequestHeaderV2(a="PG", b="T", e=INT32_MAX + 1, g=1).to_ext_fields()
    with pytest.raises(EncodeError, match=r"\.g: .*Java long"):
        SendMessageRequestHeaderV2(a="PG", b="T", e=0, g=2**63).to_ext_fields()
    with pytest.raises(EncodeError, match=r"\.offset: .*Java long"):
        GetMaxOffsetResponseHeader(offset=-(2**63) - 1).to_ext_fields()


def test_encode_wrong_types() -> None:
    bad: dict[str, Any] = {"e": True}  # a bool is not an int, even though Python says so
    with pytest.raises(EncodeError, match=r"\.e: True is not an int"):
        SendMessageRequestHeaderV2(a="PG", b="T", g=1, **bad).to_ext_fields()
    bad = {"k": 1}
    with pytest.raises(EncodeError, match=r"\.k: 1 is not a bool"):
        SendMessageRequestHeaderV2(a="PG", b="T", e=0, g=1, **bad).to_ext_fields()
    bad = {"topic": 5}
    with pytest.raises(EncodeError, match=r"\.topic: 5 is not a str"):
        GetRouteInfoRequestHeader(**bad).to_ext_fields()


def test_encode_none_in_required_field() -> None:
    bad: dict[str, Any] = {"topic": None}
    with pytest.raises(
        EncodeError, match=r"GetRouteInfoRequestHeader\.topic: required field is None"
    ):
        GetRouteInfoRequestHeader(**bad).to_ext_fields()


class _Filter(enum.StrEnum):
    SINGLE_TAG = "SINGLE_TAG"


class _OldStyle(str, enum.Enum):  # noqa: UP042 - str() is "_OldStyle.MULTI_TAG"
    MULTI_TAG = "MULTI_TAG"


def test_enums_are_written_as_their_values() -> None:
    header = CreateTopicRequestHeader(
        topic="T",
        read_queue_nums=ResponseCode.SYSTEM_BUSY,  # any IntEnum
        write_queue_nums=1,
        topic_filter_type=_Filter.SINGLE_TAG,
    )
    ext = header.to_ext_fields()
    assert ext["readQueueNums"] == "2"
    assert ext["topicFilterType"] == "SINGLE_TAG"
    assert type(ext["topicFilterType"]) is str
    old = dataclasses.replace(header, topic_filter_type=_OldStyle.MULTI_TAG)
    assert old.to_ext_fields()["topicFilterType"] == "MULTI_TAG"


# --- commands --------------------------------------------------------------------------------


def test_to_request_and_from_command() -> None:
    header = UpdateConsumerOffsetRequestHeader(
        consumer_group="CG", topic="T", queue_id=0, commit_offset=5
    )
    request = header.to_request(RequestCode.UPDATE_CONSUMER_OFFSET, oneway=True)
    assert request.code == 15
    assert request.is_oneway and not request.is_response
    assert request.ext_fields == {
        "consumerGroup": "CG",
        "topic": "T",
        "queueId": "0",
        "commitOffset": "5",
    }
    assert UpdateConsumerOffsetRequestHeader.from_command(request) == header


def test_to_response() -> None:
    request = RemotingCommand.request(
        RequestCode.SEND_MESSAGE_V2, body=b"x", opaque=9, serialize_type=SerializeType.ROCKETMQ
    )
    header = SendMessageResponseHeader(msg_id="M", queue_id=1, queue_offset=2)
    response = header.to_response(request)
    assert response.is_response
    assert response.code == ResponseCode.SUCCESS
    assert response.opaque == 9
    assert response.serialize_type == SerializeType.ROCKETMQ
    assert response.ext_fields == {"msgId": "M", "queueId": "1", "queueOffset": "2"}
    assert response.body == b""
    assert SendMessageResponseHeader.from_command(response) == header
    pulled = PullMessageResponseHeader(
        suggest_which_broker_id=0, next_begin_offset=5, min_offset=0, max_offset=5
    ).to_response(request, ResponseCode.PULL_NOT_FOUND, "no new message", body=b"")
    assert pulled.code == 19 and pulled.remark == "no new message"
    assert pulled.ext_fields is not None and set(pulled.ext_fields) == {
        "suggestWhichBrokerId",
        "nextBeginOffset",
        "minOffset",
        "maxOffset",
    }


# --- declaring headers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Custom(CommandHeader):
    the_topic: str
    count: Annotated[int, Int32]
    big: JavaLong
    letter: str = field(metadata=wire("x"))
    maybe: Optional[JavaInt] = None  # noqa: UP045 - the typing.Optional spelling works too
    flag: bool = field(default=True, metadata=wire("F", required=False))


def test_custom_header_declaration() -> None:
    plan = header_fields(_Custom)
    assert plan is header_fields(_Custom)  # built once, cached
    assert [(f.name, f.wire, f.type, f.nullable, f.required) for f in plan] == [
        ("the_topic", "theTopic", str, False, True),
        ("count", "count", int, False, True),
        ("big", "big", int, False, True),
        ("letter", "x", str, False, True),
        ("maybe", "maybe", int, True, False),
        ("flag", "F", bool, False, False),
    ]
    assert plan[1].int_range == Int32 and plan[2].int_range == Int64
    assert isinstance(plan[0], HeaderField)
    header = _Custom(the_topic="T", count=-1, big=2**40, letter="L")
    ext = header.to_ext_fields()
    assert ext == {"theTopic": "T", "count": "-1", "big": str(2**40), "x": "L", "F": "true"}
    assert _Custom.from_ext_fields(ext) == header
    del ext["F"]
    assert _Custom.from_ext_fields(ext).flag is True


def test_header_instances_are_frozen_and_slotted() -> None:
    header = GetRouteInfoRequestHeader(topic="T")
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.topic = "U"  # type: ignore[misc]
    assert not hasattr(header, "__dict__")


def _declaration_error(cls: type) -> str:
    with pytest.raises(TypeError) as info:
        header_fields(cls)
    return str(info.value)


def test_bare_int_is_refused() -> None:
    @dataclass(frozen=True)
    class Bad(CommandHeader):
        n: int

    assert "JavaInt or JavaLong" in _declaration_error(Bad)


def test_unsupported_types_are_refused() -> None:
    @dataclass(frozen=True)
    class Floaty(CommandHeader):
        x: float

    @dataclass(frozen=True)
    class Listy(CommandHeader):
        x: list[str]

    @dataclass(frozen=True)
    class Unions(CommandHeader):
        x: str | bool

    @dataclass(frozen=True)
    class MarkedStr(CommandHeader):
        x: Annotated[str, Int32]

    assert "unsupported" in _declaration_error(Floaty)
    assert "unsupported" in _declaration_error(Listy)
    assert "X | None" in _declaration_error(Unions)
    assert "int range marker" in _declaration_error(MarkedStr)


def test_inconsistent_declarations_are_refused() -> None:
    @dataclass(frozen=True)
    class NoDefault(CommandHeader):
        x: bool = field(metadata=wire(required=False))

    @dataclass(frozen=True)
    class RequiredNone(CommandHeader):
        x: str | None = field(default=None, metadata=wire(required=True))

    @dataclass(frozen=True)
    class Clash(CommandHeader):
        queue_id: JavaInt
        other: JavaInt = field(metadata=wire("queueId"))

    @dataclass(frozen=True)
    class Factory(CommandHeader):
        x: str = field(default_factory=str)

    class NotADataclass(CommandHeader):
        pass

    assert "needs a default" in _declaration_error(NoDefault)
    assert "cannot be required" in _declaration_error(RequiredNone)
    assert "already used" in _declaration_error(Clash)
    assert "default_factory" in _declaration_error(Factory)
    assert "must be a dataclass" in _declaration_error(NotADataclass)


def test_unresolvable_annotation_is_explained() -> None:
    LocalAlias = str  # noqa: N806 - a name get_type_hints cannot see

    @dataclass(frozen=True)
    class Local(CommandHeader):
        x: LocalAlias  # type: ignore[valid-type]

    assert "module level" in _declaration_error(Local)


# --- properties ------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=20)  # no lone surrogates


def _value_strategy(f: HeaderField) -> st.SearchStrategy[Any]:
    base: st.SearchStrategy[Any]
    if f.type is str:
        base = TEXT
    elif f.type is bool:
        base = st.booleans()
    else:
        assert f.int_range is not None
        base = st.integers(f.int_range.min, f.int_range.max)
    return st.none() | base if f.nullable else base


def headers_of(cls: type[CommandHeader]) -> st.SearchStrategy[CommandHeader]:
    """Arbitrary valid instances of header class ``cls``."""
    return st.builds(cls, **{f.name: _value_strategy(f) for f in header_fields(cls)})


ANY_HEADER = st.sampled_from(_concrete_header_classes()).flatmap(headers_of)
JAVA_SPELLING = {
    str: re.compile(r".*", re.DOTALL),
    int: re.compile(r"-?(0|[1-9][0-9]*)"),
    bool: re.compile(r"true|false"),
}


@given(ANY_HEADER)
def test_round_trip(header: CommandHeader) -> None:
    ext = header.to_ext_fields()
    assert type(header).from_ext_fields(ext) == header
    plan = {f.wire: f for f in header_fields(type(header))}
    for key, value in ext.items():
        assert type(value) is str
        assert JAVA_SPELLING[plan[key].type].fullmatch(value), (key, value)
    # Through a command too (what the codec hands a processor).
    assert type(header).from_command(header.to_request(1)) == header


@given(headers_of(SendMessageRequestHeader))
def test_v1_v2_round_trip(v1: CommandHeader) -> None:
    assert isinstance(v1, SendMessageRequestHeader)
    v2 = v1.to_v2()
    assert v2.to_v1() == v1
    assert {LONG_TO_LETTER[k]: v for k, v in v1.to_ext_fields().items()} == v2.to_ext_fields()


@given(headers_of(SendMessageRequestHeaderV2), st.dictionaries(TEXT, TEXT, max_size=5))
def test_unknown_keys_never_matter(header: CommandHeader, extra: dict[str, str]) -> None:
    known = {f.wire for f in header_fields(type(header))}
    ext = {k: v for k, v in extra.items() if k not in known} | header.to_ext_fields()
    assert type(header).from_ext_fields(ext) == header


@dataclass(frozen=True, slots=True)
class _Empty(CommandHeader):
    pass


def test_header_without_fields() -> None:
    assert _Empty().to_ext_fields() == {}
    assert _Empty.from_ext_fields(None) == _Empty()
    assert _Empty.from_ext_fields({"AccessKey": "ak"}) == _Empty()
