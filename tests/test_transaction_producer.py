"""``rmqtwist.producer.TransactionProducer``: half messages, END_TRANSACTION and answers to
CHECK_TRANSACTION_STATE, against the dev broker (real reactor, short check timings) and,
for the exact wire fields, against a fake client replaying Java 4.9.8's transcript
(``06-transaction-producer``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from zope.interface import implementer

from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.headers import CheckTransactionStateRequestHeader, SendMessageRequestHeaderV2
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.message import (
    Message,
    MessageExt,
    decode_properties,
    encode_properties,
    encode_record,
)
from rmqtwist.producer import (
    LocalTransactionState,
    ProducerClosedError,
    ProducerError,
    SendStatus,
    TransactionProducer,
    TransactionSendResult,
)
from rmqtwist.producer._transaction import end_transaction_request
from rmqtwist.testing import RunningBroker, start_broker

COMMIT = LocalTransactionState.COMMIT
ROLLBACK = LocalTransactionState.ROLLBACK
UNKNOWN = LocalTransactionState.UNKNOWN

# -- END_TRANSACTION's header, against Java 4.9.8's transcript ------------------------------

GROUP = "javapeer_tx_pg"
UNIQ = "FD00000000000000000000000000000249905FFD2B2712E4E5320000"
UNIQ_CHECKED = "FD00000000000000000000000000000249905FFD2B2712E4E5700002"


def test_end_transaction_after_execute_has_javas_fields() -> None:
    # Transcript line 10: the half message was stored at 0x1C12 = 7186, queue offset 0.
    request = end_transaction_request(
        GROUP,
        COMMIT,
        msg_id=UNIQ,
        tran_state_table_offset=0,
        commit_log_offset=7186,
        from_transaction_check=False,
    )
    assert request.code == RequestCode.END_TRANSACTION and request.is_oneway
    # Java 4.9.8 adds "bname" (its RPC header); the broker does not need it.
    assert dict(request.ext_fields or {}) == {
        "producerGroup": GROUP,
        "commitLogOffset": "7186",
        "msgId": UNIQ,
        "tranStateTableOffset": "0",
        "commitOrRollback": "8",
        "fromTransactionCheck": "false",
    }
    for state, code in ((ROLLBACK, "12"), (UNKNOWN, "0")):
        other = end_transaction_request(
            GROUP,
            state,
            msg_id=UNIQ,
            tran_state_table_offset=1,
            commit_log_offset=7504,
            from_transaction_check=False,
        )
        assert other.ext("commitOrRollback") == code


def test_end_transaction_answering_a_check_has_javas_fields() -> None:
    # Transcript line 20, answering line 19's check.
    request = end_transaction_request(
        GROUP,
        COMMIT,
        msg_id=UNIQ_CHECKED,
        tran_state_table_offset=3,
        commit_log_offset=8707,
        from_transaction_check=True,
        transaction_id=UNIQ_CHECKED,
    )
    assert dict(request.ext_fields or {}) == {
        "producerGroup": GROUP,
        "commitLogOffset": "8707",
        "msgId": UNIQ_CHECKED,
        "tranStateTableOffset": "3",
        "commitOrRollback": "8",
        "transactionId": UNIQ_CHECKED,
        "fromTransactionCheck": "true",
    }


# -- a fake client replaying the transcript -------------------------------------------------

BROKER = "127.0.0.1:29911"
ROUTE = {
    "brokerDatas": [{"brokerAddrs": {"0": BROKER}, "brokerName": "broker-a"}],
    "queueDatas": [{"brokerName": "broker-a", "perm": 6, "readQueueNums": 4, "writeQueueNums": 4}],
}


class FakeChannel:
    remote_address = BROKER

    def __init__(self, sent: list[tuple[str, RemotingCommand]]) -> None:
        self.sent = sent

    def invoke_oneway(self, request: RemotingCommand, timeout: float = 3.0) -> Deferred[None]:
        self.sent.append(("channel", request))
        return succeed(None)


@implementer(IRequestContext)
class FakeContext:
    def __init__(self, channel: FakeChannel, request: RemotingCommand) -> None:
        self.channel = channel
        self.request = request
        self.responded = False

    def respond(self, response: RemotingCommand) -> None:
        raise AssertionError("a oneway check gets no response")


class FakeClient:
    """A name server and broker-a as in the transcript; keeps every request, and the
    processors registered on it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, RemotingCommand]] = []
        self.processors: dict[int, IRequestProcessor] = {}
        self.send_code = ResponseCode.SUCCESS

    def register_processor(self, code: int, processor: IRequestProcessor) -> None:
        self.processors[code] = processor

    def invoke(self, address: str, request: RemotingCommand, timeout: float) -> Deferred[Any]:
        self.sent.append((address, request))
        if request.code == RequestCode.GET_ROUTEINFO_BY_TOPIC:
            return succeed(
                RemotingCommand.response_to(
                    request, ResponseCode.SUCCESS, body=json.dumps(ROUTE).encode()
                )
            )
        if request.code == RequestCode.SEND_MESSAGE_V2:
            fields = {"msgId": "7F000001000074D70000000000001C12", "queueId": "3"}
            return succeed(
                RemotingCommand.response_to(
                    request, self.send_code, None, {**fields, "queueOffset": "0"}
                )
            )
        return succeed(RemotingCommand.response_to(request, ResponseCode.SUCCESS))

    def invoke_oneway(
        self, address: str, request: RemotingCommand, timeout: float
    ) -> Deferred[None]:
        self.sent.append((address, request))
        return succeed(None)

    def of_code(self, code: int) -> list[tuple[str, RemotingCommand]]:
        return [(a, r) for a, r in self.sent if r.code == code]

    def check(self, request: RemotingCommand) -> None:
        """Push ``request`` as broker-a would, on a channel from broker-a."""
        context = FakeContext(FakeChannel(self.sent), request)
        processor = self.processors[RequestCode.CHECK_TRANSACTION_STATE]
        assert processor.process_request(context, request) is None


