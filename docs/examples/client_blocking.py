"""A plain script that calls a server with BlockingClient: no Deferreds, no reactor.run().

It starts ``twist rmq-remoting --processor stats --processor HEART_BEAT=echo`` on a free
port of 127.0.0.1 (as another process: the server a script talks to usually runs
elsewhere), then calls it from the main thread and from a pool of threads, and shows an
error and the rule about the reactor thread.

Run from a checkout:  PYTHONPATH=src python docs/examples/client_blocking.py
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import crochet
from _twist import free_address, twist_server

from rmqtwist import RemotingCommand, RequestCode, code_name
from rmqtwist.blocking import BlockingClient
from rmqtwist.client import ClientConfig
from rmqtwist.errors import ConnectError


def main() -> None:
    with twist_server("--processor", "stats", "--processor", "HEART_BEAT=echo") as address:
        with BlockingClient(ClientConfig(connect_timeout=1.0)) as client:
            heartbeat = RemotingCommand.request(RequestCode.HEART_BEAT, {"clientID": "script"})
            response = client.invoke(address, heartbeat, timeout=3.0)
            print(f"invoke: {code_name(response.code, response=True)} {response.ext_fields}")

            print(f"invoke_oneway: {client.invoke_oneway(address, heartbeat)}")

            def ask(n: int) -> str:
                request = RemotingCommand.request(RequestCode.HEART_BEAT, body=f"#{n}".encode())
                return client.invoke(address, request).body.decode()

            with ThreadPoolExecutor(max_workers=8) as threads:
                answers = list(threads.map(ask, range(16)))
            print(f"16 calls from 8 threads: {answers[:3]} ... {answers[-1:]}")

            info = client.invoke(
                address, RemotingCommand.request(RequestCode.GET_BROKER_RUNTIME_INFO)
            )
            print(f"the server received {info.ext('requestsReceived')} requests")
            stats = client.pool_stats()
            print(
                f"pool: {stats.open} connection open, {stats.requests} calls, {stats.errors} errors"
            )

            try:
                client.invoke(free_address(), heartbeat)
            except ConnectError as e:
                print(f"a closed port: {type(e).__name__}")
            print(f"is_address_reachable: {client.is_address_reachable(address)}")

            @crochet.wait_for(timeout=10)
            def from_the_reactor_thread() -> str:
                try:
                    client.invoke(address, heartbeat)
                except RuntimeError as e:
                    return f"RuntimeError: {e}"
                return "no error"

            print(f"in the reactor thread: {from_the_reactor_thread()}")
        print(f"after the with block: closed={client.closed}")


if __name__ == "__main__":
    main()
