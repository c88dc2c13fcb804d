"""The name-server role with other brokers registered (REGISTER_BROKER 103 /
UNREGISTER_BROKER 104): the wire formats as Apache 4.9 writes them, the merged routes,
cluster info and topic list, and expiry, all on a Clock."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.registrar import BrokerRegistrar
from rmqtwist.broker.registry import (
    DataVersion,
    RegisterBrokerBody,
    RegisterBrokerRequestHeader,
    UnRegisterBrokerRequestHeader,
    body_crc32,
    decode_register_body,
    encode_register_body,
)
from rmqtwist.broker.topics import TopicConfig
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import BodyError, ConnectError
from rmqtwist.routing import parse_route

from .harness import BROKER, BrokerHarness, Peer

T0 = 1_700_000_000_000
V1 = DataVersion(T0, 1)


def _topic(name: str, queues: int = 4, perm: int = 6, order: bool = False) -> TopicConfig:
    return TopicConfig(name, queues, queues, perm, order=order)


# -- the body, as Apache's RegisterBrokerBody writes it ---------------------------------


def test_json_body_is_fastjson_shaped() -> None:
    body = RegisterBrokerBody(DataVersion(T0, 3), {"T": _topic("T", 2)})
    assert json.loads(encode_register_body(body)) == {
        "filterServerList": [],
        "topicConfigSerializeWrapper": {
            "dataVersion": {"counter": 3, "timestamp": T0},
            "topicConfigTable": {
                "T": {
                    "order": False,
                    "perm": 6,
                    "readQueueNums": 2,
                    "topicFilterType": "SINGLE_TAG",
                    "topicName": "T",
                    "topicSysFlag": 0,
                    "writeQueueNums": 2,
                }
            },
        },
    }
    assert decode_register_body(encode_register_body(body)) == body


def _hand_built_compressed() -> bytes:
    # Apache 4.9 RegisterBrokerBody.encode(true), written out by hand: inside a zlib
    # stream (Deflater level 9, with the zlib header), big-endian int32 lengths:
    #   len + DataVersion JSON, topic count, per topic len + TopicConfig.encode()
    #   ("name read write perm filterType"), len + filter server list JSON.
    version = b'{"counter":1,"timestamp":1700000000000}'
    line_t = b"T 4 4 6 SINGLE_TAG"
    line_r = b"%RETRY%G 1 1 6 SINGLE_TAG"
    plain = (
        b"\x00\x00\x00\x27" + version  # 39 bytes
        + b"\x00\x00\x00\x02"
        + b"\x00\x00\x00\x12" + line_t  # 18 bytes
        + b"\x00\x00\x00\x19" + line_r  # 25 bytes
        + b"\x00\x00\x00\x02" + b"[]"
    )  # fmt: skip
    assert len(version) == 0x27 and len(line_t) == 0x12 and len(line_r) == 0x19
    return zlib.compress(plain, 9)


def test_compressed_body_decodes_from_a_hand_built_example() -> None:
    data = _hand_built_compressed()
    assert data[:2] == b"\x78\xda"  # zlib header, best compression
    body = decode_register_body(data, compressed=True)
    assert body.data_version == DataVersion(T0, 1)
    assert body.topics == {"T": _topic("T", 4), "%RETRY%G": _topic("%RETRY%G", 1)}
    assert body.filter_servers == ()


def test_compressed_body_encodes_to_the_hand_built_example() -> None:
    body = RegisterBrokerBody(
        DataVersion(T0, 1), {"T": _topic("T", 4), "%RETRY%G": _topic("%RETRY%G", 1)}
    )
    encoded = encode_register_body(body, compressed=True)
    assert zlib.decompress(encoded) == zlib.decompress(_hand_built_compressed())
    assert encoded == _hand_built_compressed()


def test_compressed_body_of_apache_5_is_read_too() -> None:
    # 5.x appends the attributes JSON to each topic line and a static-topic mapping count.
    version = b'{"counter":2,"stateVersion":0,"timestamp":1700000000000}'
    line = b'T 8 8 6 SINGLE_TAG {"+message.type":"NORMAL"}'
    plain = (
        struct.pack(">i", len(version)) + version
        + struct.pack(">i", 1) + struct.pack(">i", len(line)) + line
        + struct.pack(">i", 2) + b"[]"
        + struct.pack(">i", 0)
    )  # fmt: skip
    body = decode_register_body(zlib.compress(plain), compressed=True)
    assert body.topics == {"T": _topic("T", 8)} and body.data_version == DataVersion(T0, 2)


@pytest.mark.parametrize(
    ("data", "compressed", "error"),
    [
        (b"not zlib", True, "not a zlib stream"),
        (zlib.compress(b"\x00\x00\x00\x10{}"), True, "ends inside the data version"),
        (zlib.compress(b"\x00\x00\x00\x02{}\x00\x00\x00\x01\x00\x00\x00\x01T"), True, "5 fields"),
        (b"[1]", False, "must be a JSON object"),
        (b"{", False, "not valid JSON"),
    ],
)
def test_bad_bodies_are_body_errors(data: bytes, compressed: bool, error: str) -> None:
    with pytest.raises(BodyError, match=error):
        decode_register_body(data, compressed=compressed)


def test_crc_is_masked_to_31_bits() -> None:
    assert body_crc32(b"hello") == zlib.crc32(b"hello") & 0x7FFFFFFF == 0x3610A686


def test_headers_are_what_java_writes() -> None:
    header = RegisterBrokerRequestHeader(
        broker_name="b1",
        broker_addr="10.0.0.1:10911",
        cluster_name="C",
        ha_server_addr="10.0.0.1:10912",
        broker_id=0,
        body_crc32=12,
    )
    assert header.to_ext_fields() == {
        "brokerName": "b1",
        "brokerAddr": "10.0.0.1:10911",
        "clusterName": "C",
        "haServerAddr": "10.0.0.1:10912",
        "brokerId": "0",
        "compressed": "false",
        "bodyCrc32": "12",
    }
    unregister = UnRegisterBrokerRequestHeader(
        broker_name="b1", broker_addr="10.0.0.1:10911", cluster_name="C", broker_id=0
    )
    assert set(unregister.to_ext_fields()) == {
        "brokerName",
        "brokerAddr",
        "clusterName",
        "brokerId",
    }


# -- the name server: merging, expiry, unregistering ------------------------------------


def _register(
    peer: Peer,
    name: str,
    address: str,
    topics: dict[str, TopicConfig],
    *,
    version: DataVersion = V1,
    compressed: bool = False,
    cluster: str = "DefaultCluster",
    broker_id: int = 0,
    crc: int | None = None,
) -> RemotingCommand:
    body = encode_register_body(RegisterBrokerBody(version, topics), compressed=compressed)
    ext = {
        "brokerName": name,
        "brokerAddr": address,
        "clusterName": cluster,
        "haServerAddr": address,
        "brokerId": str(broker_id),
        "compressed": "true" if compressed else "false",
        "bodyCrc32": str(body_crc32(body) if crc is None else crc),
    }
    return peer.request(RequestCode.REGISTER_BROKER, ext, body)


def _unregister(peer: Peer, name: str, address: str) -> RemotingCommand:
    ext = {"brokerName": name, "brokerAddr": address, "clusterName": "DefaultCluster"}
    return peer.request(RequestCode.UNREGISTER_BROKER, {**ext, "brokerId": "0"})


def _route(peer: Peer, topic: str) -> dict[str, Any] | None:
    response = peer.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
    if response.code == ResponseCode.TOPIC_NOT_EXIST:
        return None
    assert response.code == ResponseCode.SUCCESS, response.remark
    route: dict[str, Any] = json.loads(response.body)
    return route


def _masters(peer: Peer, topic: str) -> dict[str, str]:
    route = _route(peer, topic)
    if route is None:
        return {}
    return parse_route(topic, json.dumps(route).encode()).masters


def _topics(peer: Peer) -> set[str]:
    response = peer.request(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER)
    return set(json.loads(response.body)["topicList"])


@pytest.fixture
def ns() -> BrokerHarness:
    return BrokerHarness(BrokerConfig(broker_name="ns"))


def test_routes_merge_every_registered_broker(ns: BrokerHarness) -> None:
    peer = ns.peer()
    one, two = ns.peer("10.0.0.1"), ns.peer("10.0.0.2")
    response = _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T", 4), "U": _topic("U")})
    assert response.code == ResponseCode.SUCCESS and response.remark is None
    assert not {"haServerAddr", "masterAddr"} & set(response.ext_fields or {})
    assert _register(two, "b2", "10.0.0.2:10911", {"T": _topic("T", 2)}, compressed=True).code == 0

    route = _route(peer, "T")
    assert route is not None
    assert route["brokerDatas"] == [
        {"brokerAddrs": {"0": "10.0.0.1:10911"}, "brokerName": "b1", "cluster": "DefaultCluster"},
        {"brokerAddrs": {"0": "10.0.0.2:10911"}, "brokerName": "b2", "cluster": "DefaultCluster"},
    ]
    assert [(q["brokerName"], q["writeQueueNums"]) for q in route["queueDatas"]] == [
        ("b1", 4),
        ("b2", 2),
    ]
    parsed = parse_route("T", json.dumps(route).encode())
    assert [(q.broker_name, q.queue_id) for q in parsed.write_queues] == [
        ("b1", 0), ("b1", 1), ("b1", 2), ("b1", 3), ("b2", 0), ("b2", 1),
    ]  # fmt: skip
    assert _masters(peer, "U") == {"b1": "10.0.0.1:10911"}
    assert _route(peer, "nowhere") is None

    # the name server's own topics are there too, with itself at the address asked
    ns.broker.topics.ensure("T", 8)
    assert _masters(peer, "T") == {"ns": BROKER, "b1": "10.0.0.1:10911", "b2": "10.0.0.2:10911"}
    assert {"T", "U", "TBW102"} <= _topics(peer)

    info = json.loads(peer.request(RequestCode.GET_BROKER_CLUSTER_INFO).body)
    assert info["clusterAddrTable"] == {"DefaultCluster": ["b1", "b2", "ns"]}
    assert info["brokerAddrTable"]["b2"]["brokerAddrs"] == {"0": "10.0.0.2:10911"}
    assert info["brokerAddrTable"]["ns"]["brokerAddrs"] == {"0": BROKER}


def test_a_broker_that_stops_registering_expires_after_120_s(ns: BrokerHarness) -> None:
    peer, one, two = ns.peer(), ns.peer("10.0.0.1"), ns.peer("10.0.0.2")
    _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")})
    _register(two, "b2", "10.0.0.2:10911", {"T": _topic("T"), "V": _topic("V")})
    ns.advance(60)
    _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")})  # b1 keeps registering
    ns.advance(60)
    assert set(_masters(peer, "T")) == {"b1", "b2"}  # b2's last was exactly 120 s ago
    ns.advance(0.5)
    assert set(_masters(peer, "T")) == {"b1"}
    assert _route(peer, "V") is None and "V" not in _topics(peer)
    info = json.loads(peer.request(RequestCode.GET_BROKER_CLUSTER_INFO).body)
    assert info["clusterAddrTable"] == {"DefaultCluster": ["b1", "ns"]}
    ns.advance(60)
    assert _masters(peer, "T") == {} and _route(peer, "T") is None
    # registering again brings it back at once
    _register(two, "b2", "10.0.0.2:10911", {"V": _topic("V")})
    assert _masters(peer, "V") == {"b2": "10.0.0.2:10911"}


def test_unregister_and_a_closed_connection_drop_the_broker(ns: BrokerHarness) -> None:
    peer, one, two = ns.peer(), ns.peer("10.0.0.1"), ns.peer("10.0.0.2")
    _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")})
    _register(two, "b2", "10.0.0.2:10911", {"T": _topic("T")})
    assert _unregister(one, "b1", "10.0.0.1:10911").code == ResponseCode.SUCCESS
    assert set(_masters(peer, "T")) == {"b2"}
    assert _unregister(one, "b1", "10.0.0.1:10911").code == ResponseCode.SUCCESS  # idempotent
    two.close()
    assert _route(peer, "T") is None


def test_topics_are_reread_only_when_the_data_version_changes(ns: BrokerHarness) -> None:
    peer, one = ns.peer(), ns.peer("10.0.0.1")
    _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")})
    _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T"), "W": _topic("W")})
    assert _route(peer, "W") is None  # same version: Apache keeps what it had
    _register(one, "b1", "10.0.0.1:10911", {"W": _topic("W", 2)}, version=DataVersion(T0, 2))
    route = _route(peer, "W")
    assert route is not None and route["queueDatas"][0]["writeQueueNums"] == 2
    assert _route(peer, "T") is not None  # merged, not replaced (as Apache)


def test_a_taken_broker_name_is_refused_with_a_clear_error(ns: BrokerHarness) -> None:
    peer, one, two = ns.peer(), ns.peer("10.0.0.1"), ns.peer("10.0.0.2")
    response = _register(one, "ns", "10.0.0.1:10911", {"T": _topic("T")})
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert "name server's own broker" in (response.remark or "")
    assert "--broker-name" in (response.remark or "")

    assert _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")}).code == 0
    response = _register(two, "b1", "10.0.0.2:10911", {"T": _topic("T")})
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert "registered already by the broker at 10.0.0.1:10911" in (response.remark or "")
    assert _masters(peer, "T") == {"b1": "10.0.0.1:10911"}
    ns.advance(121)  # the first one went quiet: the name is free again
    assert _register(two, "b1", "10.0.0.2:10911", {"T": _topic("T")}).code == 0
    assert _masters(peer, "T") == {"b1": "10.0.0.2:10911"}


def test_bad_crc_and_bad_bodies_are_refused(ns: BrokerHarness) -> None:
    one = ns.peer("10.0.0.1")
    response = _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")}, crc=5)
    assert (response.code, response.remark) == (ResponseCode.SYSTEM_ERROR, "crc32 not match")
    ext = {
        "brokerName": "b1",
        "brokerAddr": "10.0.0.1:10911",
        "clusterName": "C",
        "haServerAddr": "x",
        "brokerId": "0",
        "compressed": "true",
    }
    response = one.request(RequestCode.REGISTER_BROKER, ext, b"garbage")
    assert response.code == ResponseCode.SYSTEM_ERROR
    assert "not a zlib stream" in (response.remark or "")
    response = one.request(RequestCode.REGISTER_BROKER, {"brokerName": "b1"})
    assert response.code == ResponseCode.SYSTEM_ERROR and "brokerAddr" in (response.remark or "")


def test_a_slave_is_told_its_master(ns: BrokerHarness) -> None:
    one = ns.peer("10.0.0.1")
    _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")})
    response = _register(one, "b1", "10.0.0.3:10911", {"T": _topic("T")}, broker_id=1)
    assert response.code == 0
    assert response.ext_fields == {"haServerAddr": "10.0.0.1:10911", "masterAddr": "10.0.0.1:10911"}
    route = _route(ns.peer(), "T")
    assert route is not None
    assert route["brokerDatas"][0]["brokerAddrs"] == {"0": "10.0.0.1:10911", "1": "10.0.0.3:10911"}


def test_order_topics_are_in_order_topic_conf(ns: BrokerHarness) -> None:
    one = ns.peer("10.0.0.1")
    _register(one, "b1", "10.0.0.1:10911", {"O": _topic("O", 3, order=True)})
    route = _route(ns.peer(), "O")
    assert route is not None and route["orderTopicConf"] == "b1:3"


# -- the registering side, on a Clock ---------------------------------------------------


class _WireClient:
    """A RemotingClient stand-in that hands each request to a harness name server
    (through a peer, so the whole wire path runs), or fails while ``down``."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.down = False
        self.sent: list[RemotingCommand] = []
        self.closed = False

    def invoke(
        self, address: str | None, request: RemotingCommand, timeout: float = 3.0
    ) -> Deferred[RemotingCommand]:
        self.sent.append(request)
        if self.down:
            return fail(ConnectError(f"cannot connect to {address}: refused"))
        return succeed(self.peer.call(request))

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


