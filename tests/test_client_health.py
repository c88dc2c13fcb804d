"""RemotingClient's health: backoff, circuit breaker, name-server choice, reachability, push.

Every test runs on a :class:`Net`: a ``MemoryReactorClock`` whose ``connectTCP`` (reached
through the client's default TCP endpoint) does what the test says per address: join the
connection to an echo server with ``twisted.test.iosim`` (``"ok"``, the default), refuse
it (``"refuse"``), leave it hanging (``"hang"``) or complete it after a delay (a float).
``Net.connects`` records every connect with the time it was made, so that schedules are
checked to the exact second. Jitter is off (``random=lambda: 0.5``) unless a test is
about jitter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode, ResponseCode
from rmqtwist.client import ClientConfig, RemotingClient
from rmqtwist.dispatcher import Dispatcher
from rmqtwist.errors import (
    CircuitOpenError,
    ConnectBackoffError,
    ConnectError,
    ConnectionLostError,
    NoNameServerError,
    RemotingTimeoutError,
    RPCHookAbort,
)
from rmqtwist.interfaces import IChannelEventListener, IRequestProcessor, IRPCHook
from rmqtwist.processors import EchoProcessor
from rmqtwist.protocol import RemotingProtocol
from tests.test_protocol import failure_of, result_of

Behaviour = str | float

A = "10.0.0.1:9876"
B = "10.0.0.2:9876"
C = "10.0.0.3:9876"
BROKER = "10.0.1.1:10911"
OTHER_BROKER = "10.0.1.2:10911"
CLIENT = IPv4Address("TCP", "10.0.9.9", 50000)
ECHO = 10  # any code: the servers' default processor echoes it
OK = ResponseCode.SUCCESS


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def ping(text: str = "ping") -> RemotingCommand:
    return RemotingCommand.request(ECHO, body=text.encode())


def no_jitter() -> float:
    return 0.5


@implementer(IRequestProcessor)
class Silent:
    """Never answers: a request to it waits for its timeout (or for the connection to go)."""

    blocking = False

    def __init__(self) -> None:
        self.requests: list[RemotingCommand] = []

    def process_request(self, context: object, request: RemotingCommand) -> Deferred[Any]:
        self.requests.append(request)
        return Deferred()

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Checker:
    """Answers pushed requests SUCCESS with remark ``committed``, recording them."""

    blocking = False

    def __init__(self) -> None:
        self.requests: list[RemotingCommand] = []

    def process_request(self, context: object, request: RemotingCommand) -> RemotingCommand:
        self.requests.append(request)
        return RemotingCommand.response_to(request, OK, "committed")

    def reject_request(self) -> bool:
        return False


@implementer(IRPCHook)
class Hook:
    """Records its calls; ``before``/``after`` give the replacement (or raise)."""

    def __init__(
        self,
        before: Callable[[RemotingCommand], RemotingCommand | None] = lambda request: None,
        after: Callable[[RemotingCommand], RemotingCommand | None] = lambda response: None,
    ) -> None:
        self.before = before
        self.after = after
        self.calls: list[tuple[Any, ...]] = []

    def before_request(self, remote_address: str, request: RemotingCommand) -> Any:
        self.calls.append(("before", remote_address, request.code))
        return self.before(request)

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> Any:
        self.calls.append(("after", remote_address, request.code))
        return self.after(response)


@implementer(IChannelEventListener)
class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def on_connect(self, remote_address: str, channel: object) -> None:
        self.events.append(("connect", remote_address, channel))

    def on_close(self, remote_address: str, channel: object) -> None:
        self.events.append(("close", remote_address, channel))

    def on_exception(self, remote_address: str, channel: object, error: Exception) -> None:
        self.events.append(("exception", remote_address, channel))

    def on_idle(self, remote_address: str, channel: object) -> None:
        self.events.append(("idle", remote_address, channel))


class Net(MemoryReactorClock):
    """A memory reactor whose ``connectTCP`` does what ``behaviour[address]`` says."""

    def __init__(self) -> None:
        super().__init__()
        self.behaviour: dict[str, Behaviour] = {}
        self.connects: list[tuple[str, float]] = []
        self.servers: dict[str, Dispatcher] = {}
        self.peers: dict[str, list[RemotingProtocol]] = {}
        self.pumps: list[IOPump] = []

    def server(self, address: str) -> Dispatcher:
        """The server side's dispatcher for ``address`` (an echo server by default)."""
        if address not in self.servers:
            dispatcher = Dispatcher(self, idle_timeout=None)
            dispatcher.register_default_processor(EchoProcessor())
            self.servers[address] = dispatcher
        return self.servers[address]

    def connectTCP(  # type: ignore[override]
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30,
        bindAddress: Any = None,  # noqa: N803 (the IReactorTCP name)
    ) -> IConnector:
        connector = super().connectTCP(host, port, factory, timeout, bindAddress)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.connects.append((address, self.seconds()))
        behaviour = self.behaviour.get(address, "ok")
        if behaviour == "refuse":
            refused = net_error.ConnectionRefusedError(string=address)
            factory.clientConnectionFailed(connector, Failure(refused))
        elif behaviour == "ok":
            self._accept(address, host, port, factory)
        elif isinstance(behaviour, float):
            self.callLater(behaviour, self._accept_later, address, host, port, factory, connector)
        else:
            assert behaviour == "hang", behaviour  # nothing happens until the client gives up
        return connector

    def _accept_later(
        self, address: str, host: str, port: int, factory: ClientFactory, connector: Any
    ) -> None:
        if not connector.stoppedConnecting:
            self._accept(address, host, port, factory)

    def _accept(self, address: str, host: str, port: int, factory: ClientFactory) -> None:
        remote = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        client = factory.buildProtocol(remote)
        server = RemotingProtocol()
        server.dispatcher = self.server(address)
        self.peers.setdefault(address, []).append(server)
        pump = connect(
            server,
            FakeTransport(server, True, hostAddress=remote, peerAddress=CLIENT),
            client,
            FakeTransport(client, False, hostAddress=CLIENT, peerAddress=remote),
            clock=self,
        )
        self.pumps.append(pump)

    def flush(self) -> None:
        """Move every byte written, both ways, until nothing moves (and deliver closes)."""
        for pump in list(self.pumps):
            pump.flush()

    def connects_to(self, address: str) -> list[float]:
        """When connects to ``address`` were made."""
        return [when for where, when in self.connects if where == address]


