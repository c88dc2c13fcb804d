"""Transactions: half messages are invisible until END_TRANSACTION (37) commits them; a
rollback never shows; an unresolved one gets CHECK_TRANSACTION_STATE (39) pushed to a
producer of its group once ``transaction_timeout`` passed, at most
``transaction_check_max`` times; the settled state survives a restart."""

from __future__ import annotations

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.message import MessageExt, decode_record, decode_records, parse_offset_msg_id

from .harness import BROKER, BrokerHarness, Peer, ok

COMMIT, ROLLBACK, UNKNOWN = 8, 12, 0
PREPARED = 4
GROUP = "tx_pg"


class Half:
    """A half message as the producer knows it from the send response."""

    def __init__(self, response: RemotingCommand, uniq: str) -> None:
        assert response.ext_fields is not None
        self.msg_id = response.ext_fields["msgId"]
        self.queue_id = int(response.ext_fields["queueId"])
        self.queue_offset = int(response.ext_fields["queueOffset"])
        host, self.commit_log_offset = parse_offset_msg_id(self.msg_id)
        assert host == BROKER
        self.uniq = uniq


def send_half(peer: Peer, body: bytes, queue_id: int = 1, group: str = GROUP) -> Half:
    uniq = f"FD00000000000000000000000000000249905FFD2B2712E4E53200{queue_id:02X}"
    response = ok(
        peer.send_message(
            "T",
            body,
            tags="TagTx",
            keys="tx",
            properties={"TRAN_MSG": "true", "PGROUP": group, "UNIQ_KEY": uniq, "u": "1"},
            queue_id=queue_id,
            sys_flag=PREPARED,
            group=group,
        )
    )
    return Half(response, uniq)


def end(peer: Peer, half: Half, outcome: int, **overrides: object) -> RemotingCommand | None:
    values: dict[str, object] = {
        "group": GROUP,
        "commit_log_offset": half.commit_log_offset,
        "queue_offset": half.queue_offset,
    }
    values.update(overrides)
    return peer.end_transaction(
        str(values["group"]),
        int(values["commit_log_offset"]),  # type: ignore[call-overload]
        int(values["queue_offset"]),  # type: ignore[call-overload]
        outcome,
        msg_id=half.uniq,
    )


def producer(harness: BrokerHarness) -> Peer:
    peer = harness.peer()
    ok(peer.heartbeat("producer-1", "unused", None, producer_groups=(GROUP,)))
    return peer


def checks(peer: Peer) -> list[RemotingCommand]:
    pushed = peer.take_pushed()
    assert all(p.code == RequestCode.CHECK_TRANSACTION_STATE and p.is_oneway for p in pushed)
    return pushed


def test_a_half_message_is_invisible_to_pulls() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    half = send_half(peer, b"pending")
    assert half.queue_id == 1  # the queue asked for, as Apache answers
    response = peer.pull("T", 1, 0)
    assert response.code == ResponseCode.PULL_NOT_FOUND
    assert harness.messages("T", 1) == []
    opaque = peer.hold("T", 1, 0)
    harness.advance(1)
    assert peer.response(opaque) is None


def test_commit_makes_it_appear_in_its_real_queue_and_wakes_pulls() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    send_half(peer, b"other", queue_id=0)
    half = send_half(peer, b"committed")
    consumer = harness.peer()
    opaque = consumer.hold("T", 1, 0)
    response = end(peer, half, COMMIT)
    assert response is not None and response.code == ResponseCode.SUCCESS
    pulled = consumer.response(opaque)
    assert pulled is not None and pulled.code == ResponseCode.SUCCESS
    [message] = decode_records(pulled.body)
    assert (message.topic, message.queue_id, message.body) == ("T", 1, b"committed")
    assert (message.tags, message.keys) == ("TagTx", ("tx",))
    assert message.properties["u"] == "1"
    assert message.properties["UNIQ_KEY"] == half.uniq
    assert message.sys_flag & 0xC == COMMIT
    assert message.properties["TRAN_PREPARED_QUEUE_OFFSET"] == str(half.queue_offset)
    assert message.prepared_transaction_offset == half.commit_log_offset
    assert harness.messages("T", 0) == []


