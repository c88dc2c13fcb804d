"""RocketMQ consumers on the remoting protocol.

The shared pieces (one function per broker request, subscriptions, queue allocation)
live in :mod:`rmqtwist.consumer._base` and are re-exported here.
"""

from rmqtwist.consumer._base import (
    RETRY_PREFIX,
    BrokerAnswerError,
    ConsumerClosedError,
    ConsumerData,
    ConsumerError,
    PullResult,
    PullStatus,
    Subscription,
    allocate_averagely,
    parse_expression,
    restore_retry_topic,
    retry_topic,
)
from rmqtwist.consumer._lite import PullConsumer
from rmqtwist.consumer._push import ConsumeFrom, Listener, MessageModel, PushConsumer
from rmqtwist.consumer._push_consume import ConsumeResult

__all__ = [
    "RETRY_PREFIX",
    "BrokerAnswerError",
    "ConsumeFrom",
    "ConsumeResult",
    "ConsumerClosedError",
    "ConsumerData",
    "ConsumerError",
    "Listener",
    "MessageModel",
    "PullConsumer",
    "PullResult",
    "PullStatus",
    "PushConsumer",
    "Subscription",
    "allocate_averagely",
    "parse_expression",
    "restore_retry_topic",
    "retry_topic",
]