def test_registrar_registers_at_start_every_30_s_on_change_and_unregisters() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    ns = BrokerHarness(BrokerConfig(broker_name="ns"), clock=clock)
    broker = BrokerHarness(BrokerConfig(broker_name="b1", register_compressed=True), clock=clock)
    peer = ns.peer()
    client = _WireClient(ns.peer("10.0.0.1"))
    registrar = BrokerRegistrar(
        broker.broker,
        ["127.0.0.1:9876"],
        "10.0.0.1:10911",
        client=client,  # type: ignore[arg-type]
    )
    started = registrar.start()
    assert started.called and registrar.registered("127.0.0.1:9876")
    assert len(client.sent) == 1
    header = RegisterBrokerRequestHeader.from_command(client.sent[0])
    assert (header.broker_name, header.broker_addr, header.broker_id) == ("b1", "10.0.0.1:10911", 0)
    assert header.compressed and header.body_crc32 == body_crc32(client.sent[0].body)
    assert client.sent[0].version == 409
    assert _masters(peer, "TBW102") == {"ns": BROKER, "b1": "10.0.0.1:10911"}

    clock.advance(20)
    assert len(client.sent) == 1
    broker.broker.topics.ensure("New", 2)  # a new topic registers within a second
    clock.advance(1)
    assert len(client.sent) == 2
    assert _masters(peer, "New") == {"b1": "10.0.0.1:10911"}
    clock.advance(9)  # the periodic one (30 s after the start)
    assert len(client.sent) == 3
    first = decode_register_body(client.sent[0].body, compressed=True).data_version
    second = decode_register_body(client.sent[1].body, compressed=True).data_version
    third = decode_register_body(client.sent[2].body, compressed=True).data_version
    assert second.counter == first.counter + 1 and third == second

    # the name server expires it only when it stops registering
    clock.advance(300)
    assert "b1" in _masters(peer, "New")

    stopped = registrar.stop()
    assert stopped.called and client.closed is False  # a given client is not closed
    assert client.sent[-1].code == RequestCode.UNREGISTER_BROKER
    assert _route(peer, "New") is None
    assert not registrar.registered("127.0.0.1:9876")
    count = len(client.sent)
    clock.advance(60)
    assert len(client.sent) == count  # nothing after stop


