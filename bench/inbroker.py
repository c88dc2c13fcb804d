"""The dev broker's Python work per message, in one process (no sockets, no reactor turns).

``broker.py`` measures the real thing, but on a shared VM its figures move by 10% or more
from run to run. This feeds pre-encoded frames to one server-side connection of the dev
broker (the processors and in-memory store ``twist rmq-remoting`` uses, a 120 s idle
timeout) through an in-memory transport, and times its ``dataReceived``:

- send: SEND_MESSAGE_V2 requests as ``broker.py`` sends them (128 B body, a tag, a key,
  UNIQ_KEY and WAIT), ``--batch`` per read, into 8 queues;
- pull: PULL_MESSAGE requests of 32 (one per queue per read, as a push consumer's) over
  the messages just sent, per message pulled.

What is left out is what the kernel and Twisted's reactor add per read and write (at 64
in flight, about 5 us per send in ``broker.py``). It shows what a change to the broker,
the codec or the headers does, to within about 1%.

    python bench/inbroker.py [--serialize-type rocketmq] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from rmqtwist import RemotingCommand, RequestCode, SerializeType, __version__
from rmqtwist.broker.core import Broker
from rmqtwist.broker.service import install_broker
from rmqtwist.broker.store import MemoryStore
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.codes import LanguageCode
from rmqtwist.headers import (
    CreateTopicRequestHeader,
    PullMessageRequestHeader,
    SendMessageRequestHeaderV2,
)
from rmqtwist.message import Message, Property, UniqueIdGenerator, encode_properties
from rmqtwist.protocol import RemotingProtocol
from rmqtwist.server import RemotingServerFactory

TOPIC = "BenchTopic"
QUEUES = 8
GROUP = "bench_group"


class Connection:
    """One server-side connection of a fresh dev broker, on an in-memory transport."""

    def __init__(self, stype: SerializeType) -> None:
        self.stype = stype
        factory = RemotingServerFactory(idle_timeout=120.0, reactor=reactor)
        install_broker(factory, Broker(MemoryStore(max_bytes=4 << 30), reactor=reactor))
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert isinstance(protocol, RemotingProtocol)
        self.protocol = protocol
        self.transport = StringTransport(  # type: ignore[no-untyped-call]
            IPv4Address("TCP", "127.0.0.1", 10911), IPv4Address("TCP", "127.0.0.1", 50000)
        )
        protocol.makeConnection(self.transport)  # type: ignore[no-untyped-call]
        self.opaque = 0

    def frame(self, request: RemotingCommand) -> bytes:
        self.opaque += 1
        return encode_frame(request, self.stype, opaque=self.opaque)

    def feed(self, data: bytes) -> tuple[int, bytes]:
        """``data`` read by the connection: (CPU ns it took, what it wrote back)."""
        self.transport.clear()  # type: ignore[no-untyped-call]
        started = time.process_time_ns()
        self.protocol.dataReceived(data)
        took = time.process_time_ns() - started
        return took, self.transport.value()  # type: ignore[no-untyped-call]

    def call(self, request: RemotingCommand) -> RemotingCommand:
        _, answer = self.feed(self.frame(request))
        # The broker may push a request of its own too (NOTIFY_CONSUMER_IDS_CHANGED).
        (response,) = [c for c in FrameDecoder().feed(answer) if c.is_response]
        if response.code != 0:
            raise SystemExit(f"request {request.code} answered {response.code}")
        return response


def send_requests(count: int) -> list[RemotingCommand]:
    """SEND_MESSAGE_V2 requests built with the message helpers, as a producer's."""
    ids = UniqueIdGenerator()
    body = bytes(range(128))
    requests = []
    for n in range(count):
        message = Message(
            TOPIC,
            body,
            tags="TagA",
            keys=(f"key0-{n:09d}",),
            properties={Property.UNIQ_KEY: ids.next_id(), Property.WAIT: "true"},
        )
        header = SendMessageRequestHeaderV2(
            a=GROUP,
            b=TOPIC,
            e=n % QUEUES,
            g=int(time.time() * 1000),
            i=encode_properties(message.wire_properties()),
            j=0,
            m=False,
            n="broker-a",
        )
        requests.append(
            header.to_request(RequestCode.SEND_MESSAGE_V2, body, language=LanguageCode.JAVA)
        )
    return requests


