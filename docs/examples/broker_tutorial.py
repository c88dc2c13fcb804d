"""Produce to and consume from the dev broker with rmqtwist's own RemotingClient.

The calls a RocketMQ client makes, one by one: the topic's route from the name server
role (GET_ROUTEINFO_BY_TOPIC), sends (SEND_MESSAGE_V2), pulls (PULL_MESSAGE) with a tag
filter and with long polling, and a consumer group's offset (UPDATE_CONSUMER_OFFSET,
QUERY_CONSUMER_OFFSET). Messages are built with rmqtwist.message and read back from the
pull's body with decode_records.

Without an argument it starts ``twist rmq-remoting`` (the dev broker, on a free port of
127.0.0.1) in another process; given the address a running broker's start-up line names
(``python docs/examples/broker_tutorial.py 127.0.0.1:10911``) it uses that one instead.

Run from a checkout:  PYTHONPATH=src python docs/examples/broker_tutorial.py [HOST:PORT]
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from _twist import twist_server
from twisted.internet import defer, task

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, code_name
from rmqtwist.client import RemotingClient
from rmqtwist.headers import (
    GetRouteInfoRequestHeader,
    PullMessageRequestHeader,
    PullMessageResponseHeader,
    QueryConsumerOffsetRequestHeader,
    QueryConsumerOffsetResponseHeader,
    SendMessageRequestHeaderV2,
    SendMessageResponseHeader,
    UpdateConsumerOffsetRequestHeader,
)
from rmqtwist.message import (
    Message,
    MessageExt,
    UniqueIdGenerator,
    decode_records,
    encode_properties,
)

TOPIC = f"TutorialTopic{int(time.time() * 1000)}"  # new at each run, also on your broker
PRODUCER_GROUP = "tutorial-producers"
CONSUMER_GROUP = "tutorial-consumers"
# PULL_MESSAGE's sysFlag bits (Java's PullSysFlag)
COMMIT_OFFSET, SUSPEND, SUBSCRIPTION = 0x1, 0x2, 0x4

ids = UniqueIdGenerator()


async def route(client: RemotingClient, address: str) -> RemotingCommand:
    request = GetRouteInfoRequestHeader(topic=TOPIC).to_request(RequestCode.GET_ROUTEINFO_BY_TOPIC)
    return await client.invoke(address, request)


async def send(client: RemotingClient, address: str, message: Message, queue_id: int) -> None:
    header = SendMessageRequestHeaderV2(
        a=PRODUCER_GROUP,  # producerGroup
        b=message.topic,  # topic
        c="TBW102",  # defaultTopic: the template of topics created on first send
        d=4,  # defaultTopicQueueNums
        e=queue_id,  # queueId
        g=int(time.time() * 1000),  # bornTimestamp
        i=encode_properties(message.wire_properties()),  # properties
    )
    response = await client.invoke(
        address, header.to_request(RequestCode.SEND_MESSAGE_V2, message.body)
    )
    assert response.code == ResponseCode.SUCCESS, response
    sent = SendMessageResponseHeader.from_command(response)
    print(f"  sent {message.body!r} to queue {sent.queue_id} at offset {sent.queue_offset}")


async def pull(
    client: RemotingClient,
    address: str,
    queue_id: int,
    offset: int,
    *,
    tags: str = "*",
    suspend_ms: int = 0,
    timeout: float = 3.0,
) -> tuple[RemotingCommand, list[MessageExt]]:
    header = PullMessageRequestHeader(
        consumer_group=CONSUMER_GROUP,
        topic=TOPIC,
        queue_id=queue_id,
        queue_offset=offset,
        max_msg_nums=32,
        sys_flag=SUBSCRIPTION | (SUSPEND if suspend_ms else 0),
        commit_offset=0,
        suspend_timeout_millis=suspend_ms,
        subscription=tags,  # the tag expression: "*", "TagA", "TagA || TagB"
        sub_version=0,
    )
    response = await client.invoke(address, header.to_request(RequestCode.PULL_MESSAGE), timeout)
    found = decode_records(response.body) if response.code == ResponseCode.SUCCESS else []
    return response, found


def show(message: MessageExt) -> None:
    print(
        f"  {message.queue_id}:{message.queue_offset} {message.body!r} tags={message.tags}"
        f" keys={list(message.keys)} step={message.properties.get('step')}"
        f" msg_id is UNIQ_KEY: {message.msg_id == message.properties['UNIQ_KEY']}"
    )


async def main(reactor: Any, address: str) -> None:
    client = RemotingClient(reactor)
    try:
        print("1. The topic's route, before any send (GET_ROUTEINFO_BY_TOPIC):")
        response = await route(client, address)
        print(f"  {code_name(response.code, response=True)}")

        print("2. Three sends (SEND_MESSAGE_V2); the first creates the topic:")
        for step, (queue_id, tags) in enumerate([(0, "TagA"), (0, "TagB"), (1, "TagA")]):
            message = Message(
                TOPIC,
                f"order-{step}".encode(),
                tags=tags,
                keys=[f"order-{step}"],
                properties={"step": str(step), "UNIQ_KEY": ids.next_id()},
            )
            await send(client, address, message, queue_id)

        print("3. The route now:")
        data = json.loads((await route(client, address)).body)
        [broker] = data["brokerDatas"]
        [queues] = data["queueDatas"]
        print(f"  broker {broker['brokerName']} in cluster {broker['cluster']}")
        same = broker["brokerAddrs"]["0"] == address
        print(f"  its address is the one this client connected to: {same}")
        writable, readable = queues["writeQueueNums"], queues["readQueueNums"]
        print(f"  {writable} write queues, {readable} read queues, perm {queues['perm']}")

        print("4. Pull queue 0 from offset 0 (PULL_MESSAGE):")
        response, found = await pull(client, address, 0, 0)
        header = PullMessageResponseHeader.from_command(response)
        outcome = f"{code_name(response.code, response=True)} {response.remark}"
        print(f"  {outcome}, next offset {header.next_begin_offset}")
        for message in found:
            show(message)

        print("5. Only TagB:")
        response, found = await pull(client, address, 0, 0, tags="TagB")
        for message in found:
            show(message)

        print("6. The group's offset (UPDATE_CONSUMER_OFFSET, QUERY_CONSUMER_OFFSET):")
        update = UpdateConsumerOffsetRequestHeader(
            consumer_group=CONSUMER_GROUP, topic=TOPIC, queue_id=0, commit_offset=2
        ).to_request(RequestCode.UPDATE_CONSUMER_OFFSET)
        await client.invoke(address, update)
        query = QueryConsumerOffsetRequestHeader(
            consumer_group=CONSUMER_GROUP, topic=TOPIC, queue_id=0
        ).to_request(RequestCode.QUERY_CONSUMER_OFFSET)
        committed = QueryConsumerOffsetResponseHeader.from_command(
            await client.invoke(address, query)
        )
        print(f"  queue 0: {committed.offset}")

        print("7. Long polling: a pull past the end waits; a send answers it:")
        waiting = defer.ensureDeferred(pull(client, address, 1, 1, suspend_ms=20_000, timeout=30))
        await task.deferLater(reactor, 0.5, lambda: None)
        await send(client, address, Message(TOPIC, b"late", tags="TagA", keys=["late"]), 1)
        response, found = await waiting
        print(f"  the held pull: {code_name(response.code, response=True)}")
        for message in found:
            print(f"  {message.queue_id}:{message.queue_offset} {message.body!r}")
    finally:
        await client.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1])))
    with twist_server() as broker_address:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, broker_address)))