def test_registrar_failures_are_logged_rate_limited_and_retried() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()
        clock.advance(1_700_000_000)
        ns = BrokerHarness(BrokerConfig(broker_name="ns"), clock=clock)
        broker = BrokerHarness(BrokerConfig(broker_name="b1"), clock=clock)
        client = _WireClient(ns.peer("10.0.0.1"))
        client.down = True
        registrar = BrokerRegistrar(
            broker.broker,
            ["127.0.0.1:9876"],
            "10.0.0.1:10911",
            client=client,  # type: ignore[arg-type]
        )
        assert registrar.start().called
        for _ in range(9):
            clock.advance(30)
        assert len(client.sent) == 10
        failures = [e for e in events if "Could not register" in e.get("log_format", "")]
        assert len(failures) == 1  # the first; the next after 300 s
        assert "refused" in failures[0]["error"]
        clock.advance(30)
        failures = [e for e in events if "Could not register" in e.get("log_format", "")]
        assert len(failures) == 2 and failures[1]["failures"] == 11
        client.down = False
        clock.advance(30)
        assert registrar.registered("127.0.0.1:9876")
        assert any("again, after" in e.get("log_format", "") for e in events)
        assert _masters(ns.peer(), "TBW102")["b1"] == "10.0.0.1:10911"
        registrar.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_registrar_logs_a_refusal_with_the_name_servers_reason() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()
        ns = BrokerHarness(BrokerConfig(broker_name="b1"), clock=clock)  # same name
        broker = BrokerHarness(BrokerConfig(broker_name="b1"), clock=clock)
        client = _WireClient(ns.peer("10.0.0.1"))
        registrar = BrokerRegistrar(
            broker.broker,
            ["127.0.0.1:9876"],
            "10.0.0.1:10911",
            client=client,  # type: ignore[arg-type]
        )
        registrar.start()
        assert not registrar.registered("127.0.0.1:9876")
        refused = [e for e in events if "Could not register" in e.get("log_format", "")]
        assert refused and "distinct --broker-name" in refused[0]["error"]
        registrar.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_a_oneway_registration_is_applied_without_an_answer(ns: BrokerHarness) -> None:
    # Apache's broker registers oneway right after creating a topic for a send.
    one = ns.peer("10.0.0.1")
    body = encode_register_body(RegisterBrokerBody(V1, {"T": _topic("T")}))
    header = RegisterBrokerRequestHeader(
        broker_name="b1",
        broker_addr="10.0.0.1:10911",
        cluster_name="DefaultCluster",
        ha_server_addr="10.0.0.1:10912",
        broker_id=0,
        body_crc32=body_crc32(body),
    )
    one.oneway(RequestCode.REGISTER_BROKER, header.to_ext_fields(), body)
    assert _masters(ns.peer(), "T") == {"b1": "10.0.0.1:10911"}


