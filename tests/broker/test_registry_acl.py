"""A dev broker registering with a name server that checks an ACL (another dev broker
with ``--acl-file``): signed with ``--name-server-credentials`` it gets in, unsigned it
is refused; and the credentials file in Apache's ``tools.yml`` form."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.python import usage

from rmqtwist.acl import AclClientHook, AclConfigError, Credentials, load_credentials
from rmqtwist.broker.registrar import BrokerRegistrar
from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.headers import GetRouteInfoRequestHeader
from rmqtwist.routing import parse_route
from rmqtwist.tap import Options, makeService
from rmqtwist.testing import start_broker

SECRET = "brokers-Secret-42"

ACL = f"""\
accounts:
  - accessKey: broker-key
    secretKey: {SECRET}
    admin: true
  - accessKey: plain-key
    secretKey: plain-Secret-7
    defaultTopicPerm: PUB|SUB
"""


@pytest_twisted.ensureDeferred
async def test_signed_registrations_get_in_unsigned_ones_are_refused(tmp_path: Path) -> None:
    acl = tmp_path / "plain_acl.yml"
    acl.write_text(ACL)
    ns = await start_broker(broker_name="ns", acl_file=acl)
    signed = await start_broker(
        broker_name="b1",
        name_server=ns.address,
        name_server_credentials=Credentials("broker-key", SECRET),
    )
    unsigned = await start_broker(broker_name="b2", name_server=ns.address, register_timeout=2)
    not_admin = await start_broker(
        broker_name="b3",
        name_server=ns.address,
        name_server_credentials=Credentials("plain-key", "plain-Secret-7"),
    )
    client = RemotingClient()
    client.register_rpc_hook(AclClientHook("broker-key", SECRET))
    try:
        assert signed.service.registrar is not None and unsigned.service.registrar is not None
        assert signed.service.registrar.registered(ns.address)
        assert not unsigned.service.registrar.registered(ns.address)
        assert not_admin.service.registrar is not None
        assert not not_admin.service.registrar.registered(ns.address)
        request = GetRouteInfoRequestHeader(topic="TBW102").to_request(
            RequestCode.GET_ROUTEINFO_BY_TOPIC
        )
        response = await client.invoke(ns.address, request)
        assert response.code == ResponseCode.SUCCESS, response.remark
        route = parse_route("TBW102", response.body)
        assert route.masters == {"ns": ns.address, "b1": signed.address}
    finally:
        await client.close()
        for running in (not_admin, unsigned, signed, ns):
            await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_plain_account_cannot_delete_a_topic_through_the_name_server(
    tmp_path: Path,
) -> None:
    acl = tmp_path / "plain_acl.yml"
    acl.write_text(ACL)
    ns = await start_broker(broker_name="ns", acl_file=acl, topics=(("T", 1),))
    plain, admin = RemotingClient(), RemotingClient()
    plain.register_rpc_hook(AclClientHook("plain-key", "plain-Secret-7"))
    admin.register_rpc_hook(AclClientHook("broker-key", SECRET))
    delete = RemotingCommand.request(RequestCode.DELETE_TOPIC_IN_NAMESRV, {"topic": "T"})
    try:
        response = await plain.invoke(ns.address, delete)
        assert response.code == ResponseCode.NO_PERMISSION
        assert "needs an admin account" in (response.remark or "")
        assert "T" in ns.service.broker.topics
        response = await admin.invoke(ns.address, delete)
        assert response.code == ResponseCode.SUCCESS, response.remark
        assert "T" not in ns.service.broker.topics
    finally:
        await plain.close()
        await admin.close()
        await ns.stop()


def test_credentials_or_a_client_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        BrokerRegistrar(
            None,  # type: ignore[arg-type]
            ["127.0.0.1:1"],
            "127.0.0.1:2",
            client=RemotingClient(),
            credentials=Credentials("k", "s"),
        )


def test_load_credentials(tmp_path: Path) -> None:
    path = tmp_path / "tools.yml"
    path.write_text(f"accessKey: broker-key\nsecretKey: {SECRET}\n")
    assert load_credentials(str(path)) == Credentials("broker-key", SECRET)
    assert SECRET not in repr(load_credentials(str(path)))
    path.write_text("accessKey: 12345\nsecretKey: 678\nsecurityToken: tok\n")
    assert load_credentials(str(path)) == Credentials("12345", "678", "tok")
    for text, message in [
        ("accessKey: k\n", "needs both accessKey and secretKey"),
        ("- a\n- b\n", "must hold accessKey and secretKey"),
        ("accessKey: k\nsecretKey: [1, 2]\n", "secretKey must be text"),
        (f"accessKey: k\nsecretKey: '{SECRET}\n", "not valid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(AclConfigError, match=message) as raised:
            load_credentials(str(path))
        assert SECRET not in str(raised.value)
    with pytest.raises(AclConfigError, match="cannot read"):
        load_credentials(str(tmp_path / "missing.yml"))


def test_the_option(tmp_path: Path) -> None:
    path = tmp_path / "tools.yml"
    path.write_text(f"accessKey: broker-key\nsecretKey: {SECRET}\n")
    options = Options()
    options.parseOptions(
        ["--port", "0", "--name-server", "127.0.0.1:9", "--name-server-credentials", str(path)]
    )
    service = makeService(options)
    assert service.broker.config.name_server_credentials == Credentials(  # type: ignore[attr-defined]
        "broker-key", SECRET
    )
    with pytest.raises(usage.UsageError, match="needs --name-server"):
        Options().parseOptions(["--name-server-credentials", str(path)])
    options = Options()
    options.parseOptions(
        ["--name-server", "127.0.0.1:9", "--name-server-credentials", str(tmp_path / "nope")]
    )
    with pytest.raises(usage.UsageError, match=r"--name-server-credentials .*nope: cannot read"):
        makeService(options)
