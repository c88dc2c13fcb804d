"""The dev broker end to end on a Clock: route, send, pull with long polling, offsets,
heartbeats and the notifications they cause."""

from __future__ import annotations

import json

from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.message import decode_records, offset_msg_id

from .harness import BrokerHarness, ok


def route(peer_call: RemotingCommand) -> dict[str, object]:
    return json.loads(ok(peer_call).body)  # type: ignore[no-any-return]


def test_unknown_topic_has_no_route_until_a_send_creates_it() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    request = RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "T"})
    missing = peer.call(request)
    assert missing.code == ResponseCode.TOPIC_NOT_EXIST
    assert "No topic route info in name server for the topic: T" in (missing.remark or "")
    template = route(
        peer.call(RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "TBW102"}))
    )
    assert template["queueDatas"] == [
        {
            "brokerName": "broker-a",
            "perm": 7,
            "readQueueNums": 8,
            "topicSysFlag": 0,
            "writeQueueNums": 8,
        }
    ]
    sent = ok(peer.send_message("T", b"first", tags="TagA", keys="k1", queue_id=2))
    assert sent.ext_fields is not None
    assert sent.ext_fields["queueId"] == "2"
    assert sent.ext_fields["queueOffset"] == "0"
    assert sent.ext_fields["msgId"] == offset_msg_id("127.0.0.1:10911", 0)
    assert sent.ext_fields["MSG_REGION"] == "DefaultRegion"
    data = route(peer.call(request))
    assert data == {
        "brokerDatas": [
            {
                "brokerAddrs": {"0": "127.0.0.1:10911"},
                "brokerName": "broker-a",
                "cluster": "DefaultCluster",
            }
        ],
        "filterServerTable": {},
        "queueDatas": [
            {
                "brokerName": "broker-a",
                "perm": 6,
                "readQueueNums": 4,
                "topicSysFlag": 0,
                "writeQueueNums": 4,
            }
        ],
    }


def test_a_sent_message_is_pulled_back_whole() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"body-1", tags="TagA", keys="k1 k2", properties={"p": "v"}))
    response = ok(peer.pull("T", 0, 0))
    assert response.remark == "FOUND"
    assert response.ext_fields == {
        "suggestWhichBrokerId": "0",
        "nextBeginOffset": "1",
        "minOffset": "0",
        "maxOffset": "1",
    }
    [message] = decode_records(response.body)
    assert message.topic == "T"
    assert message.body == b"body-1"
    assert message.tags == "TagA"
    assert message.keys == ("k1", "k2")
    assert message.properties["p"] == "v"
    assert message.properties["CLUSTER"] == "DefaultCluster"
    assert "WAIT" not in message.properties
    assert message.born_host == peer.address
    assert message.store_host == "127.0.0.1:10911"
    assert message.queue_offset == 0


def test_pull_status_rules() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    empty = peer.pull("T0", 0, 0)
    assert empty.code == ResponseCode.TOPIC_NOT_EXIST
    for _ in range(3):
        ok(peer.send_message("T", b"x", queue_id=1))

    def status(offset: int, queue_id: int = 1) -> tuple[int, str | None, str]:
        response = peer.pull("T", queue_id, offset)
        assert response.ext_fields is not None
        return response.code, response.remark, response.ext_fields["nextBeginOffset"]

    assert status(0, queue_id=0) == (ResponseCode.PULL_NOT_FOUND, "NO_MESSAGE_IN_QUEUE", "0")
    assert status(5, queue_id=0) == (ResponseCode.PULL_OFFSET_MOVED, "NO_MESSAGE_IN_QUEUE", "0")
    assert status(3) == (ResponseCode.PULL_NOT_FOUND, "OFFSET_OVERFLOW_ONE", "3")
    assert status(7) == (ResponseCode.PULL_OFFSET_MOVED, "OFFSET_OVERFLOW_BADLY", "0")
    assert status(1) == (ResponseCode.SUCCESS, "FOUND", "3")
    illegal = peer.pull("T", 9, 0)
    assert illegal.code == ResponseCode.SYSTEM_ERROR


def test_tag_filter_skips_and_all_filtered_is_retry_immediately() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"a", tags="TagA"))
    ok(peer.send_message("T", b"b", tags="TagB"))
    ok(peer.send_message("T", b"c", tags="TagA"))
    response = ok(peer.pull("T", 0, 0, subscription="TagA || TagC"))
    assert [m.body for m in decode_records(response.body)] == [b"a", b"c"]
    assert response.ext_fields is not None and response.ext_fields["nextBeginOffset"] == "3"
    filtered = peer.pull("T", 0, 1, subscription="TagZ")
    assert filtered.code == ResponseCode.PULL_RETRY_IMMEDIATELY
    assert filtered.ext_fields is not None and filtered.ext_fields["nextBeginOffset"] == "3"