class _Port:
    def __init__(self, host: str, port: int) -> None:
        self.address = IPv4Address("TCP", host, port)

    def getHost(self) -> IPv4Address:
        return self.address


def test_the_registered_address_is_advertise_else_the_port_else_the_way_out() -> None:
    from rmqtwist.broker.service import BrokerService

    service = BrokerService(BrokerConfig(broker_name="b1"), listen=(), reactor=Clock())
    ports: Any = [_Port("127.0.0.1", 10921)]
    assert service.broker_address(ports, "127.0.0.1:9876") == "127.0.0.1:10921"
    ports = [_Port("0.0.0.0", 10921)]
    assert service.broker_address(ports, "127.0.0.1:9876") == "127.0.0.1:10921"
    assert service.broker_address([], "127.0.0.1:9876") is None
    advertised = BrokerService(
        BrokerConfig(broker_name="b1", advertise="mq.example:20911"), listen=(), reactor=Clock()
    )
    assert advertised.broker_address(ports, "127.0.0.1:9876") == "mq.example:20911"


def test_query_data_version_says_whether_to_register_and_keeps_the_broker_alive(
    ns: BrokerHarness,
) -> None:
    # An Apache broker with forceRegister=false asks this first and registers only when
    # the name server's version differs; an unchanged answer counts as a registration.
    peer, one = ns.peer(), ns.peer("10.0.0.1")
    ext = {
        "brokerName": "b1",
        "brokerAddr": "10.0.0.1:10911",
        "clusterName": "DefaultCluster",
        "brokerId": "0",
    }
    version = json.dumps(V1.to_json()).encode()
    response = one.request(RequestCode.QUERY_DATA_VERSION, ext, version)
    assert response.code == ResponseCode.SUCCESS
    assert (response.ext_fields, response.body) == ({"changed": "true"}, b"")
    _register(one, "b1", "10.0.0.1:10911", {"T": _topic("T")})
    for _ in range(3):
        ns.advance(100)
        response = one.request(RequestCode.QUERY_DATA_VERSION, ext, version)
        assert response.ext_fields == {"changed": "false"}
        assert json.loads(response.body) == {"counter": 1, "timestamp": T0}
    assert "b1" in _masters(peer, "T")  # 300 s after registering: kept alive
    newer = json.dumps(DataVersion(T0, 2).to_json()).encode()
    response = one.request(RequestCode.QUERY_DATA_VERSION, ext, newer)
    assert response.ext_fields == {"changed": "true"}
    ns.advance(121)
    assert _route(peer, "T") is None