def test_end_transaction_checks_group_offsets_and_settles_once() -> None:
    harness = BrokerHarness()
    peer = harness.peer()
    half = send_half(peer, b"x")
    wrong_group = end(peer, half, COMMIT, group="someone_else")
    assert wrong_group is not None and wrong_group.code == ResponseCode.SYSTEM_ERROR
    assert "producer group wrong" in (wrong_group.remark or "")
    wrong_queue_offset = end(peer, half, COMMIT, queue_offset=half.queue_offset + 1)
    assert wrong_queue_offset is not None
    assert wrong_queue_offset.code == ResponseCode.SYSTEM_ERROR
    for bad in (half.commit_log_offset + 1, 10**9):
        wrong_offset = end(peer, half, COMMIT, commit_log_offset=bad)
        assert wrong_offset is not None and wrong_offset.code == ResponseCode.SYSTEM_ERROR
    ok(peer.send_message("T", b"plain", queue_id=1))
    plain = harness.messages("T", 1)[0]
    not_half = end(peer, half, COMMIT, commit_log_offset=plain.physical_offset)
    assert not_half is not None and not_half.code == ResponseCode.SYSTEM_ERROR
    assert [m.body for m in harness.messages("T", 1)] == [b"plain"]
    ok(end(peer, half, COMMIT))  # type: ignore[arg-type]
    again = end(peer, half, COMMIT)
    assert again is not None and again.code == ResponseCode.SYSTEM_ERROR
    assert [m.body for m in harness.messages("T", 1)] == [b"plain", b"x"]


def test_rollback_never_appears_and_is_never_checked() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3))
    peer = producer(harness)
    half = send_half(peer, b"rolled back")
    ok(end(peer, half, ROLLBACK))  # type: ignore[arg-type]
    harness.advance(60)
    harness.checker.check()
    assert checks(peer) == []
    assert harness.messages("T", 1) == []
    assert end(peer, half, COMMIT).code == ResponseCode.SYSTEM_ERROR  # type: ignore[union-attr]
    assert harness.messages("T", 1) == []


def test_unknown_gets_no_answer_then_a_check_after_the_timeout() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=6))
    peer = producer(harness)
    bystander = harness.peer()
    ok(bystander.heartbeat("other", "unused", None, producer_groups=("another_group",)))
    half = send_half(peer, b"unknown")
    assert end(peer, half, UNKNOWN) is None  # Apache answers nothing either
    harness.advance(5.9)
    harness.checker.check()
    assert checks(peer) == []
    harness.advance(0.2)
    harness.checker.check()
    [check] = checks(peer)
    assert bystander.take_pushed() == []
    assert check.ext_fields is not None
    assert set(check.ext_fields) == {
        "tranStateTableOffset",
        "commitLogOffset",
        "msgId",
        "transactionId",
        "offsetMsgId",
    }
    assert check.ext_fields["commitLogOffset"] == str(half.commit_log_offset)
    assert check.ext_fields["tranStateTableOffset"] == str(half.queue_offset)
    assert check.ext_fields["offsetMsgId"] == half.msg_id
    assert check.ext_fields["msgId"] == half.uniq
    assert check.ext_fields["transactionId"] == half.uniq
    message, end_pos = decode_record(check.body)
    assert end_pos == len(check.body)
    assert (message.topic, message.queue_id, message.body) == ("T", 1, b"unknown")
    assert message.properties["TRANSACTION_CHECK_TIMES"] == "1"
    assert message.properties["PGROUP"] == GROUP
    assert message.sys_flag & 0xC == PREPARED
    assert harness.checker.checks_sent == 1


def check_body(check: RemotingCommand) -> MessageExt:
    message, _ = decode_record(check.body)
    return message


def test_the_producer_resolves_a_check_with_end_transaction() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3))
    peer = producer(harness)
    half = send_half(peer, b"checked")
    harness.advance(5)
    harness.checker.check()
    [check] = checks(peer)
    assert check.ext_fields is not None
    harness.advance(5)
    harness.checker.check()
    [second] = checks(peer)
    assert check_body(second).properties["TRANSACTION_CHECK_TIMES"] == "2"
    response = peer.end_transaction(
        GROUP,
        int(check.ext_fields["commitLogOffset"]),
        int(check.ext_fields["tranStateTableOffset"]),
        COMMIT,
        msg_id=check.ext_fields["msgId"],
        from_check=True,
    )
    assert response is not None and response.code == ResponseCode.SUCCESS
    assert [m.body for m in harness.messages("T", half.queue_id)] == [b"checked"]
    harness.advance(60)
    harness.checker.check()
    assert checks(peer) == []


