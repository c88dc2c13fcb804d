"""Client management: HEART_BEAT (34) from each client's dialect, UNREGISTER_CLIENT (35),
GET_CONSUMER_LIST_BY_GROUP (38), CHECK_CLIENT_CONFIG (46), client expiry, and
NOTIFY_CONSUMER_IDS_CHANGED (40) exactly when a group's membership changes."""

from __future__ import annotations

import json
from typing import Any

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.codes import RequestCode, ResponseCode, Version
from rmqtwist.message import decode_records

from .harness import BrokerHarness, Peer, json_body, ok

NOTIFY = RequestCode.NOTIFY_CONSUMER_IDS_CHANGED


def notified(peer: Peer) -> list[str]:
    """The groups named by the NOTIFY_CONSUMER_IDS_CHANGED pushed to ``peer`` (taken)."""
    pushed = peer.take_pushed()
    assert all(p.code == NOTIFY and p.is_oneway for p in pushed), pushed
    return [p.ext_fields["consumerGroup"] for p in pushed if p.ext_fields is not None]


def ids(peer: Peer, group: str) -> list[str]:
    return json_body(ok(peer.consumer_list(group)))["consumerIdList"]  # type: ignore[no-any-return]


def raw_heartbeat(peer: Peer, body: dict[str, Any]) -> None:
    ok(peer.request(RequestCode.HEART_BEAT, None, json.dumps(body).encode()))


def test_j4_heartbeat_registers_the_group_and_answers_with_the_broker_version() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    response = ok(
        peer.heartbeat(
            "192.0.2.2@1#2",
            "CG",
            {"T": "TagA || TagB", "%RETRY%CG": "*"},
            producer_groups=("CLIENT_INNER_PRODUCER",),
            consume_from_where="CONSUME_FROM_FIRST_OFFSET",
        )
    )
    assert response.version == Version.V4_9_8  # clients keep it as the broker's version
    assert response.ext_fields is None and response.body == b""
    group = harness.broker.clients.consumers["CG"]
    assert group.consume_from_where == "CONSUME_FROM_FIRST_OFFSET"
    assert group.consume_type == "CONSUME_PASSIVELY"
    assert group.message_model == "CLUSTERING"
    assert group.subscriptions["T"].tags == frozenset({"TagA", "TagB"})
    assert group.subscriptions["%RETRY%CG"].codes is None
    assert "CLIENT_INNER_PRODUCER" in harness.broker.clients.producers
    # the retry topic (1 queue, perm 6) and the subscribed topic now exist
    retry = harness.broker.topics.get("%RETRY%CG")
    assert retry is not None and (retry.queue_nums, retry.perm) == (1, 6)
    assert harness.broker.topics.get("T") is not None


def test_no_auto_create_leaves_subscribed_topics_alone_but_makes_the_retry_topic() -> None:
    harness = BrokerHarness(BrokerConfig(auto_create_topic=False))
    peer = harness.peer()
    ok(peer.heartbeat("c1", "CG", {"T": "*"}))
    assert harness.broker.topics.get("T") is None
    assert harness.broker.topics.get("%RETRY%CG") is not None


def test_cpp_heartbeat_with_ordinal_enums_and_string_sub_version() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for tags in ("TagA", "TagB", "TagC"):
        ok(peer.send_message("T", tags.encode(), tags=tags))
    body = {
        "clientID": "10076-127.0.0.1@DEFAULT",
        "consumerDataSet": [
            {
                "consumeFromWhere": 4,
                "consumeType": 1,
                "groupName": "cpp_group",
                "messageModel": 0,
                "subscriptionDataSet": [
                    {
                        "codeSet": [2598919, 2598920],
                        "subString": "TagA||TagC",
                        "subVersion": "1700000000123",
                        "tagsSet": ["TagA", "TagC"],
                        "topic": "T",
                    }
                ],
            }
        ],
        "producerDataSet": [{"groupName": "cpp_pg"}],
    }
    raw_heartbeat(peer, body)
    group = harness.broker.clients.consumers["cpp_group"]
    assert group.consume_from_where == "CONSUME_FROM_FIRST_OFFSET"
    assert group.consume_type == "CONSUME_PASSIVELY"
    assert group.message_model == "BROADCASTING"
    subscription = group.subscriptions["T"]
    assert subscription.version == 1_700_000_000_123
    assert subscription.tags == frozenset({"TagA", "TagC"})
    assert ids(peer, "cpp_group") == ["10076-127.0.0.1@DEFAULT"]
    # a J4-style pull without a subscription uses it
    response = ok(peer.pull("T", sys_flag=2, subscription=None, group="cpp_group", sub_version=1))
    assert [m.body for m in decode_records(response.body)] == [b"TagA", b"TagC"]


