"""Produce and consume with Twisted: a Producer and a PushConsumer with a listener.

The dev broker runs inside the program (``start_broker``); against a real cluster,
give its name servers ("host:9876;host2:9876") instead of ``broker.address``.

Run from a checkout:  PYTHONPATH=src python docs/examples/messaging_twisted.py
"""

from typing import Any

from twisted.internet import defer, task

from rmqtwist.consumer import ConsumeFrom, PushConsumer
from rmqtwist.message import Message, MessageExt
from rmqtwist.producer import Producer
from rmqtwist.testing import start_broker


async def main(reactor: Any) -> None:
    broker = await start_broker()
    producer = Producer("shop", broker.address)
    await producer.start()
    for n in range(3):
        result = await producer.send(Message("Orders", b"order-%d" % n, tags="created"))
        print(f"sent order-{n}: {result.status.value}")

    received: list[str] = []
    all_three: defer.Deferred[None] = defer.Deferred()

    def listener(message: MessageExt) -> None:  # returning normally: consumed
        received.append(message.body.decode())
        if len(received) == 3:
            all_three.callback(None)

    consumer = PushConsumer("billing", broker.address, listener, consume_from=ConsumeFrom.FIRST)
    consumer.subscribe("Orders")
    await consumer.start()
    await all_three
    print(f"received: {sorted(received)}")

    await consumer.shutdown()
    await producer.shutdown()
    await broker.stop()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
