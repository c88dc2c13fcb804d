"""Brokers registering with the dev broker's name-server role, as with Apache's name server.

Other brokers (Apache's, or dev brokers started with ``--name-server``) send
REGISTER_BROKER (103) every 30 s with their topics and UNREGISTER_BROKER (104) when they
stop; :class:`BrokerRegistry` keeps what they said the way Apache's ``RouteInfoManager``
does, and the route, cluster-info and topic-list answers (:mod:`rmqtwist.broker.routes`)
are the union of this broker's own topics and theirs. A broker not heard from for 120 s
(Apache's ``BROKER_CHANNEL_EXPIRED_TIME``), or whose registering connection closes, is
dropped with its queues. QUERY_DATA_VERSION (322), which Apache's brokers send first when
``forceRegister`` is off, is answered too, and counts as a registration when nothing
changed.

As in Apache's name server, a registration merges: a topic the broker no longer lists
keeps its queues here until the broker goes (Apache 5.x can delete them with
``deleteTopicWithBrokerRegistration``, off by default). Unlike Apache's, a second broker
registering a broker name (and id) that a live broker at another address holds is refused
with a one-line error rather than taking the name over, since two dev brokers started
with the default name would otherwise take turns in every route; and the name of this
broker itself is refused for the same reason.

The wire formats (Apache 4.9.x ``RegisterBrokerRequestHeader``, ``RegisterBrokerBody``,
``TopicConfigSerializeWrapper``, ``DataVersion``, ``TopicConfig.encode``) are
:class:`RegisterBrokerRequestHeader`, :func:`encode_register_body` and
:func:`decode_register_body` here; :mod:`rmqtwist.broker.registrar` sends them.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.logger import Logger
from zope.interface import implementer

from rmqtwist._logsafe import clip
from rmqtwist.broker._json import dumps
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.broker.topics import PERM_READ, PERM_WRITE, TopicConfig
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.errors import BodyError
from rmqtwist.headers import CommandHeader, JavaInt, JavaLong, wire
from rmqtwist.interfaces import IChannelEventListener

if TYPE_CHECKING:
    from rmqtwist.broker.core import Broker
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IChannel, IRequestContext

__all__ = [
    "BROKER_EXPIRY",
    "MASTER_ID",
    "BrokerData",
    "BrokerRegistry",
    "DataVersion",
    "QueryDataVersionRequestHeader",
    "QueryDataVersionResponseHeader",
    "QueueData",
    "RegisterBrokerBody",
    "RegisterBrokerRequestHeader",
    "RegisterBrokerResponseHeader",
    "RegisterResult",
    "RegistryChannelListener",
    "RegistryConflict",
    "RegistryProcessor",
    "UnRegisterBrokerRequestHeader",
    "body_crc32",
    "decode_register_body",
    "encode_register_body",
]

_log = Logger()

#: Seconds a registered broker stays without registering again (Apache's
#: ``BROKER_CHANNEL_EXPIRED_TIME``, 2 minutes).
BROKER_EXPIRY = 120.0
#: The broker id of a master (Apache's ``MixAll.MASTER_ID``).
MASTER_ID = 0

_INT = struct.Struct(">i")


# --- headers (Apache 4.9.x common/protocol/header/namesrv; 5.x remoting/protocol/header) --


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterBrokerRequestHeader(CommandHeader):
    """REGISTER_BROKER (103), broker -> name server (Java ``RegisterBrokerRequestHeader``)."""

    broker_name: str
    #: ``ip:port`` clients reach the broker at.
    broker_addr: str
    cluster_name: str
    #: Where slaves replicate from (``ip:haPort``); unused by a dev broker but required.
    ha_server_addr: str
    #: 0 for a master, above 0 for a slave.
    broker_id: JavaLong
    #: 5.x: the broker's own expiry instead of 120 s.
    heartbeat_timeout_millis: JavaLong | None = None
    #: 5.x: slave acting master.
    enable_acting_master: bool | None = None
    #: Java primitive ``boolean``: the body is in the zlib form (:func:`encode_register_body`).
    compressed: bool = field(default=False, metadata=wire(required=False))
    #: CRC32 of the body, masked to 31 bits as ``UtilAll.crc32``; 0: not checked.
    body_crc32: JavaInt = field(default=0, metadata=wire(required=False))


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterBrokerResponseHeader(CommandHeader):
    """The answer to REGISTER_BROKER: for a slave, its master's addresses (Java
    ``RegisterBrokerResponseHeader``; both absent for a master)."""

    ha_server_addr: str | None = None
    master_addr: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnRegisterBrokerRequestHeader(CommandHeader):
    """UNREGISTER_BROKER (104), broker -> name server on a clean stop (Java
    ``UnRegisterBrokerRequestHeader``)."""

    broker_name: str
    broker_addr: str
    cluster_name: str
    broker_id: JavaLong


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryDataVersionRequestHeader(CommandHeader):
    """QUERY_DATA_VERSION (322), broker -> name server, body = its DataVersion JSON: an
    Apache broker with ``forceRegister=false`` asks it every round and registers only
    when the name server's version differs (Java ``QueryDataVersionRequestHeader``)."""

    broker_name: str
    broker_addr: str
    cluster_name: str
    broker_id: JavaLong


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryDataVersionResponseHeader(CommandHeader):
    """The answer to QUERY_DATA_VERSION; the body is the name server's version, if any."""

    changed: bool


