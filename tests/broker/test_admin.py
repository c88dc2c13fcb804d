"""Administration and the name-server role: UPDATE_AND_CREATE_TOPIC (17), topic deletion
(215/216), GET_BROKER_RUNTIME_INFO (28), routes (105), cluster info (106), the topic list
(206), the configuration codes refused on purpose, and unknown codes."""

from __future__ import annotations

from typing import Any

import pytest

from rmqtwist.broker.admin import REFUSED_CODES
from rmqtwist.codes import RequestCode, ResponseCode, code_name

from .harness import BROKER, BrokerHarness, Peer, json_body, ok


def create(peer: Peer, topic: str, read: int = 4, write: int = 4, **extra: Any) -> Any:
    ext: dict[str, Any] = {
        "topic": topic,
        "defaultTopic": "TBW102",
        "readQueueNums": read,
        "writeQueueNums": write,
        "perm": 6,
        "topicFilterType": "SINGLE_TAG",
        "order": False,
    }
    ext.update(extra)
    return peer.request(RequestCode.UPDATE_AND_CREATE_TOPIC, ext)


def route(peer: Peer, topic: str) -> Any:
    return peer.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})


def test_create_topic_shows_in_the_route() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(create(peer, "Made", 3, 5, perm=4))
    assert json_body(ok(route(peer, "Made")))["queueDatas"] == [
        {
            "brokerName": "broker-a",
            "perm": 4,
            "readQueueNums": 3,
            "topicSysFlag": 0,
            "writeQueueNums": 5,
        }
    ]
    ok(create(peer, "Made", 2, 2, order=True))  # an update
    data = json_body(ok(route(peer, "Made")))
    assert (data["queueDatas"][0]["readQueueNums"], data["queueDatas"][0]["perm"]) == (2, 6)
    assert data["orderTopicConf"] == "broker-a:2"


