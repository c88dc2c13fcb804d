"""The :class:`TransactionProducer` (see :mod:`rmqtwist.producer`).

A transactional send, as Java's ``TransactionMQProducer`` makes it: the message goes as
a *half* message (TRAN_MSG=true, PGROUP=group, sysFlag TRANSACTION_PREPARED), which the
broker keeps invisible; the local transaction runs; END_TRANSACTION (37, oneway) tells
the broker that stored it to commit it, roll it back, or wait (UNKNOWN). A half message
left waiting is asked about later with CHECK_TRANSACTION_STATE (39), which the producer
answers with the ``check`` callable's verdict, again by a oneway END_TRANSACTION.
"""

from __future__ import annotations

import enum
import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import MalformedMessage
from rmqtwist.headers import CheckTransactionStateRequestHeader, EndTransactionRequestHeader
from rmqtwist.interfaces import IRequestProcessor
from rmqtwist.message import (
    Message,
    MessageExt,
    MessageSysFlag,
    Property,
    decode_record,
    parse_offset_msg_id,
)
from rmqtwist.producer._producer import Producer, SendResult, SendStatus

if TYPE_CHECKING:
    from rmqtwist.interfaces import IChannel, IRequestContext

__all__ = [
    "LocalTransactionState",
    "TransactionProducer",
    "TransactionSendResult",
]

_log = Logger()


class LocalTransactionState(enum.Enum):
    """A local transaction's outcome (Java's ``LocalTransactionState``, same values)."""

    #: Done: the broker makes the message visible to consumers.
    COMMIT = "COMMIT_MESSAGE"
    #: Undone: the broker drops the half message; no consumer ever sees it.
    ROLLBACK = "ROLLBACK_MESSAGE"
    #: Not known yet: the broker asks again later (CHECK_TRANSACTION_STATE).
    UNKNOWN = "UNKNOW"


#: END_TRANSACTION's ``commitOrRollback``: the MessageSysFlag transaction types.
_END_CODES: Final = {
    LocalTransactionState.COMMIT: int(MessageSysFlag.TRANSACTION_COMMIT),
    LocalTransactionState.ROLLBACK: int(MessageSysFlag.TRANSACTION_ROLLBACK),
    LocalTransactionState.UNKNOWN: 0,
}

#: What ``execute`` and ``check`` may return: a state, or an awaitable (a coroutine, a
#: Deferred) of one.
StateOrAwaitable: TypeAlias = LocalTransactionState | Awaitable[LocalTransactionState]
Execute: TypeAlias = Callable[[Message, Any], StateOrAwaitable]
Check: TypeAlias = Callable[[MessageExt], StateOrAwaitable]


@dataclass(frozen=True, slots=True)
class TransactionSendResult(SendResult):
    """A transactional send's result: the half message's :class:`SendResult` fields, its
    ``transaction_id`` (the UNIQ_KEY, as Java's) and the ``local_state`` sent to the broker."""

    transaction_id: str
    local_state: LocalTransactionState


def end_transaction_request(
    group: str,
    state: LocalTransactionState,
    *,
    msg_id: str,
    tran_state_table_offset: int,
    commit_log_offset: int,
    from_transaction_check: bool,
    transaction_id: str | None = None,
    remark: str | None = None,
) -> RemotingCommand:
    """The oneway END_TRANSACTION (37) Java's producer sends: ``msg_id`` is the UNIQ_KEY,
    ``tran_state_table_offset`` the half message's queue offset, ``commit_log_offset`` its
    commit-log offset."""
    header = EndTransactionRequestHeader(
        producer_group=group,
        tran_state_table_offset=tran_state_table_offset,
        commit_log_offset=commit_log_offset,
        commit_or_rollback=_END_CODES[state],
        from_transaction_check=from_transaction_check,
        msg_id=msg_id,
        transaction_id=transaction_id,
    )
    return header.to_request(RequestCode.END_TRANSACTION, remark=remark, oneway=True)


