"""``BrokerConfig``: every setting of the dev broker, with Apache's defaults where it has one."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rmqtwist.acl import Credentials

__all__ = ["DEFAULT_DELAY_LEVELS", "BrokerConfig"]

#: Apache's ``messageDelayLevel``, in seconds: level 1 is 1 s, level 18 is 2 h.
DEFAULT_DELAY_LEVELS: tuple[float, ...] = (
    1,
    5,
    10,
    30,
    60,
    120,
    180,
    240,
    300,
    360,
    420,
    480,
    540,
    600,
    1200,
    1800,
    3600,
    7200,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """The dev broker's settings. Times are in seconds, sizes in bytes."""

    #: The broker's name in routes (``brokerName``) and its cluster's.
    broker_name: str = "broker-a"
    cluster_name: str = "DefaultCluster"
    #: ``host:port`` put into routes (and, when it is an IP address, into stored messages)
    #: instead of the address each client connected to. None: that address, which works
    #: on loopback and wherever clients reach the broker directly; behind NAT (a
    #: published container port, a NodePort) clients need the address given here.
    advertise: str | None = None
    #: Create a topic on the first send to it (and on a consumer's subscription).
    auto_create_topic: bool = True
    #: Queues of a topic created automatically (capped by the send's defaultTopicQueueNums).
    default_queue_nums: int = 4
    #: Topics created at start, name -> queue count (kept if they already exist). Clients
    #: that never fall back to TBW102 for a new topic (ali-ons) need their topics to exist.
    topics: tuple[tuple[str, int], ...] = ()
    #: Queues of TBW102, the template topic producers fall back to for unknown topics.
    template_queue_nums: int = 8
    #: What a send response carries in MSG_REGION and TRACE_ON, as Apache's broker.
    region_id: str = "DefaultRegion"
    trace_on: bool = True
    #: Largest message body accepted (Apache's maxMessageSize).
    max_message_size: int = 4 * 1024 * 1024
    #: A pull returns at most this many messages and (past the first) bytes.
    pull_max_count: int = 32
    pull_max_bytes: int = 256 * 1024
    #: Hold a pull that finds nothing until a message arrives (long polling); when False
    #: hold it for ``short_polling_time`` at most.
    long_polling: bool = True
    short_polling_time: float = 1.0
    #: Reconsume attempts before a message goes to the group's ``%DLQ%`` topic.
    max_reconsume_times: int = 16
    #: Seconds per delay level (level n waits ``delay_levels[n - 1]``).
    delay_levels: tuple[float, ...] = DEFAULT_DELAY_LEVELS
    #: A half (transaction) message unresolved this long gets a CHECK_TRANSACTION_STATE.
    transaction_timeout: float = 6.0
    #: How often unresolved half messages are looked at.
    transaction_check_interval: float = 60.0
    #: Checks per half message before it is dropped (rolled back), as Apache.
    transaction_check_max: int = 15
    #: How long a LOCK_BATCH_MQ lease lasts without renewal.
    lock_lease: float = 60.0
    #: A client not heard from (heartbeat) for this long is dropped from its groups.
    client_expiry: float = 120.0
    #: How often consumer offsets and delay progress are saved when they changed.
    offset_flush_interval: float = 5.0
    #: Other name servers to register this broker with, ``"host:port;host:port"`` (Apache's
    #: ``namesrvAddr``): REGISTER_BROKER at start, every ``register_interval`` and when
    #: its topics change, UNREGISTER_BROKER on a clean stop. None: this broker is in its
    #: own routes only. Brokers sharing a name server need distinct ``broker_name``.
    name_server: str | None = None
    #: The ACL keys (:class:`~rmqtwist.acl.Credentials`) registrations with
    #: ``name_server`` are signed with, for a name server that checks an ACL (another dev
    #: broker with ``--acl-file``). None: unsigned, as Apache 4.x brokers send them.
    name_server_credentials: Credentials | None = None
    #: Seconds between registrations (Apache's ``registerNameServerPeriod``).
    register_interval: float = 30.0
    #: How long one registration may take (Apache's ``registerBrokerTimeoutMills``).
    register_timeout: float = 6.0
    #: Send the zlib form of the register body (Apache's ``compressedRegister``).
    register_compressed: bool = False
    #: A broker registered with this one is dropped when it has not registered for this
    #: long (Apache's ``BROKER_CHANNEL_EXPIRED_TIME``).
    broker_expiry: float = 120.0

    def __post_init__(self) -> None:
        if not self.broker_name or not self.cluster_name:
            raise ValueError("broker_name and cluster_name must not be empty")
        for name in ("default_queue_nums", "template_queue_nums", "pull_max_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, queues in self.topics:
            if not name or queues < 1:
                raise ValueError(f"topic {name!r} needs a name and at least 1 queue")
        if not self.delay_levels:
            raise ValueError("delay_levels must not be empty")
        for name in ("register_interval", "register_timeout", "broker_expiry"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)}")
        for address in (self.name_server or "").split(";"):
            host, _, port = address.strip().rpartition(":")
            if address.strip() and (not host or not port.isdigit() or not 0 < int(port) < 65536):
                raise ValueError(f"name_server must be host:port[;host:port], got {address!r}")
        if self.name_server is not None and not self.name_server.replace(";", "").strip():
            raise ValueError("name_server must name at least one host:port")
        if self.advertise is not None:
            host, _, port = self.advertise.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"advertise must be host:port, got {self.advertise!r}")

    def delay_of(self, level: int) -> float:
        """Seconds a message of delay ``level`` waits (levels past the last use the last)."""
        levels = self.delay_levels
        return levels[min(level, len(levels)) - 1]
