"""RemotingServerFactory, RemotingServer and the built-in processors.

Most tests run on a ``MemoryReactorClock``: endpoints "listen" on the memory reactor,
connections are ``twisted.test.iosim`` pairs or ``StringTransport``\\ s, and the graceful
stop is driven by advancing the clock. One test listens for real on 127.0.0.1 port 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, SerializeType
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.dispatcher import Dispatcher
from rmqtwist.errors import ConnectionLostError
from rmqtwist.interfaces import (
    IProcessorPlugin,
    IRequestContext,
    IRequestProcessor,
    IRPCHookPlugin,
)
from rmqtwist.processors import (
    EchoProcessor,
    LoggingHook,
    RuntimeStatsProcessor,
    echo_plugin,
    kv_table,
    stats_plugin,
)
from rmqtwist.protocol import RemotingProtocol
from rmqtwist.server import Refused, RemotingServer, RemotingServerFactory

T = TypeVar("T")
Event = dict[str, Any]
OK = ResponseCode.SUCCESS
HELD = 10  # the code the Held processor answers


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[list[Event]]:
    events: list[Event] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def result_of(d: Deferred[T]) -> T:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


def failure_of(d: Deferred[Any], error_type: type[BaseException]) -> BaseException:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    assert isinstance(results[0], Failure), results[0]
    assert isinstance(results[0].value, error_type), results[0]
    return results[0].value  # type: ignore[no-any-return]


@implementer(IRequestProcessor)
class Held:
    """Answers each request only when the test releases it."""

    blocking = False

    def __init__(self) -> None:
        self.waiting: list[tuple[RemotingCommand, Deferred[RemotingCommand]]] = []

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> Deferred[RemotingCommand]:
        d: Deferred[RemotingCommand] = Deferred()
        self.waiting.append((request, d))
        return d

    def reject_request(self) -> bool:
        return False

    def release_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for request, d in waiting:
            d.callback(RemotingCommand.response_to(request, OK, "released", body=request.body))


def make_factory(
    reactor: Any, *, max_connections: int = 1000, held: Held | None = None
) -> RemotingServerFactory:
    factory = RemotingServerFactory(reactor=reactor, max_connections=max_connections)
    factory.register_default_processor(EchoProcessor())
    factory.register_processor(RequestCode.GET_BROKER_RUNTIME_INFO, RuntimeStatsProcessor())
    if held is not None:
        factory.register_processor(HELD, held)
    return factory


def peer(n: int) -> IPv4Address:
    return IPv4Address("TCP", "10.0.0.2", 50000 + n)


class Wire:
    """One server connection on a StringTransport, driven by hand."""

    def __init__(self, factory: RemotingServerFactory, n: int) -> None:
        protocol = factory.buildProtocol(peer(n))
        assert isinstance(protocol, RemotingProtocol)
        self.protocol = protocol
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 10911), peerAddress=peer(n)
        )
        protocol.makeConnection(self.transport)
        self.decoder = FrameDecoder()

    def ask(self, command: RemotingCommand) -> list[RemotingCommand]:
        self.protocol.dataReceived(encode_frame(command))
        return self.replies()

    def replies(self) -> list[RemotingCommand]:
        data = self.transport.value()
        self.transport.clear()
        return self.decoder.feed(data)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def refused(factory: RemotingServerFactory, n: int) -> bool:
    """Whether a new connection from ``peer(n)`` is refused (and then closed at once)."""
    protocol = factory.buildProtocol(peer(n))
    if not isinstance(protocol, Refused):
        return False
    transport = StringTransport(peerAddress=peer(n))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"ignored")
    assert transport.disconnected and transport.value() == b""  # aborted, nothing written
    return True


class Pair:
    """A client RemotingProtocol joined to a server connection with iosim."""

    def __init__(self, factory: RemotingServerFactory, reactor: MemoryReactorClock, n: int):
        server = factory.buildProtocol(peer(n))
        assert isinstance(server, RemotingProtocol)
        client = RemotingProtocol()
        client.dispatcher = Dispatcher(reactor=reactor)
        self.server, self.client = server, client
        self.pump: IOPump = connect(
            server,
            FakeTransport(server, True, peerAddress=peer(n)),
            client,
            FakeTransport(client, False, hostAddress=peer(n)),
            clock=reactor,
        )

    def invoke(self, command: RemotingCommand, timeout: float = 600.0) -> Deferred[Any]:
        d = self.client.invoke(command, timeout)
        self.pump.flush()
        return d


# ---------------------------------------------------------------------------
# The factory
# ---------------------------------------------------------------------------


def test_factory_builds_dispatcher_from_options() -> None:
    reactor = MemoryReactorClock()
    factory = RemotingServerFactory(
        reactor=reactor, idle_timeout=5.0, serialize_type=SerializeType.ROCKETMQ
    )
    assert factory.dispatcher.clock is reactor
    assert factory.dispatcher.idle_timeout == 5.0
    assert factory.dispatcher.serialize_type == SerializeType.ROCKETMQ
    assert factory.max_connections == 1000
    shared = Dispatcher(reactor=reactor)
    assert RemotingServerFactory(shared).dispatcher is shared
    with pytest.raises(TypeError, match="not both"):
        RemotingServerFactory(shared, idle_timeout=3.0)
    with pytest.raises(ValueError, match="max_connections"):
        RemotingServerFactory(reactor=reactor, max_connections=0)


def test_registration_goes_to_the_dispatcher() -> None:
    factory = make_factory(MemoryReactorClock(), held=Held())
    assert factory.dispatcher.processor_codes == [HELD, 28]
    factory.register_rpc_hook(LoggingHook())
    assert len(factory.dispatcher.hooks) == 1
    wire = Wire(factory, 1)
    (reply,) = wire.ask(RemotingCommand.request(105, {"topic": "T"}, b"body", opaque=7))
    assert (reply.code, reply.remark, reply.opaque, reply.is_response) == (OK, "ok", 7, True)
    assert (dict(reply.ext_fields or {}), reply.body) == ({"topic": "T"}, b"body")


def test_refuses_beyond_max_connections_and_keeps_the_others(logged: list[Event]) -> None:
    reactor = MemoryReactorClock()
    factory = make_factory(reactor, max_connections=2)
    first, second = Wire(factory, 1), Wire(factory, 2)
    assert factory.connections == {first.protocol, second.protocol}

    assert refused(factory, 3)
    assert refused(factory, 4)
    assert factory.refused_connections == 2
    refusals = [e for e in logged if "Refused a connection" in str(e.get("log_format"))]
    assert len(refusals) == 1  # at most one line per interval
    assert refusals[0]["peer"] == "10.0.0.2:50003"
    assert (refusals[0]["open"], refusals[0]["limit"]) == (2, 2)

    # the open connections are not affected
    for n, wire in enumerate((first, second)):
        (reply,) = wire.ask(RemotingCommand.request(11, body=b"still here", opaque=n))
        assert (reply.code, reply.body, reply.opaque) == (OK, b"still here", n)
    assert not first.transport.disconnecting

    # one closes: there is room again
    first.lose()
    third = Wire(factory, 5)
    assert factory.connections == {second.protocol, third.protocol}
    reactor.advance(11)
    assert refused(factory, 6)
    refusals = [e for e in logged if "Refused a connection" in str(e.get("log_format"))]
    assert [e["refused"] for e in refusals] == [1, 2]  # the second line counts both since
    second.lose()
    third.lose()


# ---------------------------------------------------------------------------
# Listening and the graceful stop (memory reactor, fake clock)
# ---------------------------------------------------------------------------


def test_listens_on_every_endpoint_and_stops_listening() -> None:
    reactor = MemoryReactorClock()
    server = RemotingServer(make_factory(reactor), ["tcp:10911", "tcp:0:interface=127.0.0.1"])
    assert server.ports == []
    server.startService()
    assert [(p, i) for p, _, _, i in reactor.tcpServers] == [(10911, ""), (0, "127.0.0.1")]
    ports = result_of(server.when_listening())
    assert ports == server.ports and len(ports) == 2
    server.listen("tcp:10912")  # while running: listens at once
    assert len(server.ports) == 3
    stopped = server.stopService()
    assert result_of(stopped) is None
    assert server.ports == []
    assert not server.running


def test_bad_endpoint_string_raises() -> None:
    reactor = MemoryReactorClock()
    with pytest.raises(ValueError, match="Unknown endpoint type"):
        RemotingServer(make_factory(reactor), ["nonsense:1"])


def test_graceful_stop_lets_in_flight_requests_finish() -> None:
    reactor = MemoryReactorClock()
    held = Held()
    factory = make_factory(reactor, held=held)
    server = RemotingServer(factory, ["tcp:0"], shutdown_timeout=30.0)
    server.startService()
    pair = Pair(factory, reactor, 1)
    answer = pair.invoke(RemotingCommand.request(HELD, body=b"slow"))
    assert factory.dispatcher.in_flight == 1

    stopped = server.stopService()
    assert server.ports == [] and server.stopping
    assert refused(factory, 2)  # no new connections
    for _ in range(10):
        reactor.advance(1)
        pair.pump.flush()
    assert not stopped.called
    assert pair.client.is_connected  # waits for the request in flight
    # the open connection still answers meanwhile
    echo = pair.invoke(RemotingCommand.request(105, body=b"quick"))
    assert result_of(echo).body == b"quick"

    held.release_all()
    pair.pump.flush()
    reply = result_of(answer)
    assert (reply.code, reply.remark, reply.body) == (OK, "released", b"slow")
    assert not stopped.called
    reactor.advance(0.1)  # the server sees nothing in flight and closes the connection
    pair.pump.flush()
    assert not pair.client.is_connected and not pair.server.is_connected
    reactor.advance(0.1)
    assert result_of(stopped) is None
    assert factory.connections == set()
    assert reactor.seconds() < 11  # well before the deadline


def test_graceful_stop_cuts_requests_at_the_deadline(logged: list[Event]) -> None:
    reactor = MemoryReactorClock()
    held = Held()
    factory = make_factory(reactor, held=held)
    server = RemotingServer(factory, ["tcp:0"], shutdown_timeout=5.0)
    server.startService()
    pairs = [Pair(factory, reactor, n) for n in (1, 2)]
    answers = [pair.invoke(RemotingCommand.request(HELD, body=b"never")) for pair in pairs]
    idle = Pair(factory, reactor, 3)  # nothing in flight on this one

    stopped = server.stopService()
    again = server.stopService()  # a second call fires at the same time
    reactor.advance(4.9)
    for pair in (*pairs, idle):
        pair.pump.flush()
        assert pair.client.is_connected
    reactor.advance(0.2)  # past the deadline: every connection is closed
    for pair in (*pairs, idle):
        pair.pump.flush()
        assert not pair.client.is_connected
    for answer in answers:
        error = failure_of(answer, ConnectionLostError)
        assert "lost before the response" in str(error)
    assert factory.dispatcher.in_flight == 0
    reactor.advance(0.1)
    assert result_of(stopped) is None and result_of(again) is None
    assert any("still in flight" in str(e.get("log_format")) for e in logged)

    held.release_all()  # late answers have nowhere to go: dropped, nothing raised
    for pair in pairs:
        pair.pump.flush()


def test_graceful_stop_aborts_connections_that_do_not_close(logged: list[Event]) -> None:
    reactor = MemoryReactorClock()
    factory = make_factory(reactor)
    server = RemotingServer(factory, shutdown_timeout=1.0, close_grace=2.0)
    server.startService()
    wire = Wire(factory, 1)  # a StringTransport never reports the close by itself
    stopped = server.stopService()
    reactor.advance(0)
    assert wire.transport.disconnecting  # asked to close at once (nothing in flight)
    assert not wire.transport.disconnected
    reactor.advance(2.1)
    assert wire.transport.disconnected  # aborted after the grace period
    assert not stopped.called
    reactor.advance(2.1)  # still not gone after the abort: give up rather than hang
    assert result_of(stopped) is None
    assert any("giving up" in str(e.get("log_format")) for e in logged)
    wire.lose()


def test_stop_without_connections_or_start() -> None:
    reactor = MemoryReactorClock()
    server = RemotingServer(make_factory(reactor), ["tcp:0"])
    assert result_of(server.stopService()) is None
    server.startService()  # and it can start again after a stop
    assert len(server.ports) == 1 and server.factory.accepting
    assert result_of(server.stopService()) is None


# ---------------------------------------------------------------------------
# Built-in processors
# ---------------------------------------------------------------------------


def test_echo_processor_echoes() -> None:
    request = RemotingCommand.request(
        123, {"a": "1"}, b"xyz", remark="r", opaque=9, serialize_type=SerializeType.ROCKETMQ
    )
    reply = EchoProcessor().process_request(None, request)  # type: ignore[arg-type]
    assert reply is not None
    assert (reply.code, reply.remark, reply.opaque, reply.flag) == (OK, "ok", 9, 1)
    assert dict(reply.ext_fields or {}) == {"a": "1"} and reply.body == b"xyz"
    assert reply.serialize_type == SerializeType.ROCKETMQ
    assert EchoProcessor().reject_request() is False


def test_echo_processor_builds_nothing_for_a_oneway_request() -> None:
    request = RemotingCommand.request(123, {"a": "1"}, b"xyz", oneway=True)
    assert EchoProcessor().process_request(None, request) is None  # type: ignore[arg-type]


def test_stats_processor_reports_counters() -> None:
    reactor = MemoryReactorClock()
    reactor.advance(1_700_000_000.25)
    factory = RemotingServerFactory(reactor=reactor)
    stats = RuntimeStatsProcessor(clock=reactor)
    factory.register_processor(RequestCode.GET_BROKER_RUNTIME_INFO, stats)
    factory.register_default_processor(EchoProcessor())
    first, second = Wire(factory, 1), Wire(factory, 2)
    first.ask(RemotingCommand.request(105, opaque=1))
    first.lose()
    reactor.advance(90061)  # 1 day, 1 hour, 1 minute, 1 second

    (reply,) = second.ask(RemotingCommand.request(28, opaque=2))
    assert (reply.code, reply.opaque) == (OK, 2)
    ext = dict(reply.ext_fields or {})
    assert json.loads(reply.body) == {"table": ext}
    assert all(isinstance(value, str) for value in ext.values())
    assert ext["bootTimestamp"] == "1700000000250"
    assert ext["uptimeSeconds"] == "90061"
    assert ext["runtime"] == "[ 1 days, 1 hours, 1 minutes, 1 seconds ]"
    assert ext["connections"] == "1"
    assert ext["connectionsMade"] == "2"
    assert ext["connectionsClosed"] == "1"
    assert ext["requestsReceived"] == "2"  # the echo and this one
    assert ext["responsesSent"] == "1"  # this answer is not sent yet
    assert ext["inFlight"] == "1"  # this request
    assert ext["requestsUnsupported"] == "0"
    assert ext["processorCodes"] == "28"
    assert ext["rmqtwistVersion"]
    # a KVTable as fastjson writes it: compact, every value a string
    assert reply.body.startswith(b'{"table":{"bootTimestamp":"1700000000250",')
    second.lose()


def test_stats_processor_with_a_dispatcher_of_its_own() -> None:
    reactor = MemoryReactorClock()
    dispatcher = Dispatcher(reactor=reactor)
    dispatcher.requests_received = 41
    stats = RuntimeStatsProcessor(dispatcher, clock=reactor)
    request = RemotingCommand.request(28, opaque=3, serialize_type=SerializeType.ROCKETMQ)
    reply = stats.process_request(None, request)  # type: ignore[arg-type]
    assert reply.ext("requestsReceived") == "41"
    assert reply.serialize_type == SerializeType.ROCKETMQ
    assert kv_table({"b": "2", "a": "é"}) == '{"table":{"a":"é","b":"2"}}'.encode()


def test_plugins_are_found() -> None:
    processors = {plugin.name: plugin for plugin in getPlugins(IProcessorPlugin)}
    assert processors["echo"] is echo_plugin and processors["stats"] is stats_plugin
    assert list(processors["stats"].codes) == [28] and list(processors["echo"].codes) == []
    assert isinstance(processors["echo"].make_processor(), EchoProcessor)
    hooks = {plugin.name: plugin for plugin in getPlugins(IRPCHookPlugin)}
    assert isinstance(hooks["log"].make_hook(), LoggingHook)
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert makers["rmq-remoting"].module == "rmqtwist.tap"


# ---------------------------------------------------------------------------
# A real listening socket on 127.0.0.1
# ---------------------------------------------------------------------------


async def connect_client(port: int) -> RemotingProtocol:
    client = RemotingProtocol()
    client.dispatcher = Dispatcher()
    endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", port)
    return await connectProtocol(endpoint, client)


async def until(condition: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(global_reactor, 0.01, lambda: None)
    raise AssertionError("timed out waiting")


@pytest_twisted.ensureDeferred
async def test_real_socket_on_port_zero() -> None:
    held = Held()
    factory = make_factory(global_reactor, held=held)
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"], shutdown_timeout=0.2)
    server.startService()
    try:
        (port,) = await server.when_listening()
        address = port.getHost()
        assert address.host == "127.0.0.1" and address.port > 0

        client = await connect_client(address.port)
        reply = await client.invoke(RemotingCommand.request(105, {"k": "v"}, b"hi"), 5)
        assert (reply.code, reply.remark, reply.body) == (OK, "ok", b"hi")
        stats = await client.invoke(RemotingCommand.request(28), 5)
        assert stats.ext("connections") == "1"

        # a second server on the same port cannot listen: an error, not an exception
        clash = RemotingServer(
            make_factory(global_reactor), [f"tcp:{address.port}:interface=127.0.0.1"]
        )
        clash.startService()
        try:
            failure = clash.when_listening()
            with pytest.raises(CannotListenError):
                await failure
            ((endpoint, error),) = clash.listen_errors
            assert endpoint.startswith("tcp:") and error.check(CannotListenError)
        finally:
            await clash.stopService()

        pending = client.invoke(RemotingCommand.request(HELD), 30)
        await until(lambda: held.waiting)
        await server.stopService()  # cuts the held request after 0.2 s
        with pytest.raises(ConnectionLostError):
            await pending
        await until(lambda: not client.is_connected)
        assert server.ports == []
    finally:
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_real_sockets_unix_endpoint_and_max_connections(tmp_path: Path) -> None:
    factory = make_factory(global_reactor, max_connections=1)
    path = tmp_path / "rmq.sock"
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1", f"unix:{path}"])
    server.startService()
    try:
        tcp, unix = await server.when_listening()
        assert unix.getHost().name in (str(path), str(path).encode())
        client = RemotingProtocol()
        client.dispatcher = Dispatcher()
        await connectProtocol(UNIXClientEndpoint(global_reactor, str(path)), client)
        reply = await client.invoke(RemotingCommand.request(105, body=b"over unix"), 5)
        assert reply.body == b"over unix"

        # one connection is the limit: a second one is closed at once, the first one works
        second = await connect_client(tcp.getHost().port)
        await until(lambda: not second.is_connected)
        assert factory.refused_connections == 1
        reply = await client.invoke(RemotingCommand.request(105, body=b"still"), 5)
        assert reply.body == b"still"
    finally:
        await server.stopService()
    assert server.ports == [] and not path.exists()
