"""The name-server role: topic routes (105), cluster info (106) and the topic list (206).

Every route names this broker at the address the asking client connected to (or
``advertise``), so the same broker works without configuration on loopback, on a
machine's own address and in a container whose address its clients can reach; behind
NAT (a published container port seen from elsewhere, a Kubernetes NodePort) the broker
cannot see the address clients used, and ``advertise`` names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rmqtwist.broker._json import dumps
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.headers import GetRouteInfoRequestHeader

if TYPE_CHECKING:
    from rmqtwist.broker.topics import TopicConfig
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = ["RouteProcessor"]


class RouteProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.GET_ROUTEINFO_BY_TOPIC: "route",
        RequestCode.GET_BROKER_CLUSTER_INFO: "cluster_info",
        RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER: "topic_list",
    }

    def _broker_data(self, address: str) -> dict[str, Any]:
        config = self.broker.config
        return {
            "brokerAddrs": {"0": address},
            "brokerName": config.broker_name,
            "cluster": config.cluster_name,
        }

    def route_data(self, topic: TopicConfig, address: str) -> dict[str, Any]:
        """The TopicRouteData of ``topic`` with this broker at ``address``."""
        config = self.broker.config
        data: dict[str, Any] = {
            "brokerDatas": [self._broker_data(address)],
            "filterServerTable": {},
            "queueDatas": [
                {
                    "brokerName": config.broker_name,
                    "perm": topic.perm,
                    "readQueueNums": topic.read_queue_nums,
                    "topicSysFlag": topic.topic_sys_flag,
                    "writeQueueNums": topic.write_queue_nums,
                }
            ],
        }
        if topic.order:
            data["orderTopicConf"] = f"{config.broker_name}:{topic.write_queue_nums}"
        return data

    def route(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = GetRouteInfoRequestHeader.from_command(request)
        topic = self.broker.topics.get(header.topic)
        if topic is None:
            return answer(
                request,
                ResponseCode.TOPIC_NOT_EXIST,
                f"No topic route info in name server for the topic: {header.topic}\n"
                "See http://rocketmq.apache.org/docs/faq/ for further details.",
            )
        address = self.broker.route_address(context.channel)
        return answer(request, body=dumps(self.route_data(topic, address)))

    def cluster_info(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        config = self.broker.config
        address = self.broker.route_address(context.channel)
        body = {
            "brokerAddrTable": {config.broker_name: self._broker_data(address)},
            "clusterAddrTable": {config.cluster_name: [config.broker_name]},
        }
        return answer(request, body=dumps(body))

    def topic_list(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        return answer(request, body=dumps({"topicList": self.broker.topics.names()}))
