"""An echo server and a client for it, talking the RocketMQ remoting protocol.

Both run in one process on 127.0.0.1 (a free port chosen by the system). The client
sends the same request twice, once with a JSON header and once with a ROCKETMQ
(binary) header, prints each reply, and the program exits.

Run from a checkout:  PYTHONPATH=src python docs/examples/echo.py
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, SerializeType
from rmqtwist.framing import LengthPrefixed, LengthPrefixedFactory


class EchoServer(LengthPrefixed):
    """Answers every request with SUCCESS and the request's own ext_fields and body."""

    def command_received(self, command: RemotingCommand) -> None:
        if command.is_response or command.is_oneway:
            return  # nothing to answer
        reply = RemotingCommand.response_to(
            command,  # copies the opaque and the serialize type
            ResponseCode.SUCCESS,
            remark="echo",
            ext_fields=command.ext_fields,
            body=command.body,
        )
        self.send_command(reply)


class EchoClient(LengthPrefixed):
    """Sends requests and matches each reply to its request by opaque."""

    def __init__(self) -> None:
        self._pending: dict[int, defer.Deferred[RemotingCommand]] = {}

    def call(self, request: RemotingCommand) -> defer.Deferred[RemotingCommand]:
        waiting: defer.Deferred[RemotingCommand] = defer.Deferred()
        self._pending[request.opaque] = waiting  # register before writing
        self.send_command(request)
        return waiting

    def command_received(self, command: RemotingCommand) -> None:
        if not command.is_response:
            return  # this client serves no requests
        waiting = self._pending.pop(command.opaque, None)
        if waiting is not None:  # else a reply nobody waits for any more: drop it
            waiting.callback(command)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.errback(reason)


async def main(reactor: Any) -> None:
    server = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await server.listen(LengthPrefixedFactory.forProtocol(EchoServer))
    try:
        address = port.getHost()
        client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", address.port, timeout=3)
        connection = await client.connect(LengthPrefixedFactory.forProtocol(EchoClient))
        for opaque, serialize_type in enumerate(SerializeType, start=1):
            request = RemotingCommand.request(
                RequestCode.GET_ROUTEINFO_BY_TOPIC,
                {"topic": "TopicTest"},
                b"hello",
                opaque=opaque,
                serialize_type=serialize_type,
            )
            reply = await connection.call(request).addTimeout(5, reactor)
            print(reply)
        connection.transport.loseConnection()
    finally:
        await port.stopListening()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
