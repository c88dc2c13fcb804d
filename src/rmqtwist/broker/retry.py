"""CONSUMER_SEND_MSG_BACK (36): a message a consumer failed to process comes back later
through the group's ``%RETRY%`` topic, with a growing delay, until its reconsume limit
sends it to the group's ``%DLQ%`` topic."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rmqtwist.broker.core import Draft
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.broker.store import StoreError
from rmqtwist.broker.topics import PERM_READ, PERM_WRITE, dlq_topic, retry_topic
from rmqtwist.codes import RequestCode, ResponseCode, Version
from rmqtwist.errors import MalformedMessage
from rmqtwist.headers import ConsumerSendMsgBackRequestHeader
from rmqtwist.message import Property, decode_record

if TYPE_CHECKING:
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = ["RetryProcessor"]

_log = Logger()


class RetryProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.CONSUMER_SEND_MSG_BACK: "send_back",
    }

    def send_back(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand | Deferred[RemotingCommand]:
        header = ConsumerSendMsgBackRequestHeader.from_command(request)
        broker = self.broker
        record = broker.store.read_at(header.offset)
        if record is None:
            return answer(
                request,
                ResponseCode.SYSTEM_ERROR,
                f"look message by offset failed, {header.offset}",
            )
        try:
            message, _ = decode_record(record)
        except MalformedMessage as e:
            return answer(request, ResponseCode.SYSTEM_ERROR, f"the stored message is bad: {e}")
        properties = dict(message.wire_properties())
        properties.setdefault(Property.RETRY_TOPIC, message.topic)
        limit = broker.config.max_reconsume_times
        if request.version >= Version.V3_4_9 and header.max_reconsume_times is not None:
            limit = header.max_reconsume_times
        delay_level = header.delay_level
        reconsume_times = message.reconsume_times
        if reconsume_times >= limit or delay_level < 0:
            topic = broker.topics.ensure(dlq_topic(header.group), 1, PERM_READ | PERM_WRITE)
            queue_id = 0
            properties.pop(Property.DELAY, None)
            _log.info(
                "Message {msg_id} of group {group} goes to {topic} after {times} attempts",
                msg_id=message.msg_id,
                group=header.group,
                topic=topic.name,
                times=reconsume_times + 1,
            )
        else:
            topic = broker.topics.ensure(retry_topic(header.group), 1, PERM_READ | PERM_WRITE)
            queue_id = broker.pick_queue(topic.write_queue_nums)
            if delay_level == 0:
                delay_level = 3 + reconsume_times
            properties[Property.DELAY] = str(delay_level)
        properties.setdefault(Property.ORIGIN_MESSAGE_ID, header.origin_msg_id or message.msg_id)
        properties.pop(Property.REAL_TOPIC, None)  # set again by the delay step, if delayed
        properties.pop(Property.REAL_QID, None)
        draft = Draft(
            topic=topic.name,
            queue_id=queue_id,
            body=message.body,
            properties=properties,
            born_timestamp=message.born_timestamp,
            born_host=message.born_host,
            store_host=broker.store_host(context.channel),
            flag=message.flag,
            sys_flag=message.sys_flag,
            reconsume_times=reconsume_times + 1,
        )
        try:
            result = broker.put(draft)
        except StoreError as e:
            return answer(request, ResponseCode.SYSTEM_ERROR, f"the store cannot take it: {e}")
        if result.durable is None:
            return answer(request)
        # the consumer moves past the message once this is answered: only when it is safe
        return result.durable.addCallbacks(
            lambda _: answer(request),
            lambda failure: answer(
                request, ResponseCode.SYSTEM_ERROR, f"not flushed: {failure.getErrorMessage()}"
            ),
        )
