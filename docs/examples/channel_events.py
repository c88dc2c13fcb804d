"""A channel-event listener on a server: connects, closes, bad frames and idle timeouts.

The server on 127.0.0.1 closes connections that are idle for 0.5 s. Three clients come
one after the other: one sends a request and hangs up, one sends an HTTP request (not a
remoting frame), one connects and says nothing. The listener prints what it hears.

Run from a checkout:  PYTHONPATH=src python docs/examples/channel_events.py
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode
from rmqtwist.interfaces import IChannel, IChannelEventListener
from rmqtwist.processors import EchoProcessor
from rmqtwist.protocol import Dispatcher, RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory


def host(remote_address: str) -> str:
    return remote_address.rpartition(":")[0]  # the port differs from run to run


@implementer(IChannelEventListener)
class PrintingListener:
    """Prints every event; ``closed`` fires at the next close."""

    def __init__(self) -> None:
        self.closed: defer.Deferred[None] = defer.Deferred()

    def on_connect(self, remote_address: str, channel: IChannel) -> None:
        print(f"  connect from {host(remote_address)}")

    def on_exception(self, remote_address: str, channel: IChannel, error: Exception) -> None:
        print(f"  exception: {type(error).__name__}: {error}")

    def on_idle(self, remote_address: str, channel: IChannel) -> None:
        print(f"  idle, connected: {channel.is_connected}")

    def on_close(self, remote_address: str, channel: IChannel) -> None:
        print(f"  close, connected: {channel.is_connected}")
        closed, self.closed = self.closed, defer.Deferred()
        closed.callback(None)


class HTTPClient(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n")


async def main(reactor: Any) -> None:
    listener = PrintingListener()
    factory = RemotingServerFactory(idle_timeout=0.5)
    factory.register_default_processor(EchoProcessor())
    factory.register_listener(listener)
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    try:
        [port] = await server.when_listening()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=3)

        print("a client that sends a request and hangs up:")
        client = RemotingProtocol()
        client.dispatcher = Dispatcher()
        await connectProtocol(endpoint, client)
        await client.invoke(RemotingCommand.request(RequestCode.HEART_BEAT))
        client.close()
        await listener.closed

        print("an HTTP client:")
        await connectProtocol(endpoint, HTTPClient())
        await listener.closed

        print("a client that says nothing:")
        started = reactor.seconds()
        await connectProtocol(endpoint, Protocol())
        await listener.closed
        print(f"  closed after at least 0.5 s: {reactor.seconds() - started >= 0.5}")
    finally:
        await server.stopService()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
