"""``rmqtwist.consumer._base``: each broker call against the dev broker, and allocation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rmqtwist.client import RemotingClient
from rmqtwist.consumer._base import (
    BrokerAnswerError,
    ConsumerData,
    PullStatus,
    Subscription,
    allocate_averagely,
    consumer_ids,
    heartbeat_request,
    lock_queues,
    max_offset,
    min_offset,
    parse_expression,
    pull,
    query_offset,
    restore_retry_topic,
    search_offset,
    send_back,
    unlock_queues,
    unregister_request,
    update_offset,
)
from rmqtwist.message import Message, MessageExt, tag_hash
from rmqtwist.producer import Producer
from rmqtwist.routing import MessageQueue
from rmqtwist.testing import RunningBroker, start_broker

# -- pure pieces --------------------------------------------------------------------------


def test_parse_expression_and_matching() -> None:
    assert parse_expression("*") == frozenset() == parse_expression("  ")
    assert parse_expression("A || B ||  ") == {"A", "B"}
    sub = Subscription("T", "A || B", 7)
    assert sub.matches("A") and sub.matches("B")
    assert not sub.matches("C") and not sub.matches(None)
    assert Subscription("T").matches(None) and Subscription("T", " ").expression == "*"
    assert sub.code_set == sorted([tag_hash("A"), tag_hash("B")])
    assert sub.to_json() == {
        "classFilterMode": False,
        "codeSet": sub.code_set,
        "expressionType": "TAG",
        "subString": "A || B",
        "subVersion": 7,
        "tagsSet": ["A", "B"],
        "topic": "T",
    }


def test_heartbeat_and_unregister_requests() -> None:
    data = ConsumerData("G", subscriptions=(Subscription("T", "*", 1),))
    body = json.loads(heartbeat_request("cid", [data], ["PG"]).body or b"")
    assert body["clientID"] == "cid"
    assert body["producerDataSet"] == [{"groupName": "PG"}]
    (consumer,) = body["consumerDataSet"]
    assert consumer["groupName"] == "G" and consumer["consumeType"] == "CONSUME_PASSIVELY"
    assert consumer["subscriptionDataSet"][0]["topic"] == "T"
    request = unregister_request("cid", consumer_group="G")
    assert request.code == 35 and request.ext_fields == {"clientID": "cid", "consumerGroup": "G"}


def test_allocate_averagely_as_java() -> None:
    queues = [MessageQueue("T", "b", i) for i in range(5)]
    ids = ["c", "a", "b"]  # sorted inside: a, b, c
    shares = {cid: [q.queue_id for q in allocate_averagely(queues, ids, cid)] for cid in ids}
    assert shares == {"a": [0, 1], "b": [2, 3], "c": [4]}
    assert allocate_averagely(queues, ids, "stranger") == []
    # more members than queues: the last ones get nothing
    few = queues[:2]
    assert [allocate_averagely(few, ids, c) for c in "abc"] == [[few[0]], [few[1]], []]


@given(
    st.integers(min_value=0, max_value=40),
    st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=12, unique=True),
)
def test_allocation_is_disjoint_and_complete(queue_count: int, ids: list[str]) -> None:
    queues = [MessageQueue("T", f"b{i % 3}", i) for i in range(queue_count)]
    taken: list[MessageQueue] = []
    for cid in ids:
        taken.extend(allocate_averagely(queues, ids, cid))
    assert sorted(taken) == sorted(queues)  # every queue once, none twice


def test_restore_retry_topic() -> None:
    retried = MessageExt(topic="%RETRY%G", properties={"RETRY_TOPIC": "Orders"}, reconsume_times=1)
    assert restore_retry_topic(retried, "G").topic == "Orders"
    assert restore_retry_topic(retried, "Other").topic == "%RETRY%G"
    plain = MessageExt(topic="Orders")
    assert restore_retry_topic(plain, "G") is plain


# -- against the dev broker ---------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def setup() -> AsyncIterator[tuple[RunningBroker, RemotingClient, Producer]]:
    broker = await start_broker(delay_levels=(0.1,) * 18)
    client = RemotingClient(reactor)
    producer = Producer("PG", broker.address)
    await producer.start()
    yield broker, client, producer
    await producer.shutdown()
    await client.close()
    await broker.stop()


@pytest_twisted.ensureDeferred
async def test_pull_offsets_and_send_back(
    setup: tuple[RunningBroker, RemotingClient, Producer],
) -> None:
    broker, client, producer = setup
    address = broker.address
    queue = MessageQueue("T", broker.broker.config.broker_name, 0)
    for i, tags in enumerate(["A", "B", "A"]):
        await producer.send(Message("T", b"m%d" % i, tags=tags), queue)
    big = b"z" * 5000  # compressed by the producer, inflated by pull
    await producer.send(Message("T", big, tags="A"), queue)

    result = await pull(
        client, address, "G", queue, 0, subscription=Subscription("T", "A"), suspend=0
    )
    assert result.status is PullStatus.FOUND
    assert [m.body for m in result.messages] == [b"m0", b"m2", big]
    assert result.messages[2].sys_flag & 0x1 == 0
    assert (result.next_begin_offset, result.min_offset, result.max_offset) == (4, 0, 4)

    empty = await pull(client, address, "G", queue, 4, subscription=Subscription("T"), suspend=0)
    assert empty.status is PullStatus.NO_NEW_MSG and empty.messages == []
    moved = await pull(client, address, "G", queue, 99, subscription=Subscription("T"), suspend=0)
    assert moved.status is PullStatus.OFFSET_ILLEGAL

    # no offset yet, and the queue still holds its first message: 4.9's rule answers 0
    assert await query_offset(client, address, "G", queue) == 0
    await update_offset(client, address, "G", queue, 2, oneway=False)
    assert await query_offset(client, address, "G", queue) == 2
    await update_offset(client, address, "G", queue, 3)
    await deferLater(reactor, 0.05, lambda: None)
    assert broker.offsets("G")["T"][0] == 3

    assert await max_offset(client, address, queue) == 4
    assert await min_offset(client, address, queue) == 0
    first = result.messages[0]
    assert await search_offset(client, address, queue, first.store_timestamp) in (0, 1, 2, 3)

    await send_back(client, address, "G", first, max_reconsume_times=3)
    await deferLater(reactor, 0.4, lambda: None)
    (retried,) = broker.messages("%RETRY%G")
    assert retried.reconsume_times == 1 and retried.body == b"m0"
    assert restore_retry_topic(retried, "G").topic == "T"

    with pytest.raises(BrokerAnswerError, match="pull"):
        await pull(
            client,
            address,
            "G",
            MessageQueue("T", "b", 99),
            0,
            subscription=Subscription("T"),
            suspend=0,
        )


@pytest_twisted.ensureDeferred
async def test_group_and_locks(setup: tuple[RunningBroker, RemotingClient, Producer]) -> None:
    broker, client, producer = setup
    address = broker.address
    await producer.send(Message("T", b"x"))
    data = ConsumerData("G", subscriptions=(Subscription("T", "*", 1),))
    response = await client.invoke(address, heartbeat_request("c1", [data]))
    assert response.code == 0
    assert await consumer_ids(client, address, "G") == ["c1"]
    with pytest.raises(BrokerAnswerError, match="no consumer"):  # as Apache answers
        await consumer_ids(client, address, "Nobody")

    name = broker.broker.config.broker_name
    queues = [MessageQueue("T", name, i) for i in range(2)]
    assert await lock_queues(client, address, "G", "c1", queues) == set(queues)
    assert await lock_queues(client, address, "G", "c2", queues) == set()
    await unlock_queues(client, address, "G", "c1", queues[:1])
    assert await lock_queues(client, address, "G", "c2", queues) == {queues[0]}

    await client.invoke(address, unregister_request("c1", consumer_group="G"))
    with pytest.raises(BrokerAnswerError):
        await consumer_ids(client, address, "G")
