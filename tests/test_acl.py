"""``rmqtwist.acl``: the signature, Apache's plain_acl.yml format, the checks, the hooks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor, task
from twisted.internet.task import Clock

from rmqtwist.acl import (
    AclClientHook,
    AclConfigError,
    AclDenied,
    AclFile,
    AclServerHook,
    AddressPattern,
    Permission,
    check_request,
    load_acl_file,
    needed_permissions,
    parse_acl,
    sign,
    signature,
)
from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import RPCHookAbort
from rmqtwist.processors import EchoProcessor
from rmqtwist.server import RemotingServer, RemotingServerFactory

# An Apache-format file (the shape of distribution/conf/plain_acl.yml).
ACL_YAML = """\
globalWhiteRemoteAddresses:
  - 10.10.103.*
  - 192.168.0.{1,2}

accounts:
  - accessKey: RocketMQ
    secretKey: 12345678
    whiteRemoteAddress:
    admin: false
    defaultTopicPerm: DENY
    defaultGroupPerm: SUB
    topicPerms:
      - topicA=DENY
      - topicB=PUB|SUB
      - topicC=SUB
    groupPerms:
      # the group should convert to retry topic
      - groupA=DENY
      - groupB=PUB|SUB
      - groupC=SUB

  - accessKey: rocketmq2
    secretKey: 12345678
    whiteRemoteAddress: 192.168.1.*
    # if it is admin, it could access all resources
    admin: true
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain_acl.yml"
    path.write_text(ACL_YAML)
    return path


def test_signature_check_vector() -> None:
    # protocol.md §6: HMAC-SHA1-base64 of "RocketMQ" under "12345678"
    assert signature({}, b"RocketMQ", "12345678") == "IUc8rrO/0gDch8CjObLQsW2rsiA="
    # values in key order, then the body; the Signature itself is left out
    assert signature({"b": "Rocket", "a": "", "Signature": "x"}, b"MQ", "12345678") == (
        "IUc8rrO/0gDch8CjObLQsW2rsiA="
    )


def test_sign_adds_the_fields_and_replaces_an_old_signature() -> None:
    request = RemotingCommand.request(10, {"topic": "T"}, b"body")
    signed = sign(request, "RocketMQ", "12345678", security_token="tok")
    ext = signed.ext_fields or {}
    assert ext["AccessKey"] == "RocketMQ" and ext["SecurityToken"] == "tok"
    assert ext["Signature"] == signature(ext, b"body", "12345678")
    assert request.ext_fields == {"topic": "T"}  # the original is untouched
    assert sign(signed, "RocketMQ", "12345678", "tok").ext_fields == ext


