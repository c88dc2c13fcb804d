"""Lite pull consuming with PullConsumer, against an in-process dev broker.

Eight payment events go to the "payments" topic (tags "ok" and "refund"). A consumer of
group "billing" subscribes to the refunds only, polls them, commits and stops; a second
consumer of the group then finds nothing left. Last, a consumer assigned one queue
seeks to its end, then back to its beginning, and replays it.

Run from a checkout:  PYTHONPATH=src python docs/examples/consumer_lite_pull.py
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from rmqtwist.consumer import ConsumeFrom, PullConsumer
from rmqtwist.message import Message
from rmqtwist.producer import MessageQueue, Producer
from rmqtwist.testing import start_broker


async def main(reactor: Any) -> None:
    broker = await start_broker()
    broker.create_topic("payments", 2)
    producer = Producer("payments-producer", broker.address)
    await producer.start()
    for i in range(8):
        tag = "refund" if i % 3 == 0 else "ok"
        queue = MessageQueue("payments", "broker-a", i % 2)
        await producer.send(Message("payments", b"payment-%d" % i, tags=tag), queue=queue)

    # A member of the group: the group's queues, the refunds only, committed by hand.
    consumer = PullConsumer(
        "billing", broker.address, consume_from=ConsumeFrom.FIRST, auto_commit=False
    )
    consumer.subscribe("payments", "refund")
    await consumer.start()
    refunds = []
    while len(refunds) < 3:
        refunds += await consumer.poll(timeout=5)
    print("refunds:", sorted(m.body.decode() for m in refunds))
    await consumer.commit()
    print("committed:", broker.offsets("billing")["payments"])
    await consumer.shutdown()

    # The next member of the group goes on from the committed offsets: nothing is left.
    second = PullConsumer("billing", broker.address, consume_from=ConsumeFrom.FIRST)
    second.subscribe("payments", "refund")
    await second.start()
    print("second member:", await second.poll(timeout=0.5))
    await second.shutdown()

    # Fixed queues, no group rebalance: skip to the end of queue 1, then replay it.
    replay = PullConsumer("audit", broker.address)
    queue = MessageQueue("payments", "broker-a", 1)
    replay.assign([queue])
    await replay.start()
    await replay.seek_to_end(queue)
    print("at the end:", await replay.poll(timeout=0.5))
    await replay.seek_to_begin(queue)
    again = await replay.poll(timeout=5)
    print("replayed:", [(m.queue_offset, m.body.decode()) for m in again])
    await replay.shutdown()

    await producer.shutdown()
    await broker.stop()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
