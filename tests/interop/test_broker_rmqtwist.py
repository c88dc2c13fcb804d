"""rmqtwist's own Producer and consumers against clients nobody here wrote.

rmqtwist_client.py drives :class:`rmqtwist.producer.Producer` and
:class:`rmqtwist.consumer.PushConsumer` (or the lite :class:`~rmqtwist.consumer.PullConsumer`)
with the command line and JSON lines of the ali-ons and C++ drivers, so the scenarios of
broker_cases.py run with rmqtwist on either side of ``twist rmq-remoting``: what rmqtwist
sends, ali-ons 3.12.0 and rocketmq-client-cpp read exactly as sent (bodies, tags, keys,
user properties, message ids, queue order), and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop import broker_cases as cases
from tests.interop import test_broker_two_brokers as two_brokers
from tests.interop.conftest import Driver, RunningBroker, create_topic, rmqtwist_driver_with

pytestmark = pytest.mark.interop


# -- rmqtwist sends, the others read ---------------------------------------------------


def test_ali_ons_reads_what_rmqtwist_sent(
    broker: RunningBroker, rmqtwist_driver: Driver, ons_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(rmqtwist_driver, ons_driver, broker)


def test_cpp_reads_what_rmqtwist_sent(
    broker: RunningBroker, rmqtwist_driver: Driver, cpp_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(rmqtwist_driver, cpp_driver, broker)


def test_ali_ons_retries_what_rmqtwist_sent(
    broker: RunningBroker, rmqtwist_driver: Driver, ons_driver: Driver
) -> None:
    cases.failed_message_comes_back_through_retry(ons_driver, rmqtwist_driver, broker)


def test_ali_ons_gets_rmqtwist_delayed_message_after_its_level(
    broker: RunningBroker, rmqtwist_driver: Driver, ons_driver: Driver
) -> None:
    cases.delayed_message_waits_for_its_level(ons_driver, rmqtwist_driver, broker)


def test_ali_ons_reads_rmqtwist_ordered_sends_in_their_queues(
    broker: RunningBroker, rmqtwist_driver: Driver, ons_driver: Driver
) -> None:
    """Sends with a queue selector land in the chosen queue, in send order there."""
    topic = cases.unique("Ordered")
    create_topic(broker.address, topic, cases.QUEUES)
    specs = [cases.message(seq, rmqtwist_driver.name, label="ordered") for seq in range(16)]
    for spec in specs:
        spec["queueId"] = int(spec["properties"]["seq"]) // 4  # four in a row per queue
    sent = rmqtwist_driver.produce(broker.address, topic, specs).sent
    assert [line["queueId"] for line in sent] == [seq // 4 for seq in range(16)], sent
    run = ons_driver.consume(
        broker.address, cases.unique("OrderedGroup"), topic, count=16, linger=1.0
    )
    cases.check_all(run.consumed, specs, sent, topic, ons_driver.name)
    for line in run.consumed:
        assert line["queueId"] == cases.seq_of(line) // 4, line


def test_cpp_reads_what_rmqtwist_sent_to_a_topic_nobody_created(
    broker: RunningBroker, rmqtwist_driver: Driver, cpp_driver: Driver
) -> None:
    """A topic the name server does not know is sent with TBW102's route (defaultTopic
    TBW102), so the broker makes it; the C++ client then reads every message as sent."""
    topic = cases.unique("AutoCreated")
    specs = [cases.message(seq, rmqtwist_driver.name, label="auto") for seq in range(8)]
    sent = rmqtwist_driver.produce(broker.address, topic, specs).sent
    assert len(sent) == 8
    run = cpp_driver.consume(
        broker.address, cases.unique("AutoGroup"), topic, count=8, linger=1.0,
        properties=cases.USER_PROPERTIES,
    )  # fmt: skip
    cases.check_all(run.consumed, specs, sent, topic, cpp_driver.name)


@pytest.mark.parametrize("reader", ["ons", "cpp"])
def test_other_clients_read_rmqtwist_batches(
    broker: RunningBroker,
    reader: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Messages sent five at a time with send_batch (SEND_BATCH_MESSAGE) come out one by
    one, each exactly as sent, at consecutive offsets of the batch's queue."""
    consumer: Driver = request.getfixturevalue(f"{reader}_driver")
    batches = rmqtwist_driver_with("rmqtwist", "push", tmp_path / "batch", "--batch", "5")
    (tmp_path / "batch").mkdir()
    topic = cases.unique("Batch")
    create_topic(broker.address, topic, cases.QUEUES)
    specs = cases.messages(batches, [consumer], 0, 20)
    sent = batches.produce(broker.address, topic, specs).sent
    assert len(sent) == 20
    for start in range(0, 20, 5):
        assert len({line["queueId"] for line in sent[start : start + 5]}) == 1, sent
    run = consumer.consume(
        broker.address, cases.unique("BatchGroup"), topic, count=20, linger=1.0,
        properties=cases.USER_PROPERTIES,
    )  # fmt: skip
    assert len(run.consumed) == 20, run.describe()
    cases.check_all(run.consumed, specs, sent, topic, consumer.name)


@pytest.mark.parametrize("reader", ["ons", "cpp"])
def test_rmqtwist_spreads_over_two_brokers_and_the_others_read_both(
    start_broker: Callable[..., RunningBroker],
    rmqtwist_driver: Driver,
    reader: str,
    request: pytest.FixtureRequest,
) -> None:
    """Given only a name server two dev brokers registered with, rmqtwist's producer sends
    to both; ali-ons or the C++ client reads every message from both, as sent."""
    consumer: Driver = request.getfixturevalue(f"{reader}_driver")
    two_brokers._spread_and_read(rmqtwist_driver, consumer, start_broker)
