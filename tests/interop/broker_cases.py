"""The interop scenarios against the dev broker, written once for any producer and consumer.

test_broker_ons.py, test_broker_cpp.py and test_broker_cross.py call these with the
``ons`` driver (ali-ons 3.12.0), the ``cpp`` driver (rocketmq-client-cpp in the PyPI
package rocketmq 0.4.4) or one of each. Each scenario creates its own topic (four queues)
and groups, so one broker could serve them all.

What the scenarios lean on, beyond "a message goes in and comes out":

- a new group with the clients' default CONSUME_FROM_LAST_OFFSET reads a young queue from
  offset 0: QUERY_CONSUMER_OFFSET answers 0 with offset 0 when the group has no offset
  and the queue's messages are all still there (the 4.9 broker's rule, broker.md §1.2);
  the C++ client cannot be told to start anywhere else;
- a consumer's clean close commits its offsets (UPDATE_CONSUMER_OFFSET), so a restart
  resumes there and a queue handed over after a consumer leaves carries on where it was;
- a failed message comes back through ``%RETRY%group`` after delay level 3 + reconsume
  times (10 s for the first retry), renamed back to its topic by the client, with
  RETRY_TOPIC and ORIGIN_MESSAGE_ID set and reconsumeTimes 1;
- a delayed message is delivered no earlier than its level after it was sent (level 2:
  5 s). (Apache's 4.9.8 broker keeps DELAY, REAL_TOPIC and REAL_QID on the delivered copy,
  shared/transcripts/java-4.9.8: nothing is asserted about them.)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.interop.conftest import (
    BackgroundClient,
    ClientRun,
    Driver,
    RunningBroker,
    broker_request,
    create_topic,
)

QUEUES = 4
#: First retry of a failed message: delay level 3 + 0 = 10 s; allow for timer granularity.
FIRST_RETRY_DELAY_MS = 10_000 - 500
DELAY_LEVEL = 2
DELAY_LEVEL_MS = 5_000
#: The user properties every scenario message carries (the C++ client reads them by name).
USER_PROPERTIES = ("seq", "producer", "unicode", "spaces", "json")
#: Properties set by brokers or clients, not by the test.
SYSTEM_PROPERTIES = frozenset(
    {
        "TAGS", "KEYS", "UNIQ_KEY", "WAIT", "DELAY", "RETRY_TOPIC", "REAL_TOPIC", "REAL_QID",
        "ORIGIN_MESSAGE_ID", "RECONSUME_TIME", "MAX_RECONSUME_TIMES", "TRAN_MSG", "PGROUP",
        "CLUSTER", "MSG_REGION", "TRACE_ON", "MIN_OFFSET", "MAX_OFFSET", "CONSUME_START_TIME",
    }
)  # fmt: skip
UNICODE = "héllo ☃ 𝄞 中文 ünïcödé"


def unique(prefix: str) -> str:
    """A topic or group name nobody used before (RocketMQ allows [%|a-zA-Z0-9_-])."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def message(
    seq: int,
    producer: str,
    *,
    label: str = "msg",
    body: bytes | None = None,
    tags: str | None = None,
    delay_level: int = 0,
) -> dict[str, Any]:
    """One driver input message: tags, two keys and the :data:`USER_PROPERTIES`."""
    spec: dict[str, Any] = {
        "tags": tags if tags is not None else ("TagA" if seq % 2 == 0 else "TagB"),
        "keys": [f"key-{seq}", "shared-key"],
        "properties": {
            "seq": str(seq),
            "producer": producer,
            "unicode": UNICODE,
            "spaces": "a b  c ",
            "json": '{"x": [1, 2], "q": "\\""}',
        },
    }
    if body is None:
        spec["body"] = f"{label} #{seq:03d} from {producer}: {UNICODE}"
    else:
        spec["bodyBase64"] = base64.b64encode(body).decode("ascii")
    if delay_level:
        spec["delayLevel"] = delay_level
    return spec


def body_of(spec: Mapping[str, Any]) -> bytes:
    if "bodyBase64" in spec:
        return base64.b64decode(spec["bodyBase64"])
    return str(spec["body"]).encode("utf-8")


