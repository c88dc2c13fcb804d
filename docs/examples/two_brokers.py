"""Two dev brokers behind a third one's name server, in one process.

``ns`` is the name server; ``broker-a`` and ``broker-b`` register with it
(``name_server=``, as ``twist rmq-remoting --name-server`` does). The topic "Orders" is
created on both, with 4 queues on broker-a and 2 on broker-b; a producer given only the
name server sends to both; then broker-b stops and leaves the routes.

Run from a checkout:  PYTHONPATH=src python docs/examples/two_brokers.py
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from twisted.internet import defer, task

from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand
from rmqtwist.message import Message
from rmqtwist.producer import Producer
from rmqtwist.routing import parse_route
from rmqtwist.testing import RunningBroker, start_broker


async def show_route(client: RemotingClient, ns: RunningBroker, topic: str) -> None:
    request = RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
    response = await client.invoke(ns.address, request)
    if response.code != 0:
        print(f"route of {topic}: code {response.code} ({response.remark.splitlines()[0]})")
        return
    route = parse_route(topic, response.body)
    queues = Counter(queue.broker_name for queue in route.write_queues)
    shown = ", ".join(f"{name} ({queues[name]} queues)" for name in sorted(route.masters))
    print(f"route of {topic}: {shown}")


async def main(reactor: Any) -> None:
    ns = await start_broker(broker_name="ns")
    a = await start_broker(broker_name="broker-a", name_server=ns.address)
    b = await start_broker(broker_name="broker-b", name_server=ns.address)
    client = RemotingClient()
    producer = Producer("OrderService", ns.address)
    try:
        a.create_topic("Orders", 4)
        b.create_topic("Orders", 2)
        for broker in (a, b):  # they register within a second; now, for the example
            assert broker.service.registrar is not None
            await broker.service.registrar.register_all()
        await show_route(client, ns, "Orders")

        response = await client.invoke(
            ns.address, RemotingCommand.request(RequestCode.GET_BROKER_CLUSTER_INFO)
        )
        print("cluster:", json.loads(response.body)["clusterAddrTable"])

        await producer.start()
        sent: Counter[str] = Counter()
        for i in range(12):
            result = await producer.send(Message("Orders", b"order-%d" % i))
            sent[result.queue.broker_name] += 1
        print("sent:", dict(sorted(sent.items())))
        stored = {"broker-a": len(a.messages("Orders")), "broker-b": len(b.messages("Orders"))}
        print("stored:", stored)

        await b.stop()  # a clean stop unregisters
        await show_route(client, ns, "Orders")
    finally:
        await producer.shutdown()
        await client.close()
        for broker in (b, a, ns):
            await broker.stop()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