def fake_producer(
    execute: Callable[..., Any], check: Callable[..., Any], group: str = GROUP
) -> tuple[TransactionProducer, FakeClient]:
    client = FakeClient()
    producer = TransactionProducer(
        group,
        ["ns:1"],
        execute,
        check,
        reactor=Clock(),
        client=client,
    )
    producer.start()
    return producer, client


def test_send_in_transaction_sends_javas_half_message_and_end_transaction() -> None:
    seen: list[tuple[Message, Any]] = []

    def execute(message: Message, argument: Any) -> LocalTransactionState:
        seen.append((message, argument))
        return COMMIT

    producer, client = fake_producer(execute, lambda m: UNKNOWN)
    message = Message("JpTopic06", b"tx-COMMIT_MESSAGE", tags="TagTx", keys="tx0")
    d = producer.send_in_transaction(message, "arg")
    result = _result(d)

    [(address, send)] = client.of_code(RequestCode.SEND_MESSAGE_V2)
    assert address == BROKER
    header = SendMessageRequestHeaderV2.from_command(send)
    assert (header.a, header.f) == (GROUP, 4)  # sysFlag TRANSACTION_PREPARED
    properties = decode_properties(header.i or "")
    assert properties["TRAN_MSG"] == "true" and properties["PGROUP"] == GROUP
    uniq = properties["UNIQ_KEY"]

    [(message_seen, argument)] = seen
    assert argument == "arg"
    assert message_seen.properties["UNIQ_KEY"] == uniq
    assert message_seen.properties["TRAN_MSG"] == "true"
    assert (message_seen.body, message_seen.tags) == (b"tx-COMMIT_MESSAGE", "TagTx")

    [(address, end)] = client.of_code(RequestCode.END_TRANSACTION)
    assert address == BROKER and end.is_oneway
    assert dict(end.ext_fields or {}) == {
        "producerGroup": GROUP,
        "commitLogOffset": "7186",
        "msgId": uniq,
        "tranStateTableOffset": "0",
        "commitOrRollback": "8",
        "fromTransactionCheck": "false",
    }
    assert isinstance(result, TransactionSendResult)
    assert result.status is SendStatus.SEND_OK
    assert (result.transaction_id, result.msg_id, result.local_state) == (uniq, uniq, COMMIT)
    assert result.offset_msg_id == "7F000001000074D70000000000001C12"
    assert (result.queue.queue_id, result.queue_offset) == (3, 0)


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_a_half_message_not_stored_ok_is_rolled_back_without_execute() -> None:
    calls: list[Message] = []

    def execute(message: Message, argument: Any) -> LocalTransactionState:
        calls.append(message)
        return COMMIT

    producer, client = fake_producer(execute, lambda m: UNKNOWN)
    client.send_code = ResponseCode.FLUSH_DISK_TIMEOUT
    result = _result(producer.send_in_transaction(Message("JpTopic06", b"x")))
    assert result.status is SendStatus.FLUSH_DISK_TIMEOUT
    assert result.local_state is ROLLBACK and calls == []
    [(_, end)] = client.of_code(RequestCode.END_TRANSACTION)
    assert end.ext("commitOrRollback") == "12"


