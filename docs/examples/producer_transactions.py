"""Transactional messages with TransactionProducer, against an in-process dev broker.

An order service records orders in its own database and announces each one on the
"orders" topic, only once the database transaction is done. Three orders: one whose
database transaction commits, one that rolls back, and one whose outcome is not known
when the producer reports (``UNKNOWN``): the broker asks later, and the check, which
looks the order up, commits it.

The broker is started with a 0.5 s transaction timeout (a real one waits 6 s or more)
so that the check comes at once.

Run from a checkout:  PYTHONPATH=src python docs/examples/producer_transactions.py
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from rmqtwist.message import Message, MessageExt
from rmqtwist.producer import LocalTransactionState, TransactionProducer
from rmqtwist.testing import start_broker

#: The service's own database: order id -> committed?
ORDERS: dict[str, bool] = {}


def execute(message: Message, order_id: Any) -> LocalTransactionState:
    """The local transaction: store the order; runs once the half message is stored."""
    if order_id == "order-2":
        return LocalTransactionState.ROLLBACK  # out of stock: the order is not taken
    if order_id == "order-3":
        ORDERS[order_id] = True  # stored, but say we do not know yet
        return LocalTransactionState.UNKNOWN
    ORDERS[order_id] = True
    return LocalTransactionState.COMMIT


def check(message: MessageExt) -> LocalTransactionState:
    """The broker asks about a half message left unresolved: look the order up."""
    order_id = message.keys[0]
    print(f"check: the broker asks about {order_id}")
    if ORDERS.get(order_id):
        return LocalTransactionState.COMMIT
    return LocalTransactionState.ROLLBACK


async def main(reactor: Any) -> None:
    broker = await start_broker(transaction_timeout=0.5, transaction_check_interval=0.2)
    producer = TransactionProducer("order_service", broker.address, execute, check)
    await producer.start()
    try:
        for order_id in ("order-1", "order-2", "order-3"):
            message = Message("orders", order_id.encode(), tags="created", keys=order_id)
            result = await producer.send_in_transaction(message, order_id)
            print(
                f"sent {order_id}: {result.status.value}, told the broker {result.local_state.name}"
            )
        visible = [m.body.decode() for m in broker.messages("orders")]
        print(f"consumers can see: {visible}")
        await task.deferLater(reactor, 1.5, lambda: None)
        visible = [m.body.decode() for m in broker.messages("orders")]
        print(f"after the check, consumers can see: {sorted(visible)}")
    finally:
        await producer.shutdown()
        await broker.stop()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