async def _outcome(
    what: str, function: Callable[..., StateOrAwaitable], *args: Any
) -> tuple[LocalTransactionState, str | None]:
    """Call ``function`` (plain, coroutine or Deferred-returning) for a state; an error
    or a value that is not a state gives UNKNOWN (logged) and a remark saying why."""
    try:
        result: object = function(*args)
        if inspect.isawaitable(result):
            result = await result
    except Exception as error:
        _log.failure(
            "The transaction's {what} callable raised; telling the broker UNKNOWN",
            what=what,
        )
        return LocalTransactionState.UNKNOWN, f"{what} raised {type(error).__name__}: {error}"
    if not isinstance(result, LocalTransactionState):
        _log.warn(
            "The transaction's {what} callable returned {result!r}, not a "
            "LocalTransactionState; telling the broker UNKNOWN",
            what=what,
            result=result,
        )
        return LocalTransactionState.UNKNOWN, f"{what} returned {result!r}"
    return result, None


@implementer(IRequestProcessor)
class _CheckRouter:
    """The CHECK_TRANSACTION_STATE processor of one client: hands each check to the
    transaction producer of the half message's group (PGROUP), so several transaction
    producers may share a client."""

    def __init__(self) -> None:
        self.producers: dict[str, TransactionProducer] = {}

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        channel = context.channel
        try:
            header = CheckTransactionStateRequestHeader.from_command(request)
            message, _ = decode_record(request.body)
        except (MalformedMessage, ValueError) as error:
            _log.warn(
                "Ignoring a CHECK_TRANSACTION_STATE from {peer} that cannot be read: {error}",
                peer=channel.remote_address,
                error=error,
            )
            return None
        group = message.properties.get(Property.PGROUP)
        producer = self.producers.get(group or "")
        if producer is None:
            _log.info(
                "Ignoring a CHECK_TRANSACTION_STATE from {peer} for group {group!r}: "
                "no transaction producer of that group runs on this client",
                peer=channel.remote_address,
                group=group,
            )
            return None
        producer._answer_check(channel, header, message)
        return None

    def reject_request(self) -> bool:
        return False


#: One check router per client, registered on it once for code 39.
_ROUTERS: weakref.WeakKeyDictionary[RemotingClient, _CheckRouter] = weakref.WeakKeyDictionary()


def _router(client: RemotingClient) -> _CheckRouter:
    router = _ROUTERS.get(client)
    if router is None:
        router = _ROUTERS[client] = _CheckRouter()
        client.register_processor(RequestCode.CHECK_TRANSACTION_STATE, router)
    return router


