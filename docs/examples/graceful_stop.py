"""A graceful stop: requests in flight may finish until the deadline, then are cut.

The server on 127.0.0.1 has a 1-second shutdown_timeout. A client has two requests in
flight when the server is told to stop: one its processor answers 0.2 s later, one it
never answers. The program prints what the client gets, what a new connection gets, and
what the server logs.

Run from a checkout:  PYTHONPATH=src python docs/examples/graceful_stop.py
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode, code_name
from rmqtwist.errors import ConnectionLostError
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.protocol import Dispatcher, RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory

QUICK, NEVER = 9001, 9002


@implementer(IRequestProcessor)
class Quick:
    """Answers 0.2 s later."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> defer.Deferred[RemotingCommand]:
        return task.deferLater(
            self.clock, 0.2, RemotingCommand.response_to, request, ResponseCode.SUCCESS
        )

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Never:
    """Never answers."""

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        return None

    def reject_request(self) -> bool:
        return False


def print_server_log(event: dict[str, Any]) -> None:
    if event.get("log_namespace") == "rmqtwist.server":
        print("  [server log] " + re.sub(r":\d+\b", ":PORT", formatEvent(event)))


async def outcome(name: str, call: defer.Deferred[RemotingCommand]) -> None:
    try:
        response = await call
        print(f"  {name}: {code_name(response.code, response=True)}")
    except ConnectionLostError:
        print(f"  {name}: ConnectionLostError")


async def main(reactor: Any) -> None:
    factory = RemotingServerFactory()
    factory.register_processor(QUICK, Quick(reactor))
    factory.register_processor(NEVER, Never())
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"], shutdown_timeout=1.0)
    server.startService()
    [port] = await server.when_listening()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=3)
    client = RemotingProtocol()
    client.dispatcher = Dispatcher()
    await connectProtocol(endpoint, client)
    quick = client.invoke(RemotingCommand.request(QUICK), timeout=5)
    never = client.invoke(RemotingCommand.request(NEVER), timeout=5)
    while factory.dispatcher.in_flight < 2:  # until both have reached their processor
        await task.deferLater(reactor, 0.01, lambda: None)

    globalLogPublisher.addObserver(print_server_log)
    print("stopService():")
    started = reactor.seconds()
    stopped = server.stopService()
    await task.deferLater(reactor, 0.05, lambda: None)  # the port closes meanwhile
    try:
        await connectProtocol(endpoint, Protocol())
    except Exception as error:
        print(f"  a new connection: {type(error).__name__}")
    await outcome("the quick request", quick)
    await outcome("the request that is never answered", never)
    await stopped
    globalLogPublisher.removeObserver(print_server_log)
    print(f"stopped after the 1 s deadline: {reactor.seconds() - started >= 1.0}")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
