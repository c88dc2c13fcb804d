"""A client that answers the requests a server pushes to it: a transaction check.

A RocketMQ broker that holds a "half" (prepared) transactional message and has not heard
whether to commit it asks the producer: it sends CHECK_TRANSACTION_STATE (39), oneway,
on the producer's connection. The producer looks up its local transaction and tells the
broker with END_TRANSACTION (37), oneway too, on the same connection.

Here the client registers a processor for CHECK_TRANSACTION_STATE; a small in-process
server plays the broker: when the client's heartbeat arrives it asks about two half
messages, and prints the END_TRANSACTION requests it gets back.

Run from a checkout:  PYTHONPATH=src python docs/examples/client_transactions.py
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode, ResponseCode
from rmqtwist.client import RemotingClient
from rmqtwist.headers import CheckTransactionStateRequestHeader, EndTransactionRequestHeader
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.server import RemotingServer, RemotingServerFactory

#: MessageSysFlag values of END_TRANSACTION's commitOrRollback.
COMMIT, ROLLBACK, UNKNOWN = 0x8, 0xC, 0x0


@implementer(IRequestProcessor)
class TransactionChecker:
    """The producer's side: answers CHECK_TRANSACTION_STATE with END_TRANSACTION.

    ``outcomes`` maps a transaction id to True (committed), False (rolled back); an id it
    does not know is reported as unknown, and the broker will ask again later.
    """

    def __init__(self, producer_group: str, outcomes: dict[str, bool]) -> None:
        self.producer_group = producer_group
        self.outcomes = outcomes

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        check = CheckTransactionStateRequestHeader.from_command(request)
        outcome = self.outcomes.get(check.transaction_id or "")
        end = EndTransactionRequestHeader(
            producer_group=self.producer_group,
            tran_state_table_offset=check.tran_state_table_offset,
            commit_log_offset=check.commit_log_offset,
            commit_or_rollback=UNKNOWN if outcome is None else COMMIT if outcome else ROLLBACK,
            from_transaction_check=True,
            msg_id=check.msg_id or "",
            transaction_id=check.transaction_id,
        )
        # On the connection the check came on, as Java's producer answers the broker
        # that asked. The check is oneway: the processor returns no response.
        context.channel.invoke_oneway(end.to_request(RequestCode.END_TRANSACTION))
        return None

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Broker:
    """The broker's side, reduced to the two requests this program needs."""

    def __init__(self, half_messages: list[CheckTransactionStateRequestHeader]) -> None:
        self.half_messages = half_messages
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.waiting = len(half_messages)

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand | None:
        if request.code == RequestCode.HEART_BEAT:  # a producer: ask about its half messages
            for check in self.half_messages:
                context.channel.invoke_oneway(check.to_request(RequestCode.CHECK_TRANSACTION_STATE))
            return RemotingCommand.response_to(request, ResponseCode.SUCCESS)
        end = EndTransactionRequestHeader.from_command(request)  # END_TRANSACTION, oneway
        verdict = {COMMIT: "commit", ROLLBACK: "rollback"}.get(end.commit_or_rollback, "unknown")
        print(
            f"broker: END_TRANSACTION {end.transaction_id} from {end.producer_group}:"
            f" {verdict} (offset {end.commit_log_offset}, from check {end.from_transaction_check})"
        )
        self.waiting -= 1
        if not self.waiting:
            self.ended.callback(None)
        return None

    def reject_request(self) -> bool:
        return False


async def main(reactor: Any) -> None:
    broker = Broker(
        [
            CheckTransactionStateRequestHeader(
                tran_state_table_offset=1, commit_log_offset=4096, msg_id="M1", transaction_id="T1"
            ),
            CheckTransactionStateRequestHeader(
                tran_state_table_offset=2, commit_log_offset=8192, msg_id="M2", transaction_id="T2"
            ),
        ]
    )
    factory = RemotingServerFactory()
    factory.register_processor(RequestCode.HEART_BEAT, broker)
    factory.register_processor(RequestCode.END_TRANSACTION, broker)
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    client = RemotingClient(reactor)
    try:
        [port] = await server.when_listening()
        address = f"127.0.0.1:{port.getHost().port}"

        checker = TransactionChecker("demo_producer_group", {"T1": True, "T2": False})
        client.register_processor(RequestCode.CHECK_TRANSACTION_STATE, checker)

        heartbeat = RemotingCommand.request(RequestCode.HEART_BEAT)
        response = await client.invoke(address, heartbeat)
        await broker.ended  # both END_TRANSACTION requests have arrived
        print(f"client: heartbeat answered {ResponseCode(response.code).name}")
        print(f"client: answered {client.dispatcher.requests_received} pushed requests")
    finally:
        await client.close()
        await server.stopService()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
