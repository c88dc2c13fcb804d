"""Produce and consume with the blocking facade: a plain script, no reactor in sight.

The dev broker runs inside the script (``start_broker_in_thread``); against a real
cluster, give its name servers ("host:9876;host2:9876") instead of ``broker.address``.

Run from a checkout:  PYTHONPATH=src python docs/examples/messaging_blocking.py
"""

from rmqtwist.blocking import BlockingConsumer, BlockingProducer
from rmqtwist.consumer import ConsumeFrom
from rmqtwist.message import Message
from rmqtwist.testing import start_broker_in_thread

broker = start_broker_in_thread()
name_servers = broker.address

with BlockingProducer("shop", name_servers) as producer:
    for n in range(3):
        result = producer.send(Message("Orders", b"order-%d" % n, tags="created"))
        print(f"sent order-{n}: {result.status.value}")

with BlockingConsumer(
    "billing", name_servers, "Orders", consume_from=ConsumeFrom.FIRST
) as consumer:
    received = [message.body.decode() for message in consumer.messages(timeout=2)]
print(f"received: {sorted(received)}")

broker.stop()