@pytest.fixture
def net() -> Net:
    return Net()


def make_client(net: Net, random: Callable[[], float] = no_jitter, **config: Any) -> RemotingClient:
    """A client on ``net``, with no idle sweep unless asked (it would close connections)."""
    config.setdefault("idle_timeout", None)
    return RemotingClient(net, ClientConfig(**config), random=random)


def fail_connects(net: Net, client: RemotingClient, address: str, count: int) -> None:
    """Make ``count`` more connects to ``address`` fail (refused), each at its retry time."""
    net.behaviour[address] = "refuse"
    for _ in range(count):
        net.advance(client.health(address).retry_in)
        before = len(net.connects)
        error = failure_of(client.invoke(address, ping(), timeout=1), ConnectError)
        assert type(error) is ConnectError, error  # a connect was tried, not refused fast
        assert len(net.connects) == before + 1


def name_servers(net: Net, client: RemotingClient, *addresses: str) -> None:
    """Set the name servers while all accept (the probe finds them reachable), then close
    the probe's connections: a test starts with all known reachable and none connected."""
    client.update_name_server_address_list(addresses)
    net.flush()
    assert client.available_name_server_list() == list(addresses)
    client.close_clients(addresses)
    net.flush()
    assert all(client.connection(a) is None for a in addresses)


def requests_to(net: Net, *addresses: str) -> list[int]:
    return [net.server(a).requests_received for a in addresses]


# ===========================================================================
# 1. Backoff
# ===========================================================================


def test_a_failed_connect_backs_off_one_second(net: Net) -> None:
    net.behaviour[BROKER] = "refuse"
    client = make_client(net)
    error = failure_of(client.invoke(BROKER, ping()), ConnectError)
    assert type(error) is ConnectError and error.address == BROKER
    assert "ConnectionRefusedError" in str(error)
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("closed", 1, 1.0)
    assert health.last_error is not None and health.last_error.startswith("ConnectionRefusedError")
    assert client.pool_stats().failed_connects == 1
    assert net.tcpClients[0][:2] == ("10.0.1.1", 10911)
    assert net.tcpClients[0][3] == 3.0  # connect_timeout reaches the endpoint


def test_backoff_schedule_is_1_2_4_8_seconds(net: Net) -> None:
    net.behaviour[BROKER] = "refuse"
    client = make_client(net)
    failure_of(client.invoke(BROKER, ping()), ConnectError)  # failure 1, at 0 s
    for wait in (1.0, 2.0, 4.0, 8.0):
        start = net.seconds()
        connects = len(net.connects)
        assert client.health(BROKER).retry_in == wait
        # A call whose deadline ends before the retry time fails at once, connecting nowhere.
        early = client.invoke(BROKER, ping(), timeout=wait - 0.5)
        error = failure_of(early, ConnectBackoffError)
        assert (error.address, error.retry_in) == (BROKER, wait)
        assert len(net.connects) == connects
        # One whose deadline is later waits; the attempt runs exactly at the retry time.
        waiting = client.invoke(BROKER, ping(), timeout=wait + 1)
        net.advance(wait / 2)
        assert not waiting.called and len(net.connects) == connects
        assert client.pool_stats().connecting == 1
        net.advance(wait / 2)
        assert net.connects[-1] == (BROKER, start + wait)
        assert type(failure_of(waiting, ConnectError)) is ConnectError
    assert net.connects_to(BROKER) == [0.0, 1.0, 3.0, 7.0, 15.0]


def test_oneway_calls_back_off_too(net: Net) -> None:
    net.behaviour[BROKER] = "refuse"
    client = make_client(net)
    failure_of(client.invoke_oneway(BROKER, ping()), ConnectError)
    error = failure_of(client.invoke_oneway(BROKER, ping(), timeout=0.5), ConnectBackoffError)
    assert error.retry_in == 1.0
    assert len(net.connects) == 1


