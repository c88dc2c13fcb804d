"""The ``rocketmq_broker`` fixture of ``rmqtwist.pytest_plugin``, in both of its modes.

Each test writes a small test suite and runs it with pytest in a subprocess (pytester),
the way a user's suite runs: the plugin is found through its ``pytest11`` entry point.
Without pytest-twisted (``-p no:twisted``) the broker runs in crochet's reactor thread
and plain synchronous tests use it with a blocking client and a client in another
process; with pytest-twisted it runs on that reactor, for async tests, with either
reactor pytest-twisted can install.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

#: Helpers the suites share: a SEND_MESSAGE_V2 request built with rmqtwist.message.
HELPERS = """
import time

from rmqtwist.codes import RequestCode
from rmqtwist.headers import SendMessageRequestHeaderV2
from rmqtwist.message import Message, encode_properties


def send_request(topic, body, queue_id=0):
    message = Message(topic, body, tags="new")
    header = SendMessageRequestHeaderV2(
        a="PG", b=topic, e=queue_id, g=int(time.time() * 1000),
        i=encode_properties(message.wire_properties()),
    )
    return header.to_request(RequestCode.SEND_MESSAGE_V2, message.body)
"""

SYNC_CONFTEST = """
import pytest

from rmqtwist.pytest_plugin import running_broker


@pytest.fixture(scope="session")
def shared_broker(request):
    with running_broker(request, broker_name="shared") as broker:
        yield broker
"""

SYNC_TESTS = """
import json
import socket
import subprocess
import sys
import threading

import pytest

from helpers import send_request
from rmqtwist.blocking import BlockingClient
from rmqtwist.codes import ResponseCode

PORTS = []


def test_a_blocking_client(rocketmq_broker):
    PORTS.append(rocketmq_broker.port)
    assert rocketmq_broker.address == f"127.0.0.1:{rocketmq_broker.port}"
    assert threading.current_thread() is threading.main_thread()
    with BlockingClient() as client:
        for n in range(3):
            request = send_request("Orders", b"order-%d" % n, queue_id=n % 2)
            assert client.invoke(rocketmq_broker.address, request).code == ResponseCode.SUCCESS
    assert [m.body for m in rocketmq_broker.messages("Orders")] == [
        b"order-0", b"order-2", b"order-1"
    ]
    assert rocketmq_broker.topics() == ["Orders"]
    assert rocketmq_broker.held_pulls() == {}


