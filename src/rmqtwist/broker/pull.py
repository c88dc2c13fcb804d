"""Pulling: PULL_MESSAGE (11) and LITE_PULL_MESSAGE (361), with tag filtering, Apache's
status rules (broker.md §1.1) and long polling: a pull that finds nothing is held until a
message arrives for its queue or its suspend time passes."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rmqtwist.broker.clients import Subscription, parse_subscription
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.errors import BodyError, HeaderError
from rmqtwist.headers import PullMessageRequestHeader

if TYPE_CHECKING:
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = [
    "FLAG_COMMIT_OFFSET",
    "FLAG_LITE_PULL",
    "FLAG_SUBSCRIPTION",
    "FLAG_SUSPEND",
    "PullProcessor",
]

FLAG_COMMIT_OFFSET = 0x1
FLAG_SUSPEND = 0x2
FLAG_SUBSCRIPTION = 0x4
FLAG_CLASS_FILTER = 0x8
FLAG_LITE_PULL = 0x10
#: How long a pull with a subscription newer than the broker's waits for the heartbeat.
HEARTBEAT_WAIT = 1.0


class PullProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.PULL_MESSAGE: "pull",
        RequestCode.LITE_PULL_MESSAGE: "pull",
    }

    def pull(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand | None:
        return self._pull(context, request, retried=False)

    def _pull(
        self, context: IRequestContext, request: RemotingCommand, retried: bool
    ) -> RemotingCommand | None:
        header = PullMessageRequestHeader.from_command(request)
        broker = self.broker
        topic = broker.topics.get(header.topic)
        if topic is None:
            return answer(
                request,
                ResponseCode.TOPIC_NOT_EXIST,
                f"topic[{header.topic}] not exist, apply first please!",
            )
        if not topic.readable:
            return answer(
                request,
                ResponseCode.NO_PERMISSION,
                f"the topic[{header.topic}] pulling message is forbidden",
            )
        if not 0 <= header.queue_id < topic.read_queue_nums:
            return answer(
                request,
                ResponseCode.SYSTEM_ERROR,
                f"queueId[{header.queue_id}] is illegal, topic:[{header.topic}] "
                f"topicConfig.readQueueNums:[{topic.read_queue_nums}] "
                f"consumer:[{context.channel.remote_address}]",
            )
        flags = header.sys_flag
        if flags & FLAG_SUBSCRIPTION:
            try:
                subscription = parse_subscription(
                    header.topic, header.subscription, header.expression_type, header.sub_version
                )
            except ValueError as e:
                return answer(request, ResponseCode.SUBSCRIPTION_PARSE_FAILED, str(e))
        else:
            group = broker.clients.consumers.get(header.consumer_group)
            if group is None:
                return answer(
                    request,
                    ResponseCode.SUBSCRIPTION_NOT_EXIST,
                    f"the consumer's group info not exist: {header.consumer_group}",
                )
            found = group.subscriptions.get(header.topic)
            if found is None:
                return answer(
                    request,
                    ResponseCode.SUBSCRIPTION_NOT_EXIST,
                    f"the consumer's subscription not exist: group {header.consumer_group}, "
                    f"topic {header.topic}",
                )
            if found.version < header.sub_version:
                if not retried and not broker.stopping:
                    # A Java consumer sends this pull just before the heartbeat that
                    # carries its new subscription: wait briefly for that heartbeat
                    # rather than answer 25, after which the client backs off 3 s.
                    self._await_heartbeat(context, request, header.consumer_group)
                    return None
                return answer(
                    request,
                    ResponseCode.SUBSCRIPTION_NOT_LATEST,
                    "the consumer's subscription not latest",
                )
            subscription = found
        if flags & FLAG_COMMIT_OFFSET and header.commit_offset >= 0:
            broker.offsets.commit(
                header.consumer_group, header.topic, header.queue_id, header.commit_offset
            )
        response = self._read(request, header, subscription)
        if (
            response.code != ResponseCode.PULL_NOT_FOUND
            or not flags & FLAG_SUSPEND
            or broker.stopping
        ):
            return response
        config = broker.config
        timeout = (
            header.suspend_timeout_millis / 1000.0
            if config.long_polling
            else config.short_polling_time
        )

        def rerun() -> None:
            if not context.responded:
                context.respond(self._read(request, header, subscription))

        broker.pulls.hold(
            header.topic, header.queue_id, header.queue_offset, subscription.codes, timeout, rerun
        )
        return None

    def _await_heartbeat(
        self, context: IRequestContext, request: RemotingCommand, group: str
    ) -> None:
        broker = self.broker
        done = False

        def rerun() -> None:
            nonlocal done
            if done:
                return
            done = True
            forget()
            if timer.active():
                timer.cancel()
            if context.responded:
                return
            try:
                response = self._pull(context, request, retried=True)
            except (HeaderError, BodyError) as e:
                response = answer(request, ResponseCode.SYSTEM_ERROR, f"bad request: {e}")
            if response is not None:
                context.respond(response)

        timer = broker.clock.callLater(HEARTBEAT_WAIT, rerun)
        forget = broker.clients.wait_for_heartbeat(group, rerun)

    def _read(
        self,
        request: RemotingCommand,
        header: PullMessageRequestHeader,
        subscription: Subscription,
    ) -> RemotingCommand:
        """Read the queue at the pull's offset and answer by Apache's status rules."""
        broker = self.broker
        config = broker.config
        offset = header.queue_offset
        max_count = max(1, min(header.max_msg_nums, config.pull_max_count))
        max_bytes = config.pull_max_bytes
        if header.max_msg_bytes is not None and header.max_msg_bytes > 0:
            max_bytes = min(max_bytes, header.max_msg_bytes)
        result = broker.store.read(
            header.topic, header.queue_id, offset, max_count, max_bytes, subscription.codes
        )
        low, high = result.min_offset, result.max_offset
        if high == 0:
            if offset != 0:
                code, remark, next_offset = ResponseCode.PULL_OFFSET_MOVED, "NO_MESSAGE_IN_QUEUE", 0
            else:
                code, remark, next_offset = ResponseCode.PULL_NOT_FOUND, "NO_MESSAGE_IN_QUEUE", 0
        elif offset < low:
            code, remark, next_offset = ResponseCode.PULL_OFFSET_MOVED, "OFFSET_TOO_SMALL", low
        elif offset == high:
            code, remark, next_offset = ResponseCode.PULL_NOT_FOUND, "OFFSET_OVERFLOW_ONE", offset
        elif offset > high:
            next_offset = low if low == 0 else high
            code, remark = ResponseCode.PULL_OFFSET_MOVED, "OFFSET_OVERFLOW_BADLY"
        elif result.records:
            code, remark, next_offset = ResponseCode.SUCCESS, "FOUND", result.next_offset
        else:
            code, remark = ResponseCode.PULL_RETRY_IMMEDIATELY, "NO_MATCHED_MESSAGE"
            next_offset = result.next_offset
        ext = {
            "suggestWhichBrokerId": "0",
            "nextBeginOffset": str(next_offset),
            "minOffset": str(low),
            "maxOffset": str(high),
        }
        if code == ResponseCode.SUCCESS:
            broker.messages_got += len(result.records)
            return answer(request, code, remark, ext, b"".join(result.records))
        return answer(request, code, remark, ext)
