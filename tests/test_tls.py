"""TLS on loopback with throwaway certificates: the modes, client certificates, and the
client's verification of the server (on by default, off only when asked)."""

from __future__ import annotations

import socket
import ssl as stdlib_ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode
from rmqtwist.client import ClientConfig, RemotingClient
from rmqtwist.codec import FrameDecoder, encode_frame
from rmqtwist.dispatcher import Dispatcher
from rmqtwist.errors import RemotingError
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.protocol import RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory
from rmqtwist.tls import ClientAuth, TLSMode, TLSServerEndpoint, listen_endpoint, server_tls_options
from tests.tls_certs import Certificates, make_certificates

OK = ResponseCode.SUCCESS


@implementer(IRequestProcessor)
class Recorder:
    """Echoes, and remembers every request it processed."""

    blocking = False

    def __init__(self) -> None:
        self.seen: list[RemotingCommand] = []

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> Any:
        self.seen.append(request)
        return RemotingCommand.response_to(request, OK, "ok", body=request.body)

    def reject_request(self) -> bool:
        return False


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


class Running:
    def __init__(self, server: RemotingServer, recorder: Recorder, endpoint: Any) -> None:
        self.server = server
        self.recorder = recorder
        self.endpoint = endpoint
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start(
    certs: Certificates,
    mode: TLSMode,
    client_auth: ClientAuth = ClientAuth.NONE,
    *,
    cert: str | None = None,
    key: str | None = None,
) -> Running:
    factory = RemotingServerFactory(reactor=reactor)
    recorder = Recorder()
    factory.register_default_processor(recorder)
    options = server_tls_options(
        cert or certs.server_cert,
        key or certs.server_key,
        ca=None if client_auth is ClientAuth.NONE else certs.ca,
        client_auth=client_auth,
    )
    endpoint = listen_endpoint(
        reactor, "tcp:0:interface=127.0.0.1", tls_mode=mode, tls_options=options
    )
    server = RemotingServer(factory, [endpoint], shutdown_timeout=0.2)
    server.startService()
    running = Running(server, recorder, endpoint)
    (port,) = await server.when_listening()
    running.port = port.getHost().port
    return running


@pytest_twisted.async_yield_fixture
async def servers() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        await running.server.stopService()


async def call(config: ClientConfig, address: str, body: bytes = b"hi") -> RemotingCommand:
    client = RemotingClient(reactor, config)
    try:
        return await client.invoke(address, RemotingCommand.request(105, body=body), 5)
    finally:
        await client.close()


async def plaintext_is_dropped(port: int) -> bool:
    """Connect without TLS, send a request; True if the connection is closed unanswered."""
    client = RemotingProtocol()
    client.dispatcher = Dispatcher()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    try:
        await client.invoke(RemotingCommand.request(105, body=b"plain"), 5)
    except RemotingError:
        return True
    return False


def python_ssl_call(port: int, ca: str) -> RemotingCommand:
    """A request over Python's own ``ssl`` module (a TLS client nobody here wrote)."""
    context = stdlib_ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode_frame(RemotingCommand.request(105, body=b"from ssl")))
        decoder = FrameDecoder()
        while True:
            data = tls.recv(65536)
            assert data, "connection closed before the answer"
            commands = list(decoder.feed(data))
            if commands:
                return commands[0]


@pytest_twisted.ensureDeferred
async def test_tls_round_trip_and_python_ssl(certs: Certificates, servers: list[Running]) -> None:
    running = await start(certs, TLSMode.ENFORCING)
    servers.append(running)
    reply = await call(ClientConfig(tls=True, tls_ca=certs.ca), running.address)
    assert (reply.code, reply.body) == (OK, b"hi")
    # by name too: the certificate names localhost
    reply = await call(ClientConfig(tls=True, tls_ca=certs.ca), f"localhost:{running.port}")
    assert reply.body == b"hi"
    answer = await deferToThread(python_ssl_call, running.port, certs.ca)
    assert (answer.code, answer.body) == (OK, b"from ssl")


@pytest_twisted.ensureDeferred
async def test_enforcing_closes_plaintext_without_processing(
    certs: Certificates, servers: list[Running]
) -> None:
    running = await start(certs, TLSMode.ENFORCING)
    servers.append(running)
    assert await plaintext_is_dropped(running.port)
    assert await plaintext_is_dropped(running.port)
    assert running.recorder.seen == []
    assert isinstance(running.endpoint, TLSServerEndpoint)
    assert running.endpoint.factory is not None
    assert running.endpoint.factory.refused_plaintext == 2
    assert running.server.dispatcher.connections == set()


@pytest_twisted.ensureDeferred
async def test_permissive_takes_tls_and_plaintext(
    certs: Certificates, servers: list[Running]
) -> None:
    running = await start(certs, TLSMode.PERMISSIVE)
    servers.append(running)
    reply = await call(ClientConfig(tls=True, tls_ca=certs.ca), running.address, b"tls")
    assert reply.body == b"tls"
    reply = await call(ClientConfig(), running.address, b"plain")
    assert reply.body == b"plain"
    assert [r.body for r in running.recorder.seen] == [b"tls", b"plain"]


