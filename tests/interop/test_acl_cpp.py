"""The C++ client (rocketmq-client-cpp from the PyPI ``rocketmq`` package) producing to a
dev broker started with ``--acl-file``: with an access key and secret key it sends, with
none or a wrong secret it is refused (no route), and a send to a denied topic is refused
(the broker answers NO_PERMISSION; the C++ client, having tried every queue, reports
"No route info of this topic")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import CppEnv, RunningBroker

pytestmark = pytest.mark.interop

SECRET = "cpp-Secret-4242"

ACL = f"""\
accounts:
  - accessKey: cpp-producer
    secretKey: {SECRET}
    defaultTopicPerm: DENY
    defaultGroupPerm: PUB|SUB
    topicPerms:
      - open=PUB
      - shut=DENY
"""


def produce(
    cpp: CppEnv, broker: RunningBroker, topic: str, secret: str | None, work: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(work)}
    env.pop("RMQTWIST_CPP_ACCESS_KEY", None)
    env.pop("RMQTWIST_CPP_SECRET_KEY", None)
    if secret is not None:
        env["RMQTWIST_CPP_ACCESS_KEY"] = "cpp-producer"
        env["RMQTWIST_CPP_SECRET_KEY"] = secret
    command = [cpp.python, str(cpp.script), "produce", "--namesrv", broker.address]
    command += ["--topic", topic, "--timeout-ms", "15000", "--send-timeout-ms", "3000"]
    return subprocess.run(
        command,
        input="\n".join(json.dumps({"body": f"m{i}"}) for i in range(3)) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=work,
        check=False,
    )


def test_cpp_producer_against_an_acl_broker(
    cpp_client: CppEnv, start_broker: object, tmp_path: Path
) -> None:
    path = tmp_path / "plain_acl.yml"
    path.write_text(ACL)
    broker: RunningBroker = start_broker(  # type: ignore[operator]
        "--acl-file", str(path), "--topic", "open", "--topic", "shut"
    )
    signed = produce(cpp_client, broker, "open", SECRET, tmp_path)
    assert signed.returncode == 0, signed.stderr + broker.log
    sent = [json.loads(line) for line in signed.stdout.splitlines()]
    assert [line["status"] for line in sent if line["kind"] == "sent"] == ["SEND_OK"] * 3

    for topic, secret in (("open", None), ("open", "wrong-secret-1"), ("shut", SECRET)):
        refused = produce(cpp_client, broker, topic, secret, tmp_path)
        assert refused.returncode != 0, (topic, secret, refused.stdout)
        assert '"kind": "sent"' not in refused.stdout and '"kind":"sent"' not in refused.stdout
    assert SECRET not in broker.log