# --- the body ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataVersion:
    """A broker's topic-table version (Java ``DataVersion``): it changes whenever the
    broker's topics do, and a name server re-reads the topics only when it changed."""

    timestamp: int = 0
    counter: int = 0

    def to_json(self) -> dict[str, int]:
        return {"counter": self.counter, "timestamp": self.timestamp}

    @classmethod
    def from_json(cls, data: object) -> DataVersion:
        if not isinstance(data, Mapping):
            raise BodyError(f"dataVersion must be an object, not {data!r:.60}")
        try:
            return cls(int(data.get("timestamp", 0)), int(data.get("counter", 0)))
        except (TypeError, ValueError):
            raise BodyError(
                f"dataVersion holds a value that is not a number: {data!r:.80}"
            ) from None

    def next(self, now_ms: int) -> DataVersion:
        """The version after a change at ``now_ms`` (Java ``nextVersion``)."""
        return DataVersion(now_ms, self.counter + 1)


@dataclass(frozen=True, slots=True)
class RegisterBrokerBody:
    """What a broker registers: its topics and their version (Java ``RegisterBrokerBody``
    holding a ``TopicConfigSerializeWrapper``), and its filter servers (always empty)."""

    data_version: DataVersion = DataVersion()
    topics: Mapping[str, TopicConfig] = field(default_factory=dict)
    filter_servers: tuple[str, ...] = ()


def _topic_json(topic: TopicConfig) -> dict[str, Any]:
    # fastjson writes TopicConfig's getters: topicName, the queue counts, perm,
    # topicFilterType, topicSysFlag and order, keys sorted.
    return {"topicName": topic.name, **topic.to_json()}


def _topic_line(topic: TopicConfig) -> str:
    # Java TopicConfig.encode(): five fields separated by one space (5.x appends a sixth,
    # the attributes as JSON).
    return (
        f"{topic.name} {topic.read_queue_nums} {topic.write_queue_nums} {topic.perm} "
        f"{topic.filter_type}"
    )


def _parse_topic_line(line: str) -> TopicConfig:
    parts = line.split(" ")
    while parts and parts[-1] == "":  # Java's split drops trailing empty strings
        parts.pop()
    if len(parts) < 5:
        raise BodyError(f"a topic config line needs 5 fields, got {line!r:.80}")
    try:
        return TopicConfig(
            parts[0],
            read_queue_nums=int(parts[1]),
            write_queue_nums=int(parts[2]),
            perm=int(parts[3]),
            filter_type=parts[4],
        )
    except ValueError:
        raise BodyError(f"a topic config line holds a bad number: {line!r:.80}") from None


