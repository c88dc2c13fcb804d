"""ali-ons and the C++ client read each other's messages through ``twist rmq-remoting``.

Each producer's messages are consumed by the other client exactly as sent (bodies, tags,
keys, properties, queue order, message ids), and both clients' messages in one topic are
read in full by a group of each. The scenarios are in broker_cases.py.
"""

from __future__ import annotations

import pytest

from tests.interop import broker_cases as cases
from tests.interop.conftest import Driver, RunningBroker

pytestmark = pytest.mark.interop


def test_cpp_reads_what_ali_ons_sent(
    broker: RunningBroker, ons_driver: Driver, cpp_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(ons_driver, cpp_driver, broker)


def test_ali_ons_reads_what_cpp_sent(
    broker: RunningBroker, ons_driver: Driver, cpp_driver: Driver
) -> None:
    cases.produce_and_consume_exactly(cpp_driver, ons_driver, broker)


def test_both_clients_read_both_clients_messages(
    broker: RunningBroker, ons_driver: Driver, cpp_driver: Driver
) -> None:
    cases.both_produce_both_consume(ons_driver, cpp_driver, broker)