class TransactionProducer(Producer):
    """A :class:`Producer` that also sends messages in transactions.

    ``execute(message, argument)`` runs the local transaction after the half message is
    stored; ``check(message)`` tells the outcome of an earlier one when a broker asks
    (the message is the stored half message, a :class:`~rmqtwist.message.MessageExt`).
    Each may be a plain function, a coroutine function or return a Deferred, and gives a
    :class:`LocalTransactionState`; one that raises counts as UNKNOWN, so the broker
    asks again later. The other keywords are :class:`Producer`'s.
    """

    def __init__(
        self,
        group: str,
        name_servers: str | Iterable[str],
        execute: Execute,
        check: Check,
        **producer_kwargs: Any,
    ) -> None:
        super().__init__(group, name_servers, **producer_kwargs)
        self.execute = execute
        self.check = check

    def start(self) -> Deferred[None]:
        """Start as :meth:`Producer.start` and answer the brokers' transaction checks."""
        routed = _router(self.client).producers
        other = routed.get(self.group)
        if other is not None and other is not self:
            _log.warn(
                "Two transaction producers of group {group} share a client: "
                "the later one answers its checks",
                group=self.group,
            )
        routed[self.group] = self
        return super().start()

    def shutdown(self) -> Deferred[None]:
        """Stop answering checks, then shut down as :meth:`Producer.shutdown`."""
        router = _ROUTERS.get(self.client)
        if router is not None and router.producers.get(self.group) is self:
            del router.producers[self.group]
        return super().shutdown()

    # -- sending in a transaction ------------------------------------------------------

    def send_in_transaction(
        self, message: Message, argument: Any = None, timeout: float | None = None
    ) -> Deferred[TransactionSendResult]:
        """Send ``message`` as a half message, run ``execute(message, argument)`` and tell
        the broker the outcome; fires with a :class:`TransactionSendResult`.

        A failed half send fails with the send's error, and ``execute`` does not run. A
        half message the broker stored without SEND_OK (a flush timeout) is rolled back
        without running ``execute``, as Java's. ``execute`` is given the message as sent
        (with TRAN_MSG, PGROUP and its UNIQ_KEY). ``timeout`` bounds each send try, as
        for :meth:`Producer.send`. A delay level is refused (ValueError): a transactional
        message cannot be delayed.
        """
        if message.delay_level:
            raise ValueError("a transactional message cannot have a delay level")
        return ensureDeferred(self._send_in_transaction(message, argument, timeout))

    async def _send_in_transaction(
        self, message: Message, argument: Any, timeout: float | None
    ) -> TransactionSendResult:
        half = message.with_properties({Property.TRAN_MSG: "true", Property.PGROUP: self.group})
        result = await self.send(half, timeout=timeout)
        sent = half.with_properties({Property.UNIQ_KEY: result.msg_id})
        remark: str | None = None
        if result.status is SendStatus.SEND_OK:
            state, remark = await _outcome("execute", self.execute, sent, argument)
        else:
            _log.warn(
                "Half message {msg_id} was stored with {status}: rolling it back",
                msg_id=result.msg_id,
                status=result.status.value,
            )
            state = LocalTransactionState.ROLLBACK
        await self._end(result, state, remark)
        return TransactionSendResult(
            result.status,
            result.msg_id,
            result.offset_msg_id,
            result.queue,
            result.queue_offset,
            transaction_id=result.msg_id,
            local_state=state,
        )

    async def _end(
        self, result: SendResult, state: LocalTransactionState, remark: str | None
    ) -> None:
        """Send END_TRANSACTION for a half message just sent. A failure is logged, not
        raised: the half message stays unresolved and the broker will check it."""
        try:
            store_host, commit_log_offset = parse_offset_msg_id(result.offset_msg_id)
        except ValueError:
            _log.warn(
                "Cannot end transaction {msg_id}: the broker's message id {offset_id!r} "
                "cannot be read; the broker will check it",
                msg_id=result.msg_id,
                offset_id=result.offset_msg_id,
            )
            return
        broker_name = result.queue.broker_name
        address = self.routes.brokers().get(broker_name, {}).get(0) or store_host
        request = end_transaction_request(
            self.group,
            state,
            msg_id=result.msg_id,
            tran_state_table_offset=result.queue_offset,
            commit_log_offset=commit_log_offset,
            from_transaction_check=False,
            remark=remark,
        )
        try:
            await self.client.invoke_oneway(address, request, self.send_timeout)
        except Exception as error:
            _log.warn(
                "END_TRANSACTION ({state}) of {msg_id} to {broker} failed: {error}; "
                "the broker will check it",
                state=state.value,
                msg_id=result.msg_id,
                broker=address,
                error=error,
            )

    # -- answering checks --------------------------------------------------------------

    def _answer_check(
        self, channel: IChannel, header: CheckTransactionStateRequestHeader, message: MessageExt
    ) -> Deferred[None]:
        """Run ``check`` on a checked half message and answer on the channel it came on."""
        return ensureDeferred(self._check_and_end(channel, header, message))

    async def _check_and_end(
        self, channel: IChannel, header: CheckTransactionStateRequestHeader, message: MessageExt
    ) -> None:
        state, remark = await _outcome("check", self.check, message)
        request = end_transaction_request(
            self.group,
            state,
            msg_id=message.msg_id,
            tran_state_table_offset=header.tran_state_table_offset,
            commit_log_offset=header.commit_log_offset,
            from_transaction_check=True,
            transaction_id=header.transaction_id,
            remark=remark,
        )
        try:
            await channel.invoke_oneway(request, self.send_timeout)
        except Exception as error:
            _log.warn(
                "END_TRANSACTION ({state}) answering a check of {msg_id} to {peer} failed: "
                "{error}; the broker will check again",
                state=state.value,
                msg_id=message.msg_id,
                peer=channel.remote_address,
                error=error,
            )