def encode_register_body(body: RegisterBrokerBody, *, compressed: bool = False) -> bytes:
    """``body`` as Apache's broker sends it: JSON, or (``compressed``, Apache's
    ``compressedRegister``) a zlib stream (level 9) of big-endian int32-length-prefixed
    parts: the data version JSON, the topic count, one ``TopicConfig.encode()`` line per
    topic, and the filter server list JSON. The zlib form loses ``topicSysFlag`` and
    ``order``, as Apache's does."""
    if not compressed:
        return dumps(
            {
                "filterServerList": list(body.filter_servers),
                "topicConfigSerializeWrapper": {
                    "dataVersion": body.data_version.to_json(),
                    "topicConfigTable": {
                        name: _topic_json(topic) for name, topic in body.topics.items()
                    },
                },
            }
        )
    parts = [dumps(body.data_version.to_json())]
    out = bytearray(_INT.pack(len(parts[0])) + parts[0])
    out += _INT.pack(len(body.topics))
    for topic in body.topics.values():
        line = _topic_line(topic).encode("utf-8")
        out += _INT.pack(len(line)) + line
    servers = dumps(list(body.filter_servers))
    out += _INT.pack(len(servers)) + servers
    return zlib.compress(bytes(out), 9)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int, what: str) -> bytes:
        end = self.offset + count
        if count < 0 or end > len(self.data):
            raise BodyError(
                f"the compressed register body ends inside {what} "
                f"({len(self.data) - self.offset} of {count} bytes left)"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def int(self, what: str) -> int:
        value: int = _INT.unpack(self.take(4, what))[0]
        return value

    def part(self, what: str) -> bytes:
        return self.take(self.int(f"the length of {what}"), what)


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BodyError(f"{what} is not valid JSON: {e}") from None


def _topic_from_json(name: str, data: object) -> TopicConfig:
    if not isinstance(data, dict):
        raise BodyError(f"the config of topic {name!r} must be an object")
    try:
        return TopicConfig.from_json(str(data.get("topicName") or name), data)
    except (KeyError, TypeError, ValueError) as e:
        raise BodyError(f"the config of topic {name!r} is not usable: {e!r}") from None


def decode_register_body(data: bytes, *, compressed: bool = False) -> RegisterBrokerBody:
    """A REGISTER_BROKER body in either form (see :func:`encode_register_body`);
    :class:`~rmqtwist.errors.BodyError` when it is not one. What follows the filter
    server list in the zlib form (5.x's static-topic mappings) is ignored."""
    if compressed:
        try:
            plain = zlib.decompress(data)
        except zlib.error as e:
            raise BodyError(f"the compressed register body is not a zlib stream: {e}") from None
        reader = _Reader(plain)
        version = DataVersion.from_json(_json(reader.part("the data version"), "dataVersion"))
        count = reader.int("the topic count")
        topics: dict[str, TopicConfig] = {}
        for _ in range(max(count, 0)):
            topic = _parse_topic_line(reader.part("a topic config").decode("utf-8", "replace"))
            topics[topic.name] = topic
        servers = _json(reader.part("the filter server list"), "filterServerList")
        return RegisterBrokerBody(version, topics, _servers(servers))
    value = _json(data, "the register body")
    if not isinstance(value, dict):
        raise BodyError("the register body must be a JSON object")
    wrapper = value.get("topicConfigSerializeWrapper") or {}
    if not isinstance(wrapper, dict):
        raise BodyError("topicConfigSerializeWrapper must be an object")
    table = wrapper.get("topicConfigTable") or {}
    if not isinstance(table, dict):
        raise BodyError("topicConfigTable must be an object")
    topics = {}
    for name, config in table.items():
        topic = _topic_from_json(str(name), config)
        topics[topic.name] = topic
    version = DataVersion.from_json(wrapper.get("dataVersion") or {})
    return RegisterBrokerBody(version, topics, _servers(value.get("filterServerList")))


def _servers(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(server) for server in value)


def body_crc32(body: bytes) -> int:
    """The ``bodyCrc32`` of ``body``: CRC32 masked to 31 bits (Java ``UtilAll.crc32``)."""
    return zlib.crc32(body) & 0x7FFFFFFF


# --- the name server's tables -----------------------------------------------------------


@dataclass(slots=True)
class BrokerData:
    """One broker name: its cluster and its addresses by broker id (Java ``BrokerData``)."""

    cluster: str
    broker_name: str
    addresses: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "brokerAddrs": {str(i): a for i, a in sorted(self.addresses.items())},
            "brokerName": self.broker_name,
            "cluster": self.cluster,
        }


