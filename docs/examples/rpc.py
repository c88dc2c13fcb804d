"""A remoting server with a request processor, and a client that invokes it.

The server answers GET_ROUTEINFO_BY_TOPIC for the topics it knows. Both ends run in one
process on 127.0.0.1 (a free port chosen by the system); the client asks four questions,
prints each answer, and the server stops gracefully.

Run from a checkout:  PYTHONPATH=src python docs/examples/rpc.py
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, SerializeType, code_name
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.protocol import Dispatcher, RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory


@implementer(IRequestProcessor)
class TopicRoutes:
    """Answers GET_ROUTEINFO_BY_TOPIC with the route of a known topic, as JSON."""

    def __init__(self, routes: dict[str, dict[str, Any]]) -> None:
        self.routes = routes

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        topic = request.ext("topic")
        if topic not in self.routes:
            return RemotingCommand.response_to(
                request, ResponseCode.TOPIC_NOT_EXIST, f"No topic route info for {topic}"
            )
        route = json.dumps(self.routes[topic]).encode()
        return RemotingCommand.response_to(request, ResponseCode.SUCCESS, body=route)

    def reject_request(self) -> bool:
        return False  # never too busy


def show(response: RemotingCommand) -> None:
    print(
        f"opaque={response.opaque} {code_name(response.code, response=True)}"
        f" remark={response.remark!r} body={response.body!r}"
        f" ({response.serialize_type.name})"
    )


async def main(reactor: Any) -> None:
    # The server: a factory that shares one Dispatcher between its connections, and a
    # service that listens on an endpoint.
    factory = RemotingServerFactory()
    routes = TopicRoutes({"TopicTest": {"brokers": ["broker-a"], "queues": 4}})
    factory.register_processor(RequestCode.GET_ROUTEINFO_BY_TOPIC, routes)
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    try:
        [port] = await server.when_listening()

        # The client: a RemotingProtocol of its own, with a Dispatcher of its own.
        client = RemotingProtocol()
        client.dispatcher = Dispatcher()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=3)
        await connectProtocol(endpoint, client)

        code = RequestCode.GET_ROUTEINFO_BY_TOPIC
        show(await client.invoke(RemotingCommand.request(code, {"topic": "TopicTest"})))
        binary = RemotingCommand.request(
            code, {"topic": "TopicTest"}, serialize_type=SerializeType.ROCKETMQ
        )
        show(await client.invoke(binary, timeout=3))
        show(await client.invoke(RemotingCommand.request(code, {"topic": "Nope"})))
        show(await client.invoke(RemotingCommand.request(RequestCode.SEND_MESSAGE)))
    finally:
        await server.stopService()  # stop listening, let requests finish, close
    counters = factory.dispatcher
    print(
        f"server stopped: {counters.requests_received} requests received,"
        f" {counters.responses_sent} responses sent,"
        f" {len(counters.connections)} connections open"
    )


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
