"""A broker shared by every test of the session that asks for ``shared_broker``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rmqtwist.pytest_plugin import running_broker
from rmqtwist.testing import RunningBroker


@pytest.fixture(scope="session")
def shared_broker(request: pytest.FixtureRequest) -> Iterator[RunningBroker]:
    with running_broker(request) as broker:
        yield broker