def test_parse_apache_file(config_file: Path) -> None:
    config = load_acl_file(str(config_file))
    first = config.accounts["RocketMQ"]
    assert first.default_topic_perm == Permission.DENY
    assert first.default_group_perm == Permission.SUB
    assert first.topic_perms == {
        "topicA": Permission.DENY,
        "topicB": Permission.PUB | Permission.SUB,
        "topicC": Permission.SUB,
    }
    assert first.group_perms["groupB"] == Permission.PUB | Permission.SUB
    assert not first.white_address.matches("192.168.1.5:1")
    assert config.accounts["rocketmq2"].admin
    assert "12345678" not in repr(config)  # secrets never in a repr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"accounts": [{"accessKey": "short", "secretKey": "12345678"}]}, "longer than 6"),
        ({"accounts": [{"accessKey": "RocketMQ", "secretKey": "123"}]}, "longer than 6"),
        (
            {"accounts": [{"accessKey": "RocketMQ", "secretKey": "12345678", "topicPerms": ["t"]}]},
            "is not 'name=PERM'",
        ),
        (
            {
                "accounts": [
                    {"accessKey": "RocketMQ", "secretKey": "12345678", "topicPerms": ["t=ALL"]}
                ]
            },
            "must be DENY, PUB, SUB",
        ),
        (
            {
                "accounts": [
                    {"accessKey": "RocketMQ", "secretKey": "12345678"},
                    {"accessKey": "RocketMQ", "secretKey": "87654321"},
                ]
            },
            "repeats",
        ),
        ({"globalWhiteRemoteAddresses": ["1.2.3.4.5"]}, "not an IP address"),
        ({"accounts": "x"}, "must be a list"),
        ([1], "must hold a mapping"),
    ],
)
def test_bad_files_are_refused_with_the_field(data: object, message: str) -> None:
    with pytest.raises(AclConfigError, match=message) as info:
        parse_acl(data)
    assert "87654321" not in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(AclConfigError, match="cannot read"):
        load_acl_file(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("accounts: [\n")
    with pytest.raises(AclConfigError, match="not valid YAML"):
        load_acl_file(str(bad))


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("*", ["1.2.3.4:5", "[::1]:9"], []),
        ("", [], ["1.2.3.4:5"]),
        ("192.168.0.{1,2}", ["192.168.0.1:9", "192.168.0.2"], ["192.168.0.3:9"]),
        ("1.1.1.1,2.2.2.2", ["2.2.2.2:1"], ["3.3.3.3:1"]),
        ("10.10.103.*", ["10.10.103.7:1"], ["10.10.104.7:1"]),
        ("192.168.1-5.*", ["192.168.3.200:1"], ["192.168.6.1:1", "192.168.0.1:1"]),
        ("127.0.0.1", ["127.0.0.1:80"], ["127.0.0.2:80"]),
        ("::1", ["[::1]:80", "[0:0::1]:1"], ["127.0.0.1:1"]),
    ],
)
def test_address_patterns(pattern: str, yes: list[str], no: list[str]) -> None:
    compiled = AddressPattern(pattern)
    assert all(compiled.matches(a) for a in yes)
    assert not any(compiled.matches(a) for a in no)


@pytest.mark.parametrize("pattern", ["192.168.*.1", "192.168.5-1.*", "::1-5:*", "1.2.{3}"])
def test_bad_address_patterns(pattern: str) -> None:
    with pytest.raises(AclConfigError):
        AddressPattern(pattern)


def _send(topic: str, group: str = "PG") -> RemotingCommand:
    return RemotingCommand.request(RequestCode.SEND_MESSAGE_V2, {"a": group, "b": topic}, b"x")


def _pull(topic: str, group: str) -> RemotingCommand:
    return RemotingCommand.request(
        RequestCode.PULL_MESSAGE, {"topic": topic, "consumerGroup": group}
    )


def test_needed_permissions() -> None:
    assert needed_permissions(_send("T")) == {"T": Permission.PUB}
    assert needed_permissions(_send("%RETRY%G", "G")) == {"%RETRY%G": Permission.SUB}
    batch = RemotingCommand.request(RequestCode.SEND_BATCH_MESSAGE, {"a": "PG", "b": "T"})
    assert needed_permissions(batch) == {"T": Permission.PUB}
    assert needed_permissions(_pull("T", "G")) == {"T": Permission.SUB, "%RETRY%G": Permission.SUB}
    beat = RemotingCommand.request(
        RequestCode.HEART_BEAT,
        body=json.dumps(
            {"consumerDataSet": [{"groupName": "G", "subscriptionDataSet": [{"topic": "T"}]}]}
        ).encode(),
    )
    assert needed_permissions(beat) == {"%RETRY%G": Permission.SUB, "T": Permission.SUB}
    with pytest.raises(AclDenied, match="unreadable heartbeat"):
        needed_permissions(RemotingCommand.request(RequestCode.HEART_BEAT, body=b"{"))
    assert needed_permissions(RemotingCommand.request(RequestCode.GET_BROKER_RUNTIME_INFO)) == {}