def test_concurrent_callers_share_the_attempt_at_the_retry_time(net: Net) -> None:
    net.behaviour[BROKER] = "refuse"
    client = make_client(net)
    failure_of(client.invoke(BROKER, ping()), ConnectError)
    net.behaviour[BROKER] = "ok"
    net.advance(0.25)
    first = client.invoke(BROKER, ping("first"), timeout=2)
    net.advance(0.25)
    second = client.invoke(BROKER, ping("second"), timeout=2)
    # The attempt is due at 1 s: a deadline before that fails at once even now.
    late = failure_of(client.invoke(BROKER, ping(), timeout=0.25), ConnectBackoffError)
    assert late.retry_in == 0.5
    assert client.pool_stats().connecting == 1
    net.advance(0.499)
    assert not first.called and not second.called
    assert len(net.connects) == 1
    net.advance(0.001)
    assert net.connects == [(BROKER, 0.0), (BROKER, net.seconds())]
    assert net.seconds() == pytest.approx(1.0)
    net.flush()
    assert result_of(first).body == b"first"
    assert result_of(second).body == b"second"
    assert len(net.connects) == 2
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("closed", 0, 0.0)


def test_backoff_is_capped_at_backoff_max(net: Net) -> None:
    client = make_client(net, breaker_threshold=100)
    waits = []
    for _ in range(9):
        fail_connects(net, client, BROKER, 1)
        waits.append(client.health(BROKER).retry_in)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert client.health(BROKER).breaker == "closed"


def test_backoff_initial_and_max_are_configurable(net: Net) -> None:
    client = make_client(net, backoff_initial=0.5, backoff_max=3.0, breaker_threshold=100)
    waits = []
    for _ in range(5):
        fail_connects(net, client, BROKER, 1)
        waits.append(client.health(BROKER).retry_in)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.8), (0.999, 1.1996)])
def test_jitter_spreads_each_wait_within_20_percent(net: Net, draw: float, factor: float) -> None:
    client = make_client(net, random=lambda: draw)
    net.behaviour[BROKER] = "refuse"
    failure_of(client.invoke(BROKER, ping()), ConnectError)
    for base in (1.0, 2.0, 4.0, 8.0):
        retry_in = client.health(BROKER).retry_in
        assert retry_in == pytest.approx(base * factor)
        assert 0.8 * base - 1e-9 <= retry_in < 1.2 * base
        start = net.seconds()
        waiting = client.invoke(BROKER, ping(), timeout=10)
        net.advance(retry_in * 0.99)
        assert not waiting.called
        net.advance(retry_in * 0.01 + 1e-9)  # (float sums are not exact)
        failure_of(waiting, ConnectError)
        assert net.connects[-1][1] == pytest.approx(start + base * factor)


def test_jitter_is_drawn_anew_for_every_failure(net: Net) -> None:
    draws = iter([0.0, 0.999, 0.5, 0.25])
    client = make_client(net, random=lambda: next(draws))
    waits = []
    for _ in range(4):
        fail_connects(net, client, BROKER, 1)
        waits.append(client.health(BROKER).retry_in)
    assert waits == pytest.approx([0.8, 2 * 1.1996, 4.0, 8 * 0.9])


def test_an_endpoint_that_fails_at_once_fails_the_call_at_once(net: Net) -> None:
    # Regression: the attempt settled before the call waited on it, so the call hung
    # until its deadline and then timed out instead of failing with a ConnectError.
    def broken(reactor: Any, host: str, port: int, timeout: float) -> Any:
        raise OSError("no route to the endpoint")

    client = RemotingClient(net, ClientConfig(), endpoint_factory=broken)
    error = failure_of(client.invoke(BROKER, ping()), ConnectError)
    assert "OSError: no route to the endpoint" in str(error)
    assert client.health(BROKER).consecutive_failures == 1
    assert result_of(client.is_address_reachable(OTHER_BROKER)) is False
    assert client.pool_stats().failed_connects == 2


# ===========================================================================
# 2. Circuit breaker
# ===========================================================================


def test_breaker_opens_after_five_consecutive_failures_and_fails_fast(net: Net) -> None:
    client = make_client(net)
    fail_connects(net, client, BROKER, 4)
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("closed", 4, 8.0)
    fail_connects(net, client, BROKER, 1)
    assert net.seconds() == 15.0
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("open", 5, 30.0)
    connects = len(net.tcpClients)
    # Even a call whose deadline is past the half-open time fails at once.
    error = failure_of(client.invoke(BROKER, ping(), timeout=60), CircuitOpenError)
    assert isinstance(error, ConnectBackoffError)
    assert (error.address, error.retry_in) == (BROKER, 30.0)
    net.advance(29.5)
    error = failure_of(client.invoke(BROKER, ping(), timeout=60), CircuitOpenError)
    assert error.retry_in == 0.5
    failure_of(client.invoke_oneway(BROKER, ping(), timeout=60), CircuitOpenError)
    assert len(net.tcpClients) == connects  # no connectTCP while open
    net.advance(0.5)
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("half-open", 5, 0)


