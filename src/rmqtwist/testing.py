"""A dev broker in the test process, for users' own tests.

:func:`start_broker` starts the :mod:`rmqtwist.broker` (name server and broker on one
port) in this process on a free port of 127.0.0.1 and gives a :class:`RunningBroker`:
the address to give clients as their name server, a way to stop it, and helpers that
look inside (the messages of a topic, a group's offsets, the pulls held by long polling)
so that a test can check what its code did without a consumer of its own::

    broker = await start_broker()
    try:
        ...  # point the code under test at broker.address
        assert [m.body for m in broker.messages("Orders")] == [b"order-1"]
    finally:
        await broker.stop()

:func:`start_broker_in_thread` does the same for code that does not run the reactor
(plain pytest or unittest tests, scripts): the broker runs in crochet's reactor thread,
as :mod:`rmqtwist.blocking` does, and the helpers and ``stop()`` block. The pytest
plugin (:mod:`rmqtwist.pytest_plugin`, fixture ``rocketmq_broker``) chooses between
the two.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.python import threadable
from twisted.python.failure import Failure

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.service import BrokerService
from rmqtwist.message import MessageExt, decode_record

if TYPE_CHECKING:
    from rmqtwist.broker.core import Broker
    from rmqtwist.broker.store import IMessageStore

__all__ = ["RunningBroker", "start_broker", "start_broker_in_thread"]

_T = TypeVar("_T")

#: The interface a test broker listens on: never reachable from another machine.
HOST = "127.0.0.1"
#: How long a broker stopping waits for requests in flight before closing connections.
SHUTDOWN_TIMEOUT = 5.0
#: How long a blocking ``stop()`` waits: the shutdown timeout, then closing connections.
_STOP_WAIT = SHUTDOWN_TIMEOUT + 10.0
#: Records read from the store per step by :meth:`RunningBroker.messages`.
_READ_COUNT = 1024
_READ_BYTES = 64 * 1024 * 1024

#: Runs a function in the reactor thread and returns its outcome (a Deferred's result).
_Runner = Callable[[Callable[[], Any]], Any]


class RunningBroker:
    """A started dev broker: its address, its parts, ``stop()`` and helpers to look inside.

    The helpers read the broker's state as it is now; they never wait for anything to
    arrive. They return copies, which the test may keep and change. Call them in the
    reactor thread (any pytest-twisted test or Twisted code), or from any thread when the
    broker came from :func:`start_broker_in_thread`.
    """

    def __init__(self, service: BrokerService, port: int, *, runner: _Runner | None = None) -> None:
        #: The :class:`~rmqtwist.broker.service.BrokerService` running the broker.
        self.service = service
        #: The TCP port it listens on, on 127.0.0.1.
        self.port = port
        #: ``"127.0.0.1:PORT"``: what clients use as their name server address (and, as the
        #: broker names the address they connected to in routes, as the broker's too).
        self.address = f"{HOST}:{self.port}"
        self._runner = runner
        self._stopped: Deferred[None] | None = None
        self._stop_outcome: list[object] = []

    @property
    def broker(self) -> Broker:
        """The :class:`~rmqtwist.broker.core.Broker`: topics, clients, offsets, store."""
        return self.service.broker

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped is not None

    def _run(self, function: Callable[[], _T]) -> _T:
        # In the reactor thread (or with no thread of its own): call. From another
        # thread, when the broker runs in crochet's: hand it over and wait.
        runner = self._runner
        if runner is None or threadable.isInIOThread():  # type: ignore[no-untyped-call]
            return function()
        result: _T = runner(function)
        return result

    # -- stopping ---------------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Stop the broker: answer held pulls, close the port and every connection, then
        close the store. Fires with None once done; calling it again gives the same
        outcome. From a thread other than the reactor's (a broker from
        :func:`start_broker_in_thread`) it blocks until stopped and returns a Deferred
        that has already fired."""
        if self._runner is not None and not threadable.isInIOThread():  # type: ignore[no-untyped-call]
            self._runner(self._stop)
            return succeed(None)
        return self._stop()

    def _stop(self) -> Deferred[None]:
        if self._stopped is None:
            self._stopped = self.service.stopService()
            self._stopped.addBoth(self._stop_outcome.append)
        done: Deferred[None] = Deferred()
        if self._stop_outcome:
            _fire(done, self._stop_outcome[0])
        else:
            self._stopped.addCallback(lambda _: _fire(done, self._stop_outcome[0]))
        return done

    # -- looking inside ---------------------------------------------------------------

    def messages(self, topic: str, queue_id: int | None = None) -> list[MessageExt]:
        """The messages stored in ``topic`` (one queue, or all when ``queue_id`` is None),
        in queue order: queue 0 from its oldest offset, then queue 1, and so on.

        Only what a consumer of ``topic`` could pull: a delayed message is in the delay
        topic until it is due, a transaction half message until it is committed."""
        return self._run(lambda: self._messages(topic, queue_id))

    def _messages(self, topic: str, queue_id: int | None) -> list[MessageExt]:
        store = self.broker.store
        queues = sorted(store.queue_ids(topic)) if queue_id is None else [queue_id]
        found: list[MessageExt] = []
        for queue in queues:
            offset = store.min_offset(topic, queue)
            end = store.max_offset(topic, queue)
            while offset < end:
                result = store.read(topic, queue, offset, _READ_COUNT, _READ_BYTES, None)
                for record in result.records:
                    found.append(decode_record(record)[0])
                if result.next_offset <= offset:
                    break
                offset = result.next_offset
        return found

    def offsets(self, group: str) -> dict[str, dict[int, int]]:
        """The offsets consumer group ``group`` committed: topic -> queue id -> the next
        offset it will consume (retry topics included, as ``%RETRY%group``)."""
        return self._run(lambda: self.broker.offsets.of_group(group))

    def held_pulls(self) -> dict[tuple[str, int], int]:
        """How many pulls long polling holds now, per ``(topic, queue id)``: a consumer
        waiting for messages shows here."""
        return self._run(self.broker.pulls.waiting)

    def consumer_ids(self, group: str) -> list[str]:
        """The client ids of the consumers of ``group`` that sent a heartbeat, sorted."""
        return self._run(lambda: sorted(self.broker.clients.consumer_ids(group)))

    def topics(self, *, system: bool = False) -> list[str]:
        """The topics the broker knows, sorted: created ones, retry and dead-letter topics;
        with ``system=True`` also TBW102, the delay topic and the transaction topics."""
        return self._run(
            lambda: sorted(t.name for t in self.broker.topics if system or not t.system)
        )

    def create_topic(self, topic: str, queue_nums: int = 4) -> None:
        """Create ``topic`` with ``queue_nums`` read and write queues unless it exists (as
        UPDATE_AND_CREATE_TOPIC would; for brokers started with ``auto_create_topic=False``)."""
        self._run(lambda: self.broker.topics.ensure(topic, queue_nums))

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"<RunningBroker {self.address} {state}>"


