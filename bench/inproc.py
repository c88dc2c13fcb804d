"""Python work per request of rmqtwist's client and of its server, in one process.

``rpc.py --client rmqtwist`` measures what the issue asks (the CPU of a real client
process next to a real server's), but at 1 in flight most of that CPU is the kernel
and Twisted's reactor, the same on both sides, and the ratio moves by a few percent
from run to run. This script takes those away: a RemotingClient and a server-side
RemotingProtocol (the server's factory, echo processor and 120 s idle timeout, as
``twist rmq-remoting`` builds them) are joined by in-memory transports whose ``write``
appends to a list, and each side's ``dataReceived`` is timed with
``time.process_time_ns`` around it:

- request/response: the client's callbacks keep ``--in-flight`` calls outstanding (a
  clock read each way and a check of the response, as rpc.py's harness does); one round
  hands the client's writes to the server and the server's answers to the client;
- oneway: the client's ``invoke_oneway`` calls, timed, against the server's reading.

What is left is the protocol code each side runs per request: encoding, decoding,
matching, firing, dispatching. Both sides pay the same transport and reactor costs in
a real process, which this leaves out (about 0.5 us per write for Twisted's
``FileDescriptor.write``, and more per reactor turn).

    python bench/inproc.py [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from rmqtwist import RemotingCommand, SerializeType, __version__
from rmqtwist.client import ClientConfig, RemotingClient
from rmqtwist.processors import EchoProcessor
from rmqtwist.protocol import RemotingProtocol
from rmqtwist.server import RemotingServerFactory

real_reactor: Any = _reactor
ADDRESS = "127.0.0.1:9876"
BODY = bytes(range(128))


class Wire:
    """An in-memory transport: what is written is kept until taken."""

    disconnecting = False

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.chunks.extend(data)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 50000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 9876)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass


class Clock(MemoryReactorClock):
    """Records connects (so the client's connection can be joined by hand), but reads
    and schedules time on the real reactor, as a running program would."""

    def seconds(self) -> float:
        return float(real_reactor.seconds())

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        return real_reactor.callLater(delay, f, *a, **kw)


def joined(stype: SerializeType) -> tuple[RemotingClient, RemotingProtocol, Wire, Wire]:
    """A client with its pooled connection to ADDRESS joined to a server connection:
    (client, server protocol, client's wire, server's wire)."""
    clock = Clock()
    client = RemotingClient(clock, ClientConfig(serialize_type=stype, idle_timeout=None))
    request = RemotingCommand.request(1000, None, BODY)
    opened = client.invoke(ADDRESS, request, 15.0)
    factory = clock.tcpClients[0][2]
    connection = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9876))
    client_wire = Wire()
    connection.makeConnection(client_wire)  # type: ignore[arg-type]
    server_factory = RemotingServerFactory(idle_timeout=120.0, reactor=clock)
    server_factory.register_default_processor(EchoProcessor())
    server = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert isinstance(server, RemotingProtocol)
    server_wire = Wire()
    server.makeConnection(server_wire)  # type: ignore[arg-type]
    server.dataReceived(client_wire.take())
    connection.dataReceived(server_wire.take())
    if not opened.called:
        raise SystemExit("the first call was not answered")
    return client, server, client_wire, server_wire


def request_response(stype: SerializeType, in_flight: int, rounds: int) -> tuple[float, float]:
    """(client us, server us) of Python work per request/response."""
    client, server, client_wire, server_wire = joined(stype)
    connection = client.connection(ADDRESS)
    assert connection is not None
    request = RemotingCommand.request(1000, None, BODY)
    invoke = client.invoke
    clock = time.perf_counter_ns
    latencies: list[int] = []
    done = [0]

    def send() -> None:
        invoke(ADDRESS, request, 10.0).addCallbacks(answered, failed, (clock(),))

    def answered(response: RemotingCommand, sent_at: int) -> None:
        done[0] += 1
        if response.code or len(response.body) != len(BODY):
            raise SystemExit(f"bad response {response!r}")
        latencies.append(clock() - sent_at)
        send()

    def failed(failure: Any) -> None:
        raise SystemExit(f"call failed: {failure.getErrorMessage()}")

    for _ in range(in_flight):
        send()
    gc.collect()
    client_ns = server_ns = 0
    warm = rounds // 5
    for i in range(rounds):
        if i == warm:
            client_ns = server_ns = 0
            done[0] = 0
        data = client_wire.take()
        t0 = time.process_time_ns()
        server.dataReceived(data)
        t1 = time.process_time_ns()
        data = server_wire.take()
        t2 = time.process_time_ns()
        connection.dataReceived(data)
        t3 = time.process_time_ns()
        server_ns += t1 - t0
        client_ns += t3 - t2
    return client_ns / done[0] / 1000, server_ns / done[0] / 1000


def oneway(stype: SerializeType, batch: int, rounds: int) -> tuple[float, float]:
    """(client us, server us) of Python work per oneway request."""
    client, server, client_wire, _ = joined(stype)
    request = RemotingCommand.request(1000, None, BODY)
    invoke_oneway = client.invoke_oneway
    client_ns = server_ns = count = 0
    for i in range(rounds):
        t0 = time.process_time_ns()
        for _ in range(batch):
            if invoke_oneway(ADDRESS, request, 10.0).result is not None:
                raise SystemExit("a oneway call failed")
        t1 = time.process_time_ns()
        data = client_wire.take()
        t2 = time.process_time_ns()
        server.dataReceived(data)
        t3 = time.process_time_ns()
        if i >= rounds // 5:
            client_ns += t1 - t0
            server_ns += t3 - t2
            count += batch
    return client_ns / count / 1000, server_ns / count / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000, help="rounds per run (64 in flight)")
    parser.add_argument("--runs", type=int, default=5, help="runs per row; the median is shown")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    print(
        f"rmqtwist {__version__.public()} ({commit}) Python work per request, in one process, "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"median of {args.runs} runs"
    )
    header = f"{'scenario':<22} {'type':<9} {'cli us':>8} {'srv us':>8} {'cli/srv':>8}  runs"
    print(header)
    print("-" * len(header))
    rows = []
    scenarios: list[tuple[str, Callable[[SerializeType], tuple[float, float]]]] = [
        ("64 in flight", lambda t: request_response(t, 64, args.rounds)),
        ("1 in flight", lambda t: request_response(t, 1, args.rounds * 20)),
        ("oneway", lambda t: oneway(t, 64, args.rounds)),
    ]
    for name, measure in scenarios:
        for stype in (SerializeType.JSON, SerializeType.ROCKETMQ):
            runs = [measure(stype) for _ in range(args.runs)]
            ratios = [c / s for c, s in runs]
            ratio = statistics.median(ratios)
            client_us = statistics.median(c for c, _ in runs)
            server_us = statistics.median(s for _, s in runs)
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(
                f"{name:<22} {stype.name.lower():<9} {client_us:>8.2f} {server_us:>8.2f} "
                f"{ratio:>8.2f}  {spread}"
            )
            rows.append(
                {
                    "scenario": name,
                    "serialize_type": stype.name.lower(),
                    "client_us_per_req": round(client_us, 3),
                    "server_us_per_req": round(server_us, 3),
                    "cpu_ratio": round(ratio, 3),
                    "cpu_ratios": [round(r, 3) for r in ratios],
                }
            )
    result = {"commit": commit, "python": platform.python_version(), "results": rows}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
