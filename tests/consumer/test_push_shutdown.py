"""Shutting down a push consumer never commits past a message that was not consumed."""

from __future__ import annotations

import pytest
import pytest_twisted

from rmqtwist.consumer import ConsumeResult
from rmqtwist.message import MessageExt
from rmqtwist.testing import start_broker
from tests.consumer.test_push import produce, until
from tests.consumer.test_push_group import member


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("orderly", [True, False])
async def test_shutdown_commits_only_what_was_consumed(orderly: bool) -> None:
    broker = await start_broker()
    broker.create_topic("S", 1)
    try:
        await produce(broker, "S", [b"m%d" % i for i in range(5)])
        tries: list[bytes] = []

        def listener(message: MessageExt) -> ConsumeResult:
            tries.append(message.body)
            if message.body in (b"m0", b"m1"):
                return ConsumeResult.SUCCESS
            # orderly: retried locally for ever; concurrent: sent back to the broker,
            # which makes its original offset done
            return ConsumeResult.SUSPEND if orderly else ConsumeResult.RETRY

        consumer = member(broker, "G", listener, orderly=orderly, suspend_time=0.05)
        consumer.subscribe("S")
        await consumer.start()
        await until(lambda: tries.count(b"m2") >= 2 or len(set(tries)) == 5, what="m2 tried")
        await consumer.shutdown()
        committed = broker.offsets("G").get("S", {}).get(0, 0)
        if orderly:
            assert committed == 2  # m2 was never consumed: its offset stays
        else:  # m2..m4 are safe in the broker's delay topic: their offsets may go
            assert committed == 5
            waiting = broker.messages("SCHEDULE_TOPIC_XXXX")
            assert sorted(m.body for m in waiting) == [b"m2", b"m3", b"m4"]
    finally:
        await broker.stop()