def test_long_poll_is_held_until_a_message_arrives() -> None:
    harness = BrokerHarness()
    consumer = harness.peer()
    producer = harness.peer()
    ok(producer.send_message("T", b"m0"))
    opaque = consumer.send(consumer.pull_request("T", 0, 1, sys_flag=6, suspend_ms=15000))
    assert consumer.response(opaque) is None
    assert harness.broker.pulls.waiting() == {("T", 0): 1}
    harness.clock.advance(5)
    assert consumer.response(opaque) is None
    ok(producer.send_message("T", b"m1"))
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in decode_records(response.body)] == [b"m1"]
    assert harness.broker.pulls.waiting() == {}


def test_long_poll_expires_with_pull_not_found() -> None:
    harness = BrokerHarness()
    consumer = harness.peer()
    ok(consumer.send_message("T", b"m0"))
    opaque = consumer.send(consumer.pull_request("T", 0, 1, sys_flag=6, suspend_ms=15000))
    harness.clock.advance(14.9)
    assert consumer.response(opaque) is None
    harness.clock.advance(0.2)
    response = consumer.response(opaque)
    assert response is not None
    assert response.code == ResponseCode.PULL_NOT_FOUND
    assert response.ext_fields is not None and response.ext_fields["nextBeginOffset"] == "1"


def test_long_poll_is_not_woken_by_a_message_it_filters_out() -> None:
    harness = BrokerHarness()
    consumer = harness.peer()
    opaque = consumer.send(
        consumer.pull_request("T", 0, 0, sys_flag=6, subscription="TagA", suspend_ms=15000)
    )
    # the pull's topic does not exist yet: TOPIC_NOT_EXIST at once
    first = consumer.response(opaque)
    assert first is not None and first.code == ResponseCode.TOPIC_NOT_EXIST
    ok(consumer.send_message("T", b"b", tags="TagB"))
    opaque = consumer.send(
        consumer.pull_request("T", 0, 1, sys_flag=6, subscription="TagA", suspend_ms=15000)
    )
    ok(consumer.send_message("T", b"b2", tags="TagB"))
    assert consumer.response(opaque) is None
    ok(consumer.send_message("T", b"a", tags="TagA"))
    response = consumer.response(opaque)
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in decode_records(response.body)] == [b"a"]


def test_heartbeat_registers_and_notifies_the_group() -> None:
    harness = BrokerHarness()
    one, two = harness.peer(), harness.peer()
    ok(one.heartbeat("c1", "G", {"T": "*"}))
    assert [p.code for p in one.take_pushed()] == [RequestCode.NOTIFY_CONSUMER_IDS_CHANGED]
    ok(one.heartbeat("c1", "G", {"T": "*"}))
    assert one.take_pushed() == []  # nothing changed
    ok(two.heartbeat("c2", "G", {"T": "*"}))
    assert [p.code for p in one.take_pushed()] == [RequestCode.NOTIFY_CONSUMER_IDS_CHANGED]
    pushed = two.take_pushed()
    assert [p.ext_fields for p in pushed] == [{"consumerGroup": "G"}]
    assert all(p.is_oneway for p in pushed)
    listing = ok(
        one.call(
            RemotingCommand.request(RequestCode.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": "G"})
        )
    )
    assert json.loads(listing.body) == {"consumerIdList": ["c1", "c2"]}
    assert "%RETRY%G" in harness.broker.topics
    two.close()
    assert [p.code for p in one.take_pushed()] == [RequestCode.NOTIFY_CONSUMER_IDS_CHANGED]
    listing = ok(
        one.call(
            RemotingCommand.request(RequestCode.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": "G"})
        )
    )
    assert json.loads(listing.body) == {"consumerIdList": ["c1"]}


def test_offsets_query_update_and_young_queue_rule() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T", b"m"))
    query = RemotingCommand.request(
        RequestCode.QUERY_CONSUMER_OFFSET, {"consumerGroup": "G", "topic": "T", "queueId": 0}
    )
    assert ok(peer.call(query)).ext_fields == {"offset": "0"}  # a young queue
    update = RemotingCommand.request(
        RequestCode.UPDATE_CONSUMER_OFFSET,
        {"consumerGroup": "G", "topic": "T", "queueId": 0, "commitOffset": 1},
        oneway=True,
    )
    opaque = peer.send(update)
    assert peer.response(opaque) is None  # oneway: no answer
    assert ok(peer.call(query)).ext_fields == {"offset": "1"}
    peer.send(update.replace(ext_fields={**update.ext_fields, "commitOffset": "-1"}))  # type: ignore[dict-item]
    assert ok(peer.call(query)).ext_fields == {"offset": "1"}
    for code in (RequestCode.GET_MAX_OFFSET, RequestCode.GET_MIN_OFFSET):
        response = ok(peer.call(RemotingCommand.request(code, {"topic": "T", "queueId": 0})))
        assert response.ext_fields == {"offset": "1" if code == RequestCode.GET_MAX_OFFSET else "0"}


def test_configured_topics_exist_from_the_start() -> None:
    from rmqtwist.broker.config import BrokerConfig

    harness = BrokerHarness(BrokerConfig(topics=(("Orders", 2),)))
    peer = harness.peer()
    data = route(
        peer.call(RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "Orders"}))
    )
    assert data["queueDatas"][0]["writeQueueNums"] == 2  # type: ignore[index]
