"""The Producer and PushConsumer in an asyncio program, on Twisted's asyncio reactor.

The asyncio reactor must be installed before anything imports
``twisted.internet.reactor`` (rmqtwist's modules import it only when they need it, but
other libraries may not). The program's own code is plain asyncio: Deferreds become
asyncio futures with ``Deferred.asFuture(loop)``, and the consumer's listener hands
each message to an ``asyncio.Queue``.

Run from a checkout:  PYTHONPATH=src python docs/examples/asyncio_messaging.py
"""

from __future__ import annotations

import asyncio

from twisted.internet import asyncioreactor

LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)
asyncioreactor.install(LOOP)  # first: before any other import of twisted.internet.reactor

from twisted.internet import defer, task  # noqa: E402

from rmqtwist.consumer import ConsumeFrom, PushConsumer  # noqa: E402
from rmqtwist.message import Message, MessageExt  # noqa: E402
from rmqtwist.producer import Producer  # noqa: E402
from rmqtwist.testing import start_broker  # noqa: E402


async def main() -> None:
    loop = asyncio.get_running_loop()
    broker = await start_broker().asFuture(loop)  # a dev broker in this process

    producer = Producer("asyncio_app", broker.address)
    await producer.start().asFuture(loop)
    for n in range(3):
        result = await producer.send(Message("Greetings", b"hello %d" % n)).asFuture(loop)
        print(f"sent hello {n}: {result.status.value}")

    received: asyncio.Queue[MessageExt] = asyncio.Queue()

    async def handle(message: MessageExt) -> None:
        await asyncio.sleep(0.01)  # asyncio code runs in the listener as usual
        received.put_nowait(message)

    def listener(message: MessageExt) -> defer.Deferred[None]:
        # An asyncio coroutine, run as an asyncio task; the consumer waits for its Deferred.
        return defer.Deferred.fromFuture(asyncio.ensure_future(handle(message)))

    consumer = PushConsumer(
        "asyncio_readers", broker.address, listener, consume_from=ConsumeFrom.FIRST
    )
    consumer.subscribe("Greetings")
    await consumer.start().asFuture(loop)
    bodies = [(await asyncio.wait_for(received.get(), 10)).body.decode() for _ in range(3)]
    print(f"received: {sorted(bodies)}")

    await consumer.shutdown().asFuture(loop)
    await producer.shutdown().asFuture(loop)
    await broker.stop().asFuture(loop)


if __name__ == "__main__":
    # react() runs the reactor, which runs the asyncio loop; main() is an asyncio task.
    task.react(lambda reactor: defer.Deferred.fromFuture(LOOP.create_task(main())))
