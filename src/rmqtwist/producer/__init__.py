"""A RocketMQ producer on the remoting protocol, behaving as Java's 4.9 client does.

:class:`Producer` fetches topic routes from the name servers (GET_ROUTEINFO_BY_TOPIC),
caches them and refreshes them every ``route_refresh`` seconds and after a failed send;
a topic the name servers do not know (TOPIC_NOT_EXIST) is sent with TBW102's route and
``defaultTopic=TBW102``, so a broker with auto-create makes it, as Java does. The queue is
chosen round-robin across every writable queue of every master (brokerId 0).

A send that fails with a retryable code (17, 14, 1, 16, 204, 205) or a connection error
or timeout is tried again (``retries`` more times) on another broker where there is one.
Fault avoidance, a simple form of Java's ``MQFaultStrategy``: a broker whose send failed
is avoided for ``isolation`` seconds (30 s by default, Java's figure for a failure);
queues of avoided brokers are picked only when every broker is avoided.

Every message gets a UNIQ_KEY (:class:`~rmqtwist.message.UniqueIdGenerator`) and WAIT=true;
bodies of ``compress_over`` bytes or more are zlib-compressed with sysFlag 0x1 | 0x300
(Java 4.9.4+). Heartbeats (HEART_BEAT with the producer group) go every ``heartbeat_interval``
seconds to the brokers used; :meth:`Producer.shutdown` sends UNREGISTER_CLIENT to them.
Time comes from the injected reactor; no threads.
"""

from rmqtwist.producer._producer import (
    DEFAULT_TOPIC,
    RETRY_CODES,
    BrokerResponseError,
    NoRouteError,
    Producer,
    ProducerClosedError,
    ProducerError,
    Selector,
    SendFailedError,
    SendResult,
    SendStatus,
    stable_hash,
)
from rmqtwist.producer._transaction import (
    LocalTransactionState,
    TransactionProducer,
    TransactionSendResult,
)
from rmqtwist.routing import MessageQueue, TopicRoute, parse_route

__all__ = [
    "DEFAULT_TOPIC",
    "RETRY_CODES",
    "BrokerResponseError",
    "LocalTransactionState",
    "MessageQueue",
    "NoRouteError",
    "Producer",
    "ProducerClosedError",
    "ProducerError",
    "Selector",
    "SendFailedError",
    "SendResult",
    "SendStatus",
    "TopicRoute",
    "TransactionProducer",
    "TransactionSendResult",
    "parse_route",
    "stable_hash",
]