def test_check_request_in_apache_order(config_file: Path) -> None:
    config = load_acl_file(str(config_file))
    peer = "127.0.0.1:5000"

    def check(request: RemotingCommand, address: str = peer) -> None:
        check_request(config, address, request)

    check(_send("topicA"), "10.10.103.9:1")  # global white list: nothing checked
    with pytest.raises(AclDenied, match="not signed"):
        check(_send("topicB"))
    with pytest.raises(AclDenied, match="no account for AccessKey 'Nobody'"):
        check(sign(_send("topicB"), "Nobody", "12345678"))
    with pytest.raises(AclDenied, match="wrong Signature"):
        check(sign(_send("topicB"), "RocketMQ", "wrong-secret"))
    tampered = sign(_send("topicB"), "RocketMQ", "12345678").replace(body=b"y")
    with pytest.raises(AclDenied, match="wrong Signature"):
        check(tampered)
    unsigned = RemotingCommand.request(10, {"AccessKey": "RocketMQ", "topic": "topicB"})
    with pytest.raises(AclDenied, match="no Signature"):
        check(unsigned)

    def ok(request: RemotingCommand) -> None:
        check(sign(request, "RocketMQ", "12345678"))

    ok(_send("topicB"))
    with pytest.raises(AclDenied, match="no PUB permission for topic 'topicA'"):
        ok(_send("topicA"))
    with pytest.raises(AclDenied, match="no PUB permission for topic 'topicC'"):
        ok(_send("topicC"))
    with pytest.raises(AclDenied, match="no default PUB permission for topic 'other'"):
        ok(_send("other"))
    ok(_pull("topicC", "groupC"))
    ok(_pull("topicC", "anyGroup"))  # default group permission SUB
    with pytest.raises(AclDenied, match="group 'groupA'"):
        ok(_pull("topicC", "groupA"))
    create = RemotingCommand.request(RequestCode.UPDATE_AND_CREATE_TOPIC, {"topic": "x"})
    with pytest.raises(AclDenied, match="needs an admin account"):
        ok(create)
    # the admin, with no permission lists, may do everything once signed
    check(sign(create, "rocketmq2", "12345678"))
    check(sign(_send("topicA"), "rocketmq2", "12345678"))
    # its white address lets it in with no signature check
    check(RemotingCommand.request(10, {"AccessKey": "rocketmq2", "topic": "x"}), "192.168.1.7:1")
    # a key left out of the content the broker checks (as Apache does)
    query = sign(_send("topicB"), "RocketMQ", "12345678")
    check(query.replace(ext_fields={**(query.ext_fields or {}), "_UNIQUE_KEY_QUERY": "true"}))


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6), st.binary())
def test_any_signed_request_passes_and_any_change_fails(ext: dict[str, str], body: bytes) -> None:
    config = parse_acl(
        {"accounts": [{"accessKey": "RocketMQ", "secretKey": "12345678", "admin": True}]}
    )
    ext = {k: v for k, v in ext.items() if k not in ("AccessKey", "Signature", "SecurityToken")}
    ext.pop("_UNIQUE_KEY_QUERY", None)
    request = sign(RemotingCommand.request(999, ext, body), "RocketMQ", "12345678")
    check_request(config, "127.0.0.1:1", request)
    with pytest.raises(AclDenied):
        check_request(config, "127.0.0.1:1", request.replace(body=body + b"!"))


def test_server_hook_answers_no_permission(config_file: Path) -> None:
    hook = AclServerHook(load_acl_file(str(config_file)))
    with pytest.raises(RPCHookAbort) as info:
        hook.before_request("127.0.0.1:1", _send("topicB"))
    assert info.value.code == ResponseCode.NO_PERMISSION
    assert info.value.remark == "ACL: the request is not signed (no AccessKey)"
    assert hook.before_request("127.0.0.1:1", sign(_send("topicB"), "RocketMQ", "12345678")) is None
    client_hook = AclClientHook("RocketMQ", "12345678")
    assert "12345678" not in repr(client_hook)


def test_acl_file_reloads_and_keeps_the_old_one_on_a_bad_change(config_file: Path) -> None:
    clock = Clock()
    watched = AclFile(str(config_file), clock, interval=1.0)
    watched.start()
    hook = AclServerHook(watched)
    assert set(hook.config.accounts) == {"RocketMQ", "rocketmq2"}
    config_file.write_text(ACL_YAML.replace("rocketmq2", "rocketmq3"))
    os.utime(config_file, ns=(1, 10**18))
    clock.advance(1.0)
    assert set(hook.config.accounts) == {"RocketMQ", "rocketmq3"}
    config_file.write_text("accounts: [\n")
    os.utime(config_file, ns=(1, 2 * 10**18))
    clock.advance(1.0)
    assert set(hook.config.accounts) == {"RocketMQ", "rocketmq3"}  # kept
    assert not watched.check()  # nothing changed since
    watched.stop()