def messages(producer: Driver, consumers: Iterable[Driver], start: int, count: int) -> list[dict]:
    """``count`` messages numbered from ``start``; the last is a body past 4 KiB (clients
    compress those: sysFlag 0x1, a zlib body) and the one before a binary body (with NUL
    bytes unless a C++ consumer must read it: its C API ends a body at the first NUL)."""
    specs = [message(start + i, producer.name) for i in range(count - 2)]
    nul_ok = all(consumer.name != "cpp" for consumer in consumers)
    binary = bytes(range(256)) * 3 if nul_ok else bytes(range(1, 256)) * 3
    specs.append(message(start + count - 2, producer.name, body=binary))
    big = (f"big {start + count - 1} " + UNICODE * 400).encode("utf-8")
    assert len(big) > 4096
    specs.append(message(start + count - 1, producer.name, body=big))
    return specs


def seq_of(line: Mapping[str, Any]) -> int:
    return int(line["properties"]["seq"])


def delivered_body(line: Mapping[str, Any]) -> bytes:
    return base64.b64decode(line["bodyBase64"])


def check_message(
    line: Mapping[str, Any], spec: Mapping[str, Any], topic: str, consumer: str
) -> None:
    """A delivered message is exactly the one sent: body, tags, keys, user properties."""
    where = f"{consumer} got seq {spec['properties']['seq']}: {json.dumps(line)[:2000]}"
    assert line["topic"] == topic, where
    assert delivered_body(line) == body_of(spec), where
    assert line["tags"] == spec["tags"], where
    assert line["keys"] == spec["keys"], where
    properties = line["properties"]
    assert properties.get("TAGS") == spec["tags"], where
    assert properties.get("KEYS") == " ".join(spec["keys"]), where
    for name, value in spec["properties"].items():
        assert properties.get(name) == value, where
    if consumer == "ons":  # ali-ons lists every property: nothing else may appear
        extra = set(properties) - SYSTEM_PROPERTIES - set(spec["properties"])
        assert not extra, where
    assert line["storeTimestamp"] >= line["bornTimestamp"] - 2, where


def check_all(
    consumed: Sequence[Mapping[str, Any]],
    specs: Sequence[Mapping[str, Any]],
    sent: Sequence[Mapping[str, Any]],
    topic: str,
    consumer: str,
    *,
    fresh_topic: bool = True,
) -> None:
    """Every message consumed exactly once, exactly as sent; per queue in send order (the
    consecutive queue offsets each send result gave). ``sent`` lines match ``specs`` by
    position (one producer run) or are empty (no send results to compare)."""
    by_seq = {int(spec["properties"]["seq"]): spec for spec in specs}
    seqs = [seq_of(line) for line in consumed]
    assert sorted(seqs) == sorted(by_seq), f"{consumer}: consumed seqs {sorted(seqs)}"
    for line in consumed:
        check_message(line, by_seq[seq_of(line)], topic, consumer)
        assert line["reconsumeTimes"] == 0, line
    queues: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for line in consumed:
        queues[line["queueId"]].append(line)
    assert set(queues) <= set(range(QUEUES)), sorted(queues)
    for queue_id, lines in queues.items():
        in_delivery_order = [seq_of(line) for line in lines]
        by_offset = sorted(lines, key=lambda line: line["queueOffset"])
        offsets = [line["queueOffset"] for line in by_offset]
        # a queue is consumed in offset order, and offsets follow the send order
        assert [seq_of(line) for line in by_offset] == in_delivery_order, (queue_id, offsets)
        assert in_delivery_order == sorted(in_delivery_order), (queue_id, in_delivery_order)
        if fresh_topic:
            assert offsets == list(range(len(lines))), (queue_id, offsets)
    for index, result in enumerate(sent):
        assert result["status"] == "SEND_OK", result
        spec = specs[index]
        line = next(line for line in consumed if seq_of(line) == int(spec["properties"]["seq"]))
        assert result["queueOffset"] == line["queueOffset"], (result, line)
        if result["queueId"] is not None:  # the C++ send result has none
            assert result["queueId"] == line["queueId"], (result, line)
        assert same_message_id(result["msgId"], line), (result, line)