@pytest_twisted.ensureDeferred
async def test_client_refuses_an_unverified_server_unless_told(
    certs: Certificates, servers: list[Running]
) -> None:
    running = await start(
        certs, TLSMode.ENFORCING, cert=certs.self_signed_cert, key=certs.self_signed_key
    )
    servers.append(running)
    # by default: the system's CAs, which do not vouch for a self-signed certificate
    with pytest.raises(RemotingError, match="TLS handshake failed: certificate verify failed"):
        await call(ClientConfig(tls=True, connect_timeout=2), running.address)
    # our CA does not either
    with pytest.raises(RemotingError):
        await call(ClientConfig(tls=True, tls_ca=certs.ca, connect_timeout=2), running.address)
    assert running.recorder.seen == []
    reply = await call(ClientConfig(tls=True, tls_verify=False), running.address, b"dev")
    assert reply.body == b"dev"


@pytest_twisted.ensureDeferred
async def test_client_checks_the_host_name(certs: Certificates, servers: list[Running]) -> None:
    # signed by the trusted CA, but for elsewhere.example, not 127.0.0.1 or localhost
    running = await start(
        certs, TLSMode.ENFORCING, cert=certs.wrong_name_cert, key=certs.wrong_name_key
    )
    servers.append(running)
    config = ClientConfig(tls=True, tls_ca=certs.ca, connect_timeout=2)
    for address in (running.address, f"localhost:{running.port}"):
        with pytest.raises(RemotingError, match="TLS handshake failed"):
            await call(config, address)
    assert running.recorder.seen == []
    # the opt-out skips this check too
    reply = await call(ClientConfig(tls=True, tls_verify=False), running.address, b"anyway")
    assert reply.body == b"anyway"


@pytest_twisted.ensureDeferred
async def test_mutual_tls_require(certs: Certificates, servers: list[Running]) -> None:
    running = await start(certs, TLSMode.ENFORCING, ClientAuth.REQUIRE)
    servers.append(running)
    # (with TLS 1.3 the server refuses after the client's handshake ends: the request
    # fails with the server's alert)
    with pytest.raises(RemotingError, match="certificate required"):
        await call(ClientConfig(tls=True, tls_ca=certs.ca, connect_timeout=2), running.address)
    assert running.recorder.seen == []
    with_cert = ClientConfig(
        tls=True, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key
    )
    reply = await call(with_cert, running.address, b"mtls")
    assert reply.body == b"mtls"
    # a certificate our CA did not sign is refused too
    stranger = ClientConfig(
        tls=True,
        tls_ca=certs.ca,
        tls_cert=certs.self_signed_cert,
        tls_key=certs.self_signed_key,
        connect_timeout=2,
    )
    with pytest.raises(RemotingError):
        await call(stranger, running.address)
    assert [r.body for r in running.recorder.seen] == [b"mtls"]


@pytest_twisted.ensureDeferred
async def test_mutual_tls_optional(certs: Certificates, servers: list[Running]) -> None:
    running = await start(certs, TLSMode.ENFORCING, ClientAuth.OPTIONAL)
    servers.append(running)
    reply = await call(ClientConfig(tls=True, tls_ca=certs.ca), running.address, b"none")
    with_cert = ClientConfig(
        tls=True, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key
    )
    assert reply.body == b"none"
    reply = await call(with_cert, running.address, b"cert")
    assert reply.body == b"cert"


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_closed_before_sniffing(certs: Certificates) -> None:
    factory = RemotingServerFactory(reactor=reactor)
    options = server_tls_options(certs.server_cert, certs.server_key)
    from twisted.internet.endpoints import serverFromString

    endpoint = TLSServerEndpoint(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
        options,
        TLSMode.PERMISSIVE,
        sniff_timeout=0.1,
    )
    server = RemotingServer(factory, [endpoint], shutdown_timeout=0.2)
    server.startService()
    try:
        (port,) = await server.when_listening()
        client = RemotingProtocol()
        client.dispatcher = Dispatcher()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        for _ in range(300):
            if not client.is_connected:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert not client.is_connected
    finally:
        await server.stopService()


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="only with tls=True"):
        ClientConfig(tls_verify=False)
    with pytest.raises(ValueError, match="tls_key needs tls_cert"):
        ClientConfig(tls=True, tls_key="k.pem")
    with pytest.raises(ValueError, match="cannot read"):
        RemotingClient(reactor, ClientConfig(tls=True, tls_ca="/nonexistent/ca.pem"))


def test_server_options_checks(certs: Certificates, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a CA file"):
        server_tls_options(certs.server_cert, certs.server_key, client_auth=ClientAuth.REQUIRE)
    with pytest.raises(ValueError, match="cannot load"):
        server_tls_options(certs.server_cert, certs.client_key)
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing")
    with pytest.raises(ValueError, match="no PEM certificate"):
        server_tls_options(
            certs.server_cert, certs.server_key, ca=str(empty), client_auth=ClientAuth.OPTIONAL
        )