def test_heartbeat_enum_names_in_strings_and_unknown_values_fall_back() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    body = {
        "clientID": "c",
        "consumerDataSet": [
            {
                "consumeFromWhere": "5",
                "consumeType": "CONSUME_ACTIVELY",
                "groupName": "G",
                "messageModel": 99,
                "subscriptionDataSet": [{"topic": "T", "subString": None, "subVersion": "x"}],
            }
        ],
    }
    raw_heartbeat(peer, body)
    group = harness.broker.clients.consumers["G"]
    assert group.consume_from_where == "CONSUME_FROM_TIMESTAMP"
    assert group.consume_type == "CONSUME_ACTIVELY"
    assert group.message_model == "CLUSTERING"
    assert group.subscriptions["T"].expression == "*"
    assert group.subscriptions["T"].version == 0


def test_a_bad_heartbeat_body_is_a_system_error_and_the_connection_stays() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    for body in (b"not json", b"[1]", b'{"consumerDataSet": []}'):
        response = peer.request(RequestCode.HEART_BEAT, None, body)
        assert response.code == ResponseCode.SYSTEM_ERROR
    ok(peer.heartbeat("c1", "G", {"T": "*"}))


def test_notify_on_join_to_every_member_including_the_new_one() -> None:
    harness = BrokerHarness()
    one, two = harness.peer(), harness.peer()
    ok(one.heartbeat("c1", "G", {"T": "*"}))
    assert notified(one) == ["G"]
    ok(two.heartbeat("c2", "G", {"T": "*"}))
    assert notified(one) == ["G"]
    assert notified(two) == ["G"]
    assert ids(one, "G") == ["c1", "c2"]


def test_no_notify_when_nothing_changed() -> None:
    harness = BrokerHarness()
    one, two = harness.peer(), harness.peer()
    ok(one.heartbeat("c1", "G", {"T": "*"}, sub_version=1))
    ok(two.heartbeat("c2", "G", {"T": "*"}, sub_version=1))
    one.take_pushed(), two.take_pushed()
    before = harness.broker.notifications_sent
    for sub_version in (1, 2, 3):  # a newer subVersion of the same topics is no change
        ok(one.heartbeat("c1", "G", {"T": "*"}, sub_version=sub_version))
        ok(two.heartbeat("c2", "G", {"T": "*"}, sub_version=sub_version))
    harness.advance(30)
    assert notified(one) == [] and notified(two) == []
    assert harness.broker.notifications_sent == before
    # producers and other groups do not notify G
    producer, stranger = harness.peer(), harness.peer()
    ok(producer.heartbeat("p1", "PG", None, producer_groups=("PG",)))
    ok(stranger.heartbeat("s1", "Other", {"T": "*"}))
    assert notified(one) == [] and notified(two) == []
    assert notified(producer) == []
    assert notified(stranger) == ["Other"]


def test_notify_on_subscription_change() -> None:
    harness = BrokerHarness()
    one, two = harness.peer(), harness.peer()
    ok(one.heartbeat("c1", "G", {"T": "*"}))
    ok(two.heartbeat("c2", "G", {"T": "*"}))
    one.take_pushed(), two.take_pushed()
    ok(one.heartbeat("c1", "G", {"T": "*", "U": "*"}))
    assert notified(one) == ["G"] and notified(two) == ["G"]
    ok(one.heartbeat("c1", "G", {"U": "*"}))
    assert notified(one) == ["G"] and notified(two) == ["G"]


def test_notify_on_unregister_to_those_left() -> None:
    harness = BrokerHarness()
    one, two = harness.peer(), harness.peer()
    ok(one.heartbeat("c1", "G", {"T": "*"}, producer_groups=("CLIENT_INNER_PRODUCER",)))
    ok(two.heartbeat("c2", "G", {"T": "*"}))
    one.take_pushed(), two.take_pushed()
    response = ok(one.unregister("c1", consumer_group="G"))
    assert response.ext_fields == {}  # as Apache: an empty header, not none
    assert notified(two) == ["G"]
    assert notified(one) == []
    assert ids(two, "G") == ["c2"]
    ok(one.unregister("c1", producer_group="CLIENT_INNER_PRODUCER"))
    assert "CLIENT_INNER_PRODUCER" not in harness.broker.clients.producers
    # the last member leaving notifies nobody, and the group has no consumer
    ok(two.unregister("c2", consumer_group="G"))
    assert notified(two) == []
    response = two.consumer_list("G")
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert response.remark == "no consumer for this group, G"


