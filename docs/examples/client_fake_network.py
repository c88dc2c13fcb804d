"""A fake network for RemotingClient on a MemoryReactorClock: connects complete when told.

The client how-to pages use it to show timing (backoff, the breaker, deadlines, name-server
failover) without sockets or waiting: time moves only when ``reactor.advance()`` is
called, and each connect attempt waits until the page accepts, refuses or ignores it.
Tests of your own code that uses a RemotingClient can work the same way.

Run from a checkout:  PYTHONPATH=src python docs/examples/client_fake_network.py
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, code_name
from rmqtwist.client import RemotingClient
from rmqtwist.codec import FrameDecoder, encode_frame


class FakeNetwork:
    """The far ends of a client's connections, on ``reactor`` (a MemoryReactorClock)."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.peers: dict[str, tuple[Any, StringTransportWithDisconnection, FrameDecoder]] = {}

    def connecting(self) -> list[str]:
        """The addresses the client is connecting to, oldest first."""
        reactor = self.reactor
        for index in reversed(range(len(reactor.connectors))):
            if reactor.connectors[index].stoppedConnecting:  # the client gave up
                del reactor.connectors[index], reactor.tcpClients[index]
        return [f"{host}:{port}" for host, port, *_ in reactor.tcpClients]

    def _take(self, address: str) -> Any:
        reactor = self.reactor
        for index, (host, port, factory, *_) in enumerate(reactor.tcpClients):
            if f"{host}:{port}" == address and not reactor.connectors[index].stoppedConnecting:
                del reactor.connectors[index], reactor.tcpClients[index]
                return factory
        raise LookupError(f"the client is not connecting to {address}")

    def accept(self, address: str) -> None:
        """Complete the client's connect to ``address``."""
        factory = self._take(address)
        host, _, port = address.rpartition(":")
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", host, int(port))
        )
        transport.protocol = protocol  # closing the transport tells the protocol
        protocol.makeConnection(transport)
        self.peers[address] = (protocol, transport, FrameDecoder())

    def refuse(self, address: str) -> None:
        """Fail the client's connect to ``address`` as a closed port would."""
        factory = self._take(address)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def drop(self, address: str) -> None:
        """Lose the connection to ``address``, as when the server's host goes away."""
        protocol, transport, _ = self.peers.pop(address)
        transport.connected = False
        protocol.connectionLost(Failure(ConnectionLost()))

    def received(self, address: str) -> list[RemotingCommand]:
        """The commands the client wrote to ``address`` since the last look."""
        _, transport, decoder = self.peers[address]
        data = transport.value()
        transport.clear()
        return decoder.feed(data)

    def answer(
        self, address: str, request: RemotingCommand, code: int = ResponseCode.SUCCESS
    ) -> None:
        """Send the client the response to ``request`` from ``address``."""
        protocol, _, _ = self.peers[address]
        response = RemotingCommand.response_to(request, code)
        protocol.dataReceived(encode_frame(response))


def describe(result: object) -> str:
    """A call's result in a line: the response's code, "written", or the error."""
    if isinstance(result, Failure):
        message = str(result.value)
        return f"{result.type.__name__}: {message}" if message else result.type.__name__
    if isinstance(result, RemotingCommand):
        return code_name(result.code, response=True)
    return "written" if result is None else repr(result)


def watch(call: Deferred[Any]) -> None:
    """Print the call's result when it comes, as ``-> ...`` (the Deferred keeps none)."""
    call.addBoth(lambda result: print("->", describe(result)))


def main() -> None:
    reactor = MemoryReactorClock()
    network = FakeNetwork(reactor)
    client = RemotingClient(reactor)
    watch(client.invoke("10.0.0.1:10911", RemotingCommand.request(RequestCode.HEART_BEAT)))
    print("connecting to", network.connecting())
    network.accept("10.0.0.1:10911")
    [sent] = network.received("10.0.0.1:10911")
    print("the server received", code_name(sent.code), "opaque", sent.opaque)
    network.answer("10.0.0.1:10911", sent)


if __name__ == "__main__":
    main()