def test_half_open_trial_is_one_connect_shared_and_success_closes_the_breaker(
    net: Net,
) -> None:
    client = make_client(net)
    fail_connects(net, client, BROKER, 5)
    net.advance(30)
    net.behaviour[BROKER] = 0.5  # the trial connect takes half a second
    first = client.invoke(BROKER, ping("first"), timeout=3)
    second = client.invoke(BROKER, ping("second"), timeout=3)
    assert net.connects_to(BROKER)[5:] == [45.0]  # one trial connect for both
    assert client.health(BROKER).breaker == "half-open"
    net.advance(0.5)
    net.flush()
    assert result_of(first).body == b"first"
    assert result_of(second).body == b"second"
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("closed", 0, 0.0)
    assert health.last_error is None
    assert len(net.tcpClients) == 6


def test_half_open_trial_failure_reopens_for_max_of_30_s_and_the_backoff(net: Net) -> None:
    client = make_client(net)
    fail_connects(net, client, BROKER, 5)  # open at 15 s, until 45 s
    net.advance(30)
    net.behaviour[BROKER] = "hang"
    first = client.invoke(BROKER, ping(), timeout=10)
    second = client.invoke(BROKER, ping(), timeout=10)
    net.advance(2.9)
    assert not first.called and not second.called
    net.advance(0.1)  # the trial's connect timeout (3 s) fails both
    for call in (first, second):
        error = failure_of(call, ConnectError)
        assert type(error) is ConnectError and "connect timed out after 3 s" in str(error)
    health = client.health(BROKER)
    # failure 6: backoff min(2**5, 60) = 32 s, more than 30 s
    assert (health.breaker, health.consecutive_failures) == ("open", 6)
    assert health.retry_in == pytest.approx(32.0)
    failure_of(client.invoke(BROKER, ping(), timeout=60), CircuitOpenError)
    assert len(net.tcpClients) == 6
    fail_connects(net, client, BROKER, 1)  # the next trial, refused: backoff capped at 60 s
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("open", 7, 60.0)
    assert net.connects_to(BROKER) == pytest.approx([0, 1, 3, 7, 15, 45, 80])


def test_breaker_reopens_for_30_s_when_the_backoff_is_shorter(net: Net) -> None:
    client = make_client(net, breaker_threshold=2)
    fail_connects(net, client, BROKER, 2)
    health = client.health(BROKER)
    assert (health.breaker, health.retry_in) == ("open", 30.0)  # max(30, 2)
    fail_connects(net, client, BROKER, 1)  # the half-open trial fails
    health = client.health(BROKER)
    assert (health.breaker, health.retry_in) == ("open", 30.0)  # max(30, 4)


def test_a_success_resets_the_failure_count(net: Net) -> None:
    client = make_client(net)
    fail_connects(net, client, BROKER, 4)
    assert client.health(BROKER).retry_in == 8.0
    net.behaviour[BROKER] = "ok"
    net.advance(8)
    call = client.invoke(BROKER, ping())
    net.flush()
    result_of(call)
    health = client.health(BROKER)
    assert (health.consecutive_failures, health.retry_in, health.last_error) == (0, 0.0, None)
    client.close_clients([BROKER])
    net.flush()
    fail_connects(net, client, BROKER, 4)  # four more do not open the breaker...
    health = client.health(BROKER)
    assert (health.breaker, health.consecutive_failures, health.retry_in) == ("closed", 4, 8.0)
    fail_connects(net, client, BROKER, 1)  # ...the fifth in a row does
    assert client.health(BROKER).breaker == "open"


def test_each_address_has_its_own_breaker(net: Net) -> None:
    client = make_client(net)
    fail_connects(net, client, BROKER, 5)
    call = client.invoke(OTHER_BROKER, ping())
    net.flush()
    assert result_of(call).code == OK
    assert client.health(OTHER_BROKER).breaker == "closed"
    assert client.health(BROKER).breaker == "open"


# ===========================================================================
# 3. Name servers
# ===========================================================================


def test_name_server_list_starts_empty_and_a_call_to_none_fails_at_once(net: Net) -> None:
    client = make_client(net)
    assert client.name_server_address_list == []
    assert client.available_name_server_list() == []
    assert client.current_name_server is None
    error = failure_of(client.invoke(None, ping()), NoNameServerError)
    assert isinstance(error, ConnectError)
    assert "update_name_server_address_list" in str(error)
    failure_of(client.invoke_oneway(None, ping()), NoNameServerError)
    assert net.connects == []


def test_name_server_list_is_validated_and_deduplicated(net: Net) -> None:
    client = make_client(net)
    client.update_name_server_address_list([A, B, A, "[::1]:9876", B])
    assert client.name_server_address_list == [A, B, "[::1]:9876"]
    bad_ones = ["nohost", "10.0.0.1:0", "10.0.0.1:65536", "::1:9876", ":9876", "10.0.0.1:x"]
    for bad in bad_ones:
        with pytest.raises(ValueError):
            client.update_name_server_address_list([C, bad])
    with pytest.raises(TypeError):
        client.update_name_server_address_list([C, 9876])  # type: ignore[list-item]
    assert client.name_server_address_list == [A, B, "[::1]:9876"]  # left as it was
    listing = client.name_server_address_list
    listing.append(C)  # a copy: changing it changes nothing
    assert client.name_server_address_list == [A, B, "[::1]:9876"]
    assert sorted(net.connects) == [
        ("10.0.0.1:9876", 0.0),
        ("10.0.0.2:9876", 0.0),
        ("[::1]:9876", 0.0),
    ]


