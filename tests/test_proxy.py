"""The PROXY protocol (v1 and v2) in front of a server: hand-written headers on loopback,
and the real client address everywhere the server names its peer."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode
from rmqtwist.acl import AclServerHook, parse_acl
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.interfaces import (
    IChannel,
    IChannelEventListener,
    IRequestContext,
    IRequestProcessor,
    IRPCHook,
)
from rmqtwist.proxy import ProxyProtocolEndpoint
from rmqtwist.server import RemotingServer, RemotingServerFactory
from rmqtwist.tls import listen_endpoint

OK = ResponseCode.SUCCESS


@implementer(IRequestProcessor)
class Recorder:
    blocking = False

    def __init__(self) -> None:
        self.addresses: list[str] = []

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> Any:
        self.addresses.append(context.channel.remote_address)
        return RemotingCommand.response_to(request, OK, context.channel.remote_address)

    def reject_request(self) -> bool:
        return False


@implementer(IRPCHook)
class HookRecorder:
    def __init__(self) -> None:
        self.addresses: list[str] = []

    def before_request(self, remote_address: str, request: RemotingCommand) -> None:
        self.addresses.append(remote_address)

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        return None


@implementer(IChannelEventListener)
class Connects:
    def __init__(self) -> None:
        self.addresses: list[str] = []

    def on_connect(self, remote_address: str, channel: IChannel) -> None:
        self.addresses.append(remote_address)

    def on_close(self, remote_address: str, channel: IChannel) -> None:
        pass

    def on_exception(self, remote_address: str, channel: IChannel, error: Exception) -> None:
        pass

    def on_idle(self, remote_address: str, channel: IChannel) -> None:
        pass


def v1(source: str, port: int) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 10911\r\n".encode()


def v2(source: str, port: int) -> bytes:
    addresses = (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address("127.0.0.1").packed
        + struct.pack("!HH", port, 10911)
    )
    prefix = b"\r\n\r\n\x00\r\nQUIT\n"
    return prefix + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def exchange(port: int, pieces: list[bytes]) -> RemotingCommand | None:
    """Send ``pieces`` (each its own write), then read one answer; None if closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                return None  # the server closed it before we were done writing
        decoder = FrameDecoder()
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            commands = list(decoder.feed(data))
            if commands:
                return commands[0]


class Server:
    def __init__(self, hooks: list[Any] = ()) -> None:  # type: ignore[assignment]
        self.factory = RemotingServerFactory(reactor=reactor)
        self.recorder = Recorder()
        self.hook = HookRecorder()
        self.connects = Connects()
        self.factory.register_default_processor(self.recorder)
        for hook in hooks:
            self.factory.register_rpc_hook(hook)
        self.factory.register_rpc_hook(self.hook)
        self.factory.register_listener(self.connects)
        endpoint = listen_endpoint(reactor, "tcp:0:interface=127.0.0.1", proxy_protocol=True)
        assert isinstance(endpoint, ProxyProtocolEndpoint)
        self.server = RemotingServer(self.factory, [endpoint], shutdown_timeout=0.2)
        self.port = 0

    async def start(self) -> None:
        self.server.startService()
        (port,) = await self.server.when_listening()
        self.port = port.getHost().port

    async def call(self, *pieces: bytes) -> RemotingCommand | None:
        result: RemotingCommand | None = await deferToThread(exchange, self.port, list(pieces))
        return result


def request(body: bytes = b"x") -> bytes:
    return encode_frame(RemotingCommand.request(105, body=body))


@pytest_twisted.ensureDeferred
async def test_v1_and_v2_headers_give_the_real_address_everywhere() -> None:
    server = Server()
    await server.start()
    try:
        reply = await server.call(v1("203.0.113.7", 56324) + request())
        assert reply is not None and (reply.code, reply.remark) == (OK, "203.0.113.7:56324")
        # v2, and the header cut into pieces across writes
        header = v2("198.51.100.9", 40000)
        reply = await server.call(header[:5], header[5:14], header[14:], request())
        assert reply is not None and reply.remark == "198.51.100.9:40000"
        reply = await server.call(b"PROX", v1("192.0.2.1", 1000)[4:], request())
        assert reply is not None and reply.remark == "192.0.2.1:1000"
        expected = ["203.0.113.7:56324", "198.51.100.9:40000", "192.0.2.1:1000"]
        assert server.recorder.addresses == expected
        assert server.hook.addresses == expected
        assert server.connects.addresses == expected
    finally:
        await server.server.stopService()


@pytest_twisted.ensureDeferred
async def test_a_connection_without_a_header_is_closed_unprocessed() -> None:
    server = Server()
    await server.start()
    try:
        assert await server.call(request()) is None
        assert await server.call(b"PROXY nonsense\r\n", request()) is None
        assert server.recorder.addresses == [] and server.connects.addresses == []
    finally:
        await server.server.stopService()


