"""start_broker(acl_file=...): a test broker that checks requests against an Apache
plain_acl.yml, as ``twist rmq-remoting --acl-file`` does."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from rmqtwist.acl import AclConfigError, Credentials
from rmqtwist.message import Message
from rmqtwist.producer import NoRouteError, Producer
from rmqtwist.testing import start_broker

SECRET = "test-Secret-42"
ACL = f"""\
accounts:
  - accessKey: test-key
    secretKey: {SECRET}
    defaultTopicPerm: PUB
    defaultGroupPerm: SUB
"""


@pytest_twisted.ensureDeferred
async def test_start_broker_checks_requests_against_an_acl_file(tmp_path: Path) -> None:
    path = tmp_path / "plain_acl.yml"
    path.write_text(ACL)
    broker = await start_broker(acl_file=path, auto_create_topic=True)
    signed = Producer("PG", broker.address, credentials=Credentials("test-key", SECRET), retries=0)
    plain = Producer("PG", broker.address, retries=0)
    try:
        assert broker.service.acl is not None
        await signed.start()
        await plain.start()
        await signed.send(Message("Orders", b"signed"))
        with pytest.raises(NoRouteError, match="code 16 ACL: the request is not signed"):
            await plain.send(Message("Orders", b"unsigned"))
        assert [m.body for m in broker.messages("Orders")] == [b"signed"]
    finally:
        await signed.shutdown()
        await plain.shutdown()
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_without_an_acl_file_nothing_is_checked() -> None:
    broker = await start_broker()
    try:
        assert broker.service.acl is None
    finally:
        await broker.stop()


def test_an_unusable_acl_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "plain_acl.yml"
    path.write_text("accounts: [not, a, mapping")
    with pytest.raises(AclConfigError):
        start_broker(acl_file=str(path))
    with pytest.raises(AclConfigError):
        start_broker(acl_file=tmp_path / "missing.yml")
