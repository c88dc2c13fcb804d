"""Four ways for a request processor to answer, and what a failing one sends.

A server on 127.0.0.1 registers one processor per request code:

- ``Upper`` answers at once, by returning the response;
- ``Slow`` returns a Deferred that fires with the response later;
- ``Park`` returns None and answers later through ``context.respond()``, when
  ``Publish`` hands it a message (long polling, as a broker does for PULL_MESSAGE);
- ``Digest`` blocks (it sleeps, as a blocking library call would), so it runs in the
  dispatcher's thread pool;
- ``Broken`` raises.

A client invokes each and prints what comes back.

Run from a checkout:  PYTHONPATH=src python docs/examples/processors.py
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode, code_name
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.protocol import Dispatcher, RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory

# Request codes of this example's own (any int up to 32767 fits both header formats).
UPPER, SLOW, PARK, PUBLISH, DIGEST, BROKEN = 9001, 9002, 9003, 9004, 9005, 9006
OK = ResponseCode.SUCCESS


@implementer(IRequestProcessor)
class Upper:
    """Answers at once: the body in upper case."""

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        return RemotingCommand.response_to(request, OK, body=request.body.upper())

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Slow:
    """Answers 0.1 s later, through a Deferred; the reactor serves others meanwhile."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> defer.Deferred[RemotingCommand]:
        return task.deferLater(
            self.clock, 0.1, RemotingCommand.response_to, request, OK, "slept 0.1 s"
        )

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Park:
    """Returns None: the request waits until ``deliver()`` answers it."""

    def __init__(self) -> None:
        self.parked: list[IRequestContext] = []

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        self.parked.append(context)
        return None  # no answer yet

    def deliver(self, body: bytes) -> int:
        parked, self.parked = self.parked, []
        for context in parked:
            context.respond(RemotingCommand.response_to(context.request, OK, body=body))
        return len(parked)

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Publish:
    """Hands the body to every parked request and says how many it reached."""

    def __init__(self, park: Park) -> None:
        self.park = park

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        reached = self.park.deliver(request.body)
        return RemotingCommand.response_to(request, OK, f"delivered to {reached}")

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Digest:
    """Blocks: runs in a thread of the dispatcher's pool, never in the reactor thread."""

    blocking = True

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        time.sleep(0.1)  # stands for a blocking call: a database, a file, a library
        in_reactor = threading.current_thread() is threading.main_thread()
        digest = hashlib.sha256(request.body).hexdigest()[:16]
        return RemotingCommand.response_to(
            request, OK, f"in the reactor thread: {in_reactor}", body=digest.encode()
        )

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Broken:
    """Raises: the client gets SYSTEM_ERROR, and the connection stays open."""

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        raise ValueError(f"cannot handle {request.body!r}")

    def reject_request(self) -> bool:
        return False


def show(name: str, response: RemotingCommand) -> None:
    print(
        f"{name:<7} {code_name(response.code, response=True)}"
        f" remark={response.remark!r} body={response.body!r}"
    )


async def main(reactor: Any) -> None:
    factory = RemotingServerFactory()
    park = Park()
    factory.register_processor(UPPER, Upper())
    factory.register_processor(SLOW, Slow(reactor))
    factory.register_processor(PARK, park)
    factory.register_processor(PUBLISH, Publish(park))
    factory.register_processor(DIGEST, Digest())  # blocking = True: the thread pool
    factory.register_processor(BROKEN, Broken())
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    try:
        [port] = await server.when_listening()
        client = RemotingProtocol()
        client.dispatcher = Dispatcher()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=3)
        await connectProtocol(endpoint, client)

        show("upper", await client.invoke(RemotingCommand.request(UPPER, body=b"hello")))
        show("slow", await client.invoke(RemotingCommand.request(SLOW)))
        parked = client.invoke(RemotingCommand.request(PARK), timeout=5)
        show("publish", await client.invoke(RemotingCommand.request(PUBLISH, body=b"news")))
        show("park", await parked)
        show("digest", await client.invoke(RemotingCommand.request(DIGEST, body=b"data")))
        show("broken", await client.invoke(RemotingCommand.request(BROKEN, body=b"x")))
        show("upper", await client.invoke(RemotingCommand.request(UPPER, body=b"still open")))
    finally:
        await server.stopService()  # also stops the dispatcher's thread pool


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
