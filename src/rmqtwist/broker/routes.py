"""The name-server role: topic routes (105), cluster info (106) and the topic list (206).

Every route names this broker at the address the asking client connected to (or
``advertise``), so the same broker works without configuration on loopback, on a
machine's own address and in a container whose address its clients can reach; behind
NAT (a published container port seen from elsewhere, a Kubernetes NodePort) the broker
cannot see the address clients used, and ``advertise`` names it.

Brokers registered with this name server (:mod:`rmqtwist.broker.registry`) are in every
answer too, as Apache's name server merges them: a topic on two brokers has two
``brokerDatas`` and two ``queueDatas``, and the topic list and cluster info are unions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rmqtwist.broker._json import dumps
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.broker.registry import BrokerRegistry, QueueData
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.headers import GetRouteInfoRequestHeader

if TYPE_CHECKING:
    from rmqtwist.broker.core import Broker
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

    def __init__(self, broker: Broker, registry: BrokerRegistry | None = None) -> None:
        super().__init__(broker)
        #: The other brokers registered with this name server.
        self.registry = registry if registry is not None else BrokerRegistry(broker.clock.seconds)

    def _broker_data(self, address: str) -> dict[str, Any]:
        config = self.broker.config
        return {
            "brokerAddrs": {"0": address},
            "brokerName": config.broker_name,
            "cluster": config.cluster_name,
        }

    def route_data(self, topic: TopicConfig | None, address: str, name: str = "") -> dict[str, Any]:
        """The TopicRouteData of topic ``name`` (or ``topic``'s): this broker at ``address``
        when it has ``topic``, and every registered broker that has it."""
        config = self.broker.config
        name = topic.name if topic is not None else name
        brokers: list[dict[str, Any]] = []
        queues: list[dict[str, Any]] = []
        order: list[str] = []
        if topic is not None:
            brokers.append(self._broker_data(address))
            queues.append(
                QueueData(
                    config.broker_name,
                    topic.read_queue_nums,
                    topic.write_queue_nums,
                    topic.perm,
                    topic.topic_sys_flag,
                ).to_json()
            )
            if topic.order:
                order.append(f"{config.broker_name}:{topic.write_queue_nums}")
        registry = self.registry
        for broker_name, queue in sorted(registry.queues(name).items()):
            data = registry.brokers.get(broker_name)
            if data is None or not data.addresses:
                continue
            brokers.append(data.to_json())
            queues.append(queue.to_json())
            if queue.order:
                order.append(f"{broker_name}:{queue.write_queue_nums}")
        route: dict[str, Any] = {
            "brokerDatas": brokers,
            "filterServerTable": {},
            "queueDatas": queues,
        }
        if order:
            route["orderTopicConf"] = ";".join(order)
        return route

    def route(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = GetRouteInfoRequestHeader.from_command(request)
        topic = self.broker.topics.get(header.topic)
        address = self.broker.route_address(context.channel)
        data = self.route_data(topic, address, header.topic)
        if not data["brokerDatas"]:
            return answer(
                request,
                ResponseCode.TOPIC_NOT_EXIST,
                f"No topic route info in name server for the topic: {header.topic}\n"
                "See http://rocketmq.apache.org/docs/faq/ for further details.",
            )
        return answer(request, body=dumps(data))

    def cluster_info(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        config = self.broker.config
        address = self.broker.route_address(context.channel)
        registry = self.registry
        registry.expire()
        brokers = {name: data.to_json() for name, data in registry.brokers.items()}
        brokers[config.broker_name] = self._broker_data(address)
        clusters = {cluster: set(names) for cluster, names in registry.clusters.items()}
        clusters.setdefault(config.cluster_name, set()).add(config.broker_name)
        body = {
            "brokerAddrTable": brokers,
            "clusterAddrTable": {cluster: sorted(names) for cluster, names in clusters.items()},
        }
        return answer(request, body=dumps(body))

    def topic_list(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        names = set(self.broker.topics.names()) | self.registry.topics()
        return answer(request, body=dumps({"topicList": sorted(names)}))