@dataclass(frozen=True, slots=True)
class QueueData:
    """A topic's queues on one broker name (Java ``QueueData``), plus its ``order`` flag
    (known only from a JSON registration) for ``orderTopicConf``."""

    broker_name: str
    read_queue_nums: int
    write_queue_nums: int
    perm: int = PERM_READ | PERM_WRITE
    topic_sys_flag: int = 0
    order: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "brokerName": self.broker_name,
            "perm": self.perm,
            "readQueueNums": self.read_queue_nums,
            "topicSysFlag": self.topic_sys_flag,
            "writeQueueNums": self.write_queue_nums,
        }


@dataclass(slots=True)
class _Live:
    """One registered address (Java ``BrokerLiveInfo``)."""

    broker_name: str
    broker_id: int
    cluster: str
    last_update: float
    expiry: float
    data_version: DataVersion
    channel: IChannel | None
    ha_server_addr: str


class RegistryConflict(Exception):
    """A registration refused: the broker name is taken (the message says how to fix it)."""


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """What a registration answers: for a slave, its master's HA and broker addresses."""

    ha_server_addr: str | None = None
    master_addr: str | None = None


class BrokerRegistry:
    """The brokers registered with this name server (Apache's ``RouteInfoManager``).

    ``seconds`` is the clock; ``own_name`` the name of the broker this name server is
    (refused to others). Reads drop expired brokers first, so a broker silent for
    ``expiry`` seconds is gone from the next answer.
    """

    def __init__(
        self,
        seconds: Callable[[], float],
        own_name: str | None = None,
        expiry: float = BROKER_EXPIRY,
    ) -> None:
        self._seconds = seconds
        self.own_name = own_name
        self.expiry = expiry
        #: cluster name -> broker names
        self.clusters: dict[str, set[str]] = {}
        #: broker name -> its addresses
        self.brokers: dict[str, BrokerData] = {}
        #: topic -> broker name -> queues
        self.topic_queues: dict[str, dict[str, QueueData]] = {}
        #: broker address -> liveness
        self._live: dict[str, _Live] = {}

    # -- changes ------------------------------------------------------------------------

    def register(
        self,
        header: RegisterBrokerRequestHeader,
        body: RegisterBrokerBody | None,
        channel: IChannel | None = None,
    ) -> RegisterResult:
        """Record a REGISTER_BROKER; :class:`RegistryConflict` when the name is taken."""
        self.expire()
        name, address, broker_id = header.broker_name, header.broker_addr, header.broker_id
        if not name or not address:
            raise RegistryConflict("REGISTER_BROKER needs a brokerName and a brokerAddr")
        if name == self.own_name:
            raise RegistryConflict(
                f"broker name {name} is the name of this name server's own broker; start each "
                f"broker with a distinct --broker-name (the one at {address} too)"
            )
        earlier = self._live.get(address)
        if earlier is not None and earlier.broker_name != name:
            # A broker restarted at the same address under another name: the old name
            # would never expire otherwise (liveness is by address).
            self._drop_address(address, f"it registers as {name} now")
        data = self.brokers.get(name)
        if data is not None:
            holder = data.addresses.get(broker_id)
            if holder is not None and holder != address and holder in self._live:
                raise RegistryConflict(
                    f"broker name {name} (id {broker_id}) is registered already by the broker "
                    f"at {holder}, so {address} cannot take it; give each broker a distinct "
                    "--broker-name"
                )
        if body is None:
            body = RegisterBrokerBody()
        self.clusters.setdefault(header.cluster_name, set()).add(name)
        first = data is None
        if data is None:
            data = self.brokers[name] = BrokerData(header.cluster_name, name)
        # The same address has one id only: a slave turning master drops its old id.
        for other_id, other in list(data.addresses.items()):
            if other == address and other_id != broker_id:
                del data.addresses[other_id]
        first = first or data.addresses.get(broker_id) is None
        data.addresses[broker_id] = address
        previous = self._live.get(address)
        changed = previous is None or previous.data_version != body.data_version
        if broker_id == MASTER_ID and (changed or first):
            for topic in body.topics.values():
                self._put_queues(name, topic)
        expiry = self.expiry
        if header.heartbeat_timeout_millis is not None and header.heartbeat_timeout_millis > 0:
            expiry = header.heartbeat_timeout_millis / 1000
        self._live[address] = _Live(
            name,
            broker_id,
            header.cluster_name,
            self._seconds(),
            expiry,
            body.data_version,
            channel,
            header.ha_server_addr,
        )
        if previous is None:
            _log.info(
                "Broker {name} (id {id}, cluster {cluster}) registered at {address} with "
                "{count} topics",
                name=name,
                id=broker_id,
                cluster=header.cluster_name,
                address=address,
                count=len(body.topics),
            )
        if broker_id != MASTER_ID:
            master = data.addresses.get(MASTER_ID)
            live = self._live.get(master) if master is not None else None
            if master is not None and live is not None:
                return RegisterResult(live.ha_server_addr, master)
        return RegisterResult()

    def query_data_version(
        self, address: str, version: DataVersion
    ) -> tuple[bool, DataVersion | None]:
        """QUERY_DATA_VERSION: whether ``version`` differs from what ``address`` last
        registered, and that; an unchanged version counts as a registration (Apache's
        ``queryBrokerTopicConfig``)."""
        self.expire()
        live = self._live.get(address)
        if live is None:
            return True, None
        changed = live.data_version != version
        if not changed:
            live.last_update = self._seconds()
        return changed, live.data_version

    def _put_queues(self, name: str, topic: TopicConfig) -> None:
        self.topic_queues.setdefault(topic.name, {})[name] = QueueData(
            name,
            topic.read_queue_nums,
            topic.write_queue_nums,
            topic.perm,
            topic.topic_sys_flag,
            topic.order,
        )

    def unregister(self, cluster: str, address: str, name: str, broker_id: int) -> bool:
        """Record an UNREGISTER_BROKER; True when the broker was registered."""
        live = self._live.get(address)
        if live is not None and (live.broker_name != name or live.broker_id != broker_id):
            return False  # another broker's address now: not this one's to remove
        self._live.pop(address, None)
        data = self.brokers.get(name)
        if data is None or data.addresses.get(broker_id) != address:
            return live is not None
        del data.addresses[broker_id]
        _log.info(
            "Broker {name} (id {id}) at {address} unregistered",
            name=name,
            id=broker_id,
            address=address,
        )
        if not data.addresses:
            self._drop_name(name, cluster)
        return True

    def _drop_address(self, address: str, why: str) -> None:
        live = self._live.pop(address, None)
        for name, data in list(self.brokers.items()):
            for broker_id, other in list(data.addresses.items()):
                if other != address:
                    continue
                del data.addresses[broker_id]
                _log.warn(
                    "Dropping broker {name} (id {id}) at {address}: {why}",
                    name=name,
                    id=broker_id,
                    address=address,
                    why=why,
                )
                if not data.addresses:
                    self._drop_name(name, live.cluster if live is not None else data.cluster)
                return

    def _drop_name(self, name: str, cluster: str) -> None:
        data = self.brokers.pop(name, None)
        for cluster_name in {cluster, data.cluster if data is not None else cluster}:
            names = self.clusters.get(cluster_name)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.clusters[cluster_name]
        for topic, queues in list(self.topic_queues.items()):
            queues.pop(name, None)
            if not queues:
                del self.topic_queues[topic]

    def expire(self) -> list[str]:
        """Drop the brokers not heard from within their expiry; their addresses."""
        now = self._seconds()
        gone = [a for a, live in self._live.items() if live.last_update + live.expiry < now]
        for address in gone:
            expiry = self._live[address].expiry
            self._drop_address(address, f"no registration for {expiry:g} s")
        return gone

    def channel_closed(self, channel: IChannel) -> None:
        """The connection a broker registered over closed: drop it at once, as Apache's
        name server does."""
        for address, live in list(self._live.items()):
            if live.channel is channel:
                self._drop_address(address, "its connection to this name server closed")

    # -- reads --------------------------------------------------------------------------

    def queues(self, topic: str) -> dict[str, QueueData]:
        """Broker name -> queues of ``topic`` on the registered brokers that have it."""
        self.expire()
        queues = self.topic_queues.get(topic, {})
        return {name: q for name, q in queues.items() if name in self.brokers}

    def topics(self) -> set[str]:
        self.expire()
        return set(self.topic_queues)


