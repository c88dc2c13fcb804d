"""Transactions: half messages wait invisible in the half topic; END_TRANSACTION (37)
commits (the message is stored in its real topic) or rolls back; a half message left
unresolved past ``transaction_timeout`` gets a CHECK_TRANSACTION_STATE (39) sent to a
producer of its group, up to ``transaction_check_max`` times, after which it is dropped.

Resolutions are recorded as messages in the op-half topic, so a restarted broker with
``--data-dir`` knows which half messages are settled.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

from twisted.logger import Logger

from rmqtwist.broker.core import Draft
from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.broker.store import StoreError
from rmqtwist.broker.topics import HALF_TOPIC, OP_HALF_TOPIC
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.errors import MalformedMessage
from rmqtwist.headers import CheckTransactionStateRequestHeader, EndTransactionRequestHeader
from rmqtwist.message import (
    MessageExt,
    MessageSysFlag,
    Property,
    decode_record,
    encode_properties,
    encode_record,
)

if TYPE_CHECKING:
    from rmqtwist.broker.core import Broker
    from rmqtwist.broker.store import IMessageStore
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = ["TransactionChecker", "TransactionProcessor"]

_log = Logger()

COMMIT = int(MessageSysFlag.TRANSACTION_COMMIT)
ROLLBACK = int(MessageSysFlag.TRANSACTION_ROLLBACK)
_OP_TAG = "d"
_SCAN_LIMIT = 1 << 30


def _records(store: IMessageStore, topic: str, offset: int) -> Iterator[bytes]:
    """Every record of ``topic``'s queue 0 from ``offset`` on, read a batch at a time."""
    while True:
        result = store.read(topic, 0, offset, 64, _SCAN_LIMIT, None)
        if not result.records:
            return
        yield from result.records
        offset = result.next_offset