@pytest.mark.parametrize(("read", "write"), [(0, 4), (4, 0), (1025, 4), (-1, -1)])
def test_create_topic_validates_queue_counts(read: int, write: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = create(peer, "Bad", read, write)
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert "queue counts must be between 1 and 1024" in (response.remark or "")
    assert route(peer, "Bad").code == ResponseCode.TOPIC_NOT_EXIST


def test_create_topic_refuses_bad_names_and_system_topics() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    bad = create(peer, "no spaces please")
    assert bad.code == ResponseCode.SYSTEM_ERROR
    assert "illegal characters" in (bad.remark or "")
    system = create(peer, "SCHEDULE_TOPIC_XXXX", 1, 1)
    assert system.code == ResponseCode.SYSTEM_ERROR
    assert "conflict with system topic" in (system.remark or "")
    assert json_body(ok(route(peer, "SCHEDULE_TOPIC_XXXX")))["queueDatas"][0]["readQueueNums"] == 18


@pytest.mark.parametrize(
    "code", [RequestCode.DELETE_TOPIC_IN_BROKER, RequestCode.DELETE_TOPIC_IN_NAMESRV]
)
def test_delete_topic_removes_messages_offsets_and_route(code: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for queue_id in range(4):
        ok(peer.send_message("Gone", queue_id=queue_id))
    ok(peer.send_message("Kept"))
    peer.commit_offset("G", "Gone", 1, 1)
    peer.commit_offset("G", "Kept", 0, 1)
    ok(peer.request(code, {"topic": "Gone"}))
    assert route(peer, "Gone").code == ResponseCode.TOPIC_NOT_EXIST
    assert peer.pull("Gone").code == ResponseCode.TOPIC_NOT_EXIST
    assert all(harness.store.max_offset("Gone", q) == 0 for q in range(4))
    assert harness.store.message_count == 1
    assert harness.broker.offsets.of_group("G") == {"Kept": {0: 1}}
    assert (
        "Gone"
        not in json_body(ok(peer.request(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER)))[
            "topicList"
        ]
    )
    # a send creates it again, from offset 0
    response = ok(peer.send_message("Gone", queue_id=1))
    assert response.ext_fields is not None and response.ext_fields["queueOffset"] == "0"


def test_deleting_a_system_topic_is_refused_and_an_unknown_one_is_fine() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = peer.request(RequestCode.DELETE_TOPIC_IN_BROKER, {"topic": "TBW102"})
    assert response.code == ResponseCode.NO_PERMISSION
    ok(route(peer, "TBW102"))
    ok(peer.request(RequestCode.DELETE_TOPIC_IN_BROKER, {"topic": "NeverWas"}))


def test_runtime_info_is_a_kv_table_with_counts() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for _ in range(3):
        ok(peer.send_message("T"))
    ok(peer.pull("T"))
    ok(peer.heartbeat("c1", "G", {"T": "*"}, producer_groups=("PG",)))
    peer.hold("T", 0, 3)
    harness.advance(90)
    response = ok(peer.request(RequestCode.GET_BROKER_RUNTIME_INFO))
    body = json_body(response)
    assert set(body) == {"table"}
    table = body["table"]
    assert all(isinstance(value, str) for value in table.values())
    assert table["brokerVersion"] == "409"
    assert table["brokerVersionDesc"] == "V4_9_8"
    assert table["msgPutTotalTodayNow"] == "3"
    assert table["msgGetTotalTodayNow"] == "3"
    assert table["storedMessages"] == "3"
    assert int(table["storedBytes"]) == harness.store.stored_bytes > 0
    assert table["consumerGroups"] == "1"
    assert table["producerGroups"] == "1"
    assert table["bootTimestamp"] == "1700000000000"
    assert table["runtime"].startswith("90 ")
    assert int(table["topics"]) == len(harness.broker.topics)
    # the held pull expired after 15 s: nothing is held any more
    assert table["heldPulls"] == "0"


def test_cluster_info_and_topic_list() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.send_message("T"))
    cluster = json_body(ok(peer.request(RequestCode.GET_BROKER_CLUSTER_INFO)))
    assert cluster == {
        "brokerAddrTable": {
            "broker-a": {
                "brokerAddrs": {"0": BROKER},
                "brokerName": "broker-a",
                "cluster": "DefaultCluster",
            }
        },
        "clusterAddrTable": {"DefaultCluster": ["broker-a"]},
    }
    topics = json_body(ok(peer.request(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER)))
    assert {"T", "TBW102", "SCHEDULE_TOPIC_XXXX"} <= set(topics["topicList"])
    assert topics["topicList"] == sorted(topics["topicList"])


@pytest.mark.parametrize("code", REFUSED_CODES, ids=[code_name(c) for c in REFUSED_CODES])
def test_configuration_codes_are_refused_with_a_reason(code: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = peer.request(code, {"key": "value"}, b"brokerIP1=1.2.3.4\nrocketmqHome=/tmp")
    assert response.code == ResponseCode.NO_PERMISSION
    remark = response.remark or ""
    assert f"({code}) is refused" in remark
    assert "never changes its configuration" in remark


def test_the_cve_codes_are_among_the_refused() -> None:
    assert {
        RequestCode.UPDATE_BROKER_CONFIG,
        RequestCode.UPDATE_NAMESRV_CONFIG,
        RequestCode.PUT_KV_CONFIG,
        RequestCode.DELETE_KV_CONFIG,
        RequestCode.GET_BROKER_CONFIG,
    } <= set(REFUSED_CODES)
    assert int(RequestCode.UPDATE_BROKER_CONFIG) == 25
    assert int(RequestCode.UPDATE_NAMESRV_CONFIG) == 318


@pytest.mark.parametrize("code", [9999, 200050, 400])
def test_an_unknown_code_is_request_code_not_supported(code: int) -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = peer.request(code, {"topic": "T"})
    assert response.code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED
    assert str(code) in (response.remark or "")
    ok(peer.send_message("T"))  # the connection is still fine
