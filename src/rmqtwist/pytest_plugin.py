"""pytest plugin: the ``rocketmq_broker`` fixture, a dev broker for each test.

Installed with rmqtwist (entry point ``rmqtwist`` in ``pytest11``), so any test may ask
for it::

    def test_orders_are_sent(rocketmq_broker):
        send_orders(name_server=rocketmq_broker.address)  # the code under test
        assert [m.body for m in rocketmq_broker.messages("Orders")] == [b"order-1"]

The fixture gives a started :class:`~rmqtwist.testing.RunningBroker` on a free port of
127.0.0.1, in memory, and stops it after the test. Where the broker runs depends on how
the session runs Twisted:

* under pytest-twisted (its reactor runs in the main thread, in a greenlet), the broker
  runs on that reactor, started and stopped with ``pytest_twisted.blockon``; tests use
  it from ``@pytest_twisted.ensureDeferred`` async tests (or ``inlineCallbacks`` ones);
* otherwise the broker runs in crochet's reactor thread
  (:func:`~rmqtwist.testing.start_broker_in_thread`) and plain synchronous tests use it:
  run a client in another process, a third-party client library, or
  :class:`~rmqtwist.blocking.BlockingClient`; the helpers may be called from the test.

``@pytest.mark.rocketmq_broker(**options)`` on a test passes ``options`` to
:func:`~rmqtwist.testing.start_broker` (``auto_create_topic=False``, a ``config``, a
``store``). :func:`running_broker` makes a fixture of another scope.

Importing this module imports neither Twisted's reactor nor rmqtwist's broker: pytest
imports every plugin at start-up, before pytest-twisted chooses the reactor to install.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rmqtwist.testing import RunningBroker

__all__ = ["BrokerFixtureWarning", "rocketmq_broker", "running_broker"]

_MARKER = "rocketmq_broker"


class BrokerFixtureWarning(UserWarning):
    """A test uses the broker in a way that cannot work (see the message)."""


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker (sessions run with ``--strict-markers`` would refuse it), and
    silence the DeprecationWarning that crochet 2.1 raises at every blocking call
    (``Event.isSet``), which a test that uses the broker in crochet's thread would
    otherwise report many times over."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): start the rocketmq_broker fixture's broker with these "
        "rmqtwist.testing.start_broker options (BrokerConfig fields, config=, store=)",
    )
    config.addinivalue_line(
        "filterwarnings", r"ignore:isSet\(\) is deprecated:DeprecationWarning:crochet"
    )


def _in_twisted_greenlet(request: pytest.FixtureRequest) -> bool:
    """True when pytest-twisted runs the reactor in a greenlet of the main thread."""
    if not request.config.pluginmanager.has_plugin("twisted"):
        return False
    # pytest-twisted's own (session, autouse) fixture: the greenlet, or None when the
    # reactor was already running in another thread when the session began.
    return request.getfixturevalue("twisted_greenlet") is not None


@contextmanager
def running_broker(request: pytest.FixtureRequest, **options: Any) -> Iterator[RunningBroker]:
    """Start a broker as the ``rocketmq_broker`` fixture does (``options`` go to
    :func:`~rmqtwist.testing.start_broker`), yield it, stop it on exit.

    For fixtures of other scopes; ``request`` is the fixture's own::

        @pytest.fixture(scope="session")
        def shared_broker(request):
            with running_broker(request) as broker:
                yield broker
    """
    from rmqtwist import testing

    if _in_twisted_greenlet(request):
        import pytest_twisted  # type: ignore[import-untyped]

        running: RunningBroker = pytest_twisted.blockon(testing.start_broker(**options))
        try:
            yield running
        finally:
            pytest_twisted.blockon(running.stop())
    else:
        running = testing.start_broker_in_thread(**options)
        try:
            yield running
        finally:
            running.stop()


def _is_twisted_test(request: pytest.FixtureRequest) -> bool:
    """Whether the test hands the reactor back while it waits: an async test
    (``pytest_twisted.ensureDeferred``) or an ``inlineCallbacks`` one."""
    function = getattr(request.node, "obj", None)
    if function is None:  # not a Python function (a doctest...): nothing to tell
        return True
    function = inspect.unwrap(function)
    return inspect.iscoroutinefunction(function) or inspect.isgeneratorfunction(function)


@pytest.fixture
def rocketmq_broker(request: pytest.FixtureRequest) -> Iterator[RunningBroker]:
    """A dev broker on a free port of 127.0.0.1, stopped after the test: a
    :class:`~rmqtwist.testing.RunningBroker` (``.address`` is what clients use as their
    name server address)."""
    marker = request.node.get_closest_marker(_MARKER)
    if marker is not None and marker.args:
        raise TypeError(f"@pytest.mark.{_MARKER} takes keyword options only")
    options = dict(marker.kwargs) if marker is not None else {}
    greenlet = _in_twisted_greenlet(request)
    if greenlet and not _is_twisted_test(request):
        warnings.warn(
            f"{request.node.name} is a plain function, which pytest-twisted runs inside "
            "the reactor the broker runs on: while it blocks (a client in another "
            "process, a blocking client library, BlockingClient) the broker cannot "
            "answer. Make it an @pytest_twisted.ensureDeferred async test, or run such "
            "tests without pytest-twisted (pytest -p no:twisted)",
            BrokerFixtureWarning,
            stacklevel=1,
        )
    with running_broker(request, **options) as running:
        yield running
