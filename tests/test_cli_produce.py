"""``python -m rmqtwist produce``, ``route`` and ``topics`` as subprocesses against the dev
broker (its own name server) running in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from rmqtwist.message import Property
from rmqtwist.testing import RunningBroker
from tests.cli_helpers import broker as broker  # the fixture
from tests.cli_helpers import cli, json_lines

RESULT_KEYS = ["status", "msgId", "offsetMsgId", "brokerName", "queueId", "queueOffset"]


@pytest_twisted.ensureDeferred
async def test_produce_lines_of_stdin_as_json(broker: RunningBroker) -> None:
    done = await cli(
        "produce", broker.address, "CliLines", "--tag", "TagA", "--key", "k1", "--key", "k2",
        "--property", "color=red", "--property", "size=9", "--json",
        stdin="one\ntwo\n\nthree\r\n",
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done
    results = json_lines(done.stdout)
    assert [list(r) for r in results] == [RESULT_KEYS] * 3  # the empty line is skipped
    stored = {(m.queue_id, m.queue_offset): m for m in broker.messages("CliLines")}
    for result, body in zip(results, [b"one", b"two", b"three"], strict=True):
        assert result["status"] == "SEND_OK" and result["brokerName"] == "broker-a"
        message = stored[(result["queueId"], result["queueOffset"])]
        assert message.body == body
        assert (message.tags, message.keys) == ("TagA", ("k1", "k2"))
        assert message.properties["color"] == "red" and message.properties["size"] == "9"
        assert message.properties[Property.UNIQ_KEY] == result["msgId"]
        assert message.offset_msg_id == result["offsetMsgId"]


@pytest_twisted.ensureDeferred
async def test_produce_body_and_file_and_delay(broker: RunningBroker, tmp_path: Path) -> None:
    done = await cli("produce", broker.address, "CliBody", "héllo")
    assert (done.returncode, done.stderr) == (0, ""), done
    (line,) = done.stdout.splitlines()
    assert line.startswith("SEND_OK msgId=") and " broker=broker-a queue=" in line
    binary = tmp_path / "body.bin"
    binary.write_bytes(b"\x00\xff\n\x01")
    done = await cli("produce", broker.address, "CliBody", "--file", str(binary), "--delay", "1")
    assert done.returncode == 0, done
    assert [m.body for m in broker.messages("CliBody")][:1] == ["héllo".encode()]
    (delayed,) = [
        m
        for m in broker.messages("SCHEDULE_TOPIC_XXXX")
        if m.properties.get(Property.REAL_TOPIC) == "CliBody"
    ]
    assert delayed.body == b"\x00\xff\n\x01"  # held for delay level 1


@pytest_twisted.ensureDeferred
async def test_produce_bad_usage(broker: RunningBroker) -> None:
    done = await cli("produce", broker.address, "T", "x", "--property", "a=1", "--property", "a=2")
    assert done.returncode == 2 and "'a' is given twice" in done.stderr, done
    done = await cli("produce", broker.address, "T", "x", "--property", "TAGS=x")
    assert done.returncode == 2 and "pass tags= rather than a TAGS property" in done.stderr, done
    done = await cli("produce", broker.address, "T", "x", "--file", "/etc/hostname")
    assert done.returncode == 2 and "not allowed with a BODY" in done.stderr, done
    done = await cli("produce", "nohost", "T", "x")
    assert done.returncode == 2 and "argument NAMESRV" in done.stderr, done


@pytest_twisted.ensureDeferred
async def test_produce_to_nothing_is_one_line(broker: RunningBroker) -> None:
    from tests.test_twist_integration import free_port

    done = await cli("produce", f"127.0.0.1:{free_port()}", "T", "x", "--timeout", "1")
    assert (done.returncode, done.stdout) == (1, ""), done
    (line,) = done.stderr.splitlines()
    assert line.startswith("python -m rmqtwist produce: error: message 1 not sent")
    assert "refused" in line


@pytest_twisted.ensureDeferred
async def test_route_text_and_json(broker: RunningBroker) -> None:
    broker.create_topic("CliRoute", queue_nums=2)
    done = await cli("route", broker.address, "CliRoute")
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.splitlines() == [
        "topic CliRoute: 1 broker(s), 2 write queue(s), 2 read queue(s)",
        "brokers:",
        f"  broker-a  0={broker.address} (master)",
        "queues:",
        "  broker-a    0  read write",
        "  broker-a    1  read write",
    ]
    (route,) = json_lines((await cli("route", broker.address, "CliRoute", "--json")).stdout)
    assert route == {
        "topic": "CliRoute",
        "brokers": [
            {"brokerName": "broker-a", "addresses": {"0": broker.address}, "master": broker.address}
        ],
        "queues": [
            {"brokerName": "broker-a", "queueId": i, "perm": 6, "read": True, "write": True}
            for i in range(2)
        ],
        "readQueueNums": 2,
        "writeQueueNums": 2,
    }


@pytest_twisted.ensureDeferred
async def test_route_of_an_unknown_topic_exits_4(broker: RunningBroker) -> None:
    done = await cli("route", broker.address, "NoSuchTopic")
    assert (done.returncode, done.stdout) == (4, ""), done
    assert done.stderr == "python -m rmqtwist route: error: topic 'NoSuchTopic' does not exist\n"


@pytest_twisted.ensureDeferred
async def test_topics(broker: RunningBroker) -> None:
    broker.create_topic("CliTopicB")
    broker.create_topic("CliTopicA")
    done = await cli("topics", broker.address)
    assert (done.returncode, done.stderr) == (0, ""), done
    names = done.stdout.splitlines()
    assert names == sorted(names) and {"CliTopicA", "CliTopicB", "TBW102"} <= set(names)
    done = await cli("topics", broker.address, "--json")
    assert (done.returncode, json.loads(done.stdout)) == (0, names)