def test_a_broker_without_auto_create_does_not_register_tbw102() -> None:
    clock = Clock()
    ns = BrokerHarness(BrokerConfig(broker_name="ns"), clock=clock)
    broker = BrokerHarness(
        BrokerConfig(broker_name="b1", auto_create_topic=False, topics=(("Orders", 2),)),
        clock=clock,
    )
    client = _WireClient(ns.peer("10.0.0.1"))
    registrar = BrokerRegistrar(
        broker.broker,
        ["127.0.0.1:9876"],
        "10.0.0.1:10911",
        client=client,  # type: ignore[arg-type]
    )
    registrar.start()
    topics = decode_register_body(client.sent[0].body).topics
    assert "Orders" in topics and "TBW102" not in topics
    assert "SCHEDULE_TOPIC_XXXX" in topics  # the other system topics are registered
    assert _masters(ns.peer(), "TBW102") == {"ns": BROKER}
    registrar.stop()


def test_a_5x_broker_may_set_its_own_expiry(ns: BrokerHarness) -> None:
    one = ns.peer("10.0.0.1")
    body = encode_register_body(RegisterBrokerBody(V1, {"T": _topic("T")}))
    ext = {
        "brokerName": "b1",
        "brokerAddr": "10.0.0.1:10911",
        "clusterName": "DefaultCluster",
        "haServerAddr": "10.0.0.1:10912",
        "brokerId": "0",
        "heartbeatTimeoutMillis": "10000",
        "enableActingMaster": "false",
        "zoneName": "z1",
        "compressed": "false",
        "bodyCrc32": str(body_crc32(body)),
    }
    assert one.request(RequestCode.REGISTER_BROKER, ext, body).code == ResponseCode.SUCCESS
    ns.advance(10)
    assert _masters(ns.peer(), "T") == {"b1": "10.0.0.1:10911"}
    ns.advance(0.5)
    assert _route(ns.peer(), "T") is None


def test_an_address_registering_under_a_new_name_leaves_the_old_name(ns: BrokerHarness) -> None:
    one = ns.peer("10.0.0.1")
    _register(one, "old", "10.0.0.1:10911", {"T": _topic("T")})
    _register(one, "new", "10.0.0.1:10911", {"T": _topic("T")})
    assert _masters(ns.peer(), "T") == {"new": "10.0.0.1:10911"}
    info = json.loads(ns.peer().request(RequestCode.GET_BROKER_CLUSTER_INFO).body)
    assert set(info["brokerAddrTable"]) == {"new", "ns"}
