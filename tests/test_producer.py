"""``rmqtwist.producer``: sends against the dev broker (real reactor), and route parsing,
round-robin, retries and fault avoidance against fake name servers/brokers."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from zope.interface import implementer

from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import ConnectError
from rmqtwist.headers import SendMessageRequestHeaderV2, SendMessageResponseHeader
from rmqtwist.interfaces import IRequestProcessor
from rmqtwist.message import Message
from rmqtwist.producer import (
    MessageQueue,
    NoRouteError,
    Producer,
    ProducerClosedError,
    SendFailedError,
    SendStatus,
    parse_route,
    stable_hash,
)
from rmqtwist.server import RemotingServerFactory
from rmqtwist.testing import start_broker

# -- route parsing ------------------------------------------------------------------------


def test_parse_route_quoted_and_unquoted_keys() -> None:
    quoted = (
        b'{"brokerDatas":[{"brokerAddrs":{"0":"h:1","1":"h:2"},"brokerName":"b1"},'
        b'{"brokerAddrs":{"1":"h:3"},"brokerName":"b2"},'
        b'{"brokerAddrs":{"0":"h:4"},"brokerName":"b0"}],'
        b'"queueDatas":[{"brokerName":"b1","perm":6,"writeQueueNums":2},'
        b'{"brokerName":"b2","perm":6,"writeQueueNums":2},'
        b'{"brokerName":"b0","perm":4,"writeQueueNums":3}]}'
    )
    unquoted = quoted.replace(b'"0":', b"0:").replace(b'"1":', b"1:")
    for body in (quoted, unquoted):
        route = parse_route("T", body)
        assert route.masters == {"b1": "h:1", "b0": "h:4"}
        # b2 has no master, b0 is read-only
        assert route.queues == (MessageQueue("T", "b1", 0), MessageQueue("T", "b1", 1))


def test_stable_hash_is_crc32() -> None:
    assert stable_hash("order-1") == zlib.crc32(b"order-1")


# -- against the dev broker ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_lands_with_fields_and_properties() -> None:
    broker = await start_broker(delay_levels=(0.1, 0.2))
    producer = Producer("PG", [broker.address])
    await producer.start()
    try:
        message = Message("T1", b"hello", tags="TagA", keys=("k1", "k2"), properties={"x": "y"})
        result = await producer.send(message)
        assert result.status is SendStatus.SEND_OK
        assert result.queue.topic == "T1" and result.queue_offset == 0
        stored = broker.messages("T1", result.queue.queue_id)
        assert len(stored) == 1
        got = stored[0]
        assert (got.body, got.tags, got.keys) == (b"hello", "TagA", ("k1", "k2"))
        assert got.properties["x"] == "y"
        assert got.properties["UNIQ_KEY"] == result.msg_id
        assert got.msg_id == result.msg_id
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_round_robin_compression_delay_batch_and_sharding() -> None:
    broker = await start_broker(delay_levels=(0.1, 0.2))
    producer = Producer("PG", [broker.address])
    await producer.start()
    try:
        queues = {(await producer.send(Message("T2", b"x"))).queue.queue_id for _ in range(8)}
        assert queues == {0, 1, 2, 3}

        big = bytes(range(256)) * 40  # 10 KiB
        result = await producer.send(Message("T3", big))
        (stored,) = broker.messages("T3")
        assert stored.sys_flag & 0x301 == 0x301
        assert stored.decoded_body() == big and stored.body != big

        result = await producer.send(Message("T4", b"later", delay_level=1))
        assert broker.messages("T4") == []
        await deferLater(reactor, 0.4, lambda: None)
        (delayed,) = broker.messages("T4")
        assert delayed.body == b"later"

        batch = [Message("T5", b"m%d" % i, tags="B") for i in range(3)]
        result = await producer.send_batch(batch)
        assert len(result.msg_id.split(",")) == 3
        stored_batch = broker.messages("T5", result.queue.queue_id)
        assert [m.body for m in stored_batch] == [b"m0", b"m1", b"m2"]
        assert [m.queue_offset for m in stored_batch] == [0, 1, 2]
        assert result.queue_offset == 0

        keyed = {
            (await producer.send(Message("T6", b"o"), sharding_key="order-7")).queue
            for _ in range(5)
        }
        assert [q.queue_id for q in keyed] == [stable_hash("order-7") % 4]

        chosen = await producer.send(
            Message("T6", b"s"), selector=lambda queues, message: queues[-1]
        )
        assert chosen.queue.queue_id == 3

        await producer.send_oneway(Message("T7", b"one"))
        await deferLater(reactor, 0.05, lambda: None)
        assert [m.body for m in broker.messages("T7")] == [b"one"]
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_send_after_shutdown_fails() -> None:
    broker = await start_broker()
    producer = Producer("PG", broker.address)
    await producer.start()
    await producer.shutdown()
    with pytest.raises(ProducerClosedError):
        await producer.send(Message("T", b"x"))
    await broker.stop()


# -- fake name server and brokers ---------------------------------------------------------


@implementer(IRequestProcessor)
class _Processor:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def process_request(self, context: Any, request: RemotingCommand) -> Any:
        return self.handle(request)

    def reject_request(self) -> bool:
        return False


async def _listen(handlers: dict[int, Any]) -> tuple[str, Any]:
    factory = RemotingServerFactory(reactor=reactor)
    for code, handle in handlers.items():
        factory.register_processor(code, _Processor(handle))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return f"127.0.0.1:{port.getHost().port}", port


def _ok(name: str) -> Any:
    def handle(request: RemotingCommand) -> RemotingCommand:
        header = SendMessageRequestHeaderV2.from_command(request)
        reply = SendMessageResponseHeader(msg_id=name, queue_id=header.e, queue_offset=0)
        return reply.to_response(request, ResponseCode.SUCCESS)

    return handle


def _busy(request: RemotingCommand) -> RemotingCommand:
    return RemotingCommand.response_to(request, ResponseCode.SYSTEM_ERROR, remark="down")


def _silent(request: RemotingCommand) -> Deferred[RemotingCommand]:
    return Deferred()


def _ack(request: RemotingCommand) -> RemotingCommand:
    return RemotingCommand.response_to(request, ResponseCode.SUCCESS)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("bad", [_busy, _silent])
async def test_failing_broker_is_retried_elsewhere_then_avoided(bad: Any) -> None:
    good_address, good_port = await _listen(
        {RequestCode.SEND_MESSAGE_V2: _ok("good"), RequestCode.HEART_BEAT: _ack}
    )
    bad_address, bad_port = await _listen(
        {RequestCode.SEND_MESSAGE_V2: bad, RequestCode.HEART_BEAT: _ack}
    )
    fetches: list[str] = []

    def route(request: RemotingCommand) -> RemotingCommand:
        topic = request.ext("topic") or ""
        fetches.append(topic)
        body = {
            "brokerDatas": [
                {"brokerName": "bad", "brokerAddrs": {"0": bad_address}},
                {"brokerName": "good", "brokerAddrs": {"0": good_address}},
            ],
            "queueDatas": [
                {"brokerName": n, "perm": 6, "writeQueueNums": 2} for n in ("bad", "good")
            ],
        }
        return RemotingCommand.response_to(
            request, ResponseCode.SUCCESS, body=json.dumps(body).encode()
        )

    ns_address, ns_port = await _listen({RequestCode.GET_ROUTEINFO_BY_TOPIC: route})
    producer = Producer("PG", [ns_address], send_timeout=0.3)
    await producer.start()
    try:
        results = [await producer.send(Message("T", b"x")) for _ in range(6)]
        assert {r.queue.broker_name for r in results} == {"good"}
        assert {r.offset_msg_id for r in results} == {"good"}
        assert len(fetches) >= 2  # refreshed after the failure
    finally:
        await producer.shutdown()
        for port in (good_port, bad_port, ns_port):
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_all_failing_gives_each_cause_and_no_route() -> None:
    bad_address, bad_port = await _listen({RequestCode.SEND_MESSAGE_V2: _busy})

    def route(request: RemotingCommand) -> RemotingCommand:
        if request.ext("topic") == "missing":
            return RemotingCommand.response_to(request, ResponseCode.TOPIC_NOT_EXIST)
        body = {
            "brokerDatas": [{"brokerName": "bad", "brokerAddrs": {"0": bad_address}}],
            "queueDatas": [{"brokerName": "bad", "perm": 6, "writeQueueNums": 1}],
        }
        return RemotingCommand.response_to(
            request, ResponseCode.SUCCESS, body=json.dumps(body).encode()
        )

    ns_address, ns_port = await _listen({RequestCode.GET_ROUTEINFO_BY_TOPIC: route})
    producer = Producer("PG", [ns_address], send_timeout=0.3)
    await producer.start()
    try:
        with pytest.raises(SendFailedError) as info:
            await producer.send(Message("T", b"x"))
        assert len(info.value.causes) == 3
        assert all(name == "bad" for name, _ in info.value.causes)
    finally:
        await producer.shutdown()
        for port in (bad_port, ns_port):
            await port.stopListening()
    dead = Producer("PG", ["127.0.0.1:1"], send_timeout=0.3)
    await dead.start()
    with pytest.raises(NoRouteError):
        await dead.send(Message("T", b"x"))
    await dead.shutdown()


# -- Clock-based: a fake client -----------------------------------------------------------


class _FakeClient:
    """Answers by address: ``handlers[address](request)`` gives a response or raises."""

    def __init__(self, handlers: dict[str, Any]) -> None:
        self.handlers = handlers
        self.calls: list[tuple[str, int]] = []

    def invoke(self, address: str, request: RemotingCommand, timeout: float) -> Deferred[Any]:
        self.calls.append((address, request.code))
        try:
            return succeed(self.handlers[address](request))
        except Exception as error:
            return fail(error)

    def invoke_oneway(self, address: str, request: RemotingCommand, timeout: float) -> Any:
        self.calls.append((address, request.code))
        return succeed(None)


def _route_body(*names: str, queues: int = 2) -> bytes:
    body = {
        "brokerDatas": [{"brokerName": n, "brokerAddrs": {"0": f"{n}:1"}} for n in names],
        "queueDatas": [{"brokerName": n, "perm": 6, "writeQueueNums": queues} for n in names],
    }
    return json.dumps(body).encode()


class _Fake:
    def __init__(self) -> None:
        self.clock = Clock()
        self.brokers = ["b0", "b1"]
        self.down: set[str] = set()
        self.routes = 0
        self.asked: list[str] = []
        self.missing: set[str] = set()
        self.sent: list[SendMessageRequestHeaderV2] = []
        self.answer = ResponseCode.SUCCESS
        handlers: dict[str, Any] = {"ns:1": self.route}
        for name in ("b0", "b1", "b2"):
            handlers[f"{name}:1"] = self.broker(name)
        self.client = _FakeClient(handlers)
        self.producer = Producer(
            "PG",
            ["ns:1"],
            reactor=self.clock,
            client=self.client,  # type: ignore[arg-type]
        )
        self.producer.start()

    def route(self, request: RemotingCommand) -> RemotingCommand:
        self.routes += 1
        self.asked.append(request.ext("topic") or "")
        if request.ext("topic") in self.missing:
            return RemotingCommand.response_to(request, ResponseCode.TOPIC_NOT_EXIST)
        if request.ext("topic") == "TBW102":
            return RemotingCommand.response_to(
                request, ResponseCode.SUCCESS, body=_route_body("b0", queues=8)
            )
        return RemotingCommand.response_to(
            request, ResponseCode.SUCCESS, body=_route_body(*self.brokers)
        )

    def broker(self, name: str) -> Any:
        ok = _ok(name)

        def handle(request: RemotingCommand) -> RemotingCommand:
            if name in self.down:
                raise ConnectError(f"{name} refused")
            if request.code == RequestCode.SEND_MESSAGE_V2:
                self.sent.append(SendMessageRequestHeaderV2.from_command(request))
                if self.answer != ResponseCode.SUCCESS:
                    return RemotingCommand.response_to(request, self.answer, remark="no")
                return ok(request)  # type: ignore[no-any-return]
            return _ack(request)

        return handle

    def send(self, topic: str = "T") -> Any:
        results: list[Any] = []
        self.producer.send(Message(topic, b"x")).addBoth(results.append)
        assert results
        return results[0]


def test_round_robin_across_every_master_queue() -> None:
    fake = _Fake()
    picked = [(r.queue.broker_name, r.queue.queue_id) for r in (fake.send() for _ in range(8))]
    assert sorted(set(picked)) == [("b0", 0), ("b0", 1), ("b1", 0), ("b1", 1)]
    # evenly: a send that goes the slow way (a broker's first) takes one turn, not two
    assert sorted(picked) == sorted(list(set(picked)) * 2)
    assert picked[:4] != picked[:1] * 4


def test_routes_cached_then_refreshed_every_30_s() -> None:
    fake = _Fake()
    fake.send()
    fake.send()
    assert fake.routes == 1
    fake.brokers = ["b2"]
    fake.clock.advance(30)
    assert fake.routes == 2
    assert fake.send().queue.broker_name == "b2"


def test_refused_broker_retried_elsewhere_and_avoided_for_30_s() -> None:
    fake = _Fake()
    fake.down.add("b0")
    results = [fake.send() for _ in range(6)]
    assert {r.queue.broker_name for r in results} == {"b1"}
    sends_to_b0 = [c for c in fake.client.calls if c == ("b0:1", RequestCode.SEND_MESSAGE_V2)]
    assert len(sends_to_b0) == 1  # tried once, then avoided
    fake.down.clear()
    fake.clock.advance(31)
    assert {fake.send().queue.broker_name for _ in range(4)} == {"b0", "b1"}


def test_heartbeats_every_30_s_to_brokers_used_and_unregister() -> None:
    fake = _Fake()
    fake.send()
    fake.send()
    beats = lambda: [a for a, code in fake.client.calls if code == RequestCode.HEART_BEAT]  # noqa: E731
    assert sorted(beats()) == ["b0:1", "b1:1"]
    fake.clock.advance(30)
    assert sorted(beats()) == ["b0:1", "b0:1", "b1:1", "b1:1"]
    fake.producer.shutdown()
    unregistered = [a for a, c in fake.client.calls if c == RequestCode.UNREGISTER_CLIENT]
    assert sorted(unregistered) == ["b0:1", "b1:1"]
    fake.clock.advance(60)
    assert len(beats()) == 4


def test_all_brokers_down_names_each_try() -> None:
    fake = _Fake()
    fake.down.update({"b0", "b1"})
    failure = fake.send()
    assert isinstance(failure.value, SendFailedError)
    assert len(failure.value.causes) == 3
    assert {name for name, _ in failure.value.causes} == {"b0", "b1"}


def test_topic_not_exist_sends_with_tbw102_route_then_asks_again() -> None:
    fake = _Fake()
    fake.missing.add("NEW")
    results = [fake.send("NEW") for _ in range(8)]
    assert fake.asked[:2] == ["NEW", "TBW102"]
    assert {r.queue.queue_id for r in results} <= {0, 1, 2, 3}  # defaultTopicQueueNums
    assert all(h.c == "TBW102" and h.d == 4 and h.b == "NEW" for h in fake.sent)
    fake.missing.clear()
    fake.send("NEW")
    assert fake.asked[-1] == "NEW"


def test_non_retryable_code_fails_at_once_retryable_tries_three_times() -> None:
    fake = _Fake()
    fake.answer = ResponseCode.MESSAGE_ILLEGAL
    failure = fake.send()
    assert len(failure.value.causes) == 1
    assert failure.value.causes[0][1].code == ResponseCode.MESSAGE_ILLEGAL
    fake.answer = ResponseCode.SERVICE_NOT_AVAILABLE
    failure = fake.send()
    assert len(failure.value.causes) == 3


def test_headers_carry_uniq_key_wait_and_compression_flag() -> None:
    fake = _Fake()
    fake.producer.send(Message("T", b"z" * 5000, tags="A"))
    fake.producer.send(Message("T", b"small"))
    big, small = fake.sent
    assert big.f == 0x301
    assert small.f == 0
    for header in (big, small):
        assert "UNIQ_KEY\x01" in header.i and "WAIT\x01true" in header.i  # type: ignore[operator]


def test_a_failed_send_on_the_fast_path_is_retried_with_the_same_message_id() -> None:
    # Both brokers in use: later sends skip the coroutine until one fails.
    fake = _Fake()
    assert {fake.send().queue.broker_name for _ in range(4)} == {"b0", "b1"}
    tries: list[tuple[str, str]] = []  # (address, UNIQ_KEY) of every send tried
    invoke = fake.client.invoke

    def recording(address: str, request: RemotingCommand, timeout: float) -> Deferred[Any]:
        if request.code == RequestCode.SEND_MESSAGE_V2:
            header = SendMessageRequestHeaderV2.from_command(request)
            properties = dict(p.split("\x01") for p in (header.i or "").split("\x02"))
            tries.append((address, properties["UNIQ_KEY"]))
        return invoke(address, request, timeout)

    fake.client.invoke = recording  # type: ignore[method-assign]
    fake.down.add("b0")
    for _ in range(4):  # until round robin picks b0
        result = fake.send()
        if any(address == "b0:1" for address, _ in tries):
            break
    assert [address for address, _ in tries[-2:]] == ["b0:1", "b1:1"]
    assert tries[-2][1] == tries[-1][1] == result.msg_id  # one id across the tries
    assert result.queue.broker_name == "b1"
    fake.down.add("b1")
    failure = fake.send()
    assert isinstance(failure.value, SendFailedError)
    assert len(failure.value.causes) == 3
