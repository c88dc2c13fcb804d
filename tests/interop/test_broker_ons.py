"""ali-ons 3.12.0's own Producer and push Consumer against ``twist rmq-remoting``.

The dev broker runs as a subprocess with default options (name server and broker on one
loopback port); ali-ons runs unmodified in node (node/ons_broker_client.js), given that
port as its name server. The scenarios are in broker_cases.py.
"""

from __future__ import annotations

import pytest

from tests.interop import broker_cases as cases
from tests.interop.conftest import Driver, RunningBroker

pytestmark = pytest.mark.interop


def test_produce_and_consume_every_message_exactly(
    broker: RunningBroker, ons_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(ons_driver, ons_driver, broker)


def test_restart_resumes_from_the_committed_offset(
    broker: RunningBroker, ons_driver: Driver
) -> None:
    cases.restart_resumes_from_committed_offset(ons_driver, broker)


def test_two_consumers_split_the_queues_then_one_takes_all(
    broker: RunningBroker, ons_driver: Driver
) -> None:
    cases.two_consumers_split_then_one_takes_all(ons_driver, ons_driver, broker)


def test_failed_consumption_comes_back_through_the_retry_topic(
    broker: RunningBroker, ons_driver: Driver
) -> None:
    cases.failed_message_comes_back_through_retry(ons_driver, ons_driver, broker)


def test_delayed_message_arrives_no_earlier_than_its_level(
    broker: RunningBroker, ons_driver: Driver
) -> None:
    cases.delayed_message_waits_for_its_level(ons_driver, ons_driver, broker)
