"""A dev broker on a ``task.Clock`` with clients on in-memory transports, for unit tests.

``BrokerHarness`` holds a :class:`~rmqtwist.broker.core.Broker` whose processors are
registered on a real :class:`~rmqtwist.server.RemotingServerFactory`; each ``Peer`` is a
real :class:`~rmqtwist.protocol.RemotingProtocol` on a ``StringTransport``: frames go in
through ``dataReceived`` and come out of the transport, so the codec, dispatch and
processors all run as they do on a socket.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.core import Broker
from rmqtwist.broker.delay import DelayScheduler
from rmqtwist.broker.service import install_broker
from rmqtwist.broker.store import IMessageStore, MemoryStore
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.codes import RequestCode, ResponseCode, Version
from rmqtwist.command import RemotingCommand
from rmqtwist.message import MessageExt, decode_records, encode_properties
from rmqtwist.protocol import RemotingProtocol
from rmqtwist.server import RemotingServerFactory

__all__ = ["BrokerHarness", "Peer"]

BROKER_ADDRESS = ("127.0.0.1", 10911)
_ports = itertools.count(50000)


class Peer:
    """One client connection to the harness's broker."""

    def __init__(self, harness: BrokerHarness, host: str = "127.0.0.1") -> None:
        self.harness = harness
        self.port = next(_ports)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", *BROKER_ADDRESS),
            peerAddress=IPv4Address("TCP", host, self.port),
        )
        protocol = harness.factory.buildProtocol(IPv4Address("TCP", host, self.port))
        assert isinstance(protocol, RemotingProtocol)
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        self.decoder = FrameDecoder()
        self._opaques = itertools.count(1)
        self.responses: dict[int, RemotingCommand] = {}
        #: requests the broker sent to this client (NOTIFY_CONSUMER_IDS_CHANGED, ...)
        self.pushed: list[RemotingCommand] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def send(self, request: RemotingCommand) -> int:
        """Send ``request`` (with a fresh opaque); returns the opaque."""
        opaque = next(self._opaques)
        self.protocol.dataReceived(encode_frame(request.replace(opaque=opaque)))
        return opaque

    def _drain(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        for command in self.decoder.feed(data):
            if command.is_response:
                assert command.opaque not in self.responses, f"two answers to {command.opaque}"
                self.responses[command.opaque] = command
            else:
                self.pushed.append(command)

    def response(self, opaque: int) -> RemotingCommand | None:
        """The answer to request ``opaque``, if it came (taken once)."""
        self._drain()
        return self.responses.pop(opaque, None)

    def call(self, request: RemotingCommand) -> RemotingCommand:
        """Send ``request`` and return its answer, which must come at once."""
        opaque = self.send(request)
        response = self.response(opaque)
        assert response is not None, f"no answer to {request!r}"
        return response

    def take_pushed(self) -> list[RemotingCommand]:
        self._drain()
        pushed, self.pushed = self.pushed, []
        return pushed

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("closed by the test")))

    # -- requests as clients send them ------------------------------------------------

    def send_message(
        self,
        topic: str,
        body: bytes = b"hello",
        *,
        tags: str | None = None,
        keys: str | None = None,
        properties: Mapping[str, str] | None = None,
        queue_id: int = 0,
        sys_flag: int = 0,
        group: str = "PG",
        code: int = RequestCode.SEND_MESSAGE_V2,
        extra: Mapping[str, Any] | None = None,
        version: int = Version.V4_9_8,
    ) -> RemotingCommand:
        props: dict[str, str] = dict(properties or {})
        if tags is not None:
            props["TAGS"] = tags
        if keys is not None:
            props["KEYS"] = keys
        props.setdefault("WAIT", "true")
        if code == RequestCode.SEND_MESSAGE:
            ext: dict[str, Any] = {
                "producerGroup": group,
                "topic": topic,
                "defaultTopic": "TBW102",
                "defaultTopicQueueNums": 4,
                "queueId": queue_id,
                "sysFlag": sys_flag,
                "bornTimestamp": 1_700_000_000_000,
                "flag": 0,
                "properties": encode_properties(props),
                "reconsumeTimes": 0,
                "unitMode": False,
            }
        else:
            ext = {
                "a": group,
                "b": topic,
                "c": "TBW102",
                "d": 4,
                "e": queue_id,
                "f": sys_flag,
                "g": 1_700_000_000_000,
                "h": 0,
                "i": encode_properties(props),
                "j": 0,
                "k": False,
                "m": False,
            }
        ext.update(extra or {})
        return self.call(RemotingCommand.request(code, ext, body, version=version))

    def heartbeat(
        self,
        client_id: str,
        group: str,
        subscriptions: Mapping[str, str] | None = None,
        *,
        producer_groups: tuple[str, ...] = (),
        sub_version: int = 1,
        consume_from_where: str = "CONSUME_FROM_LAST_OFFSET",
    ) -> RemotingCommand:
        consumers = []
        if subscriptions is not None:
            consumers.append(
                {
                    "consumeFromWhere": consume_from_where,
                    "consumeType": "CONSUME_PASSIVELY",
                    "groupName": group,
                    "messageModel": "CLUSTERING",
                    "subscriptionDataSet": [
                        {
                            "classFilterMode": False,
                            "codeSet": [],
                            "expressionType": "TAG",
                            "subString": expression,
                            "subVersion": sub_version,
                            "tagsSet": [],
                            "topic": topic,
                        }
                        for topic, expression in subscriptions.items()
                    ],
                    "unitMode": False,
                }
            )
        body = {
            "clientID": client_id,
            "consumerDataSet": consumers,
            "producerDataSet": [{"groupName": name} for name in producer_groups],
        }
        return self.call(
            RemotingCommand.request(
                RequestCode.HEART_BEAT, None, json.dumps(body).encode(), version=Version.V4_9_8
            )
        )

    def pull_request(
        self,
        topic: str,
        queue_id: int = 0,
        offset: int = 0,
        *,
        group: str = "CG",
        max_nums: int = 32,
        sys_flag: int = 6,
        subscription: str | None = "*",
        suspend_ms: int = 15000,
        commit_offset: int = 0,
        sub_version: int = 0,
    ) -> RemotingCommand:
        ext: dict[str, Any] = {
            "consumerGroup": group,
            "topic": topic,
            "queueId": queue_id,
            "queueOffset": offset,
            "maxMsgNums": max_nums,
            "sysFlag": sys_flag,
            "commitOffset": commit_offset,
            "suspendTimeoutMillis": suspend_ms,
            "subVersion": sub_version,
            "expressionType": "TAG",
        }
        if subscription is not None:
            ext["subscription"] = subscription
        return RemotingCommand.request(RequestCode.PULL_MESSAGE, ext, version=Version.V4_9_8)

    def pull(
        self, topic: str, queue_id: int = 0, offset: int = 0, **kwargs: Any
    ) -> RemotingCommand:
        """A pull that must be answered at once (no suspend flag unless given)."""
        kwargs.setdefault("sys_flag", 4)
        return self.call(self.pull_request(topic, queue_id, offset, **kwargs))