def _fire(deferred: Deferred[None], outcome: object) -> None:
    if isinstance(outcome, Failure):
        deferred.errback(outcome)
    else:
        deferred.callback(None)


def _make_config(config: BrokerConfig | None, options: dict[str, Any]) -> BrokerConfig:
    if config is None:
        return BrokerConfig(**options)
    return dataclasses.replace(config, **options) if options else config


def _start(
    reactor: Any,
    store: IMessageStore | None,
    config: BrokerConfig,
    port: int,
    runner: _Runner | None,
    acl_file: str | None = None,
) -> Deferred[RunningBroker]:
    service = BrokerService(
        config,
        store,
        reactor=reactor,
        listen=[f"tcp:{port}:interface={HOST}"],
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        acl_file=acl_file,
    )
    service.startService()

    def started(_: object) -> RunningBroker:
        [listening] = service.server.ports
        address = listening.getHost()
        assert isinstance(address, IPv4Address)
        return RunningBroker(service, address.port, runner=runner)

    def failed(failure: Failure) -> Deferred[RunningBroker]:
        # Close what did open (the store, a timer) before reporting why.
        stopping: Deferred[Any] = service.stopService()
        return stopping.addBoth(lambda _: failure)

    return service.when_started().addCallbacks(started, failed)


def start_broker(
    reactor: Any = None,
    *,
    store: IMessageStore | None = None,
    config: BrokerConfig | None = None,
    port: int = 0,
    acl_file: str | os.PathLike[str] | None = None,
    **config_options: Any,
) -> Deferred[RunningBroker]:
    """Start a dev broker in this process, listening on 127.0.0.1 (``port`` 0: a free one).

    ``store`` is its :class:`~rmqtwist.broker.store.IMessageStore` (default a new
    :class:`~rmqtwist.broker.store.MemoryStore`, which :meth:`RunningBroker.stop` closes
    like any other); ``config`` a :class:`~rmqtwist.broker.config.BrokerConfig`, whose
    fields ``config_options`` set or override (``auto_create_topic=False``,
    ``delay_levels=(0.1,)``; an unknown name raises TypeError). With
    ``name_server=other.address`` (and a ``broker_name`` of its own) it registers with
    another broker's name server, as ``--name-server`` does, before this fires
    (:doc:`/howto/two-brokers`). With ``acl_file`` (an Apache ``plain_acl.yml``) every
    request is checked against it, as ``--acl-file`` does (:doc:`/howto/acl`); an
    unusable file raises :class:`~rmqtwist.acl.AclConfigError` before anything starts.
    Call it in the reactor thread. Fires with the
    :class:`RunningBroker` once the store is open and the port listens, or fails
    (``CannotListenError`` for a busy port) with nothing left open.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return _start(
        reactor,
        store,
        _make_config(config, config_options),
        port,
        None,
        None if acl_file is None else os.fspath(acl_file),
    )


def start_broker_in_thread(
    *,
    timeout: float = 10.0,
    store: IMessageStore | None = None,
    config: BrokerConfig | None = None,
    port: int = 0,
    acl_file: str | os.PathLike[str] | None = None,
    **config_options: Any,
) -> RunningBroker:
    """:func:`start_broker` for code that does not run the reactor: the broker runs in
    crochet's reactor thread (``crochet.setup()`` starts it the first time) and this
    returns once it listens, within ``timeout`` seconds.

    The :class:`RunningBroker` it returns may be used from any thread: its helpers run
    in the reactor thread and wait for the answer, and ``stop()`` blocks until the
    broker has stopped. Raises RuntimeError in the reactor thread itself (use
    :func:`start_broker` there), ``crochet.TimeoutError`` when the reactor thread does
    not start it in time, and what :func:`start_broker` fails with.
    """
    import crochet

    if threadable.isInIOThread():  # type: ignore[no-untyped-call]
        raise RuntimeError(
            "start_broker_in_thread() was called in the reactor thread, where waiting "
            "would deadlock: use start_broker() there"
        )
    broker_config = _make_config(config, config_options)
    acl_path = None if acl_file is None else os.fspath(acl_file)
    crochet.setup()

    def run(function: Callable[[], Any]) -> Any:
        return crochet.run_in_reactor(function)().wait(max(timeout, _STOP_WAIT))

    # Touched in the reactor thread only, so that a start given up on is always stopped:
    # by abandon() if it started already, else as soon as it starts.
    state: dict[str, Any] = {"abandoned": False, "running": None}

    @crochet.run_in_reactor
    def start() -> Deferred[RunningBroker]:
        from twisted.internet import reactor

        def keep(running: RunningBroker) -> RunningBroker:
            if state["abandoned"]:
                running._stop()
            state["running"] = running
            return running

        return _start(reactor, store, broker_config, port, run, acl_path).addCallback(keep)

    @crochet.run_in_reactor
    def abandon() -> None:
        state["abandoned"] = True
        if state["running"] is not None:
            state["running"]._stop()

    try:
        running = cast("RunningBroker", start().wait(timeout))
    except crochet.TimeoutError:
        abandon()
        raise
    return running