def test_no_producer_of_the_group_means_no_check_yet() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3, transaction_check_max=2))
    sender = harness.peer()
    send_half(sender, b"orphan")
    for _ in range(5):
        harness.advance(10)
        harness.checker.check()
    assert checks(sender) == []
    assert harness.checker.checks_sent == 0
    late = producer(harness)  # a producer of the group connects: now it is asked
    harness.checker.check()
    assert len(checks(late)) == 1


def test_dropped_after_the_maximum_number_of_checks() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3, transaction_check_max=3))
    peer = producer(harness)
    half = send_half(peer, b"never answered")
    times = []
    for _ in range(6):
        harness.advance(10)
        harness.checker.check()
        times += [check_body(c).properties["TRANSACTION_CHECK_TIMES"] for c in checks(peer)]
    assert times == ["1", "2", "3"]
    assert harness.checker.is_resolved(half.queue_offset)
    assert harness.messages("T", 1) == []
    late = end(peer, half, COMMIT)
    assert late is not None and late.code == ResponseCode.SYSTEM_ERROR


def send_immune_half(peer: Peer, body: bytes, seconds: int) -> None:
    """A half message that asks not to be checked for ``seconds``."""
    properties = {
        "TRAN_MSG": "true",
        "PGROUP": GROUP,
        "CHECK_IMMUNITY_TIME_IN_SECONDS": str(seconds),
    }
    ok(peer.send_message("T", body, properties=properties, sys_flag=PREPARED))


def test_check_immunity_time_delays_the_first_check() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3))
    peer = producer(harness)
    send_immune_half(peer, b"immune", 20)
    harness.advance(19)
    harness.checker.check()
    assert checks(peer) == []
    harness.advance(1)
    harness.checker.check()
    assert len(checks(peer)) == 1


def test_the_resolved_state_is_rebuilt_on_a_fresh_broker() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3))
    peer = harness.peer()
    committed = send_half(peer, b"committed", queue_id=0)
    rolled_back = send_half(peer, b"rolled back", queue_id=1)
    unknown = send_half(peer, b"unknown", queue_id=2)
    ok(end(peer, committed, COMMIT))  # type: ignore[arg-type]
    ok(end(peer, rolled_back, ROLLBACK))  # type: ignore[arg-type]
    assert end(peer, unknown, UNKNOWN) is None

    restarted = harness.reopen()
    again = producer(restarted)
    assert restarted.checker.is_resolved(committed.queue_offset)
    assert restarted.checker.is_resolved(rolled_back.queue_offset)
    assert not restarted.checker.is_resolved(unknown.queue_offset)
    harness.advance(10)
    restarted.checker.check()
    [check] = checks(again)
    assert check_body(check).body == b"unknown"
    assert end(again, committed, COMMIT).code == ResponseCode.SYSTEM_ERROR  # type: ignore[union-attr]
    ok(end(again, unknown, ROLLBACK))  # type: ignore[arg-type]
    assert [m.body for m in restarted.messages("T", 0)] == [b"committed"]
    assert restarted.messages("T", 2) == []


def test_the_periodic_checker_runs_on_the_clock() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3, transaction_check_interval=5))
    harness.run_transaction_checks()
    peer = producer(harness)
    send_half(peer, b"x")
    harness.advance(5)
    assert len(checks(peer)) == 1
    harness.advance(5)
    assert len(checks(peer)) == 1


def test_an_immune_half_message_does_not_hold_back_the_checks_of_later_ones() -> None:
    harness = BrokerHarness(BrokerConfig(transaction_timeout=3))
    peer = producer(harness)
    send_immune_half(peer, b"immune", 60)
    harness.advance(1)
    send_half(peer, b"plain")
    harness.advance(5)
    harness.checker.check()
    assert [check_body(c).body for c in checks(peer)] == [b"plain"]