def test_execute_raising_or_returning_junk_is_unknown_with_a_remark() -> None:
    def boom(message: Message, argument: Any) -> LocalTransactionState:
        raise RuntimeError("db down")

    producer, client = fake_producer(boom, lambda m: UNKNOWN)
    result = _result(producer.send_in_transaction(Message("JpTopic06", b"x")))
    assert result.local_state is UNKNOWN
    [(_, end)] = client.of_code(RequestCode.END_TRANSACTION)
    assert end.ext("commitOrRollback") == "0"
    assert end.remark == "execute raised RuntimeError: db down"

    producer, client = fake_producer(lambda m, a: "COMMIT", lambda m: UNKNOWN)
    result = _result(producer.send_in_transaction(Message("JpTopic06", b"x")))
    assert result.local_state is UNKNOWN


def test_a_delay_level_is_refused_and_a_stopped_producer_sends_nothing() -> None:
    producer, client = fake_producer(lambda m, a: COMMIT, lambda m: UNKNOWN)
    with pytest.raises(ValueError, match="delay level"):
        producer.send_in_transaction(Message("JpTopic06", b"x", delay_level=2))
    _result(producer.shutdown())
    with pytest.raises(ProducerClosedError):
        _result(producer.send_in_transaction(Message("JpTopic06", b"x")))
    assert client.of_code(RequestCode.SEND_MESSAGE_V2) == []


def checked_record(group: str = GROUP, uniq: str = UNIQ_CHECKED) -> bytes:
    """The body of transcript line 19's check: the half message, back in its topic."""
    properties = {
        "REAL_TOPIC": "JpTopic06",
        "TRANSACTION_CHECK_TIMES": "1",
        "KEYS": "tx2",
        "TRAN_MSG": "true",
        "UNIQ_KEY": uniq,
        "CLUSTER": "DefaultCluster",
        "PGROUP": group,
        "WAIT": "false",
        "TAGS": "TagTx",
        "REAL_QID": "1",
    }
    return bytes(
        encode_record(
            topic="JpTopic06",
            body=b"tx-UNKNOW",
            properties=encode_properties(properties),
            queue_id=1,
            queue_offset=3,
            physical_offset=8707,
            born_timestamp=1796400190832,
            born_host="127.0.0.1:42684",
            store_timestamp=1796400190848,
            store_host="127.0.0.1:29911",
        )
    )


def check_request(body: bytes, uniq: str = UNIQ_CHECKED) -> RemotingCommand:
    header = CheckTransactionStateRequestHeader(
        tran_state_table_offset=3,
        commit_log_offset=8707,
        msg_id=uniq,
        transaction_id=uniq,
        offset_msg_id="7F000001000074D70000000000002203",
    )
    return header.to_request(RequestCode.CHECK_TRANSACTION_STATE, body, oneway=True)