def test_probe_runs_at_once_then_every_interval(net: Net) -> None:
    net.behaviour[B] = "refuse"
    client = make_client(net, name_server_probe_interval=10)
    client.update_name_server_address_list([A, B])
    assert net.connects == [(A, 0.0), (B, 0.0)]
    assert client.available_name_server_list() == [A]
    net.behaviour[B] = "ok"
    net.advance(9.5)
    assert len(net.connects) == 2
    net.advance(0.5)
    # A is still connected: it is probed without a connect; B is tried again.
    assert net.connects[2:] == [(B, 10.0)]
    assert client.available_name_server_list() == [A, B]
    net.behaviour[A] = "refuse"
    client.close_clients([A])
    net.flush()
    net.advance(10)
    assert net.connects[3:] == [(A, 20.0)]
    assert client.available_name_server_list() == [B]


def test_probe_interval_is_configurable(net: Net) -> None:
    net.behaviour[A] = "refuse"
    client = make_client(net, name_server_probe_interval=3)
    client.update_name_server_address_list([A])
    net.advance(3)
    net.advance(3)
    assert net.connects_to(A) == [0.0, 3.0, 6.0]


def test_replacing_the_list_drops_removed_ones_and_probes_new_ones_at_once(net: Net) -> None:
    client = make_client(net)
    client.update_name_server_address_list([A, B])
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)
    assert client.current_name_server == A
    net.advance(4)
    client.update_name_server_address_list([B, C])
    assert client.name_server_address_list == [B, C]
    assert net.connects[2:] == [(C, 4.0)]  # the new one is probed now, not at 10 s
    assert client.available_name_server_list() == [B, C]
    assert client.current_name_server is None  # A is no longer a name server
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)
    assert client.current_name_server == B
    assert requests_to(net, A, B, C) == [1, 1, 0]


def test_setting_the_same_list_again_changes_nothing(net: Net) -> None:
    net.behaviour[A] = "refuse"
    client = make_client(net)
    client.update_name_server_address_list([A])
    net.advance(5)
    client.update_name_server_address_list([A, A])  # the same list: no probe now
    assert net.connects_to(A) == [0.0]
    net.advance(5)
    assert net.connects_to(A) == [0.0, 10.0]


def test_an_empty_list_stops_the_probe(net: Net) -> None:
    net.behaviour[A] = "refuse"
    client = make_client(net)
    client.update_name_server_address_list([A])
    net.advance(10)
    assert net.connects_to(A) == [0.0, 10.0]
    client.update_name_server_address_list([])
    assert client.name_server_address_list == []
    assert client.available_name_server_list() == []
    assert net.getDelayedCalls() == []  # no probe scheduled
    net.advance(100)
    assert net.connects_to(A) == [0.0, 10.0]
    failure_of(client.invoke(None, ping()), NoNameServerError)


def test_failover_at_once_when_a_name_server_refuses(net: Net) -> None:
    client = make_client(net)
    name_servers(net, client, A, B)
    net.behaviour[A] = "refuse"
    call = client.invoke(None, ping("who"), timeout=3)
    assert net.connects[2:] == [(A, 0.0), (B, 0.0)]  # one connect each, no wait
    net.flush()
    assert result_of(call).body == b"who"
    assert requests_to(net, A, B) == [0, 1]
    assert client.current_name_server == B
    assert client.health(A).consecutive_errors == 1
    assert client.health(B).consecutive_errors == 0


def test_a_hanging_name_server_only_takes_its_share_of_the_deadline(net: Net) -> None:
    client = make_client(net)
    name_servers(net, client, A, B, C)
    net.behaviour[A] = net.behaviour[B] = "hang"
    call = client.invoke(None, ping(), timeout=3)
    assert net.connects[3:] == [(A, 0.0)]
    net.advance(0.999)
    assert len(net.connects) == 4
    net.advance(0.001)  # A's share: 3 s / (1 + 2 left)
    assert net.connects[4] == (B, pytest.approx(1.0))
    net.advance(0.999)
    assert len(net.connects) == 5
    net.advance(0.001)  # B's share: the 2 s left / (1 + 1 left)
    assert net.connects[5] == (C, pytest.approx(2.0))
    assert client.pool_stats().connecting == 2  # A and B go on connecting for the pool
    net.flush()
    assert result_of(call).code == OK
    assert requests_to(net, A, B, C) == [0, 0, 1]
    assert client.current_name_server == C
    assert [client.health(a).consecutive_errors for a in (A, B, C)] == [1, 1, 0]


def test_the_last_hanging_name_server_gets_the_rest_then_the_call_times_out(net: Net) -> None:
    client = make_client(net)
    name_servers(net, client, A, B)
    net.behaviour[A] = net.behaviour[B] = "hang"
    call = client.invoke(None, ping(), timeout=2)
    net.advance(1)
    assert net.connects[2:] == [(A, 0.0), (B, 1.0)]
    net.advance(0.999)
    assert not call.called
    net.advance(0.001)
    error = failure_of(call, RemotingTimeoutError)
    assert str(error).startswith(f"no connection to {B} within the call's 2 s deadline")
    assert f"{A}: still connecting after 1 s" in str(error)


