"""The dev broker started as ``twist rmq-remoting --acl-file FILE``: producers with and
without credentials, a denied topic, the file edited while it runs, and no secret in
the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage

from rmqtwist import RemotingCommand, RequestCode, ResponseCode
from rmqtwist.acl import AclClientHook, Credentials, Permission
from rmqtwist.broker.service import BrokerService
from rmqtwist.client import RemotingClient
from rmqtwist.message import Message
from rmqtwist.producer import NoRouteError, Producer, SendFailedError
from rmqtwist.tap import Options, makeService

SECRET = "s3cret-Value-99"

ACL = f"""\
accounts:
  - accessKey: producer-key
    secretKey: {SECRET}
    defaultTopicPerm: DENY
    defaultGroupPerm: SUB
    topicPerms:
      - allowed=PUB
      - closed=DENY
    groupPerms:
      - PG=PUB|SUB
"""


def broker_options(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--port", "0", "--topic", "allowed", "--topic", "closed", *args])
    return options


@pytest_twisted.ensureDeferred
async def test_a_broker_with_an_acl_file(tmp_path: Path) -> None:
    path = tmp_path / "plain_acl.yml"
    path.write_text(ACL)
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        logged.append(formatEvent(event) + repr(event))

    globalLogPublisher.addObserver(observe)
    service = makeService(broker_options("--acl-file", str(path)))
    assert isinstance(service, BrokerService) and service.acl is not None
    service.startService()
    signed = plain = None
    try:
        await service.when_started()
        address = f"127.0.0.1:{service.server.ports[0].getHost().port}"
        signed = Producer("PG", address, credentials=Credentials("producer-key", SECRET), retries=0)
        plain = Producer("PG", address, retries=0)
        await signed.start()
        await plain.start()

        sent = await signed.send(Message("allowed", b"one"))
        assert sent.queue.topic == "allowed"
        # no credentials: even the route (a name-server request) is refused, with the remark
        with pytest.raises(NoRouteError, match="code 16 ACL: the request is not signed"):
            await plain.send(Message("allowed", b"unsigned"))
        with pytest.raises(SendFailedError, match="NO_PERMISSION") as denied:
            await signed.send(Message("closed", b"denied"))
        assert "closed" in str(denied.value)

        # edited while it runs: 'closed' opens
        path.write_text(ACL.replace("closed=DENY", "closed=PUB"))
        for _ in range(100):
            await deferLater(reactor, 0.1, lambda: None)
            if service.acl.config.accounts["producer-key"].topic_perms["closed"] != Permission.DENY:
                break
        sent = await signed.send(Message("closed", b"now allowed"))
        assert sent.queue.topic == "closed"
    finally:
        for producer in (signed, plain):
            if producer is not None:
                await producer.shutdown()
        await service.stopService()
        globalLogPublisher.removeObserver(observe)
    assert not service.acl._loop.running  # the reload timer stopped with the broker
    assert logged and not any(SECRET in line for line in logged)


def test_acl_file_errors_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match=r"--acl-file .*cannot read"):
        makeService(broker_options("--acl-file", str(tmp_path / "missing.yml")))
    bad = tmp_path / "bad.yml"
    bad.write_text(f"accounts:\n  - accessKey: k\n    secretKey: {SECRET}\n")
    with pytest.raises(usage.UsageError) as info:
        makeService(broker_options("--acl-file", str(bad)))
    assert SECRET not in str(info.value)
    with pytest.raises(usage.UsageError, match="broker"):
        Options().parseOptions(["--acl-file", str(bad), "--processor", "echo"])


DANGEROUS = (25, 26, 100, 101, 102, 318, 319)


@pytest_twisted.ensureDeferred
async def test_dangerous_codes_are_refused_even_to_an_admin(tmp_path: Path) -> None:
    path = tmp_path / "plain_acl.yml"
    path.write_text(
        f"accounts:\n  - accessKey: admin-key\n    secretKey: {SECRET}\n    admin: true\n"
    )
    service = makeService(broker_options("--acl-file", str(path)))
    assert isinstance(service, BrokerService)
    service.startService()
    client = RemotingClient(reactor)
    client.register_rpc_hook(AclClientHook("admin-key", SECRET))
    try:
        await service.when_started()
        address = f"127.0.0.1:{service.server.ports[0].getHost().port}"
        # the admin account passes the ACL: creating a topic (admin-only) works...
        created = await client.invoke(
            address,
            RemotingCommand.request(
                RequestCode.UPDATE_AND_CREATE_TOPIC,
                {
                    "topic": "made",
                    "defaultTopic": "TBW102",
                    "readQueueNums": "1",
                    "writeQueueNums": "1",
                    "perm": "6",
                    "topicFilterType": "SINGLE_TAG",
                    "topicSysFlag": "0",
                    "order": "false",
                },
            ),
        )
        assert created.code == ResponseCode.SUCCESS, created.remark
        # ...but what rewrites configuration or reads it out is refused whatever the ACL says
        for code in DANGEROUS:
            answer = await client.invoke(
                address, RemotingCommand.request(code, {"key": "k"}, b"brokerIP1=1.2.3.4")
            )
            assert answer.code == ResponseCode.NO_PERMISSION
            assert f"({code}) is refused" in (answer.remark or "")
    finally:
        await client.close()
        await service.stopService()