# --- the processor ----------------------------------------------------------------------


class RegistryProcessor(BrokerProcessor):
    """Answers REGISTER_BROKER (103), UNREGISTER_BROKER (104) and QUERY_DATA_VERSION (322)
    from ``registry``."""

    handlers: ClassVar[dict[int, str]] = {
        RequestCode.REGISTER_BROKER: "register",
        RequestCode.UNREGISTER_BROKER: "unregister",
        RequestCode.QUERY_DATA_VERSION: "query_data_version",
    }

    def __init__(self, broker: Broker, registry: BrokerRegistry) -> None:
        super().__init__(broker)
        self.registry = registry

    def register(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = RegisterBrokerRequestHeader.from_command(request)
        body = request.body
        if header.body_crc32 != 0 and body_crc32(body) != header.body_crc32:
            _log.warn(
                "REGISTER_BROKER from {peer}: crc32 not match", peer=context.channel.remote_address
            )
            return answer(request, ResponseCode.SYSTEM_ERROR, "crc32 not match")
        decoded = decode_register_body(body, compressed=header.compressed) if body else None
        try:
            result = self.registry.register(header, decoded, context.channel)
        except RegistryConflict as e:
            _log.error(
                "REGISTER_BROKER from {peer} refused: {why}",
                peer=context.channel.remote_address,
                why=clip(str(e)),
            )
            return answer(request, ResponseCode.SYSTEM_ERROR, str(e))
        response = RegisterBrokerResponseHeader(
            ha_server_addr=result.ha_server_addr, master_addr=result.master_addr
        )
        return answer(request, ext_fields=response.to_ext_fields())

    def query_data_version(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        header = QueryDataVersionRequestHeader.from_command(request)
        version = DataVersion.from_json(_json(request.body or b"{}", "the data version"))
        changed, known = self.registry.query_data_version(header.broker_addr, version)
        return answer(
            request,
            ext_fields=QueryDataVersionResponseHeader(changed=changed).to_ext_fields(),
            body=dumps(known.to_json()) if known is not None else b"",
        )

    def unregister(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = UnRegisterBrokerRequestHeader.from_command(request)
        self.registry.unregister(
            header.cluster_name, header.broker_addr, header.broker_name, header.broker_id
        )
        return answer(request)


@implementer(IChannelEventListener)
class RegistryChannelListener:
    """Drops a registered broker as soon as the connection it registered over closes
    (unless this broker is stopping: ``stopping()`` is true)."""

    def __init__(
        self, registry: BrokerRegistry, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        self.registry = registry
        self.stopping = stopping

    def on_connect(self, remote_address: str, channel: IChannel) -> None:
        pass

    def on_close(self, remote_address: str, channel: IChannel) -> None:
        if not self.stopping():
            self.registry.channel_closed(channel)

    def on_exception(self, remote_address: str, channel: IChannel, error: Exception) -> None:
        pass

    def on_idle(self, remote_address: str, channel: IChannel) -> None:
        pass
