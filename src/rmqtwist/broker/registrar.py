"""The dev broker registering itself with other name servers (``--name-server``), as
Apache's broker does (``BrokerOuterAPI.registerBrokerAll``): REGISTER_BROKER (103) to
every name server at start, every 30 s and soon after its topics change, with its whole
topic table and a :class:`~rmqtwist.broker.registry.DataVersion` that moves when the
topics do; UNREGISTER_BROKER (104) to each on a clean stop.

A name server that cannot be reached or refuses is logged (the first failure, then at
most every few minutes while it lasts, and the recovery) and tried again next round; it
never stops the broker. The name server is another dev broker or Apache's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.acl import AclClientHook
from rmqtwist.broker.registry import (
    MASTER_ID,
    DataVersion,
    RegisterBrokerBody,
    RegisterBrokerRequestHeader,
    UnRegisterBrokerRequestHeader,
    body_crc32,
    encode_register_body,
)
from rmqtwist.broker.topics import TEMPLATE_TOPIC
from rmqtwist.client import ClientConfig, RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode, Version

if TYPE_CHECKING:
    from rmqtwist.acl import Credentials
    from rmqtwist.broker.core import Broker
    from rmqtwist.broker.topics import TopicConfig
    from rmqtwist.command import RemotingCommand

__all__ = ["BrokerRegistrar"]

_log = Logger()

#: The version REGISTER_BROKER is sent with: a 4.9.8 broker's (a 5.x name server reads
#: the zlib body's static-topic section only from 5.0.0 on, and this body has none).
_VERSION = int(Version.V4_9_8)
#: How long UNREGISTER_BROKER may take per name server (Apache's: 3 s).
_UNREGISTER_TIMEOUT = 3.0
#: While a name server keeps failing, its failure is logged at most this often.
_LOG_EVERY = 300.0

#: The own client's settings: a name server that was down is tried again at each round
#: (30 s apart) rather than after a connect backoff of up to a minute.
_CLIENT_CONFIG = ClientConfig(backoff_max=5.0, breaker_reset_timeout=5.0)

_Fingerprint = tuple[tuple[str, int, int, int, int, bool, str], ...]


@dataclasses.dataclass(slots=True)
class _State:
    """How registering with one name server goes."""

    registered: bool = False
    failures: int = 0
    last_logged: float | None = None
    last_error: str = ""


def _fingerprint(topics: Iterable[TopicConfig]) -> _Fingerprint:
    return tuple(
        sorted(
            (
                t.name,
                t.read_queue_nums,
                t.write_queue_nums,
                t.perm,
                t.topic_sys_flag,
                t.order,
                t.filter_type,
            )
            for t in topics
        )
    )


class BrokerRegistrar:
    """Registers ``broker`` at ``address`` with ``name_servers``.

    ``client`` is the :class:`~rmqtwist.client.RemotingClient` to use (default: one of
    its own, closed by :meth:`stop`). With ``credentials``
    (:class:`~rmqtwist.acl.Credentials`) its own client signs every request, for a name
    server that checks an ACL; a given ``client`` is used as it is. The interval,
    timeout and body form come from the broker's
    :class:`~rmqtwist.broker.config.BrokerConfig`; ``check_interval`` is how often the
    topics are looked at for a change that registers at once.
    """

    def __init__(
        self,
        broker: Broker,
        name_servers: Iterable[str],
        address: str,
        *,
        client: RemotingClient | None = None,
        credentials: Credentials | None = None,
        check_interval: float = 1.0,
    ) -> None:
        if client is not None and credentials is not None:
            raise ValueError(
                "give credentials or a client, not both: register an AclClientHook on "
                "the client instead"
            )
        self.broker = broker
        self.name_servers = list(name_servers)
        self.address = address
        self._own_client = client is None
        self.client = (
            client if client is not None else RemotingClient(broker.reactor, _CLIENT_CONFIG)
        )
        if credentials is not None:
            self.client.register_rpc_hook(AclClientHook(credentials))
        self.check_interval = check_interval
        self.data_version = DataVersion(broker.now_ms(), 0)
        self._fingerprint: _Fingerprint | None = None
        self._states = {address: _State() for address in self.name_servers}
        self._loops: list[LoopingCall] = []
        self._round: Deferred[None] | None = None
        self._again = False
        self._next_waiters: list[Deferred[None]] = []
        self._stopped = False

    # -- state ----------------------------------------------------------------------------

    def registered(self, name_server: str) -> bool:
        """True when the last registration with ``name_server`` succeeded."""
        return self._states[name_server].registered

    def _topics(self) -> dict[str, TopicConfig]:
        """The topics registered: all of them, system ones too, as Apache's broker; but
        not TBW102 when topics are not created on first send (Apache's broker has no
        TBW102 then), so that producers do not fall back to this broker for new topics."""
        auto_create = self.broker.config.auto_create_topic
        return {
            topic.name: topic
            for topic in self.broker.topics
            if auto_create or topic.name != TEMPLATE_TOPIC
        }

    def _refresh_version(self) -> dict[str, TopicConfig]:
        topics = self._topics()
        fingerprint = _fingerprint(topics.values())
        if fingerprint != self._fingerprint:
            if self._fingerprint is not None:
                self.data_version = self.data_version.next(self.broker.now_ms())
            self._fingerprint = fingerprint
        return topics

    def _request(self, topics: dict[str, TopicConfig]) -> RemotingCommand:
        config = self.broker.config
        compressed = config.register_compressed
        body = encode_register_body(
            RegisterBrokerBody(self.data_version, topics), compressed=compressed
        )
        header = RegisterBrokerRequestHeader(
            broker_name=config.broker_name,
            broker_addr=self.address,
            cluster_name=config.cluster_name,
            ha_server_addr=self.address,
            broker_id=MASTER_ID,
            compressed=compressed,
            body_crc32=body_crc32(body),
        )
        return header.to_request(RequestCode.REGISTER_BROKER, body, version=_VERSION)

    # -- running --------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Register now, then every ``register_interval`` and on topic changes; fires
        (never fails) once the first round is over, whatever its outcome."""
        clock = self.broker.reactor
        for interval, work in (
            (self.broker.config.register_interval, self.register_all),
            (self.check_interval, self._check_topics),
        ):
            loop = LoopingCall(work)
            loop.clock = clock
            loop.start(interval, now=False).addErrback(
                lambda failure: _log.failure("The name server registration timer failed", failure)
            )
            self._loops.append(loop)
        return self.register_all()

    def _check_topics(self) -> None:
        if _fingerprint(self._topics().values()) != self._fingerprint:
            self.register_all()

    def register_all(self) -> Deferred[None]:
        """Register with every name server now (after the round in flight, if any);
        fires once each answered or failed."""
        if self._stopped:
            return succeed(None)
        if self._round is not None:
            self._again = True
            waiter: Deferred[None] = Deferred()
            self._next_waiters.append(waiter)
            return waiter
        return self._start_round()

    def _start_round(self) -> Deferred[None]:
        topics = self._refresh_version()
        calls = [
            self.client.invoke(
                address, self._request(topics), self.broker.config.register_timeout
            ).addCallbacks(
                self._answered, self._failed, callbackArgs=(address,), errbackArgs=(address,)
            )
            for address in self.name_servers
        ]
        round_: Deferred[None] = DeferredList(calls, consumeErrors=True).addBoth(lambda _: None)
        self._round = round_
        round_.addBoth(self._round_over)
        return round_

    def _round_over(self, _: object) -> None:
        self._round = None
        waiters, self._next_waiters = self._next_waiters, []
        if self._again and not self._stopped:
            self._again = False
            self._start_round().addBoth(self._release, waiters)
            return
        for waiter in waiters:
            waiter.callback(None)

    @staticmethod
    def _release(_: object, waiters: list[Deferred[None]]) -> None:
        for waiter in waiters:
            waiter.callback(None)

    def _answered(self, response: RemotingCommand, address: str) -> None:
        if response.code != ResponseCode.SUCCESS:
            remark = " ".join((response.remark or "").split()) or "no remark"
            self._note_failure(address, f"it answered code {response.code}: {remark}", refused=True)
            return
        state = self._states[address]
        if not state.registered:
            if state.failures:
                _log.info(
                    "Registered broker {name} ({address}) with name server {ns} again, after "
                    "{failures} failed tries",
                    name=self.broker.config.broker_name,
                    address=self.address,
                    ns=address,
                    failures=state.failures,
                )
            else:
                _log.info(
                    "Registered broker {name} ({address}) with name server {ns}",
                    name=self.broker.config.broker_name,
                    address=self.address,
                    ns=address,
                )
        state.registered = True
        state.failures = 0
        state.last_logged = None
        state.last_error = ""

    def _failed(self, failure: Failure, address: str) -> None:
        self._note_failure(address, " ".join(failure.getErrorMessage().split()))

    def _note_failure(self, address: str, error: str, refused: bool = False) -> None:
        state = self._states[address]
        state.registered = False
        state.failures += 1
        now = self.broker.clock.seconds()
        if (
            error == state.last_error
            and state.last_logged is not None
            and now - state.last_logged < _LOG_EVERY
        ):
            return
        state.last_logged = now
        state.last_error = error
        (_log.error if refused else _log.warn)(
            "Could not register broker {name} ({address}) with name server {ns} "
            "({failures} failed tries so far; trying again every {interval:g} s): {error}",
            name=self.broker.config.broker_name,
            address=self.address,
            ns=address,
            failures=state.failures,
            interval=self.broker.config.register_interval,
            error=error,
        )

    def stop(self) -> Deferred[None]:
        """Stop registering and send UNREGISTER_BROKER to every name server; fires (never
        fails) once each answered or failed, and the own client is closed."""
        self._stopped = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        config = self.broker.config
        header = UnRegisterBrokerRequestHeader(
            broker_name=config.broker_name,
            broker_addr=self.address,
            cluster_name=config.cluster_name,
            broker_id=MASTER_ID,
        )
        calls = [
            self.client.invoke(
                address,
                header.to_request(RequestCode.UNREGISTER_BROKER, version=_VERSION),
                _UNREGISTER_TIMEOUT,
            ).addCallbacks(
                self._unregistered,
                self._unregister_failed,
                callbackArgs=(address,),
                errbackArgs=(address,),
            )
            for address in self.name_servers
        ]
        done: Deferred[Any] = DeferredList(calls, consumeErrors=True)
        if self._own_client:
            done.addBoth(lambda _: self.client.close())
        return done.addBoth(lambda _: None)

    def _unregistered(self, response: RemotingCommand, address: str) -> None:
        self._states[address].registered = False
        if response.code != ResponseCode.SUCCESS:
            _log.warn(
                "Name server {ns} answered UNREGISTER_BROKER with code {code}: {remark}",
                ns=address,
                code=response.code,
                remark=response.remark,
            )
            return
        _log.info(
            "Unregistered broker {name} ({address}) from name server {ns}",
            name=self.broker.config.broker_name,
            address=self.address,
            ns=address,
        )

    def _unregister_failed(self, failure: Failure, address: str) -> None:
        _log.warn(
            "Could not unregister broker {name} from name server {ns}: {error}",
            name=self.broker.config.broker_name,
            ns=address,
            error=" ".join(failure.getErrorMessage().split()),
        )