def heartbeat() -> RemotingCommand:
    """HEART_BEAT of a push consumer whose group subscribes to ``*``."""
    subscription = {"topic": TOPIC, "subString": "*", "expressionType": "TAG", "subVersion": 1}
    consumer = {"groupName": GROUP, "subscriptionDataSet": [subscription]}
    body = {"clientID": "127.0.0.1@inbroker", "consumerDataSet": [consumer]}
    return RemotingCommand.request(RequestCode.HEART_BEAT, body=json.dumps(body).encode())


def pull_request(queue_id: int, offset: int) -> RemotingCommand:
    return PullMessageRequestHeader(
        consumer_group=GROUP,
        topic=TOPIC,
        queue_id=queue_id,
        queue_offset=offset,
        max_msg_nums=32,
        sys_flag=0x1 | 0x2,  # commit offset, suspend: a push consumer's
        commit_offset=offset,
        suspend_timeout_millis=15_000,
        sub_version=1,
        expression_type="TAG",
    ).to_request(RequestCode.PULL_MESSAGE, language=LanguageCode.JAVA)


def run(stype: SerializeType, requests: list[RemotingCommand], batch: int) -> tuple[float, float]:
    """(us per send, us per message pulled) on a fresh broker."""
    connection = Connection(stype)
    topic = CreateTopicRequestHeader(topic=TOPIC, read_queue_nums=QUEUES, write_queue_nums=QUEUES)
    connection.call(topic.to_request(RequestCode.UPDATE_AND_CREATE_TOPIC))
    connection.call(heartbeat())
    frames = [connection.frame(request) for request in requests]
    reads = [b"".join(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    gc.collect()
    send_ns = 0
    for data in reads:
        took, _ = connection.feed(data)
        send_ns += took
    per_queue = len(requests) // QUEUES
    pull_ns = pulled = 0
    for offset in range(0, per_queue - 31, 32):
        data = b"".join(connection.frame(pull_request(q, offset)) for q in range(QUEUES))
        took, answers = connection.feed(data)
        pull_ns += took
        pulled += 32 * QUEUES
        if len(answers) < 32 * QUEUES * 128:
            raise SystemExit(f"pulls from {offset} got {len(answers)} bytes")
    return send_ns / len(requests) / 1000, pull_ns / pulled / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=32_000, help="sends per run [32000]")
    parser.add_argument("--batch", type=int, default=64, help="sends per read [64]")
    parser.add_argument("--runs", type=int, default=7, help="runs; the median is shown [7]")
    parser.add_argument("--serialize-type", choices=("json", "rocketmq"), default="json")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    stype = SerializeType.ROCKETMQ if args.serialize_type == "rocketmq" else SerializeType.JSON
    requests = send_requests(args.messages)
    runs = [run(stype, requests, args.batch) for _ in range(args.runs)]
    result: dict[str, Any] = {"rmqtwist": __version__.public(), "serialize_type": stype.name}
    for i, name in enumerate(("send_us", "pull_us_per_msg")):
        values = sorted(r[i] for r in runs)
        result[name] = round(statistics.median(values), 2)
        result[name + "_range"] = [round(values[0], 2), round(values[-1], 2)]
    print(
        f"dev broker, Python work in one process ({stype.name} headers, median of {args.runs} "
        f"runs): {result['send_us']} us per send ({args.batch} per read; range "
        f"{result['send_us_range'][0]}-{result['send_us_range'][1]}), "
        f"{result['pull_us_per_msg']} us per message pulled (32 per pull; range "
        f"{result['pull_us_per_msg_range'][0]}-{result['pull_us_per_msg_range'][1]})"
    )
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