def test_all_name_servers_failing_gives_one_connect_error_naming_each(net: Net) -> None:
    client = make_client(net)
    name_servers(net, client, A, B)
    net.behaviour[A] = net.behaviour[B] = "refuse"
    error = failure_of(client.invoke(None, ping()), ConnectError)
    assert type(error) is ConnectError and error.address is None
    message = str(error)
    assert message.startswith("no name server could be reached: ")
    assert f"{A}: cannot connect to {A}" in message
    assert f"{B}: cannot connect to {B}" in message
    assert message.index(A) < message.index(B)
    assert net.connects[2:] == [(A, 0.0), (B, 0.0)]
    assert client.current_name_server is None


def test_lower_latency_is_preferred_when_there_is_no_current(net: Net) -> None:
    net.behaviour[A] = 0.5
    net.behaviour[B] = 0.1
    client = make_client(net)
    client.update_name_server_address_list([A, B])
    net.advance(0.1)
    net.advance(0.4)
    assert client.health(A).latency == pytest.approx(0.5)
    assert client.health(B).latency == pytest.approx(0.1)
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)
    assert requests_to(net, A, B) == [0, 1]
    assert client.current_name_server == B


def test_the_current_name_server_is_kept_while_healthy(net: Net) -> None:
    client = make_client(net)
    name_servers(net, client, A, B)
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)
    assert client.current_name_server == A
    # A answers slowly now, so that B's latency is lower...
    call = client.invoke(None, ping())
    net.advance(0.2)
    net.flush()
    result_of(call)
    latency_a, latency_b = client.health(A).latency, client.health(B).latency
    assert latency_a is not None and latency_b is not None and latency_a > latency_b
    # ...yet calls stay on A while it works.
    for _ in range(3):
        call = client.invoke(None, ping())
        net.flush()
        result_of(call)
    assert requests_to(net, A, B) == [5, 0]
    assert client.current_name_server == A


@pytest.mark.parametrize("how", ["timeout", "lost"])
def test_after_an_error_on_the_current_one_the_next_call_goes_to_the_best_other(
    net: Net, how: str
) -> None:
    net.behaviour[B] = 0.1  # B took longer to connect than C: C is the better one
    client = make_client(net)
    client.update_name_server_address_list([A, B, C])
    net.advance(0.1)
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)
    assert client.current_name_server == A
    net.server(A).register_default_processor(Silent())
    stuck = client.invoke(None, ping(), timeout=1)
    net.flush()
    if how == "timeout":
        net.advance(1)
        failure_of(stuck, RemotingTimeoutError)
    else:
        net.peers[A][-1].transport.loseConnection()  # type: ignore[union-attr]
        net.flush()
        failure_of(stuck, ConnectionLostError)
    assert client.current_name_server is None
    assert client.health(A).consecutive_errors == 1
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)
    assert requests_to(net, A, B, C) == [2, 0, 1]
    assert client.current_name_server == C


def test_consecutive_errors_rank_name_servers(net: Net) -> None:
    client = make_client(net)
    name_servers(net, client, A, B)
    for address in (A, B):
        net.server(address).register_default_processor(Silent())
    targets = []
    for _ in range(4):
        before = requests_to(net, A, B)
        call = client.invoke(None, ping(), timeout=1)
        net.flush()
        net.advance(1)
        failure_of(call, RemotingTimeoutError)
        after = requests_to(net, A, B)
        targets.append(A if after[0] > before[0] else B)
    # A (first in the list), then B (0 errors < 1), A again (1 = 1: list order), B (1 < 2)
    assert targets == [A, B, A, B]
    assert [client.health(a).consecutive_errors for a in (A, B)] == [2, 2]
    net.server(B).register_default_processor(EchoProcessor())
    call = client.invoke(None, ping(), timeout=1)  # 2 = 2: A again, its third error
    net.flush()
    net.advance(1)
    failure_of(call, RemotingTimeoutError)
    call = client.invoke(None, ping())  # B: 2 < 3
    net.flush()
    result_of(call)
    assert client.current_name_server == B
    assert client.health(B).consecutive_errors == 0


def test_a_name_server_with_an_open_breaker_is_skipped_without_a_connect(net: Net) -> None:
    net.behaviour[A] = "refuse"
    client = make_client(net, breaker_threshold=1)
    client.update_name_server_address_list([A, B])
    assert client.health(A).breaker == "open"
    assert net.connects == [(A, 0.0), (B, 0.0)]
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)
    assert requests_to(net, A, B) == [0, 1]
    # B goes down too: A is still not tried, its breaker says so at once.
    net.behaviour[B] = "refuse"
    client.close_clients([B])
    net.flush()
    error = failure_of(client.invoke(None, ping()), ConnectError)
    assert net.connects[2:] == [(B, 0.0)]
    assert f"{A}: circuit open for {A}" in str(error)
    assert isinstance(error.__cause__, CircuitOpenError)