def test_cpp_unregister_with_an_empty_consumer_group() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    ok(peer.heartbeat("c1", "G", {"T": "*"}, producer_groups=("cpp_pg",)))
    ok(peer.unregister("c1", consumer_group="", producer_group="cpp_pg"))
    assert ids(peer, "G") == ["c1"]
    assert "cpp_pg" not in harness.broker.clients.producers


def test_notify_on_close_to_those_left_in_every_group_of_the_channel() -> None:
    harness = BrokerHarness()
    leaving, g_member, h_member = harness.peer(), harness.peer(), harness.peer()
    ok(leaving.heartbeat("x", "G", {"T": "*"}))
    ok(leaving.heartbeat("x", "H", {"T": "*"}))
    ok(g_member.heartbeat("g", "G", {"T": "*"}))
    ok(h_member.heartbeat("h", "H", {"T": "*"}))
    for peer in (leaving, g_member, h_member):
        peer.take_pushed()
    leaving.close()
    assert notified(g_member) == ["G"]
    assert notified(h_member) == ["H"]
    assert ids(g_member, "G") == ["g"]
    assert ids(h_member, "H") == ["h"]


def test_no_consumer_list_for_an_unknown_group() -> None:
    harness = BrokerHarness()
    response = harness.peer().consumer_list("nobody")
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert response.remark == "no consumer for this group, nobody"


def test_a_client_on_two_connections_is_listed_once() -> None:
    harness = BrokerHarness()
    first, second = harness.peer(), harness.peer()
    ok(first.heartbeat("c1", "G", {"T": "*"}))
    ok(second.heartbeat("c1", "G", {"T": "*"}))
    assert ids(first, "G") == ["c1"]
    first.close()
    assert ids(second, "G") == ["c1"]


def test_expired_clients_leave_their_groups_and_the_rest_are_notified() -> None:
    harness = BrokerHarness()
    quiet, alive = harness.peer(), harness.peer()
    ok(quiet.heartbeat("quiet", "G", {"T": "*"}, producer_groups=("PG",)))
    ok(alive.heartbeat("alive", "G", {"T": "*"}))
    quiet.take_pushed(), alive.take_pushed()
    for _ in range(5):
        harness.advance(30)
        ok(alive.heartbeat("alive", "G", {"T": "*"}))
    clients = harness.broker.clients
    dropped = clients.expire(harness.clock.seconds() - 120)
    assert sorted(info.client_id for info in dropped) == ["quiet", "quiet"]
    assert ids(alive, "G") == ["alive"]
    assert notified(alive) == ["G"]
    assert "PG" not in clients.producers
    assert clients.expire(harness.clock.seconds() - 120) == []


def test_check_client_config_accepts_tag_and_refuses_sql92() -> None:
    harness = BrokerHarness()
    peer = harness.peer()

    def check(expression_type: str | None) -> int:
        subscription: dict[str, Any] = {"topic": "T", "subString": "a > 1"}
        if expression_type is not None:
            subscription["expressionType"] = expression_type
        body = {"clientId": "c1", "group": "G", "subscriptionData": subscription}
        response = peer.request(RequestCode.CHECK_CLIENT_CONFIG, None, json.dumps(body).encode())
        if response.code != ResponseCode.SUCCESS:
            assert "SQL92" in (response.remark or "")
        return response.code

    assert check("TAG") == ResponseCode.SUCCESS
    assert check(None) == ResponseCode.SUCCESS
    assert check("SQL92") == ResponseCode.SYSTEM_ERROR
    assert check("sql92") == ResponseCode.SYSTEM_ERROR
    empty = peer.request(RequestCode.CHECK_CLIENT_CONFIG)
    assert empty.code == ResponseCode.SUCCESS


def test_an_older_subscription_from_another_member_does_not_replace_a_newer_one() -> None:
    # Two consumers of a group start at different times, so their subVersions differ; the
    # one started earlier keeps heartbeating its older version. As Apache
    # (ConsumerGroupInfo.updateSubscription) the broker keeps the newest version of each
    # topic, so the newer member's pulls are not refused SUBSCRIPTION_NOT_LATEST.
    harness = BrokerHarness()
    early, late = harness.peer(), harness.peer()
    ok(early.send_message("T", b"m"))
    ok(early.heartbeat("early", "G", {"T": "*"}, sub_version=100))
    ok(late.heartbeat("late", "G", {"T": "*"}, sub_version=200))
    ok(early.heartbeat("early", "G", {"T": "*"}, sub_version=100))
    assert harness.broker.clients.subscription("G", "T").version == 200  # type: ignore[union-attr]
    for peer, version in ((late, 200), (early, 100)):
        response = peer.pull("T", sys_flag=2, subscription=None, group="G", sub_version=version)
        assert response.code == ResponseCode.SUCCESS