def test_a_check_is_answered_on_its_channel_as_java_does() -> None:
    checked: list[MessageExt] = []
    answer: Deferred[LocalTransactionState] = Deferred()

    def check(message: MessageExt) -> Deferred[LocalTransactionState]:
        checked.append(message)
        return answer

    _producer, client = fake_producer(lambda m, a: UNKNOWN, check)
    client.check(check_request(checked_record()))
    [message] = checked
    assert (message.topic, message.body, message.tags) == ("JpTopic06", b"tx-UNKNOW", "TagTx")
    assert message.msg_id == UNIQ_CHECKED
    assert client.of_code(RequestCode.END_TRANSACTION) == []  # not before check answers
    answer.callback(COMMIT)
    [(where, end)] = client.of_code(RequestCode.END_TRANSACTION)
    assert where == "channel" and end.is_oneway
    assert dict(end.ext_fields or {}) == {
        "producerGroup": GROUP,
        "commitLogOffset": "8707",
        "msgId": UNIQ_CHECKED,
        "tranStateTableOffset": "3",
        "commitOrRollback": "8",
        "transactionId": UNIQ_CHECKED,
        "fromTransactionCheck": "true",
    }


def test_a_check_that_raises_answers_unknown_and_bad_checks_are_ignored() -> None:
    async def check(message: MessageExt) -> LocalTransactionState:
        raise KeyError("no such order")

    _producer, client = fake_producer(lambda m, a: UNKNOWN, check)
    client.check(check_request(checked_record()))
    [(_, end)] = client.of_code(RequestCode.END_TRANSACTION)
    assert end.ext("commitOrRollback") == "0"
    assert end.ext("fromTransactionCheck") == "true"
    assert (end.remark or "").startswith("check raised KeyError")

    client.sent.clear()
    client.check(check_request(b"\x00\x01 not a record"))
    client.check(check_request(checked_record(group="someone_else")))
    assert client.sent == []


def test_transaction_producers_sharing_a_client_get_their_own_groups_checks() -> None:
    client = FakeClient()
    checked: dict[str, list[str]] = {"a": [], "b": []}

    def checker(group: str) -> Callable[[MessageExt], LocalTransactionState]:
        def check(message: MessageExt) -> LocalTransactionState:
            checked[group].append(message.msg_id)
            return ROLLBACK

        return check

    producers = [
        TransactionProducer(
            group,
            ["ns:1"],
            lambda m, a: UNKNOWN,
            checker(group),
            reactor=Clock(),
            client=client,
        )
        for group in ("a", "b")
    ]
    for producer in producers:
        producer.start()
    client.check(check_request(checked_record("b", "B1"), "B1"))
    client.check(check_request(checked_record("a", "A1"), "A1"))
    assert checked == {"a": ["A1"], "b": ["B1"]}
    ends = [r for _, r in client.of_code(RequestCode.END_TRANSACTION)]
    assert [(r.ext("producerGroup"), r.ext("msgId")) for r in ends] == [("b", "B1"), ("a", "A1")]
    _result(producers[1].shutdown())
    client.check(check_request(checked_record("b", "B2"), "B2"))
    assert checked["b"] == ["B1"]


# -- against the dev broker -----------------------------------------------------------------

TIMINGS: dict[str, Any] = {"transaction_timeout": 0.3, "transaction_check_interval": 0.1}


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (on the real reactor) until ``predicate()`` is true."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await deferLater(reactor, 0.02, lambda: None)
    assert predicate(), "timed out waiting"


