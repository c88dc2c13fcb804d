"""Calling a server with RemotingClient: invoke, oneway, the errors, the pool's numbers.

Without an argument the program starts, in its own process on 127.0.0.1, the server that
``twist rmq-remoting --processor stats --processor HEART_BEAT=echo`` runs; given an
address (``python docs/examples/client_calls.py 127.0.0.1:10911``) it calls that server
instead. Either way it also starts a "silent" peer that accepts connections and never
answers, and picks a port on which nothing listens, to show what failures look like.

Run from a checkout:  PYTHONPATH=src python docs/examples/client_calls.py [HOST:PORT]
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol

from rmqtwist import RemotingCommand, RequestCode, code_name
from rmqtwist.client import PoolStats, RemotingClient
from rmqtwist.errors import ConnectBackoffError, ConnectError, RemotingCallError
from rmqtwist.tap import Options, makeService

#: What the server answers: its counters for GET_BROKER_RUNTIME_INFO (28), an echo for
#: HEART_BEAT, and REQUEST_CODE_NOT_SUPPORTED for every other code.
PROCESSORS = ["--processor", "stats", "--processor", "HEART_BEAT=echo"]


def show(response: RemotingCommand) -> None:
    print(
        f"  {code_name(response.code, response=True)} remark={response.remark!r}"
        f" body={response.body!r}"
    )


def show_pool(stats: PoolStats) -> None:
    fields = ("open", "idle", "created", "closed", "failed_connects", "requests", "errors")
    print("  " + " ".join(f"{name}={getattr(stats, name)}" for name in fields))


def show_error(error: RemotingCallError, port: int, text: str | None = None) -> None:
    # Ports differ from run to run; the rest of the message does not.
    text = str(error) if text is None else text
    print(f"  {type(error).__name__}: {text.replace(str(port), 'PORT')}")


async def main(reactor: Any, address: str | None) -> None:
    server = None
    if address is None:
        options = Options()
        # As twist rmq-remoting would, on a free port of 127.0.0.1.
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *PROCESSORS])
        server = makeService(options)
        server.startService()
        [port] = await server.when_listening()
        address = f"127.0.0.1:{port.getHost().port}"
    silent_port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    silent = f"127.0.0.1:{silent_port.getHost().port}"
    closed_port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    nobody_port = closed_port.getHost().port
    nobody = f"127.0.0.1:{nobody_port}"
    await closed_port.stopListening()  # nothing listens there any more

    client = RemotingClient(reactor)
    try:
        print("invoke: a request and its response")
        heartbeat = RemotingCommand.request(RequestCode.HEART_BEAT, {"clientID": "demo"}, b"hi")
        show(await client.invoke(address, heartbeat, timeout=3.0))

        print("invoke_oneway: written, never answered")
        print(f"  {await client.invoke_oneway(address, heartbeat)}")

        print("GET_BROKER_RUNTIME_INFO: what the server counted")
        stats = await client.invoke(
            address, RemotingCommand.request(RequestCode.GET_BROKER_RUNTIME_INFO)
        )
        print(f"  requestsReceived={stats.ext('requestsReceived')}")

        print("a code with no processor: a response, not an exception")
        route = RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "T"})
        show(await client.invoke(address, route))

        print("the pool")
        show_pool(client.pool_stats())

        print("a peer that never answers")
        print(f"  reachable: {await client.is_address_reachable(silent)}")
        try:
            await client.invoke(silent, heartbeat, timeout=0.5)
        except RemotingCallError as e:
            show_error(e, silent_port.getHost().port)

        print("a port nobody listens on")
        try:
            await client.invoke(nobody, heartbeat)
        except ConnectError as e:
            show_error(e, nobody_port, f"{e.address} could not be reached; nothing was sent")
        try:  # at once again: the next connect is not due within this call's deadline
            await client.invoke(nobody, heartbeat, timeout=0.5)
        except ConnectBackoffError as e:
            print(f"  {type(e).__name__}: next connect in {e.retry_in:.0f} s")
        health = client.health(nobody)
        print(
            f"  health: breaker {health.breaker},"
            f" consecutive_failures={health.consecutive_failures}"
        )
    finally:
        await client.close()
        await silent_port.stopListening()
        if server is not None:
            await server.stopService()

    print("the pool, closed")
    show_pool(client.pool_stats())
    try:
        await client.invoke(address, heartbeat)
    except RemotingCallError as e:
        print(f"after close: {type(e).__name__}: {e}")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else None
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, target)))
