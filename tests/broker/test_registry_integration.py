"""One name server (a dev broker) and two dev brokers registered with it, on loopback:
routes list both, a producer sends to both, a stopped broker leaves the routes."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.headers import GetRouteInfoRequestHeader
from rmqtwist.message import Message
from rmqtwist.producer import Producer
from rmqtwist.routing import TopicRoute, parse_route
from rmqtwist.testing import RunningBroker, start_broker


async def _route(client: RemotingClient, ns: RunningBroker, topic: str) -> TopicRoute | None:
    request = GetRouteInfoRequestHeader(topic=topic).to_request(RequestCode.GET_ROUTEINFO_BY_TOPIC)
    response = await client.invoke(ns.address, request)
    if response.code == ResponseCode.TOPIC_NOT_EXIST:
        return None
    assert response.code == ResponseCode.SUCCESS, response.remark
    return parse_route(topic, response.body)


@pytest_twisted.ensureDeferred
async def test_two_brokers_behind_one_name_server() -> None:
    ns = await start_broker(broker_name="ns")
    b1 = await start_broker(broker_name="b1", name_server=ns.address)
    b2 = await start_broker(broker_name="b2", name_server=f"{ns.address};")
    client = RemotingClient()
    producer = Producer("PG", [ns.address])
    try:
        # registered as soon as start_broker returns
        route = await _route(client, ns, "TBW102")
        assert route is not None
        assert route.masters == {"ns": ns.address, "b1": b1.address, "b2": b2.address}

        b1.create_topic("Both", 2)
        b2.create_topic("Both", 3)
        b2.create_topic("OnlyB2", 1)
        for running in (b1, b2):
            registrar = running.service.registrar
            assert registrar is not None
            await registrar.register_all()
        route = await _route(client, ns, "Both")
        assert route is not None
        assert route.masters == {"b1": b1.address, "b2": b2.address}
        assert [(q.broker_name, q.queue_id) for q in route.write_queues] == [
            ("b1", 0), ("b1", 1), ("b2", 0), ("b2", 1), ("b2", 2),
        ]  # fmt: skip

        # a raw RemotingClient reaches both through the addresses in the route
        for name, address in route.masters.items():
            response = await client.invoke(
                address, RemotingCommand.request(RequestCode.GET_BROKER_RUNTIME_INFO)
            )
            assert response.code == ResponseCode.SUCCESS, name

        # and the producer spreads over both
        await producer.start()
        sent = [await producer.send(Message("Both", b"m%d" % i)) for i in range(10)]
        assert {result.queue.broker_name for result in sent} == {"b1", "b2"}
        assert len(b1.messages("Both")) + len(b2.messages("Both")) == 10
        assert b1.messages("Both") and b2.messages("Both")

        response = await client.invoke(
            ns.address, RemotingCommand.request(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER)
        )
        assert {"Both", "OnlyB2"} <= set(json.loads(response.body)["topicList"])
        response = await client.invoke(
            ns.address, RemotingCommand.request(RequestCode.GET_BROKER_CLUSTER_INFO)
        )
        info = json.loads(response.body)
        assert info["clusterAddrTable"] == {"DefaultCluster": ["b1", "b2", "ns"]}

        # a topic created later shows up within a second or so (no waiting 30 s)
        b1.create_topic("Later", 1)
        for _ in range(40):
            if await _route(client, ns, "Later") is not None:
                break
            await deferLater(reactor, 0.1, lambda: None)
        later = await _route(client, ns, "Later")
        assert later is not None and later.masters == {"b1": b1.address}

        # stopping b2 unregisters it: its entries go at once
        await b2.stop()
        route = await _route(client, ns, "Both")
        assert route is not None and route.masters == {"b1": b1.address}
        assert await _route(client, ns, "OnlyB2") is None
        await producer.send(Message("Both", b"after"))  # refreshed route: b1 only
    finally:
        await producer.shutdown()
        await client.close()
        for running in (b1, b2, ns):
            await running.stop()


@pytest_twisted.ensureDeferred
async def test_same_broker_name_twice_is_refused_and_does_not_take_over() -> None:
    ns = await start_broker(broker_name="ns")
    b1 = await start_broker(broker_name="b1", name_server=ns.address)
    clash = await start_broker(broker_name="b1", name_server=ns.address)
    client = RemotingClient()
    try:
        registrar = clash.service.registrar
        assert registrar is not None and not registrar.registered(ns.address)
        route = await _route(client, ns, "TBW102")
        assert route is not None and route.masters["b1"] == b1.address
    finally:
        await client.close()
        for running in (clash, b1, ns):
            await running.stop()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_name_server_does_not_stop_the_broker() -> None:
    ns = await start_broker(broker_name="ns")
    address = ns.address
    await ns.stop()
    broker = await start_broker(broker_name="b1", name_server=address, register_timeout=1.0)
    try:
        registrar = broker.service.registrar
        assert registrar is not None and not registrar.registered(address)
        assert broker.topics(system=True)
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_restarted_name_server_gets_the_broker_back_at_the_next_round() -> None:
    ns = await start_broker(broker_name="ns")
    port = ns.port
    broker = await start_broker(broker_name="b1", name_server=ns.address)
    client = RemotingClient()
    registrar = broker.service.registrar
    assert registrar is not None and registrar.registered(ns.address)
    await ns.stop()
    await registrar.register_all()  # the name server is down: logged, tried again later
    assert not registrar.registered(ns.address)
    await deferLater(reactor, 1.5, lambda: None)  # past the client's first connect backoff
    ns = await start_broker(broker_name="ns", port=port)
    try:
        await registrar.register_all()  # what the next 30 s round does
        assert registrar.registered(ns.address)
        route = await _route(client, ns, "TBW102")
        assert route is not None and route.masters["b1"] == broker.address
    finally:
        await client.close()
        await broker.stop()
        await ns.stop()
