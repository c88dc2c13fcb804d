"""``python -m rmqtwist consume`` as a subprocess against the dev broker in this process:
what ``produce`` sent comes out with every field, offsets carry over to the next run,
tags filter, Ctrl-C exits 130, a terminal gets the running count."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

import rmqtwist.consumer
from rmqtwist.cli import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED
from rmqtwist.testing import RunningBroker
from tests.cli_helpers import TIMEOUT, cli, command, environment, json_lines
from tests.cli_helpers import broker as broker  # the fixture

pytestmark = pytest.mark.skipif(
    not hasattr(rmqtwist.consumer, "PullConsumer"),
    reason="consume uses rmqtwist.consumer.PullConsumer, not there yet",
)

MESSAGE_KEYS = [
    "topic",
    "brokerName",
    "queueId",
    "queueOffset",
    "msgId",
    "tags",
    "keys",
    "properties",
    "reconsumeTimes",
    "bornTimestamp",
    "body",
]


async def produce(broker: RunningBroker, topic: str, lines: str, *options: str) -> list[Any]:
    done = await cli("produce", broker.address, topic, "--json", *options, stdin=lines)
    assert (done.returncode, done.stderr) == (0, ""), done
    return json_lines(done.stdout)


async def consume(broker: RunningBroker, topic: str, *options: str) -> list[dict[str, Any]]:
    done = await cli("consume", broker.address, topic, "--json", *options)
    assert (done.returncode, done.stderr) == (0, ""), done
    return json_lines(done.stdout)


@pytest_twisted.ensureDeferred
async def test_what_produce_sent_consume_prints_with_every_field(broker: RunningBroker) -> None:
    before = int(time.time() * 1000)
    sent = await produce(
        broker, "CliConsume", "one\ntwo\nthree\n",
        "--tag", "TagA", "--key", "k1", "--key", "k2", "--property", "color=red",
    )  # fmt: skip
    received = await consume(
        broker, "CliConsume", "--group", "cli-g1", "--from", "first", "--count", "3"
    )
    assert [list(m) for m in received] == [MESSAGE_KEYS] * 3
    by_id = {m["msgId"]: m for m in received}
    assert len(by_id) == 3
    for result, body in zip(sent, ["one", "two", "three"], strict=True):
        message = by_id[result["msgId"]]
        assert message["topic"] == "CliConsume"
        assert message["brokerName"] == result["brokerName"] == "broker-a"
        assert (message["queueId"], message["queueOffset"]) == (
            result["queueId"],
            result["queueOffset"],
        )
        assert (message["tags"], message["keys"], message["body"]) == ("TagA", ["k1", "k2"], body)
        assert message["properties"]["color"] == "red"
        assert message["properties"]["UNIQ_KEY"] == result["msgId"]
        assert "TAGS" not in message["properties"] and "KEYS" not in message["properties"]
        assert message["reconsumeTimes"] == 0
        assert before - 1000 <= message["bornTimestamp"] <= int(time.time() * 1000)


@pytest_twisted.ensureDeferred
async def test_a_second_run_continues_where_the_first_stopped(broker: RunningBroker) -> None:
    await produce(broker, "CliResume", "a\nb\nc\nd\n")
    first = await consume(
        broker, "CliResume", "--group", "cli-g2", "--from", "first", "--count", "2"
    )
    second = await consume(broker, "CliResume", "--group", "cli-g2", "--count", "2")
    bodies = [m["body"] for m in first + second]
    assert sorted(bodies) == ["a", "b", "c", "d"], bodies  # nothing twice, nothing lost
    assert broker.offsets("cli-g2")  # committed to the broker


@pytest_twisted.ensureDeferred
async def test_tags_filter_and_binary_bodies_and_text_output(broker: RunningBroker) -> None:
    await produce(broker, "CliTags", "skipped\n", "--tag", "TagA")
    await produce(broker, "CliTags", "wanted\n", "--tag", "TagB")
    received = await consume(
        broker, "CliTags", "--group", "cli-g3", "--from", "first", "--count", "1", "--tag",
        "TagB || TagC",
    )  # fmt: skip
    assert [(m["tags"], m["body"]) for m in received] == [("TagB", "wanted")]

    done = await cli("produce", broker.address, "CliText", "plain text")
    assert done.returncode == 0, done
    done = await cli(
        "consume", broker.address, "CliText", "--group", "cli-g4", "--from", "first", "--count", "1"
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "plain text\n", ""), done


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_utf8_comes_as_hex(broker: RunningBroker, tmp_path: Any) -> None:
    body = tmp_path / "b.bin"
    body.write_bytes(b"\xff\x00\xfe")
    done = await cli("produce", broker.address, "CliHex", "--file", str(body))
    assert done.returncode == 0, done
    (message,) = await consume(
        broker, "CliHex", "--group", "cli-g5", "--from", "first", "--count", "1"
    )
    assert message["bodyHex"] == "ff00fe" and "body" not in message


def _interrupt_when_waiting(args: list[str]) -> tuple[int, str, str]:
    process = subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        time.sleep(1.5)  # started and polling an empty topic
        process.send_signal(signal.SIGINT)
        output, errors = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, output, errors


@pytest_twisted.ensureDeferred
async def test_ctrl_c_exits_130(broker: RunningBroker) -> None:
    broker.create_topic("CliQuiet")
    status, output, errors = await threads.deferToThread(
        _interrupt_when_waiting, ["consume", broker.address, "CliQuiet", "--group", "cli-g6"]
    )
    assert (status, output, errors) == (
        EXIT_INTERRUPTED,
        "",
        "python -m rmqtwist consume: interrupted\n",
    )


def _on_a_terminal(args: list[str]) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            command(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=environment(),
            timeout=TIMEOUT,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    return done.returncode, shown.decode()


@pytest_twisted.ensureDeferred
async def test_a_terminal_gets_the_running_count(broker: RunningBroker) -> None:
    await produce(broker, "CliProgress", "x\ny\n")
    status, shown = await threads.deferToThread(
        _on_a_terminal,
        ["consume", broker.address, "CliProgress", "--group", "cli-g7", "--from", "first",
         "--count", "2"],
    )  # fmt: skip
    assert status == 0, shown
    assert "2 messages, " in shown and "/s" in shown, shown


@pytest_twisted.ensureDeferred
async def test_a_closed_stdout_exits_141_without_traceback(broker: RunningBroker) -> None:
    await produce(broker, "CliClosed", "".join(f"{i}\n" for i in range(200)))

    def read_one_then_close() -> tuple[str, int, str]:
        process = subprocess.Popen(
            command("consume", broker.address, "CliClosed", "--group", "cli-g8", "--from", "first"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
        )
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline().decode()
        process.stdout.close()  # the next write fails with EPIPE
        errors = process.stderr.read().decode()
        return first, process.wait(timeout=TIMEOUT), errors

    first, status, errors = await threads.deferToThread(read_one_then_close)
    assert first.strip().isdigit()
    assert (status, errors) == (EXIT_PIPE_CLOSED, "")
