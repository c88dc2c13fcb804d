"""SEND_MESSAGE (10), SEND_MESSAGE_V2 (310) and SEND_BATCH_MESSAGE (320) as each real client
sends them (broker.md §0, §1, §4, §6): typed extFields, auto-creation, the refusals, the
retry/DLQ rule for %RETRY% topics, and what the stored record holds."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.codes import RequestCode, ResponseCode, Version
from rmqtwist.command import RemotingCommand
from rmqtwist.message import (
    Message,
    compress_body,
    encode_batch,
    encode_properties,
    offset_msg_id,
)

from .harness import BORN, BROKER, BrokerHarness, Peer, json_body, ok


def raw_header(code: int, ext: dict[str, Any], *, language: str, version: int) -> dict[str, Any]:
    """A request header as the C++ client or ali-ons writes it (ext values keep their
    JSON types)."""
    return {
        "code": code,
        "language": language,
        "version": version,
        "flag": 0,
        "remark": "",
        "extFields": ext,
        "serializeTypeCurrentRPC": "JSON",
    }


def route(peer: Peer, topic: str) -> RemotingCommand:
    return peer.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})


def queue_counts(peer: Peer, topic: str) -> tuple[int, int, int]:
    [data] = json_body(ok(route(peer, topic)))["queueDatas"]
    return data["readQueueNums"], data["writeQueueNums"], data["perm"]


def cpp_send_ext(topic: str, properties: str, **overrides: Any) -> dict[str, Any]:
    """SEND_MESSAGE (10) extFields as the C++ client 1.2.x puts them on the wire: ints for
    queueId/sysFlag/flag, strings for longs, "0"/"1" for booleans, AccessKey and friends."""
    ext: dict[str, Any] = {
        "producerGroup": "cpp_pg",
        "topic": topic,
        "defaultTopic": "TBW102",
        "defaultTopicQueueNums": 4,
        "queueId": 1,
        "sysFlag": 0,
        "bornTimestamp": str(BORN),
        "flag": 7,
        "properties": properties,
        "reconsumeTimes": 0,
        "unitMode": "0",
        "batch": "0",
        "AccessKey": "",
        "OnsChannel": "ALIYUN",
        "Signature": "",
    }
    ext.update(overrides)
    return ext


def test_cpp_send_message_with_mixed_json_types() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    # C++ and ali-ons keep the final \x02 of the properties string
    properties = "TAGS\x01TagC\x02KEYS\x01ck1 ck2\x02p\x01v\x02"
    response = peer.call_raw(
        raw_header(
            RequestCode.SEND_MESSAGE,
            cpp_send_ext("CppTopic", properties),
            language="CPP",
            version=Version.V3_1_8,
        ),
        b"from c++",
    )
    ok(response)
    assert response.ext_fields is not None
    # every value a JSON string: the C++ client drops any that is not
    assert response.ext_fields == {
        "msgId": offset_msg_id(BROKER, 0),
        "queueId": "1",
        "queueOffset": "0",
        "MSG_REGION": "DefaultRegion",
        "TRACE_ON": "true",
    }
    [message] = harness.messages("CppTopic", 1)
    assert message.body == b"from c++"
    assert message.tags == "TagC"
    assert message.keys == ("ck1", "ck2")
    assert message.flag == 7
    assert message.born_timestamp == BORN
    assert message.born_host == peer.address
    assert dict(message.properties) == {"p": "v", "CLUSTER": "DefaultCluster"}
    assert queue_counts(peer, "CppTopic") == (4, 4, 6)


def test_cpp_batch_flag_one_stores_each_message_of_the_batch() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    batch = encode_batch(
        [Message("CppTopic", f"b{i}".encode(), tags="TagB", keys=f"k{i}") for i in range(3)]
    )
    response = peer.call_raw(
        raw_header(
            RequestCode.SEND_MESSAGE,
            cpp_send_ext("CppTopic", "", queueId=2, batch="1"),
            language="CPP",
            version=Version.V3_1_8,
        ),
        batch,
    )
    ok(response)
    stored = harness.messages("CppTopic", 2)
    assert [(m.body, m.tags, m.keys, m.queue_offset) for m in stored] == [
        (b"b0", "TagB", ("k0",), 0),
        (b"b1", "TagB", ("k1",), 1),
        (b"b2", "TagB", ("k2",), 2),
    ]
    assert response.ext_fields is not None
    assert response.ext_fields["msgId"].split(",") == [m.offset_msg_id for m in stored]


def test_ons_send_v2_with_json_numbers_and_false() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ext = {
        "a": "ons_pg",
        "b": "OnsTopic",
        "c": "TBW102",
        "d": 4,
        "e": 3,
        "f": 0,
        "g": BORN,
        "h": 0,
        "i": "TAGS\x01TagO\x02KEYS\x01ok\x02",
        "j": 0,
        "k": False,
        "l": 16,
    }
    response = peer.call_raw(
        raw_header(RequestCode.SEND_MESSAGE_V2, ext, language="JAVA", version=Version.V3_4_9),
        b"from ons",
    )
    ok(response)
    assert response.ext_fields is not None
    assert response.ext_fields["queueId"] == "3"
    assert response.ext_fields["queueOffset"] == "0"
    [message] = harness.messages("OnsTopic", 3)
    assert (message.body, message.tags, message.keys) == (b"from ons", "TagO", ("ok",))
    assert message.sys_flag == 0


@pytest.mark.parametrize("code", [RequestCode.SEND_MESSAGE, RequestCode.SEND_MESSAGE_V2])
def test_wait_is_dropped_and_cluster_added(code: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", tags="A", properties={"WAIT": "true", "u": "1"}, code=code))
    [message] = harness.messages("T")
    assert dict(message.properties) == {"u": "1", "CLUSTER": "DefaultCluster"}


def test_batch_320_gives_a_msg_id_list_and_consecutive_offsets() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"single", queue_id=1))
    batch = [
        Message("T", f"batch-{i}".encode(), tags="TagB", keys=[f"b{i}"], properties={"p": f"v{i}"})
        for i in range(3)
    ]
    first = ok(peer.send_batch("T", batch, queue_id=1))
    second = ok(peer.send_batch("T", batch[:2], queue_id=1))
    stored = harness.messages("T", 1)
    assert [m.body for m in stored] == [
        b"single",
        b"batch-0",
        b"batch-1",
        b"batch-2",
        b"batch-0",
        b"batch-1",
    ]
    assert [m.queue_offset for m in stored] == list(range(6))
    assert first.ext_fields is not None and second.ext_fields is not None
    assert first.ext_fields["queueId"] == "1"
    assert first.ext_fields["queueOffset"] == "1"
    assert first.ext_fields["msgId"] == ",".join(m.offset_msg_id for m in stored[1:4])
    assert second.ext_fields["queueOffset"] == "4"
    assert second.ext_fields["msgId"] == ",".join(m.offset_msg_id for m in stored[4:])
    # each entry keeps its own properties plus the batch's shared ones: Apache 4.9.8 keeps
    # WAIT in batch entries too (transcripts/java-4.9.8/02, the batch-N messages)
    assert stored[2].keys == ("b1",)
    assert dict(stored[2].properties) == {"p": "v1", "WAIT": "true", "CLUSTER": "DefaultCluster"}
    # physical offsets grow record by record
    assert [m.physical_offset for m in stored] == sorted(m.physical_offset for m in stored)


def batch_ext(topic: str) -> dict[str, Any]:
    return {
        "a": "PG",
        "b": topic,
        "c": "TBW102",
        "d": 4,
        "e": 0,
        "f": 0,
        "g": BORN,
        "h": 0,
        "m": True,
    }


def raw_batch(entries: list[tuple[bytes, dict[str, str]]]) -> bytes:
    """A batch body written by hand (encode_batch refuses what these tests need)."""
    out = b""
    for body, properties in entries:
        props = encode_properties(properties).encode()
        size = 4 + 4 + 4 + 4 + 4 + len(body) + 2 + len(props)
        out += struct.pack(">iiiii", size, 0, 0, 0, len(body)) + body
        out += struct.pack(">h", len(props)) + props
    return out


def test_batch_refusals() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    retry = peer.send_batch("%RETRY%G", [Message("%RETRY%G", b"x")])
    assert retry.code == ResponseCode.MESSAGE_ILLEGAL
    delayed = peer.request(
        RequestCode.SEND_BATCH_MESSAGE,
        batch_ext("T"),
        raw_batch([(b"x", {"DELAY": "2"}), (b"y", {})]),
    )
    assert delayed.code == ResponseCode.MESSAGE_ILLEGAL
    assert "delay" in (delayed.remark or "")
    lying = peer.request(RequestCode.SEND_BATCH_MESSAGE, batch_ext("T"), b"\x00\x00\x01\x00junk")
    assert lying.code == ResponseCode.MESSAGE_ILLEGAL
    empty = peer.request(RequestCode.SEND_BATCH_MESSAGE, batch_ext("T"), b"")
    assert empty.code == ResponseCode.MESSAGE_ILLEGAL
    assert harness.messages("T") == []


@pytest.mark.parametrize(("asked", "made"), [(2, 2), (4, 4), (16, 8)])
def test_auto_create_takes_min_of_asked_and_template_queues(asked: int, made: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    assert route(peer, "New").code == ResponseCode.TOPIC_NOT_EXIST
    ok(peer.send_message("New", extra={"d": asked}))
    assert queue_counts(peer, "New") == (made, made, 6)
    assert harness.broker.topics.get("New") is not None


def test_auto_create_needs_an_inheritable_template() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("Base"))  # exists, but perm 6: not a template
    for template in ("NoSuchTemplate", "Base"):
        response = peer.send_message("New", extra={"c": template})
        assert response.code == ResponseCode.TOPIC_NOT_EXIST
        assert "topic[New] not exist" in (response.remark or "")
    assert route(peer, "New").code == ResponseCode.TOPIC_NOT_EXIST


def test_no_auto_create_refuses_unknown_topics_with_17() -> None:
    harness = BrokerHarness(BrokerConfig(auto_create_topic=False))
    peer = harness.peer()
    response = peer.send_message("New")
    assert response.code == ResponseCode.TOPIC_NOT_EXIST
    assert "apply first" in (response.remark or "")
    assert route(peer, "New").code == ResponseCode.TOPIC_NOT_EXIST
    ok(route(peer, "TBW102"))
    # a created topic takes sends
    create = {
        "topic": "Made",
        "defaultTopic": "TBW102",
        "readQueueNums": 2,
        "writeQueueNums": 2,
        "perm": 6,
        "topicFilterType": "SINGLE_TAG",
        "order": False,
    }
    ok(peer.request(RequestCode.UPDATE_AND_CREATE_TOPIC, create))
    ok(peer.send_message("Made", queue_id=1))
    assert len(harness.messages("Made", 1)) == 1


@pytest.mark.parametrize(
    ("topic", "remark"),
    [
        ("bad topic", "illegal characters"),
        ("bad/topic", "illegal characters"),
        ("T" * 128, "longer than topic max length 127"),
    ],
)
def test_invalid_topic_names_are_refused(topic: str, remark: str) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = peer.send_message(topic)
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert remark in (response.remark or "")
    assert harness.broker.topics.get(topic) is None


def test_a_127_character_topic_is_fine() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T" * 127))
    assert len(harness.messages("T" * 127)) == 1


@pytest.mark.parametrize(
    "topic",
    ["TBW102", "SCHEDULE_TOPIC_XXXX", "RMQ_SYS_TRANS_HALF_TOPIC", "RMQ_SYS_TRANS_OP_HALF_TOPIC"],
)
def test_system_topics_are_forbidden(topic: str) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = peer.send_message(topic)
    assert response.code == ResponseCode.NO_PERMISSION
    assert response.remark == f"Sending message to topic[{topic}] is forbidden."
    assert harness.store.message_count == 0


def test_queue_id_past_the_queues_is_a_system_error() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", queue_id=3))
    response = peer.send_message("T", queue_id=4)
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert "queueId[4] is illegal" in (response.remark or "")
    assert harness.store.message_count == 1


def test_negative_queue_id_lets_the_broker_pick() -> None:
    harness = BrokerHarness()
    harness.broker.random.seed(7)
    peer = harness.peer()
    picked = set()
    for _ in range(40):
        response = ok(peer.send_message("T", queue_id=-1))
        assert response.ext_fields is not None
        picked.add(int(response.ext_fields["queueId"]))
    assert picked == {0, 1, 2, 3}
    assert sum(len(harness.messages("T", q)) for q in range(4)) == 40


def test_body_over_max_message_size_is_13() -> None:
    harness = BrokerHarness(BrokerConfig(max_message_size=1024))
    peer = harness.peer()
    ok(peer.send_message("T", b"x" * 1024))
    response = peer.send_message("T", b"x" * 1025)
    assert response.code == ResponseCode.MESSAGE_ILLEGAL
    assert "body size over max value, MAX: 1024" in (response.remark or "")
    big = peer.send_batch("T", [Message("T", b"y" * 1025)])
    assert big.code == ResponseCode.MESSAGE_ILLEGAL
    assert [m.body for m in harness.messages("T")] == [b"x" * 1024]


def test_properties_over_32767_bytes_are_13() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = peer.send_message("T", properties={"big": "v" * 32767})
    assert response.code == ResponseCode.MESSAGE_ILLEGAL
    # bytes, not characters: 11,000 three-byte characters are 33,000 bytes
    response = peer.send_message("T", properties={"big": "\u20ac" * 11_000})
    assert response.code == ResponseCode.MESSAGE_ILLEGAL
    assert harness.store.message_count == 0
    ok(peer.send_message("T", properties={"fits": "\u20ac" * 10_000}))


def test_compressed_body_is_stored_untouched() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    text = b"".join(b"line %04d: the quick brown fox\n" % i for i in range(200))
    compressed = compress_body(text)
    ok(peer.send_message("T", compressed, tags="TagE", sys_flag=769))
    [message] = harness.messages("T")
    assert message.sys_flag == 769
    assert message.body == compressed
    assert message.decoded_body() == text
    pulled = ok(peer.pull("T"))
    assert compressed in pulled.body


def retry_send(
    peer: Peer, group: str, reconsume: int, max_times: int | None, *, version: int
) -> RemotingCommand:
    props = {
        "RETRY_TOPIC": "T",
        "DELAY": str(3 + reconsume),
        "RECONSUME_TIME": str(reconsume),
    }
    extra: dict[str, Any] = {"j": reconsume, "i": encode_properties({**props, "TAGS": "A"})}
    if max_times is not None:
        extra["l"] = max_times
    return peer.send_message(f"%RETRY%{group}", extra=extra, version=version)


def test_retry_send_below_the_limit_stays_a_delayed_retry() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(retry_send(peer, "G", 3, 16, version=Version.V4_9_8))
    assert harness.messages("%DLQ%G") == []
    [waiting] = harness.messages("SCHEDULE_TOPIC_XXXX", 5)  # level 6 waits in queue 5
    assert waiting.properties["REAL_TOPIC"] == "%RETRY%G"
    assert waiting.reconsume_times == 3


def test_retry_send_at_the_limit_goes_to_the_dlq() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = ok(retry_send(peer, "G", 16, 16, version=Version.V4_9_8))
    [dead] = harness.messages("%DLQ%G", 0)
    assert dead.reconsume_times == 16
    assert dead.properties["RETRY_TOPIC"] == "T"
    assert "DELAY" not in dead.properties and dead.delay_level == 0
    assert response.ext_fields is not None and response.ext_fields["queueId"] == "0"
    assert harness.messages("SCHEDULE_TOPIC_XXXX", 18) == []
    assert json_body(ok(route(peer, "%DLQ%G")))["queueDatas"][0]["perm"] == 6


def test_retry_send_honours_the_header_limit_from_version_121() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(retry_send(peer, "G", 2, 2, version=Version.V3_4_9))
    assert len(harness.messages("%DLQ%G")) == 1
    # before V3_4_9 the header's limit is ignored: the broker's 16 applies
    ok(retry_send(peer, "H", 2, 2, version=Version.V3_1_8))
    assert harness.messages("%DLQ%H") == []
    assert len(harness.messages("SCHEDULE_TOPIC_XXXX", 4)) == 1


def test_a_header_error_is_a_system_error_not_a_dropped_connection() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = peer.request(RequestCode.SEND_MESSAGE_V2, {"b": "T"})
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert peer.protocol.transport is not None and not peer.transport.disconnecting
    ok(peer.send_message("T"))


def test_route_names_the_address_the_client_connected_to_or_advertise() -> None:
    harness = BrokerHarness(BrokerConfig(advertise="192.0.2.10:9876"))
    peer = harness.peer()
    response = ok(peer.send_message("T"))
    assert response.ext_fields is not None
    assert response.ext_fields["msgId"] == offset_msg_id("192.0.2.10:9876", 0)
    data = json.loads(ok(route(peer, "T")).body)
    assert data["brokerDatas"][0]["brokerAddrs"] == {"0": "192.0.2.10:9876"}
