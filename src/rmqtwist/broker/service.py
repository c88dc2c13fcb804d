"""Assembling the dev broker: the processors on a remoting server factory, and
``BrokerService``, which starts the store before listening (then registers with the
``name_server`` given, if any) and, on stop, unregisters, answers held pulls, stops the
server gracefully, saves offsets and closes the store."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.acl import AclFile, AclServerHook
from rmqtwist.broker.admin import AdminProcessor, RefusedProcessor
from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.core import Broker
from rmqtwist.broker.delay import DelayScheduler
from rmqtwist.broker.lock_processor import LockProcessor
from rmqtwist.broker.manage import ClientChannelListener, ClientManageProcessor
from rmqtwist.broker.offset_processor import OffsetProcessor
from rmqtwist.broker.processors import BrokerProcessor
from rmqtwist.broker.pull import PullProcessor
from rmqtwist.broker.registrar import BrokerRegistrar
from rmqtwist.broker.registry import BrokerRegistry, RegistryChannelListener, RegistryProcessor
from rmqtwist.broker.retry import RetryProcessor
from rmqtwist.broker.routes import RouteProcessor
from rmqtwist.broker.send import SendProcessor
from rmqtwist.broker.store import MemoryStore
from rmqtwist.broker.transactions import TransactionChecker, TransactionProcessor
from rmqtwist.framing import format_address
from rmqtwist.routing import split_addresses
from rmqtwist.server import RemotingServer, RemotingServerFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from rmqtwist.broker.store import IMessageStore

__all__ = ["BrokerService", "install_broker"]

_log = Logger()

_CLIENT_SCAN_INTERVAL = 10.0
#: How often registered brokers past their expiry are dropped (and logged) when nobody
#: asks for a route (Apache's name server scans every 10 s).
_BROKER_SCAN_INTERVAL = 10.0


def install_broker(
    factory: RemotingServerFactory, broker: Broker, registry: BrokerRegistry | None = None
) -> TransactionChecker:
    """Register every broker processor and the connection listeners on ``factory``;
    ``registry`` holds the brokers registering with this one (default: a new one)."""
    checker = TransactionChecker(broker)
    if registry is None:
        registry = BrokerRegistry(
            broker.clock.seconds, broker.config.broker_name, broker.config.broker_expiry
        )
    processors: list[BrokerProcessor] = [
        RouteProcessor(broker, registry),
        RegistryProcessor(broker, registry),
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
    factory.register_listener(RegistryChannelListener(registry, lambda: broker.stopping))
    return checker


class BrokerService(Service):
    """The dev broker as a Twisted service: store, broker state, timers and the listening
    remoting server (given, or made here listening on ``listen``). With ``acl_file`` (an
    Apache ``plain_acl.yml``), every request, name-server ones included, is checked by
    an :class:`~rmqtwist.acl.AclServerHook` (before any other hook)."""

    def __init__(
        self,
        config: BrokerConfig | None = None,
        store: IMessageStore | None = None,
        *,
        reactor: Any = None,
        listen: Iterable[str] = ("tcp:10911:interface=127.0.0.1",),
        server_class: type[RemotingServer] = RemotingServer,
        shutdown_timeout: float = 30.0,
        acl_file: str | None = None,
        **factory_options: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.store: IMessageStore = store if store is not None else MemoryStore()
        self.broker = Broker(self.store, config, reactor)
        self.factory = RemotingServerFactory(reactor=reactor, **factory_options)
        config = self.broker.config
        #: The brokers registered with this one's name-server role.
        self.registry = BrokerRegistry(reactor.seconds, config.broker_name, config.broker_expiry)
        #: The ACL file every request is checked against (None: no ACL), read now
        #: (AclConfigError for one that cannot be used) and again when it changes.
        self.acl: AclFile | None = None
        if acl_file is not None:
            self.acl = AclFile(acl_file, reactor)
            self.factory.register_rpc_hook(AclServerHook(self.acl))
        self.checker = install_broker(self.factory, self.broker, self.registry)
        #: Registers this broker with ``config.name_server`` once started (None: nowhere).
        self.registrar: BrokerRegistrar | None = None
        self.delays = DelayScheduler(self.broker)
        self.broker.delay_wake = self.delays.wake
        self.server = server_class(self.factory, shutdown_timeout=shutdown_timeout)
        for endpoint in listen:
            self.server.listen(endpoint)
        self._loops: list[LoopingCall] = []
        self._start_outcome: Failure | bool | None = None  # True once started
        self._start_waiters: list[Deferred[None]] = []
        self._start_called = False
        self._stopping = False

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
        if self.acl is not None:
            self.acl.start()
        for interval, work in (
            (self.config.offset_flush_interval, self._save),
            (_CLIENT_SCAN_INTERVAL, self._expire_clients),
            (self.config.transaction_check_interval, self.checker.check),
            (_BROKER_SCAN_INTERVAL, self.registry.expire),
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
        if self.config.name_server:
            await self._register(ports)

    async def _register(self, ports: list[IListeningPort]) -> None:
        name_servers = split_addresses(self.config.name_server or "")
        address = self.broker_address(ports, name_servers[0])
        if address is None:
            _log.error(
                "Not registering with name server {ns}: the broker listens on no TCP port; "
                "give it an advertised address (--advertise)",
                ns=self.config.name_server,
            )
            return
        if self._stopping:
            return
        self.registrar = BrokerRegistrar(
            self.broker,
            name_servers,
            address,
            credentials=self.config.name_server_credentials,
        )
        await self.registrar.start()

    def broker_address(self, ports: list[IListeningPort], name_server: str) -> str | None:
        """The ``host:port`` this broker registers with name servers: ``advertise``, else
        its first TCP port; on a wildcard interface, the local IP that reaches
        ``name_server`` (as Apache's broker picks its ``brokerIP1``)."""
        if self.config.advertise:
            return self.config.advertise
        for port in ports:
            host = getattr(port.getHost(), "host", None)
            number = getattr(port.getHost(), "port", None)
            if host is None or number is None:
                continue
            if host in ("0.0.0.0", "::", ""):
                host = _local_ip_towards(name_server, "::" if host == "::" else "0.0.0.0")
            return f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
        return None

    def _announce(self, ports: list[IListeningPort]) -> None:
        config = self.config
        for port in ports:
            address = format_address(port.getHost())
            shown = config.advertise or address
            if config.name_server:
                _log.info(
                    "rmqtwist dev broker {broker} (cluster {cluster}) listening on {address}; "
                    "it registers with name server {ns}: give clients that address (or "
                    "{shown}, where it is a name server for itself and the brokers "
                    "registered with it)",
                    broker=config.broker_name,
                    cluster=config.cluster_name,
                    address=address,
                    ns=config.name_server,
                    shown=shown,
                )
                continue
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
        self._stopping = True
        if self._start_called and self._start_outcome is None:  # still opening the store
            with contextlib.suppress(Exception):
                await self.when_started()
        if self.registrar is not None:  # first, so that routes stop naming this broker
            await self.registrar.stop()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self.acl is not None:
            self.acl.stop()
        broker.pulls.release_all()
        try:
            await self.server.stopService()
        finally:
            self.delays.stop()
            try:
                broker.offsets.save()
            finally:
                await self.store.stop()


def _local_ip_towards(name_server: str, wildcard: str) -> str:
    """The local IP address the system would use to reach ``name_server`` (a UDP
    ``connect`` sends nothing); 127.0.0.1 if that cannot be told."""
    host, _, port = name_server.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if wildcard == "::" and ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, int(port)))
            local: str = probe.getsockname()[0]
            return local
    except (OSError, ValueError) as e:
        _log.warn(
            "Cannot tell which local address reaches name server {ns} ({error}); "
            "registering as 127.0.0.1: give --advertise",
            ns=name_server,
            error=e,
        )
        return "127.0.0.1"