async def pause(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def settled(local: Local) -> None:
    """The half message is resolved: the broker checks it no more. (The dev broker
    checks every interval, so one check may already be under way when it resolves.)"""
    await pause(0.3)
    count = len(local.checked)
    await pause(0.6)
    assert len(local.checked) == count


class Local:
    """A local transaction log: ``execute`` and ``check`` answer from ``states``, and
    record what they were asked."""

    def __init__(self, execute_state: LocalTransactionState, check_states: list[Any]) -> None:
        self.execute_state = execute_state
        self.check_states = check_states
        self.executed: list[Message] = []
        self.checked: list[MessageExt] = []

    def execute(self, message: Message, argument: Any) -> LocalTransactionState:
        self.executed.append(message)
        if self.execute_state is None:
            raise RuntimeError("the local transaction failed")
        return self.execute_state

    async def check(self, message: MessageExt) -> LocalTransactionState:
        self.checked.append(message)
        state = self.check_states.pop(0) if len(self.check_states) > 1 else self.check_states[0]
        if isinstance(state, Exception):
            raise state
        return state  # type: ignore[no-any-return]


async def run(
    local: Local, message: Message, **options: Any
) -> tuple[RunningBroker, TransactionProducer, TransactionSendResult]:
    broker = await start_broker(**{**TIMINGS, **options})
    producer = TransactionProducer("tx_pg", broker.address, local.execute, local.check)
    await producer.start()
    try:
        result = await producer.send_in_transaction(message)
    except BaseException:
        await producer.shutdown()
        await broker.stop()
        raise
    return broker, producer, result


@pytest_twisted.ensureDeferred
async def test_commit_makes_the_message_visible_and_it_is_never_checked() -> None:
    local = Local(COMMIT, [ROLLBACK])
    message = Message("TxT", b"paid", tags="TagTx", keys="order-1", properties={"p": "v"})
    broker, producer, result = await run(local, message)
    try:
        assert result.local_state is COMMIT and result.status is SendStatus.SEND_OK
        await eventually(lambda: len(broker.messages("TxT")) == 1)
        [stored] = broker.messages("TxT")
        assert (stored.body, stored.tags, stored.keys) == (b"paid", "TagTx", ("order-1",))
        assert stored.queue_id == result.queue.queue_id
        assert stored.properties["p"] == "v"
        assert stored.properties["UNIQ_KEY"] == result.transaction_id
        assert stored.properties["PGROUP"] == "tx_pg"
        await pause(0.8)
        assert local.checked == []
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_the_half_message_is_invisible_until_execute_commits() -> None:
    broker = await start_broker(**TIMINGS)
    pending: Deferred[LocalTransactionState] = Deferred()
    producer = TransactionProducer(
        "tx_pg", broker.address, lambda m, a: pending, lambda m: succeed(UNKNOWN)
    )
    await producer.start()
    try:
        d = producer.send_in_transaction(Message("TxT", b"slow"))
        await pause(0.1)
        assert broker.messages("TxT") == [] and not d.called
        pending.callback(COMMIT)
        result = await d
        assert result.local_state is COMMIT
        await eventually(lambda: [m.body for m in broker.messages("TxT")] == [b"slow"])
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_rollback_is_never_visible_nor_checked() -> None:
    local = Local(ROLLBACK, [COMMIT])
    broker, producer, result = await run(local, Message("TxT", b"cancelled"))
    try:
        assert result.local_state is ROLLBACK
        await pause(0.8)
        assert broker.messages("TxT") == [] and local.checked == []
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_then_the_check_commits() -> None:
    local = Local(UNKNOWN, [COMMIT])
    broker, producer, result = await run(local, Message("TxT", b"later", tags="T"))
    try:
        assert result.local_state is UNKNOWN
        assert broker.messages("TxT") == []
        await eventually(lambda: [m.body for m in broker.messages("TxT")] == [b"later"])
        checked = local.checked[0]
        assert (checked.topic, checked.body, checked.tags) == ("TxT", b"later", "T")
        assert checked.msg_id == result.transaction_id
        assert checked.properties["TRANSACTION_CHECK_TIMES"] == "1"
        assert checked.queue_id == result.queue.queue_id
        await settled(local)
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_check_that_raises_is_checked_again() -> None:
    local = Local(UNKNOWN, [RuntimeError("db down"), UNKNOWN, COMMIT])
    broker, producer, _sent = await run(local, Message("TxT", b"retried"))
    try:
        await eventually(lambda: [m.body for m in broker.messages("TxT")] == [b"retried"])
        times = [m.properties["TRANSACTION_CHECK_TIMES"] for m in local.checked]
        # A check sent before the commit reached the broker may come once more.
        assert times[:3] == ["1", "2", "3"]
        await settled(local)
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_execute_raising_is_unknown_and_the_check_rolls_back() -> None:
    local = Local(None, [ROLLBACK])  # type: ignore[arg-type]
    broker, producer, result = await run(local, Message("TxT", b"failed"))
    try:
        assert result.local_state is UNKNOWN
        await eventually(lambda: len(local.checked) >= 1)
        await settled(local)
        assert broker.messages("TxT") == []
    finally:
        await producer.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_a_refused_half_send_fails_and_execute_never_runs() -> None:
    local = Local(COMMIT, [COMMIT])
    with pytest.raises(ProducerError):
        await run(local, Message("NoSuchTopic", b"x"), auto_create_topic=False)
    assert local.executed == []