@pytest_twisted.ensureDeferred
async def test_acl_white_lists_see_the_real_address() -> None:
    acl = parse_acl(
        {
            "globalWhiteRemoteAddresses": ["203.0.113.*"],
            "accounts": [{"accessKey": "someone", "secretKey": "12345678"}],
        }
    )
    server = Server([AclServerHook(acl)])
    await server.start()
    try:
        reply = await server.call(v1("203.0.113.7", 5000) + request())
        assert reply is not None and reply.code == OK
        reply = await server.call(v2("198.51.100.9", 5000) + request())
        assert reply is not None and reply.code == ResponseCode.NO_PERMISSION
        assert server.recorder.addresses == ["203.0.113.7:5000"]
    finally:
        await server.server.stopService()


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_closed() -> None:
    factory = RemotingServerFactory(reactor=reactor)
    endpoint = ProxyProtocolEndpoint(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1"), header_timeout=0.1
    )
    server = RemotingServer(factory, [endpoint], shutdown_timeout=0.2)
    server.startService()
    try:
        (port,) = await server.when_listening()
        assert await deferToThread(exchange, port.getHost().port, []) is None
    finally:
        await server.stopService()


def test_haproxy_prefix_and_repr() -> None:
    endpoint = listen_endpoint(reactor, "haproxy:tcp:0:interface=127.0.0.1")
    assert isinstance(endpoint, ProxyProtocolEndpoint)
    assert repr(endpoint) == "proxy:tcp:0:interface=127.0.0.1"
    assert listen_endpoint(reactor, "tcp:0") == "tcp:0"


@pytest.mark.parametrize("header", [v1("10.1.2.3", 9), v2("10.1.2.3", 9)])
def test_headers_are_well_formed(header: bytes) -> None:
    # the parsers we rely on read them as written
    from twisted.protocols.haproxy._v1parser import V1Parser
    from twisted.protocols.haproxy._v2parser import V2Parser

    parser = V1Parser() if header.startswith(b"PROXY") else V2Parser()
    info, rest = parser.feed(header + b"tail")
    assert info is not None and info.source is not None
    assert (info.source.host, info.source.port, rest) == ("10.1.2.3", 9, b"tail")  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_v2_local_header_keeps_the_balancer_address() -> None:
    server = Server()
    await server.start()
    try:
        local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack("!H", 0)
        reply = await server.call(local + request())
        assert reply is not None and (reply.remark or "").startswith("127.0.0.1:")
    finally:
        await server.server.stopService()


def tls_exchange(port: int, header: bytes, ca: str) -> RemotingCommand:
    import ssl

    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(header)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request())
            decoder = FrameDecoder()
            while True:
                data = tls.recv(65536)
                assert data
                commands = list(decoder.feed(data))
                if commands:
                    return commands[0]


@pytest_twisted.ensureDeferred
async def test_tls_after_the_header(tmp_path: Any) -> None:
    from rmqtwist.tls import TLSMode, server_tls_options
    from tests.tls_certs import make_certificates

    certs = make_certificates(tmp_path)
    factory = RemotingServerFactory(reactor=reactor)
    recorder = Recorder()
    factory.register_default_processor(recorder)
    endpoint = listen_endpoint(
        reactor,
        "tcp:0:interface=127.0.0.1",
        proxy_protocol=True,
        tls_mode=TLSMode.ENFORCING,
        tls_options=server_tls_options(certs.server_cert, certs.server_key),
    )
    assert repr(endpoint) == "tls(enforcing):proxy:tcp:0:interface=127.0.0.1"
    server = RemotingServer(factory, [endpoint], shutdown_timeout=0.2)
    server.startService()
    try:
        (port,) = await server.when_listening()
        reply = await deferToThread(
            tls_exchange, port.getHost().port, v1("203.0.113.8", 4242), certs.ca
        )
        assert reply.remark == "203.0.113.8:4242"
        # plaintext after the header is still refused on an enforcing port
        assert (
            await deferToThread(exchange, port.getHost().port, [v1("203.0.113.9", 1), request()])
            is None
        )
        assert recorder.addresses == ["203.0.113.8:4242"]
    finally:
        await server.stopService()


class Raw(Protocol):
    """Sends a PROXY header and a request at once; remembers what comes back."""

    def __init__(self, header: bytes) -> None:
        self.header = header
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.header + request())

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_the_per_address_limit_counts_real_addresses() -> None:
    factory = RemotingServerFactory(reactor=reactor, max_connections_per_address=1)
    factory.register_default_processor(Recorder())
    endpoint = listen_endpoint(reactor, "tcp:0:interface=127.0.0.1", proxy_protocol=True)
    server = RemotingServer(factory, [endpoint], shutdown_timeout=0.2)
    server.startService()
    opened: list[Raw] = []
    try:
        (port,) = await server.when_listening()
        target = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        async def open_from(source: str) -> Raw:
            raw = Raw(v1(source, 1234))
            opened.append(raw)
            await connectProtocol(target, raw)
            for _ in range(500):
                if raw.received or raw.lost.called:
                    break
                await deferLater(reactor, 0.01, lambda: None)
            return raw

        # all come from 127.0.0.1, but from three clients as the balancer tells
        first = await open_from("203.0.113.1")
        second = await open_from("203.0.113.2")
        assert first.received and second.received and not second.lost.called
        again = await open_from("203.0.113.1")
        assert again.lost.called and not again.received
        assert factory.refused_connections == 1
    finally:
        for raw in opened:
            if raw.transport is not None and not raw.lost.called:
                raw.transport.loseConnection()
        await server.stopService()
