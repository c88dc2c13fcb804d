"""``twist rmq-remoting``'s TLS and PROXY options: what goes together, and a dev broker
that speaks TLS only."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.python import usage

from rmqtwist import RemotingCommand, RequestCode, ResponseCode
from rmqtwist.broker.service import BrokerService
from rmqtwist.client import ClientConfig, RemotingClient
from rmqtwist.errors import RemotingError
from rmqtwist.tap import Options, makeService
from rmqtwist.tls import ClientAuth, TLSMode
from tests.tls_certs import Certificates, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults_and_combinations(certs: Certificates) -> None:
    assert parse()["tls-mode"] is TLSMode.DISABLED
    options = parse("--tls-cert", certs.server_cert, "--tls-key", certs.server_key)
    assert options["tls-mode"] is TLSMode.ENFORCING
    options = parse(
        "--tls-mode",
        "permissive",
        "--tls-cert",
        certs.server_cert,
        "--tls-key",
        certs.server_key,
        "--tls-client-auth",
        "optional",
        "--tls-ca",
        certs.ca,
    )
    assert options["tls-mode"] is TLSMode.PERMISSIVE
    assert options["tls-client-auth"] is ClientAuth.OPTIONAL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-mode", "strict"], "must be disabled, permissive or enforcing"),
        (["--tls-mode", "enforcing"], "needs --tls-cert"),
        (["--tls-mode", "disabled", "--tls-cert", "c.pem"], "--tls-mode is disabled"),
        (["--tls-cert", "c.pem", "--tls-client-auth", "require"], "needs --tls-ca"),
        (["--tls-cert", "c.pem", "--tls-ca", "ca.pem"], "--tls-client-auth optional or require"),
        (["--tls-client-auth", "sometimes"], "none, optional or require"),
        (["--tls-client-auth", "require"], "--tls-mode is disabled"),
    ],
)
def test_bad_combinations(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_unusable_files_are_usage_errors(certs: Certificates, tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="cannot read"):
        makeService(parse("--port", "0", "--tls-cert", str(tmp_path / "missing.pem")))
    with pytest.raises(usage.UsageError, match="cannot load"):
        makeService(
            parse("--port", "0", "--tls-cert", certs.server_cert, "--tls-key", certs.client_key)
        )


def test_proxy_protocol_wraps_every_endpoint() -> None:
    service = makeService(parse("--proxy-protocol", "--listen", "tcp:0:interface=127.0.0.1"))
    assert isinstance(service, BrokerService)
    assert [listener.description for listener in service.server._listeners] == [
        "proxy:tcp:0:interface=127.0.0.1"
    ]


@pytest_twisted.ensureDeferred
async def test_a_tls_only_dev_broker(certs: Certificates) -> None:
    service = makeService(
        parse("--port", "0", "--tls-cert", certs.server_cert, "--tls-key", certs.server_key)
    )
    assert isinstance(service, BrokerService)
    service.startService()
    secure = RemotingClient(reactor, ClientConfig(tls=True, tls_ca=certs.ca))
    plain = RemotingClient(reactor, ClientConfig(connect_timeout=2))
    try:
        await service.when_started()
        address = f"127.0.0.1:{service.server.ports[0].getHost().port}"
        request = RemotingCommand.request(RequestCode.GET_BROKER_RUNTIME_INFO)
        answer = await secure.invoke(address, request, 5)
        assert answer.code == ResponseCode.SUCCESS
        with pytest.raises(RemotingError):
            await plain.invoke(address, request, 2)
    finally:
        await secure.close()
        await plain.close()
        await service.stopService()


def test_the_first_frame_timeout_bounds_the_wait_for_a_header_or_first_byte(
    certs: Certificates,
) -> None:
    from rmqtwist.proxy import ProxyProtocolEndpoint
    from rmqtwist.tls import TLSServerEndpoint

    tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
    for args, expected in (([], 10.0), (["--first-frame-timeout", "3"], 3.0),
                           (["--first-frame-timeout", "0"], None)):  # fmt: skip
        service = makeService(parse("--port", "0", "--proxy-protocol", *tls, *args))
        assert isinstance(service, BrokerService)
        (listener,) = service.server._listeners
        endpoint = listener.endpoint
        assert isinstance(endpoint, TLSServerEndpoint)
        assert endpoint.sniff_timeout == expected
        assert isinstance(endpoint.wrapped, ProxyProtocolEndpoint)
        assert endpoint.wrapped.header_timeout == expected