class TransactionChecker:
    """The half messages' state: which are resolved, how often each was checked."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: queue offsets (in the half topic) of half messages committed or rolled back
        self.resolved: set[int] = set()
        self.checks: dict[int, int] = {}
        #: every half message below this offset is resolved
        self.scan_from = 0
        self.checks_sent = 0

    def load(self) -> None:
        """Rebuild the resolved set from the op-half topic."""
        store = self.broker.store
        for record in _records(store, OP_HALF_TOPIC, store.min_offset(OP_HALF_TOPIC, 0)):
            try:
                message, _ = decode_record(record)
                self.resolved.add(int(message.body.decode("ascii")))
            except (MalformedMessage, ValueError, UnicodeDecodeError):
                continue
        self._advance()

    def _advance(self) -> None:
        while self.scan_from in self.resolved:
            self.resolved.discard(self.scan_from)
            self.checks.pop(self.scan_from, None)
            self.scan_from += 1

    def is_resolved(self, queue_offset: int) -> bool:
        return queue_offset < self.scan_from or queue_offset in self.resolved

    def resolve(self, half: MessageExt, store_host: str) -> None:
        """Record that ``half`` is settled (a message in the op-half topic)."""
        draft = Draft(
            topic=OP_HALF_TOPIC,
            queue_id=0,
            body=str(half.queue_offset).encode("ascii"),
            properties={Property.TAGS: _OP_TAG},
            born_timestamp=self.broker.now_ms(),
            born_host=store_host,
            store_host=store_host,
        )
        self.broker.put(draft, delay=False)
        self.resolved.add(half.queue_offset)
        self.checks.pop(half.queue_offset, None)
        self._advance()

    def check(self) -> None:
        """Send CHECK_TRANSACTION_STATE for every half message unresolved for too long."""
        broker = self.broker
        store = broker.store
        config = broker.config
        now = broker.now_ms()
        self.scan_from = max(self.scan_from, store.min_offset(HALF_TOPIC, 0))
        self._advance()
        for record in _records(store, HALF_TOPIC, self.scan_from):
            try:
                half, _ = decode_record(record)
            except MalformedMessage:
                continue
            if self.is_resolved(half.queue_offset):
                continue
            age = now - half.store_timestamp
            if age < config.transaction_timeout * 1000:
                return  # later half messages are younger still
            immunity = half.properties.get(Property.CHECK_IMMUNITY_TIME_IN_SECONDS)
            if immunity and immunity.isdigit() and age < int(immunity) * 1000:
                continue  # this one asked to wait longer; later ones may be due
            times = self.checks.get(half.queue_offset, 0)
            if times >= config.transaction_check_max:
                _log.warn(
                    "Dropping transaction half message {msg_id}: no outcome after {times} checks",
                    msg_id=half.msg_id,
                    times=times,
                )
                self.resolve(half, half.store_host)
                continue
            if self._send_check(half, times + 1):
                self.checks[half.queue_offset] = times + 1

    def _send_check(self, half: MessageExt, times: int) -> bool:
        broker = self.broker
        group = half.properties.get(Property.PGROUP, "")
        channels = broker.clients.producer_channels(group)
        if not channels:
            return False
        channel = broker.random.choice(channels)
        properties = dict(half.wire_properties())
        topic = properties.pop(Property.REAL_TOPIC, half.topic)
        queue_text = properties.pop(Property.REAL_QID, "0")
        properties[Property.TRANSACTION_CHECK_TIMES] = str(times)
        record = encode_record(
            topic=topic,
            body=half.body,
            properties=encode_properties(properties),
            queue_id=int(queue_text) if queue_text.isdigit() else 0,
            flag=half.flag,
            queue_offset=half.queue_offset,
            physical_offset=half.physical_offset,
            sys_flag=half.sys_flag | int(MessageSysFlag.TRANSACTION_PREPARED),
            born_timestamp=half.born_timestamp,
            born_host=half.born_host,
            store_timestamp=half.store_timestamp,
            store_host=half.store_host,
            reconsume_times=half.reconsume_times,
            prepared_transaction_offset=half.prepared_transaction_offset,
        )
        unique = half.properties.get(Property.UNIQ_KEY)
        header = CheckTransactionStateRequestHeader(
            tran_state_table_offset=half.queue_offset,
            commit_log_offset=half.physical_offset,
            msg_id=unique or half.offset_msg_id,
            transaction_id=unique or half.offset_msg_id,
            offset_msg_id=half.offset_msg_id,
        )
        broker.send_oneway(
            channel, header.to_request(RequestCode.CHECK_TRANSACTION_STATE, bytes(record))
        )
        self.checks_sent += 1
        return True


class TransactionProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.END_TRANSACTION: "end_transaction",
    }

    def __init__(self, broker: Broker, checker: TransactionChecker) -> None:
        super().__init__(broker)
        self.checker = checker

    def end_transaction(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand | None:
        header = EndTransactionRequestHeader.from_command(request)
        outcome = header.commit_or_rollback
        if outcome not in (COMMIT, ROLLBACK):
            return None  # UNKNOW: the broker will ask again later
        broker = self.broker
        record = broker.store.read_at(header.commit_log_offset)
        half = None
        if record is not None:
            try:
                half, _ = decode_record(record)
            except MalformedMessage:
                half = None
        if half is None or half.topic != HALF_TOPIC:
            return answer(
                request, ResponseCode.SYSTEM_ERROR, "Find prepared transaction message failed"
            )
        if half.properties.get(Property.PGROUP) != header.producer_group:
            return answer(
                request,
                ResponseCode.SYSTEM_ERROR,
                "The producer group wrong: the half message belongs to "
                f"{half.properties.get(Property.PGROUP)!r}",
            )
        if half.queue_offset != header.tran_state_table_offset:
            return answer(
                request, ResponseCode.SYSTEM_ERROR, "The transaction state table offset wrong"
            )
        if self.checker.is_resolved(half.queue_offset):
            return answer(request, ResponseCode.SYSTEM_ERROR, "The transaction is already resolved")
        store_host = broker.store_host(context.channel)
        try:
            if outcome == COMMIT:
                properties = dict(half.wire_properties())
                topic = properties.pop(Property.REAL_TOPIC, "")
                queue_text = properties.pop(Property.REAL_QID, "0")
                properties[Property.TRAN_PREPARED_QUEUE_OFFSET] = str(half.queue_offset)
                broker.put(
                    Draft(
                        topic=topic,
                        queue_id=int(queue_text) if queue_text.isdigit() else 0,
                        body=half.body,
                        properties=properties,
                        born_timestamp=half.born_timestamp,
                        born_host=half.born_host,
                        store_host=store_host,
                        flag=half.flag,
                        sys_flag=(half.sys_flag & ~ROLLBACK) | COMMIT,
                        reconsume_times=half.reconsume_times,
                        prepared_transaction_offset=half.physical_offset,
                    )
                )
            self.checker.resolve(half, store_host)
        except StoreError as e:
            return answer(request, ResponseCode.SYSTEM_ERROR, f"the store cannot take it: {e}")
        return answer(request)
