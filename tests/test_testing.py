"""``rmqtwist.testing``: a dev broker started in the test process on the real reactor
(pytest-twisted), used through rmqtwist's own RemotingClient over loopback, its helpers,
and ``stop()``. The pytest fixture built on it is tested in ``test_pytest_plugin.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.store import MemoryStore
from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.headers import (
    PullMessageRequestHeader,
    SendMessageRequestHeaderV2,
    UpdateConsumerOffsetRequestHeader,
)
from rmqtwist.message import Message, decode_records, encode_properties
from rmqtwist.testing import RunningBroker, start_broker, start_broker_in_thread

# PULL_MESSAGE sysFlag bits (Java's PullSysFlag)
SUSPEND, SUBSCRIPTION = 0x2, 0x4


def send_request(message: Message, queue_id: int = 0) -> RemotingCommand:
    header = SendMessageRequestHeaderV2(
        a="PG",
        b=message.topic,
        e=queue_id,
        g=int(time.time() * 1000),
        i=encode_properties(message.wire_properties()),
    )
    return header.to_request(RequestCode.SEND_MESSAGE_V2, message.body)


def pull_request(
    topic: str, queue_id: int, offset: int, *, suspend_ms: int = 0, group: str = "CG"
) -> RemotingCommand:
    header = PullMessageRequestHeader(
        consumer_group=group,
        topic=topic,
        queue_id=queue_id,
        queue_offset=offset,
        max_msg_nums=32,
        sys_flag=SUBSCRIPTION | (SUSPEND if suspend_ms else 0),
        commit_offset=0,
        suspend_timeout_millis=suspend_ms,
        subscription="*",
        sub_version=0,
    )
    return header.to_request(RequestCode.PULL_MESSAGE)


def heartbeat_request(client_id: str, group: str, topic: str) -> RemotingCommand:
    body = {
        "clientID": client_id,
        "producerDataSet": [],
        "consumerDataSet": [
            {
                "groupName": group,
                "consumeType": "CONSUME_PASSIVELY",
                "messageModel": "CLUSTERING",
                "consumeFromWhere": "CONSUME_FROM_LAST_OFFSET",
                "unitMode": False,
                "subscriptionDataSet": [
                    {"topic": topic, "subString": "*", "expressionType": "TAG", "subVersion": 1}
                ],
            }
        ],
    }
    return RemotingCommand.request(RequestCode.HEART_BEAT, body=json.dumps(body).encode())


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Wait on the reactor until ``condition()`` is true (for what another connection does)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.01, lambda: None)


async def refused(port: int) -> bool:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    try:
        connected: Protocol = await endpoint.connect(Factory.forProtocol(Protocol))
    except ConnectionRefusedError:
        return True
    assert connected.transport is not None
    connected.transport.loseConnection()
    return False


@pytest_twisted.ensureDeferred
async def test_send_pull_and_the_helpers() -> None:
    broker = await start_broker()
    client = RemotingClient()
    try:
        assert broker.address == f"127.0.0.1:{broker.port}"
        assert broker.port > 0
        assert broker.broker is broker.service.broker
        assert broker.topics() == []

        sent = []
        for n, queue_id in enumerate([1, 0, 1]):
            message = Message("Orders", b"order-%d" % n, tags="new", keys=[f"k{n}"])
            response = await client.invoke(broker.address, send_request(message, queue_id), 5)
            assert response.code == ResponseCode.SUCCESS, response
            sent.append(response.ext_fields)
        assert [fields["queueOffset"] for fields in sent if fields] == ["0", "0", "1"]

        pulled = await client.invoke(broker.address, pull_request("Orders", 1, 0), 5)
        assert pulled.code == ResponseCode.SUCCESS, pulled
        assert [(m.body, m.tags, m.keys) for m in decode_records(pulled.body)] == [
            (b"order-0", "new", ("k0",)),
            (b"order-2", "new", ("k2",)),
        ]

        # all queues in queue order, or one queue
        assert [m.body for m in broker.messages("Orders")] == [b"order-1", b"order-0", b"order-2"]
        assert [(m.queue_id, m.queue_offset) for m in broker.messages("Orders", 1)] == [
            (1, 0),
            (1, 1),
        ]
        assert broker.messages("Orders", 3) == []
        assert broker.messages("Nothing") == []
        assert broker.topics() == ["Orders"]
        assert {"TBW102", "Orders"} <= set(broker.topics(system=True))

        # a consumer's heartbeat, its committed offset
        assert broker.consumer_ids("CG") == []
        answer = await client.invoke(broker.address, heartbeat_request("client-1", "CG", "Orders"))
        assert answer.code == ResponseCode.SUCCESS, answer
        assert broker.consumer_ids("CG") == ["client-1"]
        commit = UpdateConsumerOffsetRequestHeader(
            consumer_group="CG", topic="Orders", queue_id=1, commit_offset=2
        ).to_request(RequestCode.UPDATE_CONSUMER_OFFSET)
        assert (await client.invoke(broker.address, commit)).code == ResponseCode.SUCCESS
        assert broker.offsets("CG") == {"Orders": {1: 2}}
        assert broker.offsets("other") == {}

        # a pull that finds nothing is held until stop() answers it
        held = client.invoke(broker.address, pull_request("Orders", 0, 1, suspend_ms=30_000), 60)
        await until(lambda: broker.held_pulls() == {("Orders", 0): 1})
        copy = broker.held_pulls()
        copy.clear()
        assert broker.held_pulls() == {("Orders", 0): 1}

        port = broker.port
        await broker.stop()
        assert broker.stopped
        assert "stopped" in repr(broker)
        answered = await held
        assert answered.code == ResponseCode.PULL_NOT_FOUND
        assert await refused(port)
        await broker.stop()  # again: the same outcome at once
    finally:
        await client.close()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_config_options_and_create_topic() -> None:
    store = MemoryStore()
    broker = await start_broker(
        store=store, config=BrokerConfig(broker_name="b-1"), auto_create_topic=False
    )
    client = RemotingClient()
    try:
        assert broker.broker.store is store
        assert broker.broker.config.broker_name == "b-1"
        assert broker.broker.config.auto_create_topic is False
        refused_send = await client.invoke(broker.address, send_request(Message("T", b"x")))
        assert refused_send.code == ResponseCode.TOPIC_NOT_EXIST
        broker.create_topic("T", queue_nums=2)
        assert broker.broker.topics.get("T").queue_nums == 2  # type: ignore[union-attr]
        assert broker.topics() == ["T"]
        accepted = await client.invoke(broker.address, send_request(Message("T", b"x"), 1))
        assert accepted.code == ResponseCode.SUCCESS
        assert [m.body for m in broker.messages("T")] == [b"x"]
    finally:
        await client.close()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_busy_port_fails_the_start() -> None:
    first = await start_broker()
    try:
        with pytest.raises(CannotListenError):
            await start_broker(port=first.port)
    finally:
        await first.stop()


def test_unknown_options_are_refused_before_anything_starts() -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        start_broker(no_such_option=1)


@pytest_twisted.ensureDeferred
async def test_start_broker_in_thread_refuses_the_reactor_thread() -> None:
    # pytest-twisted runs this test in the reactor thread, where waiting would deadlock.
    with pytest.raises(RuntimeError, match="use start_broker"):
        start_broker_in_thread()


@pytest_twisted.ensureDeferred
async def test_the_fixture_under_pytest_twisted(rocketmq_broker: RunningBroker) -> None:
    # This suite runs with pytest-twisted: the fixture's broker is on this reactor.
    client = RemotingClient()
    try:
        response = await client.invoke(rocketmq_broker.address, send_request(Message("F", b"f")))
        assert response.code == ResponseCode.SUCCESS
        assert [m.body for m in rocketmq_broker.messages("F")] == [b"f"]
    finally:
        await client.close()


def test_importing_the_plugin_imports_no_reactor() -> None:
    # pytest imports plugins before pytest-twisted installs the reactor it was asked for.
    code = (
        "import sys, rmqtwist.pytest_plugin; "
        "print('twisted.internet.reactor' in sys.modules, 'rmqtwist.broker' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "False"]
