"""LOCK_BATCH_MQ (41) and UNLOCK_BATCH_MQ (42), for orderly consumers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rmqtwist.broker._json import dumps, loads
from rmqtwist.broker.locks import MessageQueue
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.codes import RequestCode
from rmqtwist.errors import BodyError

if TYPE_CHECKING:
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = ["LockProcessor"]


def _lock_body(body: bytes, what: str) -> tuple[str, str, list[MessageQueue]]:
    data: Any = loads(body, what)
    if not isinstance(data, dict):
        raise BodyError(f"the {what} body is not a JSON object")
    client_id, group = data.get("clientId"), data.get("consumerGroup")
    if not isinstance(client_id, str) or not isinstance(group, str):
        raise BodyError(f"the {what} body needs clientId and consumerGroup")
    try:
        queues = [MessageQueue.from_json(item) for item in data.get("mqSet") or []]
    except (KeyError, TypeError, ValueError) as e:
        raise BodyError(f"the {what} body has a bad mqSet entry: {e}") from None
    return client_id, group, queues


class LockProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.LOCK_BATCH_MQ: "lock",
        RequestCode.UNLOCK_BATCH_MQ: "unlock",
    }

    def lock(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        client_id, group, queues = _lock_body(request.body, "LOCK_BATCH_MQ")
        granted = self.broker.locks.lock(group, client_id, queues)
        body = {"lockOKMQSet": [queue.to_json() for queue in sorted(granted)]}
        return answer(request, body=dumps(body))

    def unlock(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        client_id, group, queues = _lock_body(request.body, "UNLOCK_BATCH_MQ")
        self.broker.locks.unlock(group, client_id, queues)
        return answer(request)
