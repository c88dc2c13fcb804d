"""``rmqtwist.routing``: route parsing, and RouteTable against the dev broker's name server."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted

from rmqtwist.client import RemotingClient
from rmqtwist.codes import ResponseCode
from rmqtwist.routing import (
    MessageQueue,
    NoRouteError,
    RouteTable,
    TopicNotFoundError,
    parse_route,
    split_addresses,
)
from rmqtwist.testing import start_broker

_ROUTE = (
    b'{"brokerDatas":[{"brokerAddrs":{"0":"h:1","1":"h:2"},"brokerName":"b1"},'
    b'{"brokerAddrs":{"1":"h:3","2":"h:5"},"brokerName":"b2"},'
    b'{"brokerAddrs":{"0":"h:4"},"brokerName":"b0"}],'
    b'"queueDatas":[{"brokerName":"b1","perm":6,"writeQueueNums":2,"readQueueNums":3},'
    b'{"brokerName":"b2","perm":6,"writeQueueNums":2,"readQueueNums":1},'
    b'{"brokerName":"b0","perm":4,"writeQueueNums":3,"readQueueNums":1},'
    b'{"brokerName":"gone","perm":6,"writeQueueNums":1,"readQueueNums":1}]}'
)


def test_parse_route_read_and_write_queues() -> None:
    for body in (_ROUTE, _ROUTE.replace(b'"0":', b"0:").replace(b'"1":', b"1:")):
        route = parse_route("T", body)
        assert route.topic == "T"
        assert route.masters == {"b1": "h:1", "b0": "h:4"}
        # b2 has no master: readable, not writable; b0 is read-only; "gone" has no address
        assert route.write_queues == (MessageQueue("T", "b1", 0), MessageQueue("T", "b1", 1))
        assert route.queues == route.write_queues
        assert route.read_queues == (
            MessageQueue("T", "b0", 0),
            MessageQueue("T", "b1", 0),
            MessageQueue("T", "b1", 1),
            MessageQueue("T", "b1", 2),
            MessageQueue("T", "b2", 0),
        )
        assert route.address("b1") == "h:1"
        assert route.address("b2") == "h:3"  # no master: the lowest id
        assert route.address("nope") is None


def test_parse_route_rejects_what_is_not_a_route() -> None:
    with pytest.raises(ValueError):
        parse_route("T", b"not json")
    with pytest.raises((KeyError, TypeError, AttributeError)):
        parse_route("T", b'{"brokerDatas":[{"brokerAddrs":{"0":"h:1"}}]}')


def test_split_addresses() -> None:
    assert split_addresses(" a:1; b:2 ;") == ["a:1", "b:2"]
    assert split_addresses(["a:1", " ", "b:2"]) == ["a:1", "b:2"]
    assert str(MessageQueue("T", "b", 3)) == "T@b:3"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest_twisted.ensureDeferred
async def test_route_table_against_the_dev_broker() -> None:
    from twisted.internet import reactor

    broker = await start_broker(auto_create_topic=False)
    client = RemotingClient(reactor)
    try:
        broker.create_topic("Known", 3)
        # the first name server is down: the next one answers
        table = RouteTable(client, f"{_closed_port()};{broker.address}", timeout=2.0)
        route = await table.route("Known")
        assert [q.queue_id for q in route.read_queues] == [0, 1, 2]
        assert route.write_queues == route.read_queues
        assert table.cached("Known") is route
        assert await table.route("Known") is route  # cached, not asked again
        assert set(table.brokers()) == set(route.brokers)
        assert "Known" in await table.all_topics()

        with pytest.raises(TopicNotFoundError, match="'Nope' does not exist") as missing:
            await table.route("Nope")
        assert missing.value.codes == {ResponseCode.TOPIC_NOT_EXIST}  # the one that answered

        await broker.stop()
        # a failed refresh keeps the cached route; an unknown topic has none to keep
        assert await table.route("Known", refresh=True) is route
        await table.refresh_all()
        assert table.cached("Known") is route
        with pytest.raises(NoRouteError) as info:
            await table.route("Other")
        assert not isinstance(info.value, TopicNotFoundError)
        assert info.value.codes == frozenset()  # nobody answered
        table.forget("Known")
        assert table.cached("Known") is None and table.topics == []
    finally:
        await broker.stop()
        await client.close()


def test_route_table_needs_a_name_server() -> None:
    with pytest.raises(ValueError):
        RouteTable(RemotingClient(), " ; ")
