"""What a server and a client do when a limit is reached, with small limits to reach.

The server on 127.0.0.1 accepts 2 connections, processes 2 requests per connection at a
time and reads frames of up to 64 KiB. Its SEND_MESSAGE processor sheds load (it always
rejects) and its PULL_MESSAGE processor holds requests until told to answer them. The
clients run into each limit in turn, and the program prints what they get, and what the
server logs at warning level.

Run from a checkout:  PYTHONPATH=src python docs/examples/limits.py
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, code_name
from rmqtwist.errors import ConnectionLostError, RemotingCallError
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.processors import EchoProcessor
from rmqtwist.protocol import Dispatcher, RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory


@implementer(IRequestProcessor)
class Rejecting:
    """Sheds load: every request is answered SYSTEM_BUSY without being processed."""

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        raise AssertionError("never called: reject_request() says True")

    def reject_request(self) -> bool:
        return True


@implementer(IRequestProcessor)
class Holding:
    """Holds every request until ``answer_all()``."""

    def __init__(self) -> None:
        self.held: list[IRequestContext] = []

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        self.held.append(context)

    def answer_all(self) -> None:
        held, self.held = self.held, []
        for context in held:
            if context.channel.is_connected:
                context.respond(
                    RemotingCommand.response_to(context.request, ResponseCode.SUCCESS, "at last")
                )

    def reject_request(self) -> bool:
        return False


def mask_ports(text: str) -> str:
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)


def print_warnings(event: dict[str, Any]) -> None:
    if event.get("log_level", LogLevel.info) >= LogLevel.warn:
        print(f"  [server log] {mask_ports(formatEvent(event))}")


def show(response: RemotingCommand) -> None:
    print(f"  {code_name(response.code, response=True)} remark={response.remark!r}")


async def outcome(call: defer.Deferred[RemotingCommand]) -> None:
    try:
        show(await call)
    except RemotingCallError as error:
        text = mask_ports(str(error))
        if isinstance(error, ConnectionLostError):  # the OS's reason varies: leave it out
            text = text.rsplit(": ", 1)[0] + ": ..."
        print(f"  {type(error).__name__}: {text}")


class Probe(Protocol):
    """A bare connection that tells when it is closed."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


async def main(reactor: Any) -> None:
    globalLogPublisher.addObserver(print_warnings)
    factory = RemotingServerFactory(
        max_connections=2, max_in_flight_per_connection=2, max_frame_length=64 * 1024
    )
    holding = Holding()
    factory.register_processor(RequestCode.SEND_MESSAGE, Rejecting())
    factory.register_processor(RequestCode.PULL_MESSAGE, holding)
    factory.register_default_processor(EchoProcessor())
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    try:
        [port] = await server.when_listening()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=3)

        async def connect(**options: Any) -> RemotingProtocol:
            client = RemotingProtocol()
            client.dispatcher = Dispatcher(**options)
            return await connectProtocol(endpoint, client)

        a = await connect()
        b = await connect(async_permits=1)
        pull = RemotingCommand.request(RequestCode.PULL_MESSAGE)

        print("The processor rejects the request:")
        await outcome(a.invoke(RemotingCommand.request(RequestCode.SEND_MESSAGE)))

        print("No response within the request's timeout:")
        await outcome(a.invoke(pull, timeout=0.2))

        print("2 requests of this connection are being processed already:")
        held = a.invoke(pull, timeout=5)  # the second one held
        await outcome(a.invoke(pull))

        print("The client's 1 async permit is taken:")
        b_held = b.invoke(pull, timeout=5)
        await outcome(b.invoke(RemotingCommand.request(RequestCode.HEART_BEAT), timeout=0.2))

        print("The held requests are answered; the one that timed out comes too late:")
        holding.answer_all()
        await outcome(held)
        await outcome(b_held)
        print(f"  responses dropped as late: {a.dispatcher.late_responses}")

        print("A frame larger than the server's max_frame_length:")
        big = RemotingCommand.request(RequestCode.HEART_BEAT, body=b"x" * 100_000)
        await outcome(a.invoke(big))

        print("A third connection while 2 are open:")
        c = await connect()
        probe = await connectProtocol(endpoint, Probe())
        await probe.lost
        print(f"  closed at once; refused so far: {factory.refused_connections}")
        c.close()
    finally:
        await server.stopService()
        globalLogPublisher.removeObserver(print_warnings)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
