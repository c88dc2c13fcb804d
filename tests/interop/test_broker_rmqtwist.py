"""rmqtwist's own Producer and consumers against clients nobody here wrote.

rmqtwist_client.py drives :class:`rmqtwist.producer.Producer` and
:class:`rmqtwist.consumer.PushConsumer` (or the lite :class:`~rmqtwist.consumer.PullConsumer`)
with the command line and JSON lines of the ali-ons and C++ drivers, so the scenarios of
broker_cases.py run with rmqtwist on either side of ``twist rmq-remoting``: what rmqtwist
sends, ali-ons 3.12.0 and rocketmq-client-cpp read exactly as sent (bodies, tags, keys,
user properties, message ids, queue order), and the other way round.
"""

from __future__ import annotations

import pytest

from tests.interop import broker_cases as cases
from tests.interop.conftest import Driver, RunningBroker

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
