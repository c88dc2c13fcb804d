"""Assembling the dev broker: the processors on a remoting server factory, and
``BrokerService``, which starts the store before listening and, on stop, answers held
pulls, stops the server gracefully, saves offsets and closes the store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.broker.admin import AdminProcessor, RefusedProcessor
from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.core import Broker
from rmqtwist.broker.delay import DelayScheduler
from rmqtwist.broker.lock_processor import LockProcessor
from rmqtwist.broker.manage import ClientChannelListener, ClientManageProcessor
from rmqtwist.broker.offset_processor import OffsetProcessor
from rmqtwist.broker.processors import BrokerProcessor
from rmqtwist.broker.pull import PullProcessor
from rmqtwist.broker.retry import RetryProcessor
from rmqtwist.broker.routes import RouteProcessor
from rmqtwist.broker.send import SendProcessor
from rmqtwist.broker.store import MemoryStore
from rmqtwist.broker.transactions import TransactionChecker, TransactionProcessor
from rmqtwist.framing import format_address
from rmqtwist.server import RemotingServer, RemotingServerFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from rmqtwist.broker.store import IMessageStore

__all__ = ["BrokerService", "install_broker"]

_log = Logger()

_CLIENT_SCAN_INTERVAL = 10.0


def install_broker(factory: RemotingServerFactory, broker: Broker) -> TransactionChecker:
    """Register every broker processor and the connection listener on ``factory``."""
    checker = TransactionChecker(broker)
    processors: list[BrokerProcessor] = [
        RouteProcessor(broker),
        SendProcessor(broker),
        PullProcessor(broker),
        ClientManageProcessor(broker),
        OffsetProcessor(broker),
        RetryProcessor(broker),
        LockProcessor(broker),
        TransactionProcessor(broker, checker),
        AdminProcessor(broker),
        RefusedProcessor(broker),
    ]
    for processor in processors:
        for code in processor.codes:
            factory.register_processor(code, processor)
    factory.register_listener(ClientChannelListener(broker))
    return checker


class BrokerService(Service):
    """The dev broker as a Twisted service: store, broker state, timers and the listening
    remoting server (given, or made here listening on ``listen``)."""

    def __init__(
        self,
        config: BrokerConfig | None = None,
        store: IMessageStore | None = None,
        *,
        reactor: Any = None,
        listen: Iterable[str] = ("tcp:10911:interface=127.0.0.1",),
        server_class: type[RemotingServer] = RemotingServer,
        shutdown_timeout: float = 30.0,
        **factory_options: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.store: IMessageStore = store if store is not None else MemoryStore()
        self.broker = Broker(self.store, config, reactor)
        self.factory = RemotingServerFactory(reactor=reactor, **factory_options)
        self.checker = install_broker(self.factory, self.broker)
        self.delays = DelayScheduler(self.broker)
        self.broker.delay_wake = self.delays.wake
        self.server = server_class(self.factory, shutdown_timeout=shutdown_timeout)
        for endpoint in listen:
            self.server.listen(endpoint)
        self._loops: list[LoopingCall] = []
        self._start_outcome: Failure | bool | None = None  # True once started
        self._start_waiters: list[Deferred[None]] = []
        self._start_called = False

    @property
    def config(self) -> BrokerConfig:
        return self.broker.config

    def privilegedStartService(self) -> None:
        # Bind now (before twistd drops privileges, and so a busy port ends `twist` at
        # once), but refuse connections until the store is open and loaded.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self.server.privilegedStartService()
        self.factory.accepting = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._start_called = True
        # Listen now, outside any Deferred, so that a port that cannot be listened on
        # ends `twist` at once (the command-line server exits); connections are refused
        # until the store is open and loaded.
        self.server.startService()
        self.factory.accepting = False
        ensureDeferred(self._start()).addCallbacks(self._start_done, self._start_failed)

    def _start_done(self, _: object) -> None:
        self._start_outcome = True
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _start_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, CannotListenError):  # the listener logged it, in a line
            _log.error("The broker failed to start: {error}", error=failure.getErrorMessage())
        else:
            _log.failure("The broker failed to start", failure)
        self._start_outcome = failure
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    async def _start(self) -> None:
        await self.store.start()
        self.broker.load()
        self.checker.load()
        self.delays.start()
        for interval, work in (
            (self.config.offset_flush_interval, self._save),
            (_CLIENT_SCAN_INTERVAL, self._expire_clients),
            (self.config.transaction_check_interval, self.checker.check),
        ):
            loop = LoopingCall(work)
            loop.clock = self.reactor
            loop.start(interval, now=False).addErrback(
                lambda failure: _log.failure("A broker timer failed", failure)
            )
            self._loops.append(loop)
        self.factory.accepting = True
        ports = await self.server.when_listening()
        self._announce(ports)

    def _announce(self, ports: list[IListeningPort]) -> None:
        config = self.config
        for port in ports:
            address = format_address(port.getHost())
            shown = config.advertise or address
            _log.info(
                "rmqtwist dev broker {broker} (cluster {cluster}) listening on {address}: "
                "name server and broker on one port; give clients the name server address "
                "{shown}",
                broker=config.broker_name,
                cluster=config.cluster_name,
                address=address,
                shown=shown,
            )

    def when_started(self) -> Deferred[None]:
        """Fires once the store is open and the server listens (errbacks if not)."""
        outcome = self._start_outcome
        if outcome is True:
            return succeed(None)
        if isinstance(outcome, Failure):
            return fail(outcome)
        waiter: Deferred[None] = Deferred()
        self._start_waiters.append(waiter)
        return waiter

    def _save(self) -> None:
        self.broker.offsets.save_if_dirty()
        self.delays.save_if_dirty()

    def _expire_clients(self) -> None:
        cutoff = self.reactor.seconds() - self.config.client_expiry
        for info in self.broker.clients.expire(cutoff):
            _log.info(
                "Dropping client {client} at {peer}: no heartbeat for {seconds:.0f} s",
                client=info.client_id,
                peer=info.channel.remote_address,
                seconds=self.config.client_expiry,
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        broker = self.broker
        broker.stopping = True
        if self._start_called and self._start_outcome is None:  # still opening the store
            with contextlib.suppress(Exception):
                await self.when_started()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        broker.pulls.release_all()
        try:
            await self.server.stopService()
        finally:
            self.delays.stop()
            try:
                broker.offsets.save()
            finally:
                await self.store.stop()