def same_message_id(sent: str, line: Mapping[str, Any]) -> bool:
    """``sent`` (a send result's msgId) names the delivered message ``line``.

    ali-ons' send result holds the offset msgId (store host, port, commit-log offset),
    the C++ one its UNIQ_KEY. ali-ons' consumer shows the offset msgId, the C++ one the
    UNIQ_KEY when there is one, else an offset msgId whose IPv4 address it writes in
    little-endian byte order (rocketmq-client-cpp 1.2: ``0100007F`` for 127.0.0.1)."""
    shown = str(line["msgId"])
    if sent in (shown, line["properties"].get("UNIQ_KEY")):
        return True
    swapped = "".join(reversed([shown[i : i + 2] for i in range(0, 8, 2)])) + shown[8:]
    return len(shown) == 32 and sent == swapped


def spread_over_all_queues(consumed: Sequence[Mapping[str, Any]]) -> None:
    assert {line["queueId"] for line in consumed} == set(range(QUEUES)), "sends skipped a queue"


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def produce_and_consume_exactly(
    producer: Driver, consumer: Driver, broker: RunningBroker, count: int = 24
) -> None:
    """Every message arrives once, as sent, per queue in order; then a second group
    subscribed to TagA alone gets exactly the TagA ones."""
    topic = unique("Exact")
    create_topic(broker.address, topic, QUEUES)
    specs = messages(producer, [consumer], 0, count)
    sent = producer.produce(broker.address, topic, specs).sent
    assert len(sent) == count
    run = consumer.consume(
        broker.address, unique("ExactAll"), topic, count=count, linger=1.0,
        properties=USER_PROPERTIES,
    )  # fmt: skip
    assert len(run.consumed) == count, run.describe()  # no duplicate within the linger
    check_all(run.consumed, specs, sent, topic, consumer.name)
    spread_over_all_queues(run.consumed)

    tag_a = [spec for spec in specs if spec["tags"] == "TagA"]
    filtered = consumer.consume(
        broker.address, unique("ExactTagA"), topic, count=len(tag_a), linger=1.0,
        expression="TagA", properties=USER_PROPERTIES,
    )  # fmt: skip
    assert sorted(seq_of(line) for line in filtered.consumed) == sorted(
        int(spec["properties"]["seq"]) for spec in tag_a
    ), filtered.describe()


def both_produce_both_consume(ons: Driver, cpp: Driver, broker: RunningBroker) -> None:
    """ali-ons and C++ messages in one topic; a group of each reads all of them."""
    topic = unique("Mixed")
    create_topic(broker.address, topic, QUEUES)
    ons_specs = messages(ons, [ons, cpp], 0, 10)
    cpp_specs = messages(cpp, [ons, cpp], 10, 10)
    ons_sent = ons.produce(broker.address, topic, ons_specs).sent
    cpp_sent = cpp.produce(broker.address, topic, cpp_specs).sent
    for consumer in (ons, cpp):
        run = consumer.consume(
            broker.address, unique(f"Mixed{consumer.name}"), topic, count=20, linger=1.0,
            properties=USER_PROPERTIES,
        )  # fmt: skip
        assert len(run.consumed) == 20, run.describe()
        check_all(run.consumed, ons_specs + cpp_specs, [], topic, consumer.name)
        by_seq = {seq_of(line): line for line in run.consumed}
        for specs, sent in ((ons_specs, ons_sent), (cpp_specs, cpp_sent)):
            for spec, result in zip(specs, sent, strict=True):
                line = by_seq[int(spec["properties"]["seq"])]
                assert result["queueOffset"] == line["queueOffset"], (result, line)
                assert same_message_id(result["msgId"], line), (result, line)


def restart_resumes_from_committed_offset(driver: Driver, broker: RunningBroker) -> None:
    """A group's second consumer run gets only what arrived after the first one closed."""
    topic = unique("Restart")
    group = unique("RestartGroup")
    create_topic(broker.address, topic, QUEUES)
    first = [message(seq, driver.name, label="first") for seq in range(10)]
    driver.produce(broker.address, topic, first)
    run = driver.consume(broker.address, group, topic, count=10, properties=USER_PROPERTIES)
    assert sorted(seq_of(line) for line in run.consumed) == list(range(10)), run.describe()

    second = [message(seq, driver.name, label="second") for seq in range(10, 16)]
    driver.produce(broker.address, topic, second)
    again = driver.consume(
        broker.address, group, topic, count=6, linger=2.0, properties=USER_PROPERTIES
    )
    assert sorted(seq_of(line) for line in again.consumed) == list(range(10, 16)), (
        "the restarted consumer did not resume at the committed offsets\n" + again.describe()
    )
    check_all(again.consumed, second, [], topic, driver.name, fresh_topic=False)