def test_a_name_server_in_backoff_is_tried_last_and_waited_for_within_the_deadline(
    net: Net,
) -> None:
    client = make_client(net)
    name_servers(net, client, A, B)
    net.behaviour[A] = "refuse"
    assert result_of(client.is_address_reachable(A)) is False  # A backs off until 1 s
    net.advance(0.5)
    net.behaviour[A] = "ok"
    net.behaviour[B] = "refuse"
    call = client.invoke(None, ping(), timeout=3)
    assert net.connects[2:] == [(A, 0.0), (B, 0.5)]  # B first though A is first in the list
    assert not call.called
    net.advance(0.5)  # B refused; A's retry time is within the deadline: it is awaited
    assert net.connects[4:] == [(A, 1.0)]
    net.flush()
    assert result_of(call).code == OK
    assert requests_to(net, A, B) == [1, 0]
    assert client.current_name_server == A


# ===========================================================================
# 4. is_address_reachable
# ===========================================================================


def test_reachable_is_true_for_a_connected_writable_address(net: Net) -> None:
    client = make_client(net)
    assert result_of(client.is_address_reachable(BROKER)) is True
    connection = client.connection(BROKER)
    assert connection is not None and connection.is_writable
    assert result_of(client.is_address_reachable(BROKER)) is True
    assert len(net.connects) == 1  # the pooled connection answered the second time


def test_reachable_is_false_when_refused(net: Net) -> None:
    net.behaviour[BROKER] = "refuse"
    client = make_client(net)
    assert result_of(client.is_address_reachable(BROKER)) is False
    assert client.health(BROKER).consecutive_failures == 1


@pytest.mark.parametrize(("timeout", "when"), [(None, 3.0), (1.0, 1.0)])
def test_reachable_is_false_when_the_connect_hangs_past_the_timeout(
    net: Net, timeout: float | None, when: float
) -> None:
    net.behaviour[BROKER] = "hang"
    client = make_client(net)
    reachable = client.is_address_reachable(BROKER, timeout)
    net.advance(when * 0.999)
    assert not reachable.called
    net.advance(when * 0.001)
    assert result_of(reachable) is False
    assert net.seconds() == pytest.approx(when)


def test_reachable_is_false_while_a_connection_stays_unwritable(net: Net) -> None:
    client = make_client(net)
    result_of(client.is_address_reachable(BROKER))
    connection = client.connection(BROKER)
    assert connection is not None
    connection.pauseProducing()  # the write buffer is past its high-water mark
    stays = client.is_address_reachable(BROKER, 1)
    net.advance(0.999)
    assert not stays.called
    net.advance(0.001)
    assert result_of(stays) is False
    again = client.is_address_reachable(BROKER, 1)
    net.advance(0.5)
    connection.resumeProducing()
    assert result_of(again) is True
    assert len(net.connects) == 1


def test_reachable_is_false_at_once_while_the_breaker_is_open(net: Net) -> None:
    client = make_client(net, breaker_threshold=1)
    fail_connects(net, client, BROKER, 1)
    net.behaviour[BROKER] = "ok"
    assert result_of(client.is_address_reachable(BROKER, 60)) is False
    assert len(net.connects) == 1


def test_reachable_respects_the_backoff(net: Net) -> None:
    client = make_client(net)
    fail_connects(net, client, BROKER, 1)  # retry at 1 s
    net.behaviour[BROKER] = "ok"
    assert result_of(client.is_address_reachable(BROKER, 0.5)) is False  # at once
    later = client.is_address_reachable(BROKER, 2)
    net.advance(0.5)
    assert not later.called
    net.advance(0.5)
    assert result_of(later) is True
    assert net.connects_to(BROKER) == [0.0, 1.0]


def test_reachable_never_fails(net: Net) -> None:
    client = make_client(net)
    net.behaviour[BROKER] = "hang"
    pending = client.is_address_reachable(BROKER)
    result_of(client.close())  # the attempt is abandoned: the answer is False, not an error
    assert result_of(pending) is False
    assert result_of(client.is_address_reachable(OTHER_BROKER)) is False
    with pytest.raises(ValueError):  # only a malformed address raises, at once
        client.is_address_reachable("nohost")


def test_reachable_can_be_cancelled(net: Net) -> None:
    net.behaviour[BROKER] = "hang"
    client = make_client(net)
    reachable = client.is_address_reachable(BROKER, 2)
    timers = len(net.getDelayedCalls())
    reachable.cancel()
    failure_of(reachable, CancelledError)
    assert len(net.getDelayedCalls()) == timers - 1  # its own timer is gone
    assert client.pool_stats().connecting == 1  # the attempt goes on for the pool
    net.advance(3)  # nothing fires into the cancelled Deferred
    assert client.pool_stats().connecting == 0
    assert client.health(BROKER).consecutive_failures == 1


# ===========================================================================
# 5. close_clients
# ===========================================================================


