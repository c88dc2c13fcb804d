"""A dev broker on a ``task.Clock`` with clients on in-memory transports, for unit tests.

``BrokerHarness`` holds a :class:`~rmqtwist.broker.core.Broker` whose processors are
registered on a real :class:`~rmqtwist.server.RemotingServerFactory`; each ``Peer`` is a
real :class:`~rmqtwist.protocol.RemotingProtocol` on a ``StringTransport``: frames go in
through ``dataReceived`` and come out of the transport, so the codec, dispatch and
processors all run as they do on a socket. Nothing sleeps: time is the harness's Clock.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, LoopingCall
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
from rmqtwist.message import Message, MessageExt, decode_records, encode_batch, encode_properties
from rmqtwist.protocol import RemotingProtocol
from rmqtwist.server import RemotingServerFactory

__all__ = ["BROKER_ADDRESS", "BrokerHarness", "Peer", "json_body", "ok"]

BROKER_ADDRESS = ("127.0.0.1", 10911)
#: What the broker writes as store host and puts into routes for these peers.
BROKER = "127.0.0.1:10911"
_ports = itertools.count(50000)
_PREFIX = struct.Struct(">ii")
#: Apache's clients start at this born time in these tests (a fixed, realistic value).
BORN = 1_700_000_000_000


class Peer:
    """One client connection to the harness's broker."""

    def __init__(self, harness: BrokerHarness, host: str = "127.0.0.1") -> None:
        self.harness = harness
        self.port = next(_ports)
        self.host = host
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
        return f"{self.host}:{self.port}"

    # -- frames -----------------------------------------------------------------------

    def send(self, request: RemotingCommand) -> int:
        """Send ``request`` (with a fresh opaque); returns the opaque."""
        opaque = next(self._opaques)
        self.protocol.dataReceived(encode_frame(request.replace(opaque=opaque)))
        return opaque

    def send_raw(self, header: Mapping[str, Any], body: bytes = b"") -> int:
        """Send a JSON-header frame written exactly as ``header`` says (extFields values of
        any JSON type, as ali-ons and the C++ client send them); returns the opaque."""
        opaque = next(self._opaques)
        text = json.dumps({**header, "opaque": opaque}).encode()
        frame = _PREFIX.pack(4 + len(text) + len(body), len(text)) + text + body
        self.protocol.dataReceived(frame)
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

    def call_raw(self, header: Mapping[str, Any], body: bytes = b"") -> RemotingCommand:
        opaque = self.send_raw(header, body)
        response = self.response(opaque)
        assert response is not None, f"no answer to {header!r}"
        return response

    def request(
        self,
        code: int,
        ext: Mapping[str, Any] | None = None,
        body: bytes = b"",
        *,
        version: int = Version.V4_9_8,
    ) -> RemotingCommand:
        """A two-way request as a 4.9.8 Java client sends it; its answer."""
        return self.call(RemotingCommand.request(code, ext, body, version=version))

    def oneway(self, code: int, ext: Mapping[str, Any] | None = None, body: bytes = b"") -> None:
        """A oneway request; asserts the broker does not answer it."""
        opaque = self.send(
            RemotingCommand.request(code, ext, body, oneway=True, version=Version.V4_9_8)
        )
        assert self.response(opaque) is None

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
                "bornTimestamp": BORN,
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
                "g": BORN,
                "h": 0,
                "i": encode_properties(props),
                "j": 0,
                "k": False,
                "m": False,
            }
        ext.update(extra or {})
        return self.call(RemotingCommand.request(code, ext, body, version=version))

    def send_batch(
        self,
        topic: str,
        messages: Iterable[Message],
        *,
        queue_id: int = 0,
        group: str = "PG",
        extra: Mapping[str, Any] | None = None,
    ) -> RemotingCommand:
        """SEND_BATCH_MESSAGE (320) as J4's ``send(Collection)`` makes it."""
        ext: dict[str, Any] = {
            "a": group,
            "b": topic,
            "c": "TBW102",
            "d": 4,
            "e": queue_id,
            "f": 0,
            "g": BORN,
            "h": 0,
            "i": encode_properties({"WAIT": "true"}),
            "j": 0,
            "k": False,
            "m": True,
        }
        ext.update(extra or {})
        return self.request(RequestCode.SEND_BATCH_MESSAGE, ext, encode_batch(messages))

    def heartbeat(
        self,
        client_id: str,
        group: str,
        subscriptions: Mapping[str, str] | None = None,
        *,
        producer_groups: tuple[str, ...] = (),
        sub_version: int = 1,
        consume_from_where: str = "CONSUME_FROM_LAST_OFFSET",
        expression_type: str = "TAG",
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
                            "expressionType": expression_type,
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
        return self.request(RequestCode.HEART_BEAT, None, json.dumps(body).encode())

    def unregister(
        self,
        client_id: str,
        *,
        consumer_group: str | None = None,
        producer_group: str | None = None,
    ) -> RemotingCommand:
        ext = {"clientID": client_id}
        if consumer_group is not None:
            ext["consumerGroup"] = consumer_group
        if producer_group is not None:
            ext["producerGroup"] = producer_group
        return self.request(RequestCode.UNREGISTER_CLIENT, ext)

    def consumer_list(self, group: str) -> RemotingCommand:
        return self.request(RequestCode.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": group})

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
        expression_type: str | None = "TAG",
        code: int = RequestCode.PULL_MESSAGE,
        extra: Mapping[str, Any] | None = None,
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
        }
        if expression_type is not None:
            ext["expressionType"] = expression_type
        if subscription is not None:
            ext["subscription"] = subscription
        ext.update(extra or {})
        return RemotingCommand.request(code, ext, version=Version.V4_9_8)

    def pull(
        self, topic: str, queue_id: int = 0, offset: int = 0, **kwargs: Any
    ) -> RemotingCommand:
        """A pull that must be answered at once (no suspend flag unless given)."""
        kwargs.setdefault("sys_flag", 4)
        return self.call(self.pull_request(topic, queue_id, offset, **kwargs))

    def hold(self, topic: str, queue_id: int = 0, offset: int = 0, **kwargs: Any) -> int:
        """A long-polling pull that must be held (no answer yet); returns its opaque."""
        opaque = self.send(self.pull_request(topic, queue_id, offset, **kwargs))
        early = self.response(opaque)
        assert early is None, f"the pull was answered at once: {early!r}"
        return opaque

    def query_offset(
        self, group: str, topic: str, queue_id: int = 0, **extra: Any
    ) -> RemotingCommand:
        return self.request(
            RequestCode.QUERY_CONSUMER_OFFSET,
            {"consumerGroup": group, "topic": topic, "queueId": queue_id, **extra},
        )

    def commit_offset(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        """UPDATE_CONSUMER_OFFSET oneway, as J4 sends it."""
        self.oneway(
            RequestCode.UPDATE_CONSUMER_OFFSET,
            {"consumerGroup": group, "topic": topic, "queueId": queue_id, "commitOffset": offset},
        )

    def send_back(
        self,
        physical_offset: int,
        group: str = "CG",
        *,
        delay_level: int = 0,
        max_reconsume_times: int | None = 16,
        origin_msg_id: str | None = None,
        version: int = Version.V4_9_8,
    ) -> RemotingCommand:
        """CONSUMER_SEND_MSG_BACK (36) for the message at ``physical_offset``."""
        ext: dict[str, Any] = {
            "offset": physical_offset,
            "group": group,
            "delayLevel": delay_level,
            "unitMode": False,
        }
        if max_reconsume_times is not None:
            ext["maxReconsumeTimes"] = max_reconsume_times
        if origin_msg_id is not None:
            ext["originMsgId"] = origin_msg_id
        return self.request(RequestCode.CONSUMER_SEND_MSG_BACK, ext, version=version)

    def end_transaction(
        self,
        group: str,
        commit_log_offset: int,
        queue_offset: int,
        outcome: int,
        *,
        msg_id: str = "ID",
        from_check: bool = False,
    ) -> RemotingCommand | None:
        """END_TRANSACTION (37) as a two-way request (J4 sends it oneway); its answer, or
        None when the broker gives none (UNKNOW)."""
        request = RemotingCommand.request(
            RequestCode.END_TRANSACTION,
            {
                "producerGroup": group,
                "tranStateTableOffset": queue_offset,
                "commitLogOffset": commit_log_offset,
                "commitOrRollback": outcome,
                "fromTransactionCheck": from_check,
                "msgId": msg_id,
            },
            version=Version.V4_9_8,
        )
        return self.response(self.send(request))

    def lock(
        self, group: str, client_id: str, queues: Iterable[tuple[str, int]]
    ) -> list[tuple[str, int]]:
        """LOCK_BATCH_MQ (41); the (topic, queue id) pairs granted."""
        response = ok(
            self.request(RequestCode.LOCK_BATCH_MQ, None, _lock_body(group, client_id, queues))
        )
        return sorted(
            (entry["topic"], entry["queueId"]) for entry in json_body(response)["lockOKMQSet"]
        )

    def unlock(self, group: str, client_id: str, queues: Iterable[tuple[str, int]]) -> None:
        ok(self.request(RequestCode.UNLOCK_BATCH_MQ, None, _lock_body(group, client_id, queues)))


def _lock_body(group: str, client_id: str, queues: Iterable[tuple[str, int]]) -> bytes:
    body = {
        "clientId": client_id,
        "consumerGroup": group,
        "mqSet": [{"brokerName": "broker-a", "queueId": q, "topic": t} for t, q in queues],
    }
    return json.dumps(body).encode()


class BrokerHarness:
    """A broker on a Clock, its factory, and helpers to connect peers and read messages."""

    def __init__(
        self,
        config: BrokerConfig | None = None,
        store: IMessageStore | None = None,
        *,
        max_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        if clock is None:
            clock = Clock()
            clock.advance(1_700_000_000)  # store timestamps look like real ones
        self.clock = clock
        if store is None:
            store = MemoryStore(clock=clock) if max_bytes is None else MemoryStore(max_bytes, clock)
        self.store = store
        self.store.start()
        self.broker = Broker(self.store, config or BrokerConfig(), self.clock)
        self.broker.load()
        self.factory = RemotingServerFactory(reactor=self.clock, idle_timeout=None)
        self.checker = install_broker(self.factory, self.broker)
        self.checker.load()
        self.delays = DelayScheduler(self.broker)
        self.broker.delay_wake = self.delays.wake
        self.delays.start()
        self._loops: list[LoopingCall] = []

    @property
    def config(self) -> BrokerConfig:
        return self.broker.config

    def peer(self, host: str = "127.0.0.1") -> Peer:
        return Peer(self, host)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def run_transaction_checks(self) -> None:
        """Run the transaction checker every ``transaction_check_interval`` on the Clock,
        as BrokerService does."""
        loop = LoopingCall(self.checker.check)
        loop.clock = self.clock
        loop.start(self.config.transaction_check_interval, now=False)
        self._loops.append(loop)

    def reopen(self) -> BrokerHarness:
        """Save what the broker keeps and start a fresh Broker (new processors, checker
        and delay scheduler) over the same store and Clock, as a restart would."""
        for loop in self._loops:
            loop.stop()
        self.broker.stopping = True
        self.broker.pulls.release_all()
        self.delays.stop()
        self.broker.offsets.save()
        return BrokerHarness(self.broker.config, self.store, clock=self.clock)

    def messages(self, topic: str, queue_id: int = 0, offset: int = 0) -> list[MessageExt]:
        """Every message in a queue from ``offset`` on, read straight from the store."""
        found: list[MessageExt] = []
        offset = max(offset, self.store.min_offset(topic, queue_id))
        while True:
            result = self.store.read(topic, queue_id, offset, 1000, 1 << 30, None)
            if not result.records:
                return found
            found.extend(decode_records(b"".join(result.records)))
            offset = result.next_offset


def ok(response: RemotingCommand) -> RemotingCommand:
    assert response.code == ResponseCode.SUCCESS, response
    return response


def json_body(response: RemotingCommand) -> Any:
    return json.loads(response.body.decode("utf-8"))
