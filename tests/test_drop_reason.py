"""A call whose connection we closed over an invalid frame says why, not just "lost"."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from rmqtwist.client import RemotingClient
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import ConnectionLostError, ProtocolError


class _HttpServer(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_a_call_to_an_http_server_names_the_wrong_protocol() -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(_HttpServer), interface="127.0.0.1")
    client = RemotingClient(reactor)
    try:
        address = f"127.0.0.1:{port.getHost().port}"
        with pytest.raises(ConnectionLostError) as info:
            await client.invoke(address, RemotingCommand.request(105), timeout=3.0)
        message = str(info.value)
        assert "we closed it because the peer sent an invalid frame" in message
        assert "HTTP" in message
        assert isinstance(info.value.__cause__, ProtocolError)
    finally:
        await client.close()
        await port.stopListening()
