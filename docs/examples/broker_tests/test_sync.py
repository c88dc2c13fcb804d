"""Plain synchronous tests of orders.py against the dev broker.

Run without pytest-twisted (``pytest -p no:twisted``, or where it is not installed):
the broker then runs in crochet's reactor thread while the tests block.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest
from orders import SendFailed, send_order

from rmqtwist.blocking import BlockingClient
from rmqtwist.testing import RunningBroker, start_broker_in_thread

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def client() -> Iterator[BlockingClient]:
    with BlockingClient() as blocking_client:
        yield blocking_client


def test_an_order_is_stored(rocketmq_broker: RunningBroker, client: BlockingClient) -> None:
    send_order(client, rocketmq_broker.address, "o-1")
    [message] = rocketmq_broker.messages("Orders")
    assert json.loads(message.body) == {"order": "o-1"}
    assert (message.tags, message.keys) == ("created", ("o-1",))


def test_a_producer_in_another_process(rocketmq_broker: RunningBroker) -> None:
    # Any client works the same way: it only needs the address.
    subprocess.run(
        [sys.executable, str(HERE / "orders.py"), rocketmq_broker.address, "o-2"],
        check=True,
        timeout=60,
    )
    assert [m.keys for m in rocketmq_broker.messages("Orders")] == [("o-2",)]


@pytest.mark.rocketmq_broker(auto_create_topic=False)
def test_orders_need_their_topic(rocketmq_broker: RunningBroker, client: BlockingClient) -> None:
    with pytest.raises(SendFailed, match="topic\\[Orders\\] not exist"):
        send_order(client, rocketmq_broker.address, "o-3")
    rocketmq_broker.create_topic("Orders", queue_nums=2)
    send_order(client, rocketmq_broker.address, "o-3")
    assert rocketmq_broker.topics() == ["Orders"]


def test_a_session_broker_keeps_what_earlier_tests_sent(
    shared_broker: RunningBroker, client: BlockingClient
) -> None:
    before = len(shared_broker.messages("Orders"))
    send_order(client, shared_broker.address, "o-4")
    assert len(shared_broker.messages("Orders")) == before + 1


class OrdersTest(unittest.TestCase):
    """unittest style: start_broker_in_thread() in setUp, stop() as a clean-up."""

    def setUp(self) -> None:
        self.broker = start_broker_in_thread()
        self.addCleanup(self.broker.stop)
        self.client = BlockingClient()
        self.addCleanup(self.client.close)

    def test_offsets_grow_per_queue(self) -> None:
        offsets = [send_order(self.client, self.broker.address, "o-5") for _ in range(3)]
        self.assertEqual(offsets, [0, 1, 2])
