"""The client, the producer and the consumer as plain blocking calls, for scripts,
notebooks and threads.

:class:`BlockingClient` offers the calls of :class:`~rmqtwist.client.RemotingClient`,
:class:`BlockingProducer` those of :class:`~rmqtwist.producer.Producer`,
:class:`BlockingTransactionProducer` those of :class:`~rmqtwist.producer.TransactionProducer`
and :class:`BlockingConsumer` those of :class:`~rmqtwist.consumer.PullConsumer`, as functions
that return a value or raise. The reactor runs in a background thread started by
`crochet <https://crochet.readthedocs.io>`_ (``crochet.setup()``, which also sends
Twisted's log to the standard :mod:`logging` module); every call is handed to that
thread and waited for::

    from rmqtwist.blocking import BlockingConsumer, BlockingProducer
    from rmqtwist.consumer import ConsumeFrom
    from rmqtwist.message import Message

    with BlockingProducer("shop", "127.0.0.1:9876") as producer:
        producer.send(Message("Orders", b"order-1"))
    with BlockingConsumer(
        "billing", "127.0.0.1:9876", "Orders", consume_from=ConsumeFrom.FIRST
    ) as consumer:
        for message in consumer.messages(timeout=5):
            print(message.body)

Errors are those of the asynchronous API: a call that gets no response in time raises
:class:`~rmqtwist.errors.RemotingTimeoutError`, an address that refuses raises
:class:`~rmqtwist.errors.ConnectError`, a send that fails everywhere raises
:class:`~rmqtwist.producer.SendFailedError`, and so on.

Any number of threads may share one object. The one thread that must not call it is the
reactor thread itself (a processor, hook or listener, or code of a Twisted program that
runs the reactor): the call could never finish there, so it raises RuntimeError; use the
asynchronous object underneath (``.client``, ``.producer``, ``.consumer``) there instead.
"""

from rmqtwist.blocking._client import REACTOR_TIMEOUT, WAIT_MARGIN, BlockingClient
from rmqtwist.blocking._consumer import BlockingConsumer
from rmqtwist.blocking._producer import BlockingProducer
from rmqtwist.blocking._transaction import BlockingTransactionProducer

__all__ = [
    "REACTOR_TIMEOUT",
    "WAIT_MARGIN",
    "BlockingClient",
    "BlockingConsumer",
    "BlockingProducer",
    "BlockingTransactionProducer",
]