def consumer_ids(broker: RunningBroker, group: str) -> list[str]:
    """GET_CONSUMER_LIST_BY_GROUP (38), as our own client sees it ([] on an error code)."""
    response = broker_request(broker.address, 38, {"consumerGroup": group})
    if response.code != 0 or not response.body:
        return []
    return list(json.loads(response.body)["consumerIdList"])


def held_queues(client: BackgroundClient, topic: str) -> set[int] | None:
    """The queues of ``topic`` an ali-ons consumer last reported holding (None: none yet)."""
    reports = [line for line in client.kind("rebalance") if line["topic"] == topic]
    return set(reports[-1]["queueIds"]) if reports else None


def wait_settled(
    driver: Driver,
    broker: RunningBroker,
    group: str,
    topic: str,
    expected: Mapping[BackgroundClient, int],
) -> None:
    """Wait until each consumer holds ``expected[consumer]`` queues: ali-ons reports its
    queues; the C++ client cannot, so wait for the group's membership and then for its
    rebalance (run at once on NOTIFY_CONSUMER_IDS_CHANGED) to be done."""
    if driver.name == "ons":
        for client, count in expected.items():
            client.wait_for(
                lambda c, count=count: len(held_queues(c, topic) or ()) == count,
                30.0,
                f"the consumer holding {count} queues of {topic}",
            )
        return
    members = len(expected)
    deadline = time.monotonic() + 30.0
    while len(consumer_ids(broker, group)) != members:
        assert time.monotonic() < deadline, f"group {group} never had {members} members"
        time.sleep(0.1)
    time.sleep(3.0)


