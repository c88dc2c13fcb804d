"""Client management: HEART_BEAT (34), UNREGISTER_CLIENT (35), GET_CONSUMER_LIST_BY_GROUP
(38), CHECK_CLIENT_CONFIG (46), and the listener that notices connections going away."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from zope.interface import implementer

from rmqtwist.broker._json import dumps, loads
from rmqtwist.broker.clients import parse_heartbeat
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.broker.topics import PERM_READ, PERM_WRITE, is_retry_topic, retry_topic
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.headers import GetConsumerListByGroupRequestHeader, UnregisterClientRequestHeader
from rmqtwist.interfaces import IChannelEventListener

if TYPE_CHECKING:
    from rmqtwist.broker.core import Broker
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IChannel, IRequestContext

__all__ = ["ClientChannelListener", "ClientManageProcessor"]


class ClientManageProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.HEART_BEAT: "heart_beat",
        RequestCode.UNREGISTER_CLIENT: "unregister_client",
        RequestCode.GET_CONSUMER_LIST_BY_GROUP: "consumer_list",
        RequestCode.CHECK_CLIENT_CONFIG: "check_client_config",
    }

    def heart_beat(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        heartbeat = parse_heartbeat(loads(request.body, "HEART_BEAT"))
        broker = self.broker
        for consumer in heartbeat.consumers:
            broker.topics.ensure(retry_topic(consumer.group), 1, PERM_READ | PERM_WRITE)
            for subscription in consumer.subscriptions:
                if not is_retry_topic(subscription.topic):
                    broker.topics.auto_create(subscription.topic)
        broker.clients.heartbeat(context.channel, heartbeat, request.language, request.version)
        return answer(request)

    def unregister_client(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        header = UnregisterClientRequestHeader.from_command(request)
        self.broker.clients.unregister(
            context.channel, header.producer_group, header.consumer_group
        )
        return answer(request, ext_fields={})

    def consumer_list(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = GetConsumerListByGroupRequestHeader.from_command(request)
        ids = self.broker.clients.consumer_ids(header.consumer_group)
        if not ids:
            return answer(
                request,
                ResponseCode.SYSTEM_ERROR,
                f"no consumer for this group, {header.consumer_group}",
            )
        return answer(request, ext_fields={}, body=dumps({"consumerIdList": ids}))

    def check_client_config(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        data = loads(request.body, "CHECK_CLIENT_CONFIG") if request.body else {}
        subscription = data.get("subscriptionData") if isinstance(data, dict) else None
        kind = "TAG"
        if isinstance(subscription, dict):
            kind = str(subscription.get("expressionType") or "TAG").upper()
        if kind != "TAG":
            return answer(
                request,
                ResponseCode.SYSTEM_ERROR,
                f"The broker does not support consumer to filter message by {kind} "
                "(the rmqtwist dev broker filters by tag only)",
            )
        return answer(request)


@implementer(IChannelEventListener)
class ClientChannelListener:
    """Tells the broker when a connection closes, so its clients leave their groups."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def on_connect(self, remote_address: str, channel: IChannel) -> None:
        pass

    def on_close(self, remote_address: str, channel: IChannel) -> None:
        self.broker.channel_closed(channel)

    def on_exception(self, remote_address: str, channel: IChannel, error: Exception) -> None:
        pass

    def on_idle(self, remote_address: str, channel: IChannel) -> None:
        pass
