"""rmqtwist's own Producer and consumers against clients nobody here wrote.

rmqtwist_client.py drives :class:`rmqtwist.producer.Producer` and
:class:`rmqtwist.consumer.PushConsumer` (or the lite :class:`~rmqtwist.consumer.PullConsumer`)
with the command line and JSON lines of the ali-ons and C++ drivers, so the scenarios of
broker_cases.py run with rmqtwist on either side of ``twist rmq-remoting``: what rmqtwist
sends, ali-ons 3.12.0 and rocketmq-client-cpp read exactly as sent (bodies, tags, keys,
user properties, message ids, queue order), and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


# -- the others send, rmqtwist reads ---------------------------------------------------


def test_rmqtwist_reads_what_ali_ons_sent(
    broker: RunningBroker, ons_driver: Driver, rmqtwist_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(ons_driver, rmqtwist_driver, broker)


def test_rmqtwist_reads_what_cpp_sent(
    broker: RunningBroker, cpp_driver: Driver, rmqtwist_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(cpp_driver, rmqtwist_driver, broker)


def test_rmqtwist_pull_consumer_reads_what_ali_ons_sent(
    broker: RunningBroker, ons_driver: Driver, rmqtwist_pull_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(ons_driver, rmqtwist_pull_driver, broker)


def test_rmqtwist_pull_consumer_reads_what_cpp_sent(
    broker: RunningBroker, cpp_driver: Driver, rmqtwist_pull_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(cpp_driver, rmqtwist_pull_driver, broker)


def test_rmqtwist_retries_what_ali_ons_sent(
    broker: RunningBroker, ons_driver: Driver, rmqtwist_driver: Driver
) -> None:
    cases.failed_message_comes_back_through_retry(rmqtwist_driver, ons_driver, broker)


def test_rmqtwist_retries_a_message_whose_listener_raised(
    broker: RunningBroker, cpp_driver: Driver, rmqtwist_driver: Driver
) -> None:
    cases.failed_message_comes_back_through_retry(
        rmqtwist_driver, cpp_driver, broker, fail_mode="throw"
    )


def test_rmqtwist_gets_ali_ons_delayed_message_after_its_level(
    broker: RunningBroker, ons_driver: Driver, rmqtwist_driver: Driver
) -> None:
    cases.delayed_message_waits_for_its_level(rmqtwist_driver, ons_driver, broker)


def test_rmqtwist_consumers_split_what_ali_ons_sent_then_one_takes_all(
    broker: RunningBroker, ons_driver: Driver, rmqtwist_driver: Driver
) -> None:
    cases.two_consumers_split_then_one_takes_all(rmqtwist_driver, ons_driver, broker)


# -- rmqtwist on both sides --------------------------------------------------------------


def test_rmqtwist_reads_what_rmqtwist_sent(broker: RunningBroker, rmqtwist_driver: Driver) -> None:
    cases.produce_and_consume_exactly(rmqtwist_driver, rmqtwist_driver, broker)


def test_rmqtwist_restart_resumes_from_the_committed_offset(
    broker: RunningBroker, rmqtwist_driver: Driver
) -> None:
    cases.restart_resumes_from_committed_offset(rmqtwist_driver, broker)


def test_rmqtwist_pull_restart_resumes_from_the_committed_offset(
    broker: RunningBroker, rmqtwist_pull_driver: Driver
) -> None:
    cases.restart_resumes_from_committed_offset(rmqtwist_pull_driver, broker)


# -- three clients, one topic ---------------------------------------------------------


def test_each_client_reads_all_three_clients_messages(
    broker: RunningBroker, ons_driver: Driver, cpp_driver: Driver, rmqtwist_driver: Driver
) -> None:
    """ali-ons, C++ and rmqtwist messages in one topic; a group of each client reads all
    thirty, as sent, with the send results' offsets and ids. rmqtwist's consumer lists every
    property, so nothing but the sent ones and the system ones may appear there, and its
    offset msgIds are those of rmqtwist's send results."""
    drivers = (ons_driver, cpp_driver, rmqtwist_driver)
    topic = cases.unique("Three")
    create_topic(broker.address, topic, cases.QUEUES)
    specs: list[dict[str, Any]] = []
    sent: dict[str, list[dict[str, Any]]] = {}
    for number, producer in enumerate(drivers):
        batch = cases.messages(producer, drivers, 10 * number, 10)
        sent[producer.name] = producer.produce(broker.address, topic, batch).sent
        specs += batch
    by_spec_seq = {int(spec["properties"]["seq"]): spec for spec in specs}
    for consumer in drivers:
        run = consumer.consume(
            broker.address, cases.unique(f"Three{consumer.name}"), topic, count=30,
            linger=1.0, properties=cases.USER_PROPERTIES,
        )  # fmt: skip
        assert len(run.consumed) == 30, run.describe()
        cases.check_all(run.consumed, specs, [], topic, consumer.name)
        by_seq = {cases.seq_of(line): line for line in run.consumed}
        for number, producer in enumerate(drivers):
            for index, result in enumerate(sent[producer.name]):
                line = by_seq[10 * number + index]
                assert result["queueOffset"] == line["queueOffset"], (result, line)
                assert cases.same_message_id(result["msgId"], line), (result, line)
                if producer is rmqtwist_driver and consumer is rmqtwist_driver:
                    assert result["offsetMsgId"] == line["offsetMsgId"], (result, line)
                    assert result["msgId"] == line["uniqKey"], (result, line)
        if consumer is rmqtwist_driver:
            only_sent_and_system(run.consumed, by_spec_seq)


def only_sent_and_system(
    consumed: Sequence[Mapping[str, Any]], specs: Mapping[int, Mapping[str, Any]]
) -> None:
    """Each delivered message holds only its sent user properties and system ones."""
    for line in consumed:
        spec = specs[cases.seq_of(line)]
        extra = set(line["properties"]) - cases.SYSTEM_PROPERTIES - set(spec["properties"])
        assert not extra, (extra, line)


@pytest.mark.parametrize("writer", ["ons", "cpp"])
def test_rmqtwist_reads_both_brokers_what_the_others_spread_over_them(
    start_broker: Callable[..., RunningBroker],
    rmqtwist_driver: Driver,
    writer: str,
    request: pytest.FixtureRequest,
) -> None:
    """ali-ons or the C++ client sends to two dev brokers behind one name server;
    rmqtwist's push consumer, given only that name server, reads every message from both
    brokers, each queue in order."""
    producer: Driver = request.getfixturevalue(f"{writer}_driver")
    two_brokers._spread_and_read(producer, rmqtwist_driver, start_broker)