def two_consumers_split_then_one_takes_all(
    driver: Driver, producer: Driver, broker: RunningBroker
) -> None:
    """Two consumers of a group share the four queues; after one leaves, the other
    consumes all four, from where the one that left committed."""
    topic = unique("Split")
    group = unique("SplitGroup")
    create_topic(broker.address, topic, QUEUES)
    options: dict[str, Any] = {"properties": USER_PROPERTIES, "rebalance_ms": 1000}
    first = driver.start_consumer(broker.address, group, topic, **options)
    first.wait_for(lambda c: bool(c.kind("started")), 30.0, "the first consumer started")
    wait_settled(driver, broker, group, topic, {first: QUEUES})
    second = driver.start_consumer(broker.address, group, topic, **options)
    second.wait_for(lambda c: bool(c.kind("started")), 30.0, "the second consumer started")
    wait_settled(driver, broker, group, topic, {first: QUEUES // 2, second: QUEUES // 2})

    batch1 = [message(seq, producer.name, label="split") for seq in range(20)]
    producer.produce(broker.address, topic, batch1)
    first.wait_for(
        lambda c: len(c.consumed) + len(second.consumed) >= 20, 30.0, "20 messages consumed"
    )
    time.sleep(1.0)  # room for a duplicate to show
    got1, got2 = first.consumed, second.consumed
    queues1 = {line["queueId"] for line in got1}
    queues2 = {line["queueId"] for line in got2}
    assert queues1 and queues2, f"one consumer got nothing: {queues1} / {queues2}"
    assert not queues1 & queues2, f"both consumed queues {queues1 & queues2}"
    assert queues1 | queues2 == set(range(QUEUES)), (queues1, queues2)
    check_all(got1 + got2, batch1, [], topic, driver.name)
    if driver.name == "ons":
        assert queues1 <= (held_queues(first, topic) or set())
        assert queues2 <= (held_queues(second, topic) or set())

    left = second.stop()
    assert left.status == 0, left.describe()
    wait_settled(driver, broker, group, topic, {first: QUEUES})
    before = len(first.kind("message"))
    batch2 = [message(seq, producer.name, label="after") for seq in range(20, 40)]
    producer.produce(broker.address, topic, batch2)
    first.wait_for(lambda c: len(c.kind("message")) - before >= 20, 30.0, "the second 20 consumed")
    time.sleep(1.0)
    after = first.kind("message")[before:]
    assert sorted(seq_of(line) for line in after) == list(range(20, 40)), (
        "after the other consumer left, this one should get exactly the new messages, "
        f"from all queues: {sorted(seq_of(line) for line in after)}"
    )
    assert {line["queueId"] for line in after} == set(range(QUEUES))
    check_all(after, batch2, [], topic, driver.name, fresh_topic=False)
    done = first.stop()
    assert done.status == 0, done.describe()


def failed_message_comes_back_through_retry(
    driver: Driver, producer: Driver, broker: RunningBroker, fail_mode: str = "retry"
) -> None:
    """The first delivery of one message fails; it comes back once, through the group's
    retry topic, after the first retry delay, as it was sent."""
    topic = unique("Retry")
    group = unique("RetryGroup")
    create_topic(broker.address, topic, QUEUES)
    specs = [message(seq, producer.name, label="fine") for seq in range(3)]
    specs.append(message(3, producer.name, label="fail-me"))
    producer.produce(broker.address, topic, specs)
    run = driver.consume(
        broker.address, group, topic, count=4, timeout=60.0, linger=1.0,
        fail_prefix="fail-me", fail_mode=fail_mode, properties=USER_PROPERTIES,
    )  # fmt: skip
    deliveries = run.deliveries
    failing = [line for line in deliveries if seq_of(line) == 3]
    assert [line["action"] for line in failing] == [fail_mode, "ok"], run.describe()
    assert sorted(seq_of(line) for line in run.consumed) == [0, 1, 2, 3], run.describe()
    first, retried = failing
    assert first["reconsumeTimes"] == 0
    check_message(first, specs[3], topic, driver.name)
    # the retried copy: renamed back to its topic by the client, as sent, and marked
    check_message(retried, specs[3], topic, driver.name)
    assert retried["reconsumeTimes"] == 1, retried
    assert retried["properties"].get("RETRY_TOPIC") == topic, retried
    assert retried["properties"].get("ORIGIN_MESSAGE_ID"), retried
    waited = retried["receivedAt"] - first["receivedAt"]
    assert waited >= FIRST_RETRY_DELAY_MS, f"the retry came back after {waited} ms"


def delayed_message_waits_for_its_level(
    driver: Driver, producer: Driver, broker: RunningBroker
) -> None:
    """A message sent with delay level 2 arrives no earlier than 5 s after it was sent;
    one sent without a delay arrives at once."""
    topic = unique("Delay")
    create_topic(broker.address, topic, QUEUES)
    now = message(0, producer.name, label="now")
    later = message(1, producer.name, label="later", delay_level=DELAY_LEVEL)
    producer.produce(broker.address, topic, [now, later])
    run = driver.consume(
        broker.address, unique("DelayGroup"), topic, count=2, timeout=40.0, linger=1.0,
        properties=USER_PROPERTIES,
    )  # fmt: skip
    by_seq = {seq_of(line): line for line in run.consumed}
    assert sorted(by_seq) == [0, 1], run.describe()
    immediate, delayed = by_seq[0], by_seq[1]
    check_message(immediate, now, topic, driver.name)
    check_message(delayed, later, topic, driver.name)
    assert delayed["reconsumeTimes"] == 0
    waited = delayed["receivedAt"] - delayed["bornTimestamp"]
    assert waited >= DELAY_LEVEL_MS, f"delay level {DELAY_LEVEL} arrived after {waited} ms"
    assert immediate["receivedAt"] - immediate["bornTimestamp"] < DELAY_LEVEL_MS - 1000
    assert immediate["receivedAt"] < delayed["receivedAt"]


__all__ = [
    "ClientRun",
    "both_produce_both_consume",
    "consumer_ids",
    "delayed_message_waits_for_its_level",
    "failed_message_comes_back_through_retry",
    "produce_and_consume_exactly",
    "restart_resumes_from_committed_offset",
    "two_consumers_split_then_one_takes_all",
]