def test_close_clients_fails_pending_calls_and_the_next_call_reconnects(net: Net) -> None:
    client = make_client(net)
    net.server(BROKER).register_default_processor(Silent())
    net.server(OTHER_BROKER).register_default_processor(Silent())
    pending = client.invoke(BROKER, ping(), timeout=10)
    other = client.invoke(OTHER_BROKER, ping(), timeout=10)
    net.flush()
    client.close_clients([BROKER, "10.9.9.9:1"])  # an unknown address is ignored
    assert client.connection(BROKER) is None
    net.flush()
    error = failure_of(pending, ConnectionLostError)
    assert BROKER in str(error)
    assert not other.called
    assert client.connection(OTHER_BROKER) is not None
    net.server(BROKER).register_default_processor(EchoProcessor())
    again = client.invoke(BROKER, ping("again"))
    net.flush()
    assert result_of(again).body == b"again"
    assert net.connects_to(BROKER) == [0.0, 0.0]
    stats = client.pool_stats()
    assert (stats.created, stats.closed) == (3, 1)
    other.cancel()
    failure_of(other, CancelledError)


# ===========================================================================
# 6. Server push, RPC hooks, listeners
# ===========================================================================


def test_a_processor_on_the_client_answers_a_request_the_server_pushes(net: Net) -> None:
    client = make_client(net)
    checker = Checker()
    client.register_processor(RequestCode.CHECK_TRANSACTION_STATE, checker)
    hook = Hook()
    client.register_rpc_hook(hook)
    call = client.invoke(BROKER, ping())
    net.flush()
    result_of(call)
    broker = net.peers[BROKER][-1]
    push = broker.invoke(
        RemotingCommand.request(RequestCode.CHECK_TRANSACTION_STATE, {"tranStateTableOffset": "42"})
    )
    net.flush()
    response = result_of(push)
    assert (response.code, response.remark) == (OK, "committed")
    (request,) = checker.requests
    assert request.code == RequestCode.CHECK_TRANSACTION_STATE
    assert request.ext("tranStateTableOffset") == "42"
    # the hooks ran around the pushed request too
    assert ("before", BROKER, RequestCode.CHECK_TRANSACTION_STATE) in hook.calls
    unknown = broker.invoke(RemotingCommand.request(RequestCode.SEND_MESSAGE))
    net.flush()
    assert result_of(unknown).code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED


def test_a_default_processor_on_the_client_answers_any_pushed_code(net: Net) -> None:
    client = make_client(net)
    checker = Checker()
    client.register_default_processor(checker)
    result_of(client.is_address_reachable(BROKER))
    push = net.peers[BROKER][-1].invoke(RemotingCommand.request(12345))
    net.flush()
    assert result_of(push).remark == "committed"
    assert [r.code for r in checker.requests] == [12345]


def test_rpc_hooks_run_around_requests_the_client_sends(net: Net) -> None:
    client = make_client(net)
    signer = Hook(before=lambda request: request.replace(ext_fields={"AccessKey": "ak"}))
    marker = Hook(after=lambda response: response.replace(remark="seen"))
    client.register_rpc_hook(signer)
    client.register_rpc_hook(marker)
    for _ in range(2):  # the first call connects; the second takes the pooled connection
        call = client.invoke(BROKER, ping())
        net.flush()
        response = result_of(call)
        assert response.ext("AccessKey") == "ak"  # the server saw the signed request
        assert response.remark == "seen"
    assert signer.calls == [("before", BROKER, ECHO), ("after", BROKER, ECHO)] * 2


def test_an_rpc_hook_abort_fails_the_call_before_sending(net: Net) -> None:
    client = make_client(net)

    def refuse(request: RemotingCommand) -> None:
        raise RPCHookAbort(ResponseCode.NO_PERMISSION, "no credentials")

    client.register_rpc_hook(Hook(before=refuse))
    for _ in range(2):  # connecting first, then on the pooled connection
        call = client.invoke(BROKER, ping())
        net.flush()
        error = failure_of(call, RPCHookAbort)
        assert (error.code, error.remark) == (ResponseCode.NO_PERMISSION, "no credentials")
    failure_of(client.invoke_oneway(BROKER, ping()), RPCHookAbort)
    net.flush()
    assert net.server(BROKER).requests_received == 0
    assert client.pool_stats().errors == 3


def test_an_rpc_hook_abort_is_not_held_against_the_name_server(net: Net) -> None:
    client = make_client(net)
    name_servers(net, client, A, B)
    call = client.invoke(None, ping())
    net.flush()
    result_of(call)

    def refuse(request: RemotingCommand) -> None:
        raise RPCHookAbort(ResponseCode.NO_PERMISSION)

    client.register_rpc_hook(Hook(before=refuse))
    failure_of(client.invoke(None, ping()), RPCHookAbort)
    assert client.current_name_server == A
    assert client.health(A).consecutive_errors == 0


def test_listeners_see_pooled_connections_open_and_close(net: Net) -> None:
    client = make_client(net)
    events = Events()
    client.register_listener(events)
    net.behaviour[OTHER_BROKER] = "refuse"
    failure_of(client.invoke(OTHER_BROKER, ping()), ConnectError)
    call = client.invoke(BROKER, ping())
    net.flush()
    result_of(call)
    connection = client.connection(BROKER)
    assert events.events == [("connect", BROKER, connection)]  # a failed connect: no event
    client.close_clients([BROKER])
    net.flush()
    assert events.events == [("connect", BROKER, connection), ("close", BROKER, connection)]
