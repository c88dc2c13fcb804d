"""Which broker address a route names: the one the connection arrived at, or --advertise.

Starts a dev broker in this process on a free port of 127.0.0.1, and in front of it a
port mapping like the one Docker's ``-p`` sets up: a forwarder listening on another
port, which opens a connection of its own to the broker for each client. It asks for a
route at the broker's own address and through the mapping, and sends a message through
the mapping; then does the same with a broker started with ``advertise`` set to the
mapped address (``--advertise`` on the command line).

Run from a checkout:  PYTHONPATH=src python docs/examples/broker_addresses.py
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.portforward import ProxyFactory

from rmqtwist import RemotingCommand, RequestCode
from rmqtwist.client import RemotingClient
from rmqtwist.headers import SendMessageRequestHeaderV2
from rmqtwist.message import Message, encode_properties, parse_offset_msg_id
from rmqtwist.testing import RunningBroker, start_broker


def port_mapping(reactor: Any) -> tuple[ProxyFactory, IListeningPort]:
    """A forwarder listening on a new port of 127.0.0.1, to the port that will be set in
    the factory's ``port``."""
    factory = ProxyFactory("127.0.0.1", 0)
    return factory, reactor.listenTCP(0, factory, interface="127.0.0.1")


async def route_address(client: RemotingClient, address: str, names: dict[str, str]) -> str:
    request = RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "TBW102"})
    route = json.loads((await client.invoke(address, request)).body)
    return names[route["brokerDatas"][0]["brokerAddrs"]["0"]]


async def show_routes(client: RemotingClient, broker: RunningBroker, mapped: str) -> None:
    names = {broker.address: "the broker's own address", mapped: "the mapped address"}
    for where, address in [
        ("at the broker's own address", broker.address),
        ("through the mapping", mapped),
    ]:
        request = RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "TBW102"})
        route = json.loads((await client.invoke(address, request)).body)
        named = names[route["brokerDatas"][0]["brokerAddrs"]["0"]]
        print(f"  asked {where}, the route names {named}")
    message = Message("T", b"hello")
    header = SendMessageRequestHeaderV2(
        a="PG",
        b="T",
        e=0,
        g=int(time.time() * 1000),
        i=encode_properties(message.wire_properties()),
    )
    sent = await client.invoke(mapped, header.to_request(RequestCode.SEND_MESSAGE_V2, message.body))
    host, _ = parse_offset_msg_id(sent.ext("msgId") or "")
    print(f"  a message sent through the mapping gets an offset msgId naming {names[host]}")


async def main(reactor: Any) -> None:
    for title, advertise in [
        ("default options", False),
        ("advertise set to the mapped address", True),
    ]:
        print(f"A broker with {title}:")
        forwarder, listening = port_mapping(reactor)
        mapped = f"127.0.0.1:{listening.getHost().port}"
        broker = await start_broker(reactor, advertise=mapped if advertise else None)
        forwarder.port = broker.port  # the mapping now leads to the broker
        client = RemotingClient(reactor)
        try:
            await show_routes(client, broker, mapped)
        finally:
            await client.close()
            await broker.stop()
            await listening.stopListening()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
