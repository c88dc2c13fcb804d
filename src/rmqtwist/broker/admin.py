"""Administration: UPDATE_AND_CREATE_TOPIC (17), topic deletion (215/216, for tests),
GET_BROKER_RUNTIME_INFO (28), and the codes the dev broker refuses on purpose: nothing
from the network changes its configuration or reaches its file system (the codes behind
CVE-2023-33246 and its kin)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rmqtwist._version import __version__
from rmqtwist.broker._json import dumps
from rmqtwist.broker.processors import BROKER_VERSION, BrokerProcessor, answer
from rmqtwist.broker.topics import PERM_READ, PERM_WRITE, TopicConfig, topic_problem
from rmqtwist.codes import RequestCode, ResponseCode, code_name
from rmqtwist.headers import CreateTopicRequestHeader, DeleteTopicRequestHeader

if TYPE_CHECKING:
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = ["REFUSED_CODES", "AdminProcessor", "RefusedProcessor"]

_MAX_QUEUES = 1024

#: Codes that would change configuration or files: refused with NO_PERMISSION.
REFUSED_CODES: tuple[int, ...] = (
    RequestCode.UPDATE_BROKER_CONFIG,
    RequestCode.UPDATE_NAMESRV_CONFIG,
    RequestCode.PUT_KV_CONFIG,
    RequestCode.DELETE_KV_CONFIG,
    RequestCode.UPDATE_AND_CREATE_ACL_CONFIG,
    RequestCode.DELETE_ACL_CONFIG,
    RequestCode.UPDATE_GLOBAL_WHITE_ADDRS_CONFIG,
    RequestCode.TRIGGER_DELETE_FILES,
    RequestCode.CLEAN_EXPIRED_CONSUMEQUEUE,
    RequestCode.CLEAN_UNUSED_TOPIC,
    RequestCode.DELETE_EXPIRED_COMMITLOG,
    RequestCode.UPDATE_CONTROLLER_CONFIG,
    RequestCode.CLEAN_BROKER_DATA,
    RequestCode.UPDATE_COLD_DATA_FLOW_CTR_CONFIG,
    RequestCode.REMOVE_COLD_DATA_FLOW_CTR_CONFIG,
    RequestCode.SET_COMMITLOG_READ_MODE,
    RequestCode.WIPE_WRITE_PERM_OF_BROKER,
    RequestCode.ADD_WRITE_PERM_OF_BROKER,
    RequestCode.GET_BROKER_CONFIG,
    RequestCode.GET_NAMESRV_CONFIG,
    RequestCode.GET_KV_CONFIG,
    RequestCode.GET_KVLIST_BY_NAMESPACE,
    RequestCode.GET_BROKER_CLUSTER_ACL_INFO,
    RequestCode.GET_BROKER_CLUSTER_ACL_CONFIG,
)


class RefusedProcessor(BrokerProcessor):
    """Answers every configuration and file-system code NO_PERMISSION, saying why."""

    handlers: ClassVar[dict[int, str]] = dict.fromkeys(REFUSED_CODES, "refuse")

    def refuse(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        return answer(
            request,
            ResponseCode.NO_PERMISSION,
            f"{code_name(request.code)} ({request.code}) is refused: the rmqtwist dev broker "
            "never changes its configuration, reads its configuration out or touches its "
            "files on a client's request; use its command-line options instead",
        )


class AdminProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.UPDATE_AND_CREATE_TOPIC: "create_topic",
        RequestCode.DELETE_TOPIC_IN_BROKER: "delete_topic",
        RequestCode.DELETE_TOPIC_IN_NAMESRV: "delete_topic",
        RequestCode.GET_BROKER_RUNTIME_INFO: "runtime_info",
    }

    def create_topic(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = CreateTopicRequestHeader.from_command(request)
        problem = topic_problem(header.topic)
        if problem is not None:
            return answer(request, ResponseCode.SYSTEM_ERROR, problem)
        existing = self.broker.topics.get(header.topic)
        if existing is not None and existing.system:
            return answer(
                request,
                ResponseCode.SYSTEM_ERROR,
                f"The topic[{header.topic}] is conflict with system topic.",
            )
        counts = (header.read_queue_nums, header.write_queue_nums)
        if not all(1 <= count <= _MAX_QUEUES for count in counts):
            return answer(
                request,
                ResponseCode.SYSTEM_ERROR,
                f"queue counts must be between 1 and {_MAX_QUEUES}, got read "
                f"{header.read_queue_nums} and write {header.write_queue_nums}",
            )
        self.broker.topics.put(
            TopicConfig(
                header.topic,
                header.read_queue_nums,
                header.write_queue_nums,
                header.perm & (PERM_READ | PERM_WRITE | 1),
                header.topic_sys_flag or 0,
                header.order,
                header.topic_filter_type,
            )
        )
        return answer(request)

    def delete_topic(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = DeleteTopicRequestHeader.from_command(request)
        broker = self.broker
        topic = broker.topics.get(header.topic)
        if topic is not None and topic.system:
            return answer(request, ResponseCode.NO_PERMISSION, f"{header.topic} is a system topic")
        broker.topics.delete(header.topic)
        broker.store.delete_topic(header.topic)
        broker.offsets.delete_topic(header.topic)
        return answer(request)

    def runtime_info(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        broker = self.broker
        now = broker.clock.seconds()
        table = {
            "brokerVersion": str(BROKER_VERSION),
            "brokerVersionDesc": "V4_9_8",
            "rmqtwistVersion": __version__.public(),
            "bootTimestamp": str(int(broker.boot_time * 1000)),
            "runtime": f"{int(now - broker.boot_time)} seconds",
            "msgPutTotalTodayNow": str(broker.messages_put),
            "msgGetTotalTodayNow": str(broker.messages_got),
            "storedMessages": str(broker.store.message_count),
            "storedBytes": str(broker.store.stored_bytes),
            "topics": str(len(broker.topics)),
            "consumerGroups": str(len(broker.clients.consumers)),
            "producerGroups": str(len(broker.clients.producers)),
            "heldPulls": str(broker.pulls.count),
        }
        return answer(request, ext_fields=table, body=dumps({"table": table}))
