"""One connection, requests both ways: the server asks its client a question back.

The client sends HEART_BEAT. Before answering it, the server's processor sends the
client a GET_CONSUMER_RUNNING_INFO request over the same connection, and the client's own
processor answers that. Each side numbers its own requests from 1; the response bit of
``flag`` says which side's table an answer belongs to.

Run from a checkout:  PYTHONPATH=src python docs/examples/symmetric.py
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, code_name
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.protocol import Dispatcher, RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory

OK = ResponseCode.SUCCESS


def received(who: str, command: RemotingCommand) -> None:
    kind = "response" if command.is_response else "request"
    name = code_name(command.code, response=command.is_response)
    print(f"{who} received {kind} {name} opaque={command.opaque} flag={command.flag}")


@implementer(IRequestProcessor)
class HeartBeats:
    """Server side: asks the client how it is doing before answering its heartbeat."""

    async def answer(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        received("server", request)
        question = RemotingCommand.request(RequestCode.GET_CONSUMER_RUNNING_INFO)
        info = await context.channel.invoke(question, 3)
        received("server", info)
        return RemotingCommand.response_to(request, OK, f"you said {info.body.decode()}")

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> defer.Deferred[RemotingCommand]:
        return defer.ensureDeferred(self.answer(context, request))

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class RunningInfo:
    """Client side: answers the server's question."""

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        received("client", request)
        return RemotingCommand.response_to(request, OK, body=b"all is well")

    def reject_request(self) -> bool:
        return False


async def main(reactor: Any) -> None:
    factory = RemotingServerFactory()
    factory.register_processor(RequestCode.HEART_BEAT, HeartBeats())
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    try:
        [port] = await server.when_listening()
        client = RemotingProtocol()
        client.dispatcher = Dispatcher()
        client.dispatcher.register_processor(RequestCode.GET_CONSUMER_RUNNING_INFO, RunningInfo())
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=3)
        await connectProtocol(endpoint, client)

        answer = await client.invoke(RemotingCommand.request(RequestCode.HEART_BEAT), 5)
        received("client", answer)
        print(f"remark: {answer.remark}")
    finally:
        await server.stopService()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
