"""The command line against secure servers: ``--tls*`` against a dev broker with
``--tls-mode enforcing`` and throwaway certificates, ``--access-key`` with the secret
from the environment or a file against one with ``--acl-file``, and the usage errors
of these options. The brokers run in this process; the commands are subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from rmqtwist.broker.service import BrokerService
from rmqtwist.cli._common import SECRET_KEY_ENV, SECURITY_TOKEN_ENV
from rmqtwist.tap import Options, makeService
from tests.cli_helpers import cli, json_lines
from tests.tls_certs import Certificates, make_certificates

SECRET = "cli-s3cret-Value-42"
WRONG = "not-the-Secret-17"

ACL = f"""\
accounts:
  - accessKey: cli-key
    secretKey: {SECRET}
    defaultTopicPerm: DENY
    defaultGroupPerm: SUB
    topicPerms:
      - SecureTopic=PUB|SUB
      - TBW102=PUB|SUB
    groupPerms:
      - rmqtwist-cli=PUB|SUB
      - secure-g=SUB
      - denied-g=DENY
"""


class Running:
    def __init__(self, service: BrokerService) -> None:
        self.service = service

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.service.server.ports[0].getHost().port}"


async def start(*args: str) -> Running:
    options = Options()
    options.parseOptions(["--port", "0", "--topic", "SecureTopic", *args])
    service = makeService(options)
    assert isinstance(service, BrokerService)
    service.startService()
    await service.when_started()
    return Running(service)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest_twisted.async_yield_fixture
async def tls_broker(certs: Certificates) -> AsyncIterator[Running]:
    running = await start(
        "--tls-mode", "enforcing", "--tls-cert", certs.server_cert, "--tls-key", certs.server_key
    )
    yield running
    await running.service.stopService()


@pytest_twisted.async_yield_fixture
async def self_signed_broker(certs: Certificates) -> AsyncIterator[Running]:
    running = await start(
        "--tls-mode", "enforcing",
        "--tls-cert", certs.self_signed_cert, "--tls-key", certs.self_signed_key,
    )  # fmt: skip
    yield running
    await running.service.stopService()


@pytest_twisted.async_yield_fixture
async def acl_broker(tmp_path: Path) -> AsyncIterator[Running]:
    path = tmp_path / "plain_acl.yml"
    path.write_text(ACL)
    running = await start("--acl-file", str(path))
    yield running
    await running.service.stopService()


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert (done.returncode, done.stderr) == (0, ""), done
    return done


async def produce_and_consume(address: str, *options: str) -> None:
    """Send two messages and read them back with ``options``; route too."""
    sent = json_lines(
        ok(await cli("produce", address, "SecureTopic", "--json", *options, stdin="a\nb\n")).stdout
    )
    assert [r["status"] for r in sent] == ["SEND_OK", "SEND_OK"]
    done = ok(
        await cli(
            "consume", address, "SecureTopic", "--group", "secure-g", "--from", "first",
            "--count", "2", "--json", *options,
        )
    )  # fmt: skip
    assert sorted(m["body"] for m in json_lines(done.stdout)) == ["a", "b"]
    done = ok(await cli("route", address, "SecureTopic", "--json", *options))
    (route,) = json_lines(done.stdout)
    assert route["topic"] == "SecureTopic" and route["brokers"]


# -- TLS ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tls_with_the_ca(tls_broker: Running, certs: Certificates) -> None:
    await produce_and_consume(tls_broker.address, "--tls-ca", certs.ca)
    done = ok(
        await cli("call", tls_broker.address, "GET_BROKER_RUNTIME_INFO", "--tls-ca", certs.ca)
    )
    assert done.stdout.startswith("code: SUCCESS (0)")


@pytest_twisted.ensureDeferred
async def test_tls_insecure_takes_a_self_signed_server(self_signed_broker: Running) -> None:
    await produce_and_consume(self_signed_broker.address, "--tls-insecure")


@pytest_twisted.ensureDeferred
async def test_tls_refuses_a_server_it_cannot_verify(self_signed_broker: Running) -> None:
    # --tls checks against the system's CAs, which do not know this one
    done = await cli("topics", self_signed_broker.address, "--tls", "--timeout", "2")
    assert (done.returncode, done.stdout) == (1, ""), done
    (line,) = done.stderr.splitlines()
    assert line.startswith("python -m rmqtwist topics: error: ")
    assert "Traceback" not in done.stderr


@pytest_twisted.ensureDeferred
async def test_without_tls_a_tls_server_fails_clearly(tls_broker: Running) -> None:
    done = await cli("produce", tls_broker.address, "SecureTopic", "x", "--timeout", "2")
    assert (done.returncode, done.stdout) == (1, ""), done
    (line,) = done.stderr.splitlines()
    assert line.startswith("python -m rmqtwist produce: error: message 1 not sent"), line
    done = await cli("call", tls_broker.address, "GET_BROKER_RUNTIME_INFO", "--timeout", "2")
    assert (done.returncode, done.stdout) == (1, ""), done
    (line,) = done.stderr.splitlines()
    assert line.startswith("python -m rmqtwist call: error: "), line


# -- ACL ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_acl_secret_from_the_environment(
    acl_broker: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, SECRET)
    monkeypatch.delenv(SECURITY_TOKEN_ENV, raising=False)
    await produce_and_consume(acl_broker.address, "--access-key", "cli-key")


@pytest_twisted.ensureDeferred
async def test_acl_secret_from_a_file(acl_broker: Running, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"  {SECRET}  \nsecond line ignored\n")
    options = ("--access-key", "cli-key", "--secret-key-file", str(secret))
    done = ok(await cli("produce", acl_broker.address, "SecureTopic", "one", *options))
    assert done.stdout.startswith("SEND_OK ")
    done = ok(await cli("topics", acl_broker.address, *options))
    assert "SecureTopic" in done.stdout.splitlines()
    assert SECRET not in done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_acl_wrong_secret_prints_the_remark_not_the_secret(
    acl_broker: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, WRONG)
    for args in (
        ("produce", acl_broker.address, "SecureTopic", "x"),
        ("route", acl_broker.address, "SecureTopic"),
        ("consume", acl_broker.address, "SecureTopic", "--group", "secure-g", "--count", "1"),
    ):
        done = await cli(*args, "--access-key", "cli-key", "--timeout", "2")
        assert done.returncode == 1 and done.stdout == "", done
        (line,) = done.stderr.splitlines()
        assert "NO_PERMISSION" in line and "signature" in line.lower(), line
        assert WRONG not in line and SECRET not in line
    done = await cli(
        "call", acl_broker.address, "GET_BROKER_RUNTIME_INFO", "--access-key", "cli-key"
    )
    assert done.returncode == 3, done
    assert "code: NO_PERMISSION (16)" in done.stdout and "remark: ACL: " in done.stdout
    assert WRONG not in done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_acl_a_denied_group_ends_consume_with_the_remark(
    acl_broker: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The route is allowed, the group is not: the consumer's heartbeat and rebalance are
    # refused, and consume says so instead of waiting for messages forever.
    monkeypatch.setenv(SECRET_KEY_ENV, SECRET)
    done = await cli(
        "consume", acl_broker.address, "SecureTopic", "--group", "denied-g", "--count", "1",
        "--access-key", "cli-key", "--timeout", "2",
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == "", done
    (line,) = done.stderr.splitlines()
    assert "NO_PERMISSION (16)" in line and "denied-g" in line, line


@pytest_twisted.ensureDeferred
async def test_acl_no_credentials_prints_the_remark(acl_broker: Running) -> None:
    done = await cli("produce", acl_broker.address, "SecureTopic", "x", "--timeout", "2")
    assert done.returncode == 1, done
    assert "ACL: the request is not signed" in done.stderr, done


# -- usage errors ------------------------------------------------------------------


COMMANDS = [
    ("produce", "127.0.0.1:1", "T", "x"),
    ("consume", "127.0.0.1:1", "T", "--group", "g"),
    ("route", "127.0.0.1:1", "T"),
    ("topics", "127.0.0.1:1"),
    ("call", "127.0.0.1:1", "0"),
]

USAGE_ERRORS = [
    (("--tls-ca", "/nonexistent/ca.pem"), "argument --tls-ca: cannot read /nonexistent/ca.pem"),
    (("--tls-cert", "/nonexistent/c.pem"), "argument --tls-cert: cannot read"),
    (("--tls-ca", "/etc/hostname"), "TLS: CA file /etc/hostname: no PEM certificate"),
    (("--tls-key", "/etc/hostname"), "argument --tls-key: needs --tls-cert"),
    (("--tls-ca", "/etc/hostname", "--tls-insecure"), "not allowed with argument"),
    (("--access-key", "ak"), f"no secret key: set {SECRET_KEY_ENV} in the environment"),
    (("--secret-key-file", "/etc/hostname"), "--secret-key-file: needs --access-key"),
    (("--access-key", "ak", "--secret-key-file", "/nonexistent"), "cannot read /nonexistent"),
    (("--secret-key", "hunter2"), "not taken on the command line"),
    (("--secret-key=hunter2",), "not taken on the command line"),
]


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [(COMMANDS[i % len(COMMANDS)], *case) for i, case in enumerate(USAGE_ERRORS)]
    + [(command, *USAGE_ERRORS[5]) for command in COMMANDS[1:]],
)
@pytest_twisted.ensureDeferred
async def test_usage_errors_exit_2(
    command: tuple[str, ...],
    args: tuple[str, ...],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    done = await cli(*command, *args)
    assert done.returncode == 2 and message in done.stderr, done
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


@pytest_twisted.ensureDeferred
async def test_an_empty_secret_file_is_a_usage_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    done = await cli("topics", "127.0.0.1:1", "--access-key", "ak", "--secret-key-file", str(empty))
    assert done.returncode == 2 and "the first line of" in done.stderr, done
