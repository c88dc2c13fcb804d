"""ali-ons and the C++ client against two dev brokers behind a third one's name server.

Three ``twist rmq-remoting`` processes: ``ns``, and ``b1`` and ``b2`` started with
``--name-server`` (they register with ``ns``). A topic created on both brokers has a
route naming both; each client, given only ``ns``, sends to both brokers and a consumer
group reads every message from both.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from tests.interop import broker_cases as cases
from tests.interop.conftest import Driver, RunningBroker, broker_request, create_topic

pytestmark = pytest.mark.interop

COUNT = 16


def _wait_for_route(ns: RunningBroker, topic: str, brokers: set[str]) -> None:
    """Until ``ns`` routes ``topic`` to ``brokers`` (they register within a second of a
    topic being created)."""
    deadline = time.monotonic() + 10
    names: set[str] = set()
    while time.monotonic() < deadline:
        response = broker_request(ns.address, 105, {"topic": topic})
        if response.code == 0:
            names = {b["brokerName"] for b in json.loads(response.body)["brokerDatas"]}
            if names == brokers:
                return
        time.sleep(0.1)
    pytest.fail(f"the route of {topic} names {names or 'nothing'}, not {brokers}")


def _two_brokers(
    start_broker: Callable[..., RunningBroker],
) -> tuple[RunningBroker, RunningBroker, RunningBroker]:
    ns = start_broker("--broker-name", "ns")
    b1 = start_broker("--broker-name", "b1", "--name-server", ns.address)
    b2 = start_broker("--broker-name", "b2", "--name-server", ns.address)
    return ns, b1, b2


def _spread_and_read(
    producer: Driver, consumer: Driver, start: Callable[..., RunningBroker]
) -> None:
    ns, b1, b2 = _two_brokers(start)
    topic = cases.unique("TwoBrokers")
    create_topic(b1.address, topic, cases.QUEUES)
    create_topic(b2.address, topic, cases.QUEUES)
    _wait_for_route(ns, topic, {"b1", "b2"})

    specs = cases.messages(producer, [consumer], 0, COUNT)
    sent = producer.produce(ns.address, topic, specs).sent
    assert len(sent) == COUNT
    stored = {broker.address: _stored(broker, topic) for broker in (b1, b2)}
    assert sum(stored.values()) == COUNT and all(stored.values()), stored

    run = consumer.consume(
        ns.address, cases.unique("TwoBrokersGroup"), topic, count=COUNT, linger=1.0,
        properties=cases.USER_PROPERTIES,
    )  # fmt: skip
    assert len(run.consumed) == COUNT, run.describe()
    by_seq = {int(spec["properties"]["seq"]): spec for spec in specs}
    assert sorted(cases.seq_of(line) for line in run.consumed) == sorted(by_seq)
    queues: dict[tuple[str, int], list[int]] = defaultdict(list)
    for line in run.consumed:
        cases.check_message(line, by_seq[cases.seq_of(line)], topic, consumer.name)
        if "storeHost" in line:  # ali-ons says which broker stored it; the C++ API does not
            queues[(line["storeHost"], line["queueId"])].append(line["queueOffset"])
    if queues:
        assert {host for host, _ in queues} == {b1.address, b2.address}, sorted(queues)
    for queue, offsets in queues.items():  # each queue of each broker read in order
        assert offsets == list(range(len(offsets))), (queue, offsets)


def _stored(broker: RunningBroker, topic: str) -> int:
    """How many messages ``broker`` holds in ``topic`` (GET_MAX_OFFSET of each queue)."""
    total = 0
    for queue_id in range(cases.QUEUES):
        response = broker_request(broker.address, 30, {"topic": topic, "queueId": queue_id})
        assert response.code == 0, response
        total += int((response.ext_fields or {})["offset"])
    return total


def test_ali_ons_spreads_over_two_brokers_and_reads_both(
    start_broker: Callable[..., RunningBroker], ons_driver: Driver
) -> None:
    _spread_and_read(ons_driver, ons_driver, start_broker)


def test_cpp_spreads_over_two_brokers_and_reads_both(
    start_broker: Callable[..., RunningBroker], cpp_driver: Driver
) -> None:
    _spread_and_read(cpp_driver, cpp_driver, start_broker)