@pytest_twisted.ensureDeferred
async def test_a_signing_client_against_a_checking_server(config_file: Path) -> None:
    factory = RemotingServerFactory()
    factory.register_default_processor(EchoProcessor())
    factory.register_rpc_hook(AclServerHook(load_acl_file(str(config_file))))
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    signed = RemotingClient(reactor)
    signed.register_rpc_hook(AclClientHook("RocketMQ", "12345678"))
    plain = RemotingClient(reactor)
    try:
        [port] = await server.when_listening()
        address = f"127.0.0.1:{port.getHost().port}"
        answer = await signed.invoke(address, _send("topicB"))
        assert answer.code == ResponseCode.SUCCESS
        refused = await plain.invoke(address, _send("topicB"))
        assert refused.code == ResponseCode.NO_PERMISSION
        assert refused.remark == "ACL: the request is not signed (no AccessKey)"
        denied = await signed.invoke(address, _send("topicA"))
        assert denied.code == ResponseCode.NO_PERMISSION and "topicA" in (denied.remark or "")
    finally:
        await signed.close()
        await plain.close()
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_producer_with_credentials_against_a_broker_with_acl(config_file: Path) -> None:
    from rmqtwist.acl import Credentials
    from rmqtwist.message import Message
    from rmqtwist.producer import NoRouteError, Producer, SendFailedError
    from rmqtwist.testing import start_broker

    broker = await start_broker()
    broker.service.factory.register_rpc_hook(AclServerHook(load_acl_file(str(config_file))))
    broker.create_topic("topicB")
    broker.create_topic("topicA")
    signed = Producer("PG", broker.address, credentials=Credentials("RocketMQ", "12345678"))
    plain = Producer("PG", broker.address, retries=0)
    await signed.start()
    await plain.start()
    try:
        result = await signed.send(Message("topicB", b"allowed"))
        assert [m.body for m in broker.messages("topicB")] == [b"allowed"]
        assert result.queue.topic == "topicB"
        with pytest.raises(SendFailedError, match="NO_PERMISSION"):
            await signed.send(Message("topicA", b"denied"))
        with pytest.raises(NoRouteError, match="code 16 ACL: the request is not signed"):
            await plain.send(Message("topicB", b"unsigned"))
        assert broker.messages("topicA") == [] and len(broker.messages("topicB")) == 1
    finally:
        await signed.shutdown()
        await plain.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_consumers_with_credentials_against_a_broker_with_acl(config_file: Path) -> None:
    from rmqtwist.acl import Credentials
    from rmqtwist.consumer import ConsumeFrom, PullConsumer, PushConsumer
    from rmqtwist.message import Message
    from rmqtwist.producer import Producer
    from rmqtwist.testing import start_broker

    broker = await start_broker()
    broker.service.factory.register_rpc_hook(AclServerHook(load_acl_file(str(config_file))))
    broker.create_topic("topicB", 1)
    keys = Credentials("RocketMQ", "12345678")
    producer = Producer("PG", broker.address, credentials=keys)
    await producer.start()
    got: list[bytes] = []
    push = PushConsumer(
        "groupB",
        broker.address,
        lambda m: got.append(m.body),
        credentials=keys,
        consume_from=ConsumeFrom.FIRST,
    )
    push.subscribe("topicB")
    lite = PullConsumer("groupC", broker.address, credentials=keys, consume_from=ConsumeFrom.FIRST)
    lite.subscribe("topicB")
    try:
        await producer.send(Message("topicB", b"signed"))
        await push.start()
        await lite.start()
        polled = await lite.poll(timeout=5.0)
        assert [m.body for m in polled] == [b"signed"]
        for _ in range(100):
            if got:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        assert got == [b"signed"]
    finally:
        await push.shutdown()
        await lite.shutdown()
        await producer.shutdown()
        await broker.stop()
