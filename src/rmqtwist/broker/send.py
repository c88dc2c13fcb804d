"""Sending: SEND_MESSAGE (10), SEND_MESSAGE_V2 (310) and SEND_BATCH_MESSAGE (320).

Topics are created on the first send when auto-creation is on; a send to a ``%RETRY%``
topic past its reconsume limit goes to the group's ``%DLQ%`` topic; a transaction half
message is held in the half topic, invisible until END_TRANSACTION commits it; a
delayed message waits in the delay topic. With ``--flush sync`` the answer waits until
the message is on disk.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.broker.core import Draft, PutResult
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.broker.store import StoreError
from rmqtwist.broker.topics import (
    DELAY_TOPIC,
    HALF_TOPIC,
    OP_HALF_TOPIC,
    PERM_READ,
    PERM_WRITE,
    RETRY_PREFIX,
    TEMPLATE_TOPIC,
    TopicConfig,
    dlq_topic,
    is_retry_topic,
    topic_problem,
)
from rmqtwist.codes import RequestCode, ResponseCode, Version
from rmqtwist.errors import MalformedMessage
from rmqtwist.headers import (
    SendMessageRequestHeader,
    SendMessageRequestHeaderV2,
)
from rmqtwist.message import (
    MessageSysFlag,
    Property,
    decode_batch,
    decode_properties,
    transaction_type,
)

if TYPE_CHECKING:
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = ["SendProcessor"]

_log = Logger()

_FORBIDDEN_TOPICS = frozenset({TEMPLATE_TOPIC, DELAY_TOPIC, HALF_TOPIC, OP_HALF_TOPIC})
_MAX_PROPERTIES = 32767
_FAQ = "\nSee http://rocketmq.apache.org/docs/faq/ for further details."


class _Refused(Exception):
    """A send that must be answered with ``code`` and ``remark``."""

    def __init__(self, code: int, remark: str) -> None:
        super().__init__(remark)
        self.code = code
        self.remark = remark


class SendProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.SEND_MESSAGE: "send",
        RequestCode.SEND_MESSAGE_V2: "send",
        RequestCode.SEND_BATCH_MESSAGE: "send",
    }

    def send(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand | Deferred[RemotingCommand]:
        if request.code == RequestCode.SEND_MESSAGE:
            header = SendMessageRequestHeader.from_command(request)
        else:
            header = SendMessageRequestHeaderV2.from_command(request).to_v1()
        try:
            if header.batch:
                results = self._send_batch(context, request, header)
            else:
                results = [self._send_one(context, request, header)]
        except _Refused as refused:
            return answer(request, refused.code, refused.remark)
        except StoreError as e:
            _log.warn("Could not store a message for {topic}: {error}", topic=header.topic, error=e)
            return answer(
                request,
                ResponseCode.SERVICE_NOT_AVAILABLE,
                f"service not available now: the store cannot take the message ({e})",
            )
        response = self._response(request, results)
        waits = [result.durable for result in results if result.durable is not None]
        if not waits:
            return response
        done: Deferred[RemotingCommand] = Deferred()
        remaining = [len(waits)]

        def flushed(_: object) -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and not done.called:
                done.callback(response)

        def failed(failure: Failure) -> None:
            _log.failure("A sent message could not be flushed to disk", failure)
            if not done.called:
                done.callback(
                    answer(
                        request,
                        ResponseCode.SYSTEM_ERROR,
                        f"the message could not be flushed to disk: {failure.getErrorMessage()}",
                    )
                )

        for wait in waits:
            wait.addCallbacks(flushed, failed)
        return done

    def _response(self, request: RemotingCommand, results: list[PutResult]) -> RemotingCommand:
        config = self.broker.config
        first = results[0]
        # a read-only mapping of strings is taken as it is (no copy, no checks)
        ext = MappingProxyType(
            {
                "msgId": ",".join(result.msg_id for result in results),
                "queueId": str(first.queue_id),
                "queueOffset": str(first.queue_offset),
                "MSG_REGION": config.region_id,
                "TRACE_ON": "true" if config.trace_on else "false",
            }
        )
        return answer(request, ext_fields=ext)

    # -- checks shared by single and batch sends --------------------------------------

    def _topic(self, context: IRequestContext, header: SendMessageRequestHeader) -> TopicConfig:
        topic_name = header.topic
        if topic_name in _FORBIDDEN_TOPICS:
            raise _Refused(
                ResponseCode.NO_PERMISSION, f"Sending message to topic[{topic_name}] is forbidden."
            )
        topics = self.broker.topics
        topic = topics.get(topic_name)
        if topic is None:  # names of existing topics were checked when they were made
            problem = topic_problem(topic_name)
            if problem is not None:
                raise _Refused(ResponseCode.SYSTEM_ERROR, problem)
            if is_retry_topic(topic_name):
                topic = topics.ensure(topic_name, 1, PERM_READ | PERM_WRITE)
            else:
                topic = topics.auto_create(
                    topic_name, header.default_topic, header.default_topic_queue_nums
                )
        if topic is None:
            raise _Refused(
                ResponseCode.TOPIC_NOT_EXIST,
                f"topic[{topic_name}] not exist, apply first please!{_FAQ}",
            )
        if not topic.writable:
            raise _Refused(
                ResponseCode.NO_PERMISSION,
                f"the topic[{topic_name}] sending message is forbidden",
            )
        return topic

    def _queue_id(
        self, context: IRequestContext, header: SendMessageRequestHeader, topic: TopicConfig
    ) -> int:
        queue_id = header.queue_id
        if queue_id >= topic.queue_nums:
            raise _Refused(
                ResponseCode.SYSTEM_ERROR,
                f"request queueId[{queue_id}] is illegal, topic {topic.name} has "
                f"{topic.queue_nums} queues. Producer: {context.channel.remote_address}",
            )
        if queue_id < 0:
            queue_id = self.broker.pick_queue(topic.write_queue_nums)
        return queue_id

    def _check_size(self, body: bytes, properties: str | None) -> None:
        limit = self.broker.config.max_message_size
        if len(body) > limit:
            raise _Refused(
                ResponseCode.MESSAGE_ILLEGAL,
                f"the message body size over max value, MAX: {limit}",
            )
        # a character is at most 4 UTF-8 bytes: encode only a string that may be too long
        if (
            properties is not None
            and len(properties) * 4 > _MAX_PROPERTIES
            and len(properties.encode("utf-8")) > _MAX_PROPERTIES
        ):
            raise _Refused(
                ResponseCode.MESSAGE_ILLEGAL,
                f"the message properties length is over {_MAX_PROPERTIES} bytes",
            )

    def _draft(
        self,
        context: IRequestContext,
        header: SendMessageRequestHeader,
        topic: str,
        queue_id: int,
        body: bytes,
        properties: dict[str, str],
        flag: int,
    ) -> Draft:
        channel = context.channel
        properties[Property.CLUSTER] = self.broker.config.cluster_name
        return Draft(
            topic=topic,
            queue_id=queue_id,
            body=body,
            properties=properties,
            born_timestamp=header.born_timestamp,
            born_host=channel.remote_address,
            store_host=self.broker.store_host(channel),
            flag=flag,
            sys_flag=header.sys_flag,
            reconsume_times=header.reconsume_times or 0,
        )

    # -- single -----------------------------------------------------------------------

    def _send_one(
        self, context: IRequestContext, request: RemotingCommand, header: SendMessageRequestHeader
    ) -> PutResult:
        self._check_size(request.body, header.properties)
        topic = self._topic(context, header)
        queue_id = self._queue_id(context, header, topic)
        properties = decode_properties(header.properties) if header.properties else {}
        properties.pop(Property.WAIT, None)
        draft = self._draft(
            context, header, topic.name, queue_id, request.body, properties, header.flag
        )
        if is_retry_topic(topic.name):
            self._maybe_dead_letter(request, header, draft)
        if transaction_type(header.sys_flag) == MessageSysFlag.TRANSACTION_PREPARED:
            result = self._put_half(draft)
        else:
            result = self.broker.put(draft)
        # Apache answers with the queue the producer asked for (or the one picked for it)
        # even when the message waits in the delay or half topic, or went to the DLQ.
        if result.queue_id == queue_id and result.topic == topic.name:
            return result
        return dataclasses.replace(result, topic=topic.name, queue_id=queue_id)

    def _maybe_dead_letter(
        self, request: RemotingCommand, header: SendMessageRequestHeader, draft: Draft
    ) -> None:
        """A send to ``%RETRY%G`` whose reconsume count reached the limit goes to ``%DLQ%G``."""
        limit = self.broker.config.max_reconsume_times
        if request.version >= Version.V3_4_9 and header.max_reconsume_times is not None:
            limit = header.max_reconsume_times
        if draft.reconsume_times < limit:
            return
        group = draft.topic[len(RETRY_PREFIX) :]
        dlq = self.broker.topics.ensure(dlq_topic(group), 1, PERM_READ | PERM_WRITE)
        draft.topic = dlq.name
        draft.queue_id = 0
        draft.properties.pop(Property.DELAY, None)

    def _put_half(self, draft: Draft) -> PutResult:
        """A transaction's half message: kept in the half topic until it is resolved."""
        draft.properties[Property.REAL_TOPIC] = draft.topic
        draft.properties[Property.REAL_QID] = str(draft.queue_id)
        draft.sys_flag &= ~int(MessageSysFlag.TRANSACTION_ROLLBACK)
        draft.topic = HALF_TOPIC
        draft.queue_id = 0
        return self.broker.put(draft, delay=False)

    # -- batch ------------------------------------------------------------------------

    def _send_batch(
        self, context: IRequestContext, request: RemotingCommand, header: SendMessageRequestHeader
    ) -> list[PutResult]:
        topic = self._topic(context, header)
        if is_retry_topic(topic.name):
            raise _Refused(
                ResponseCode.MESSAGE_ILLEGAL, "batch request does not support retry group"
            )
        if transaction_type(header.sys_flag) != 0:
            raise _Refused(
                ResponseCode.MESSAGE_ILLEGAL, "batch request does not support transaction messages"
            )
        queue_id = self._queue_id(context, header, topic)
        try:
            items = decode_batch(request.body)
        except MalformedMessage as e:
            raise _Refused(ResponseCode.MESSAGE_ILLEGAL, f"malformed batch body: {e}") from None
        if not items:
            raise _Refused(ResponseCode.MESSAGE_ILLEGAL, "the batch holds no message")
        shared = decode_properties(header.properties) if header.properties else {}
        drafts = []
        for item in items:
            self._check_size(item.body, None)
            properties: dict[str, Any] = dict(item.properties)
            for key, value in shared.items():
                properties.setdefault(key, value)
            delay = properties.get(Property.DELAY)
            if delay and delay.strip() not in ("", "0"):
                raise _Refused(
                    ResponseCode.MESSAGE_ILLEGAL, "batch request does not support delay messages"
                )
            drafts.append(
                self._draft(context, header, topic.name, queue_id, item.body, properties, item.flag)
            )
        return self.broker.put_batch(drafts)