def test_a_client_in_another_process(rocketmq_broker):
    PORTS.append(rocketmq_broker.port)
    assert rocketmq_broker.topics() == []  # a new broker for each test
    done = subprocess.run(
        [sys.executable, "-m", "rmqtwist", "call", rocketmq_broker.address,
         "GET_ROUTEINFO_BY_TOPIC", "--ext", "topic=TBW102", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    route = json.loads(json.loads(done.stdout)["body"])
    assert route["brokerDatas"][0]["brokerAddrs"] == {"0": rocketmq_broker.address}


@pytest.mark.rocketmq_broker(auto_create_topic=False, broker_name="marked")
def test_the_marker_configures_the_broker(rocketmq_broker):
    assert rocketmq_broker.broker.config.broker_name == "marked"
    with BlockingClient() as client:
        request = send_request("Orders", b"x")
        assert client.invoke(rocketmq_broker.address, request).code == ResponseCode.TOPIC_NOT_EXIST
        rocketmq_broker.create_topic("Orders")
        assert client.invoke(rocketmq_broker.address, request).code == ResponseCode.SUCCESS


def test_stop_in_the_test(rocketmq_broker):
    PORTS.append(rocketmq_broker.port)
    stopped = rocketmq_broker.stop()  # blocks; the fixture's own stop is then a no-op
    assert stopped.called and rocketmq_broker.stopped


def test_the_brokers_were_stopped():
    assert len(PORTS) == 3
    for port in PORTS:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_session_broker_first(shared_broker):
    assert shared_broker.broker.config.broker_name == "shared"
    with BlockingClient() as client:
        assert client.invoke(shared_broker.address, send_request("S", b"1")).code == 0


def test_a_session_broker_second(shared_broker):
    assert [m.body for m in shared_broker.messages("S")] == [b"1"]
"""

TWISTED_TESTS = """
import dataclasses
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from helpers import send_request
from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.headers import PullMessageRequestHeader
from rmqtwist.message import decode_records
from rmqtwist.pytest_plugin import BrokerFixtureWarning

PORTS = []


def test_the_reactor_asked_for(request):
    name = type(reactor).__name__
    if request.config.getoption("reactor") == "asyncio":
        assert name == "AsyncioSelectorReactor"
    else:
        assert name != "AsyncioSelectorReactor"


@pytest_twisted.ensureDeferred
async def test_send_pull_and_a_held_pull(rocketmq_broker):
    PORTS.append(rocketmq_broker.port)
    client = RemotingClient()
    try:
        response = await client.invoke(rocketmq_broker.address, send_request("T", b"hello"))
        assert response.code == ResponseCode.SUCCESS
        header = PullMessageRequestHeader(
            consumer_group="CG", topic="T", queue_id=0, queue_offset=0, max_msg_nums=32,
            sys_flag=0x2 | 0x4, commit_offset=0, suspend_timeout_millis=30000,
            subscription="*", sub_version=0,
        )
        pulled = await client.invoke(rocketmq_broker.address, header.to_request(11))
        assert [m.body for m in decode_records(pulled.body)] == [b"hello"]
        again = dataclasses.replace(header, queue_offset=1).to_request(RequestCode.PULL_MESSAGE)
        held = client.invoke(rocketmq_broker.address, again, 60)
        deadline = time.monotonic() + 5
        while rocketmq_broker.held_pulls() != {("T", 0): 1}:
            assert time.monotonic() < deadline
            await deferLater(reactor, 0.01, lambda: None)
        await rocketmq_broker.stop()
        assert (await held).code == ResponseCode.PULL_NOT_FOUND
    finally:
        await client.close()


@pytest_twisted.inlineCallbacks
def test_an_inline_callbacks_test(rocketmq_broker):
    PORTS.append(rocketmq_broker.port)
    client = RemotingClient()
    response = yield client.invoke(rocketmq_broker.address, send_request("U", b"u"))
    yield client.close()
    assert response.code == ResponseCode.SUCCESS
    assert rocketmq_broker.topics() == ["U"]


def test_a_plain_function_is_warned(rocketmq_broker):
    assert rocketmq_broker.topics() == []


def test_the_brokers_were_stopped():
    assert len(PORTS) == 2
    for port in PORTS:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
"""


def _suite(pytester: pytest.Pytester, tests: str, conftest: str | None = None) -> None:
    pytester.makepyfile(helpers=HELPERS, test_suite=tests)
    if conftest is not None:
        pytester.makeconftest(conftest)


def test_plain_synchronous_tests(pytester: pytest.Pytester) -> None:
    _suite(pytester, SYNC_TESTS, SYNC_CONFTEST)
    result = pytester.runpytest_subprocess("-p", "no:twisted", "--strict-markers", "-v")
    result.assert_outcomes(passed=7)


@pytest.mark.parametrize("reactor", ["default", "asyncio"])
def test_under_pytest_twisted(pytester: pytest.Pytester, reactor: str) -> None:
    _suite(pytester, TWISTED_TESTS)
    result = pytester.runpytest_subprocess(f"--reactor={reactor}", "-v")
    result.assert_outcomes(passed=5, warnings=1)
    result.stdout.fnmatch_lines(
        ["*BrokerFixtureWarning: test_a_plain_function_is_warned is a plain function*"]
    )


def test_a_marker_with_positional_arguments_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.rocketmq_broker("nope")
        def test_it(rocketmq_broker):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:twisted")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*TypeError: @pytest.mark.rocketmq_broker takes keyword*"])
