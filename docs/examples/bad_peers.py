"""What a LengthPrefixed server does with peers that send bad bytes.

Starts a server on 127.0.0.1 (a free port), then connects three misbehaving clients in
turn: an HTTP client, one that announces a 1 GiB frame, and one that sends a good
request followed by a frame whose header is not JSON. Each time the server reports the
error and closes the connection. The program exits by itself.
Run from a checkout:  PYTHONPATH=src python docs/examples/bad_peers.py
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from rmqtwist import ProtocolError, RemotingCommand, RequestCode
from rmqtwist.codec import encode_frame
from rmqtwist.framing import LengthPrefixed, LengthPrefixedFactory


class Server(LengthPrefixed):
    def command_received(self, command: RemotingCommand) -> None:
        print(f"  server got {RequestCode(command.code).name} opaque={command.opaque}")

    def protocol_error(self, error: ProtocolError) -> None:
        print(f"  server: {type(error).__name__}: {error}")
        super().protocol_error(error)  # logs the reason and aborts the connection


class RawClient(protocol.Protocol):
    """Writes some bytes, then waits for the server to close the connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


GOOD = encode_frame(RemotingCommand.request(RequestCode.HEART_BEAT, opaque=1))
NOT_JSON = struct.pack(">ii", 4 + 5, 5) + b"hello"  # serialize type 0 (JSON), 5-byte header

PEERS = {
    "an HTTP client": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "a 1 GiB frame": struct.pack(">ii", 1 << 30, 0),
    "a good frame, then a bad one": GOOD + NOT_JSON,
}


async def main(reactor: Any) -> None:
    server = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await server.listen(LengthPrefixedFactory.forProtocol(Server))
    try:
        address = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        for name, data in PEERS.items():
            print(f"{name}:")
            client = RawClient(data)
            await endpoints.connectProtocol(address, client)
            await client.closed.addTimeout(5, reactor)
            print("  client: connection closed by the server")
    finally:
        await port.stopListening()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
