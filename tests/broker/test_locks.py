"""LOCK_BATCH_MQ (41) and UNLOCK_BATCH_MQ (42): 60 s leases per (group, queue) for orderly
consumers, renewed by their holder, refused to others until they lapse, given back on
unlock and when the holder's connection closes."""

from __future__ import annotations

import json

from rmqtwist.broker.locks import MessageQueue
from rmqtwist.codes import RequestCode, ResponseCode

from .harness import BrokerHarness, Peer, json_body, ok

QUEUES = [("T", 0), ("T", 1), ("T", 2), ("T", 3)]


def member(harness: BrokerHarness, client_id: str, group: str = "G") -> Peer:
    peer = harness.peer()
    ok(peer.heartbeat(client_id, group, {"T": "*"}))
    return peer


def test_grant_and_the_response_body() -> None:
    harness = BrokerHarness()
    peer = member(harness, "c1")
    body = {
        "clientId": "c1",
        "consumerGroup": "G",
        "mqSet": [{"brokerName": "broker-a", "queueId": 3, "topic": "T"}],
        "onlyThisBroker": False,  # J5 adds it
    }
    response = ok(peer.request(RequestCode.LOCK_BATCH_MQ, None, json.dumps(body).encode()))
    assert json_body(response) == {
        "lockOKMQSet": [{"brokerName": "broker-a", "queueId": 3, "topic": "T"}]
    }
    assert harness.broker.locks.owner("G", MessageQueue("T", "broker-a", 3)) == "c1"


def test_another_client_is_refused_until_the_lease_lapses() -> None:
    harness = BrokerHarness()
    one, two = member(harness, "c1"), member(harness, "c2")
    assert one.lock("G", "c1", QUEUES[:2]) == QUEUES[:2]
    harness.advance(59.9)
    assert two.lock("G", "c2", QUEUES) == QUEUES[2:]
    harness.advance(0.1)
    assert two.lock("G", "c2", QUEUES[:2]) == QUEUES[:2]
    assert one.lock("G", "c1", QUEUES) == []


def test_the_holder_renews_its_lease() -> None:
    harness = BrokerHarness()
    one, two = member(harness, "c1"), member(harness, "c2")
    assert one.lock("G", "c1", QUEUES[:1]) == QUEUES[:1]
    harness.advance(50)
    assert one.lock("G", "c1", QUEUES[:1]) == QUEUES[:1]  # renewed until 110 s
    harness.advance(20)
    assert two.lock("G", "c2", QUEUES[:1]) == []
    harness.advance(40)
    assert two.lock("G", "c2", QUEUES[:1]) == QUEUES[:1]


def test_unlock_frees_at_once_and_only_for_the_holder() -> None:
    harness = BrokerHarness()
    one, two = member(harness, "c1"), member(harness, "c2")
    one.lock("G", "c1", QUEUES)
    two.unlock("G", "c2", QUEUES)  # not the holder: nothing happens
    assert two.lock("G", "c2", QUEUES) == []
    one.unlock("G", "c1", QUEUES[1:3])
    assert two.lock("G", "c2", QUEUES) == QUEUES[1:3]


def test_groups_lock_independently() -> None:
    harness = BrokerHarness()
    one, two = member(harness, "c1", "G"), member(harness, "c2", "H")
    assert one.lock("G", "c1", QUEUES) == QUEUES
    assert two.lock("H", "c2", QUEUES) == QUEUES


def test_a_closed_connection_releases_its_client_s_leases() -> None:
    harness = BrokerHarness()
    one, two = member(harness, "c1"), member(harness, "c2")
    one.lock("G", "c1", QUEUES)
    one.close()
    assert two.lock("G", "c2", QUEUES) == QUEUES


def test_leases_stay_while_the_client_is_still_connected_elsewhere() -> None:
    harness = BrokerHarness()
    first, second = member(harness, "c1"), member(harness, "c1")
    other = member(harness, "c2")
    first.lock("G", "c1", QUEUES)
    first.close()
    assert other.lock("G", "c2", QUEUES) == []
    second.close()
    assert other.lock("G", "c2", QUEUES) == QUEUES


def test_a_bad_lock_body_is_a_system_error() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for body in (
        b"nope",
        b"[]",
        b'{"clientId": "c"}',
        b'{"clientId":"c","consumerGroup":"G","mqSet":[{}]}',
    ):
        response = peer.request(RequestCode.LOCK_BATCH_MQ, None, body)
        assert response.code == ResponseCode.SYSTEM_ERROR
    unlock = peer.request(RequestCode.UNLOCK_BATCH_MQ, None, b"nope")
    assert unlock.code == ResponseCode.SYSTEM_ERROR
