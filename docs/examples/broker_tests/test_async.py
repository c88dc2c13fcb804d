"""Tests that run on pytest-twisted's reactor (``pytest`` with pytest-twisted installed):
the broker runs on that reactor too, and the tests are async."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rmqtwist import RemotingCommand, RequestCode, ResponseCode
from rmqtwist.client import RemotingClient
from rmqtwist.headers import PullMessageRequestHeader, SendMessageRequestHeaderV2
from rmqtwist.message import Message, decode_records, encode_properties
from rmqtwist.testing import RunningBroker, start_broker


def send_request(message: Message) -> RemotingCommand:
    header = SendMessageRequestHeaderV2(
        a="orders-app",
        b=message.topic,
        e=0,
        g=int(time.time() * 1000),
        i=encode_properties(message.wire_properties()),
    )
    return header.to_request(RequestCode.SEND_MESSAGE_V2, message.body)


def pull_request(offset: int) -> RemotingCommand:
    header = PullMessageRequestHeader(
        consumer_group="billing",
        topic="Orders",
        queue_id=0,
        queue_offset=offset,
        max_msg_nums=32,
        sys_flag=0x2 | 0x4,  # suspend (long polling), subscription
        commit_offset=0,
        suspend_timeout_millis=20_000,
        subscription="*",
        sub_version=0,
    )
    return header.to_request(RequestCode.PULL_MESSAGE)


@pytest_twisted.ensureDeferred
async def test_start_broker_by_hand() -> None:
    broker = await start_broker(auto_create_topic=False)
    try:
        broker.create_topic("Orders", queue_nums=1)
        client = RemotingClient()
        response = await client.invoke(broker.address, send_request(Message("Orders", b"o-6")))
        await client.close()
        assert response.code == ResponseCode.SUCCESS
        assert [m.body for m in broker.messages("Orders")] == [b"o-6"]
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_consumer_waits_in_a_held_pull(rocketmq_broker: RunningBroker) -> None:
    client = RemotingClient()
    try:
        await client.invoke(rocketmq_broker.address, send_request(Message("Orders", b"o-7")))
        waiting = client.invoke(rocketmq_broker.address, pull_request(1), 30)
        while not rocketmq_broker.held_pulls():  # until the broker holds it
            await deferLater(reactor, 0.01, lambda: None)
        assert rocketmq_broker.held_pulls() == {("Orders", 0): 1}
        await client.invoke(rocketmq_broker.address, send_request(Message("Orders", b"o-8")))
        answer = await waiting
        assert [m.body for m in decode_records(answer.body)] == [b"o-8"]
        assert rocketmq_broker.held_pulls() == {}
    finally:
        await client.close()