class BrokerHarness:
    """A broker on a Clock, its factory, and helpers to connect peers and read messages."""

    def __init__(
        self, config: BrokerConfig | None = None, store: IMessageStore | None = None
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # store timestamps look like real ones
        self.store = store if store is not None else MemoryStore()
        self.store.start()
        self.broker = Broker(self.store, config or BrokerConfig(), self.clock)
        self.broker.load()
        self.factory = RemotingServerFactory(reactor=self.clock, idle_timeout=None)
        self.checker = install_broker(self.factory, self.broker)
        self.checker.load()
        self.delays = DelayScheduler(self.broker)
        self.broker.delay_wake = self.delays.wake
        self.delays.start()

    def peer(self) -> Peer:
        return Peer(self)

    def messages(self, topic: str, queue_id: int = 0, offset: int = 0) -> list[MessageExt]:
        """Every message in a queue from ``offset`` on, read straight from the store."""
        found: list[MessageExt] = []
        while True:
            result = self.store.read(topic, queue_id, offset, 1000, 1 << 30, None)
            if not result.records:
                return found
            found.extend(decode_records(b"".join(result.records)))
            offset = result.next_offset


def ok(response: RemotingCommand) -> RemotingCommand:
    assert response.code == ResponseCode.SUCCESS, response
    return response
