"""The C++ client's Producer and PushConsumer against ``twist rmq-remoting``.

The client is rocketmq-client-cpp 1.2.x as bundled in the PyPI package rocketmq 0.4.4
(which has no transaction producer).

The dev broker runs as a subprocess with default options (name server and broker on one
loopback port); the client runs unmodified in a subprocess (cpp_client.py), given that
port as its name server. The scenarios are in broker_cases.py.
"""

from __future__ import annotations

import pytest

from tests.interop import broker_cases as cases
from tests.interop.conftest import Driver, RunningBroker

pytestmark = pytest.mark.interop


def test_produce_and_consume_every_message_exactly(
    broker: RunningBroker, cpp_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(cpp_driver, cpp_driver, broker)


def test_restart_resumes_from_the_committed_offset(
    broker: RunningBroker, cpp_driver: Driver
) -> None:
    cases.restart_resumes_from_committed_offset(cpp_driver, broker)


def test_two_consumers_split_the_queues_then_one_takes_all(
    broker: RunningBroker, cpp_driver: Driver
) -> None:
    cases.two_consumers_split_then_one_takes_all(cpp_driver, cpp_driver, broker)


def test_failed_consumption_comes_back_through_the_retry_topic(
    broker: RunningBroker, cpp_driver: Driver
) -> None:
    cases.failed_message_comes_back_through_retry(cpp_driver, cpp_driver, broker)


def test_delayed_message_arrives_no_earlier_than_its_level(
    broker: RunningBroker, cpp_driver: Driver
) -> None:
    cases.delayed_message_waits_for_its_level(cpp_driver, cpp_driver, broker)
