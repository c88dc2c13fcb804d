"""Fixtures for the interoperability tests: the third-party clients and a broker to run them on.

- ``ali_ons``: a Node.js install of ``ali-ons`` (tests/interop/node); needs ``node`` and
  ``npm`` on PATH (or in $NODE / $NPM).
- ``cpp_client``: the C++ client of the PyPI package ``rocketmq`` 0.4.4, driven by
  tests/interop/cpp_client.py in a subprocess (it can crash: never imported here).
- ``broker`` / ``start_broker``: ``twist rmq-remoting`` (the dev broker) as a real
  subprocess on a free loopback port, stopped (then killed) in teardown.
- ``ons_driver`` / ``cpp_driver``: run the two drivers (``produce`` / ``consume``) as
  subprocesses with hard timeouts and parse their JSON lines.
- ``rmqtwist_driver`` / ``rmqtwist_pull_driver``: rmqtwist's own Producer and
  PushConsumer (or PullConsumer) as a third driver of the same kind (rmqtwist_client.py).

Nothing here is skipped: a missing tool or package is a test failure with a message saying
what to install.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from rmqtwist import RemotingCommand
from rmqtwist.codec import FrameDecoder, encode_frame

INTEROP_DIR = Path(__file__).resolve().parent
NODE_DIR = INTEROP_DIR / "node"
ALI_ONS_VERSION = "3.12.0"  # keep in step with node/package.json
NPM_INSTALL_TIMEOUT = 600
CPP_CLIENT_SCRIPT = INTEROP_DIR / "cpp_client.py"
ROCKETMQ_VERSION = "0.4.4"  # the PyPI package of the C++ client; keep in step with pyproject
#: Use a broker already running at this host:port instead of starting ``twist`` (to check
#: the tests themselves against another one-port implementation; tests that restart the
#: broker or pass it options fail then).
EXTERNAL_BROKER_ENV = "RMQTWIST_INTEROP_BROKER"


@dataclasses.dataclass(frozen=True)
class NodeEnv:
    """Where the Node.js side of the interop tests lives."""

    node: str  # the node executable
    npm: str  # the npm executable
    directory: Path  # tests/interop/node (holds package.json and node_modules)
    script: Path  # tests/interop/node/ons_echo_client.js
    ali_ons_version: str  # the version found in node_modules/ali-ons
    broker_client: Path = NODE_DIR / "ons_broker_client.js"  # Producer/Consumer driver


def _find_tool(name: str) -> str:
    path = os.environ.get(name.upper()) or shutil.which(name)
    if not path:
        pytest.fail(
            f"the interop tests need `{name}` (Node.js >= 8 with npm) on PATH, or its path in "
            f"${name.upper()}; it was not found. Install Node.js, or deselect these tests "
            "with `-m 'not interop'`.",
            pytrace=False,
        )
    return path


def _installed_version() -> str | None:
    manifest = NODE_DIR / "node_modules" / "ali-ons" / "package.json"
    try:
        version = json.loads(manifest.read_text("utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version if isinstance(version, str) else None


@pytest.fixture(scope="session")
def ali_ons() -> NodeEnv:
    """``node``, ``npm`` and tests/interop/node with ``ali-ons`` installed in it.

    Runs ``npm install --no-audit --no-fund`` there when node_modules/ali-ons is missing
    (or holds another version than the pinned one). An flock on package.json keeps
    concurrent test sessions from installing at the same time.
    """
    node = _find_tool("node")
    npm = _find_tool("npm")
    with open(NODE_DIR / "package.json", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed_version() != ALI_ONS_VERSION:
                try:
                    done = subprocess.run(
                        [npm, "install", "--no-audit", "--no-fund"],
                        cwd=NODE_DIR,
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        text=True,
                        timeout=NPM_INSTALL_TIMEOUT,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    pytest.fail(
                        f"`npm install` in {NODE_DIR} took more than {NPM_INSTALL_TIMEOUT} s",
                        pytrace=False,
                    )
                if done.returncode != 0:
                    pytest.fail(
                        f"`npm install` in {NODE_DIR} failed with status {done.returncode}:\n"
                        f"{done.stdout}\n{done.stderr}",
                        pytrace=False,
                    )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    version = _installed_version()
    if version != ALI_ONS_VERSION:
        pytest.fail(
            f"npm install left ali-ons {version!r} in {NODE_DIR / 'node_modules'}, "
            f"expected {ALI_ONS_VERSION}",
            pytrace=False,
        )
    return NodeEnv(
        node=node,
        npm=npm,
        directory=NODE_DIR,
        script=NODE_DIR / "ons_echo_client.js",
        ali_ons_version=version,
    )


# ---------------------------------------------------------------------------
# The C++ client (PyPI rocketmq 0.4.4), run only in a subprocess
# ---------------------------------------------------------------------------

CPP_CHECK_TIMEOUT = 60


@dataclasses.dataclass(frozen=True)
class CppEnv:
    """Where the C++ side of the interop tests lives."""

    python: str  # the interpreter whose environment has ``rocketmq`` installed
    script: Path  # tests/interop/cpp_client.py
    rocketmq_version: str  # the installed version of the PyPI package


@pytest.fixture(scope="session")
def cpp_client() -> CppEnv:
    """The C++ client driver, after checking in a subprocess that ``rocketmq`` imports
    (it loads librocketmq.so; a crash there must not take pytest down)."""
    if not CPP_CLIENT_SCRIPT.is_file():
        pytest.fail(f"the C++ client driver {CPP_CLIENT_SCRIPT} is missing", pytrace=False)
    check = (
        "import importlib.metadata, rocketmq.client; print(importlib.metadata.version('rocketmq'))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", check],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CPP_CHECK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"importing rocketmq took more than {CPP_CHECK_TIMEOUT} s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"the C++ interop tests need the PyPI package rocketmq=={ROCKETMQ_VERSION} (its "
            "wheel bundles librocketmq.so; Linux x86_64 only) in this environment: "
            f"pip install -e '.[test]'. `import rocketmq.client` with {sys.executable} "
            f"failed with status {done.returncode}:\n{done.stderr.strip()}",
            pytrace=False,
        )
    version = done.stdout.strip()
    if version != ROCKETMQ_VERSION:
        pytest.fail(
            f"found rocketmq {version!r}, the C++ interop tests expect {ROCKETMQ_VERSION}",
            pytrace=False,
        )
    return CppEnv(python=sys.executable, script=CPP_CLIENT_SCRIPT, rocketmq_version=version)


# ---------------------------------------------------------------------------
# The dev broker: `twist rmq-remoting` as a subprocess
# ---------------------------------------------------------------------------


class RunningBroker:
    """One ``twist rmq-remoting`` process on 127.0.0.1 (or an external broker)."""

    def __init__(self, twist: Any | None, host: str, port: int) -> None:
        self.twist = twist  # tests.test_twist_integration.Twist, None when external
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """What clients are given as the name server: ``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> str:
        return self.twist.log if self.twist is not None else "(external broker: no log)"

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it is still there after 15 s; the exit status."""
        return self.twist.stop() if self.twist is not None else None

    def kill(self) -> int | None:
        """SIGKILL now (a crash, for durability tests); the exit status."""
        if self.twist is None:
            return None
        self.twist.process.kill()
        self.twist.process.wait(timeout=30)
        return self.twist.stop()


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., RunningBroker]]:
    """``start_broker(*args, port=None)`` runs ``twist --log-format=text rmq-remoting
    --listen tcp:PORT:interface=127.0.0.1 *args`` (a free port unless ``port`` is given,
    e.g. to restart on the same one) with this environment's Python, waits until it
    accepts TCP connections and returns it. Every broker started is stopped in teardown.

    With $RMQTWIST_INTEROP_BROKER=host:port set, no process is started: that running
    broker is returned (and ``args`` must be empty)."""
    # The helpers of the twist integration tests, imported here rather than at the top:
    # that module imports this conftest.
    from tests.test_twist_integration import Twist

    started: list[RunningBroker] = []
    external = os.environ.get(EXTERNAL_BROKER_ENV)

    def start(*args: str, port: int | None = None) -> RunningBroker:
        if external:
            if args or port is not None:
                pytest.fail(f"${EXTERNAL_BROKER_ENV} is set: cannot start a broker with {args}")
            host, _, text = external.rpartition(":")
            return RunningBroker(None, host, int(text))
        twist = Twist(tmp_path / f"broker-{len(started)}.log", *args, port=port)
        broker = RunningBroker(twist, "127.0.0.1", twist.port)
        started.append(broker)
        twist.wait_listening()
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.stop()


@pytest.fixture
def broker(start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    """A dev broker with default options (name server + broker on one loopback port)."""
    return start_broker()


def broker_request(
    address: str,
    code: int,
    ext_fields: Mapping[str, Any] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> RemotingCommand:
    """Send one request with our own codec over a plain socket; its response."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(encode_frame(RemotingCommand.request(code, ext_fields, body, opaque=1)))
        decoder = FrameDecoder()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for command in decoder.feed(data):
                if command.is_response and command.opaque == 1:
                    return command
    raise AssertionError(f"no response to request code {code} from {address}")


def create_topic(address: str, topic: str, queues: int = 4) -> None:
    """UPDATE_AND_CREATE_TOPIC (17) with ``queues`` read and write queues, perm 6.

    ali-ons cannot send to a topic the name server does not know (a route answer of
    TOPIC_NOT_EXIST fails its send; it never falls back to TBW102), so tests create
    their topics first."""
    response = broker_request(
        address,
        17,
        {
            "topic": topic,
            "defaultTopic": "TBW102",
            "readQueueNums": queues,
            "writeQueueNums": queues,
            "perm": 6,
            "topicFilterType": "SINGLE_TAG",
            "topicSysFlag": 0,
            "order": "false",
        },
    )
    assert response.code == 0, f"creating topic {topic}: {response!r}"


# ---------------------------------------------------------------------------
# Running the drivers
# ---------------------------------------------------------------------------

#: Added to a driver's own --timeout-ms (its watchdog adds 15 s more) before we kill it.
DRIVER_KILL_MARGIN = 30.0


def parse_lines(text: str) -> list[dict[str, Any]]:
    """The complete JSON lines of a driver's stdout (split on "\\n" only: a value may hold
    U+2028, which str.splitlines() would split on)."""
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.split("\n") if line]


@dataclasses.dataclass
class ClientRun:
    """A finished run of a driver."""

    name: str
    command: list[str]
    status: int | None  # None: killed by us (timed out)
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def lines(self) -> list[dict[str, Any]]:
        return parse_lines(self.stdout)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("kind") == kind]

    @property
    def sent(self) -> list[dict[str, Any]]:
        """The send results (produce)."""
        return self.kind("sent")

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Every delivery, failed ones ("retry"/"throw") included (consume)."""
        return self.kind("message")

    @property
    def consumed(self) -> list[dict[str, Any]]:
        """The deliveries consumed successfully (consume)."""
        return [line for line in self.deliveries if line.get("action") == "ok"]

    def describe(self) -> str:
        return (
            f"{self.name}: {' '.join(self.command)}\n"
            f"exit status {self.status}, timed out {self.timed_out}\n"
            f"--- stderr ---\n{self.stderr[-6000:]}\n"
            f"--- stdout (last 6000 chars) ---\n{self.stdout[-6000:]}"
        )

    def check(self) -> ClientRun:
        """This run, after asserting it succeeded."""
        assert self.status == 0 and not self.timed_out, self.describe()
        return self


class BackgroundClient:
    """A driver running in the background (a consumer with ``--stdin-stop``): its output
    goes to files that the test polls; closing its stdin stops it cleanly."""

    def __init__(self, name: str, command: list[str], cwd: Path, out: Path, timeout: float) -> None:
        self.name = name
        self.command = command
        self.out_path = out.with_suffix(".out")
        self.err_path = out.with_suffix(".err")
        self.kill_after = time.monotonic() + timeout + DRIVER_KILL_MARGIN
        with open(self.out_path, "wb") as stdout, open(self.err_path, "wb") as stderr:
            self.process = subprocess.Popen(
                command, cwd=cwd, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr
            )
        self.result: ClientRun | None = None

    @property
    def lines(self) -> list[dict[str, Any]]:
        return parse_lines(self.out_path.read_text("utf-8", "replace"))

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("kind") == kind]

    @property
    def consumed(self) -> list[dict[str, Any]]:
        return [line for line in self.kind("message") if line.get("action") == "ok"]

    def snapshot(self, timed_out: bool = False) -> ClientRun:
        return ClientRun(
            self.name,
            self.command,
            self.process.poll(),
            self.out_path.read_text("utf-8", "replace"),
            self.err_path.read_text("utf-8", "replace"),
            timed_out,
        )

    def wait_for(
        self,
        condition: Callable[[BackgroundClient], bool],
        timeout: float,
        what: str,
    ) -> None:
        """Poll until ``condition(self)``; fail (with the output so far) after
        ``timeout`` seconds or if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            if condition(self):
                return
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} ended before {what}:\n{self.snapshot().describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout} s\n{self.snapshot().describe()}")
            time.sleep(0.05)

    def stop(self) -> ClientRun:
        """Close stdin (the driver then closes its client cleanly) and wait for the end."""
        if self.result is not None:
            return self.result
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=max(1.0, self.kill_after - time.monotonic()))
            self.result = self.snapshot()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.result = self.snapshot(timed_out=True)
        return self.result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Driver:
    """Runs one client's driver (``ons`` or ``cpp``) as subprocesses with hard timeouts.

    Both drivers have the same command line (see their docstrings); the options only one
    of them has are added here for that one: ``rebalance_ms`` (ali-ons' rebalance
    interval) and ``properties`` (the C++ client can only read properties by name)."""

    def __init__(self, name: str, prefix: Sequence[str], cwd: Path, work: Path) -> None:
        self.name = name
        self.prefix = list(prefix)
        self.cwd = cwd
        self.work = work  # where output files and the C++ client's logs go
        self.runs = 0
        self.background: list[BackgroundClient] = []

    def _next(self, what: str) -> Path:
        self.runs += 1
        return self.work / f"{self.name}-{self.runs}-{what}"

    def _command(self, mode: str, args: list[str], tag: Path) -> list[str]:
        command = [*self.prefix, mode, *args]
        if self.name == "cpp":
            command += ["--log-dir", str(tag.with_suffix(".logs"))]
        return command

    def _run(self, name: str, command: list[str], stdin: bytes, timeout: float) -> ClientRun:
        try:
            done = subprocess.run(
                command,
                cwd=self.cwd,
                input=stdin,
                capture_output=True,
                timeout=timeout + DRIVER_KILL_MARGIN,
                check=False,
            )
        except subprocess.TimeoutExpired as e:  # run() has killed it
            return ClientRun(
                name,
                command,
                None,
                (e.stdout or b"").decode("utf-8", "replace"),
                (e.stderr or b"").decode("utf-8", "replace"),
                True,
            )
        return ClientRun(
            name,
            command,
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )

    def produce(
        self,
        namesrv: str,
        topic: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        group: str | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> ClientRun:
        """Send ``messages`` (the driver's input objects) one by one."""
        tag = self._next("produce")
        args = ["--namesrv", namesrv, "--topic", topic, "--timeout-ms", str(int(timeout * 1000))]
        if group is not None:
            args += ["--group", group]
        stdin = "".join(json.dumps(message) + "\n" for message in messages).encode("utf-8")
        run = self._run(
            f"{self.name} producer", self._command("produce", args, tag), stdin, timeout
        )
        return run.check() if check else run

    def _consume_args(
        self,
        namesrv: str,
        group: str,
        topic: str,
        count: int,
        timeout: float,
        expression: str,
        linger: float,
        fail_prefix: str | None,
        fail_mode: str | None,
        from_where: str | None,
        properties: Sequence[str],
        rebalance_ms: int | None,
    ) -> list[str]:
        args = [
            "--namesrv", namesrv, "--group", group, "--topic", topic,
            "--count", str(count), "--timeout-ms", str(int(timeout * 1000)),
            "--expression", expression, "--linger-ms", str(int(linger * 1000)),
        ]  # fmt: skip
        if fail_prefix is not None:
            args += ["--fail-prefix", fail_prefix]
        if fail_mode is not None:
            args += ["--fail-mode", fail_mode]
        if from_where is not None:
            args += ["--from", from_where]
        if self.name == "cpp":
            for name in properties:
                args += ["--property", name]
        if self.name == "ons" and rebalance_ms is not None:
            args += ["--rebalance-ms", str(rebalance_ms)]
        return args

    def consume(
        self,
        namesrv: str,
        group: str,
        topic: str,
        *,
        count: int = 0,
        timeout: float = 30.0,
        expression: str = "*",
        linger: float = 0.0,
        fail_prefix: str | None = None,
        fail_mode: str | None = None,
        from_where: str | None = None,
        properties: Sequence[str] = (),
        rebalance_ms: int | None = None,
        check: bool = True,
    ) -> ClientRun:
        """Push-consume until ``count`` deliveries succeeded (then ``linger`` s more), or
        for ``timeout`` s when ``count`` is 0; the consumer then closes (committing)."""
        tag = self._next("consume")
        args = self._consume_args(
            namesrv, group, topic, count, timeout, expression, linger, fail_prefix,
            fail_mode, from_where, properties, rebalance_ms,
        )  # fmt: skip
        run = self._run(f"{self.name} consumer", self._command("consume", args, tag), b"", timeout)
        return run.check() if check else run

    def start_consumer(
        self,
        namesrv: str,
        group: str,
        topic: str,
        *,
        timeout: float = 120.0,
        expression: str = "*",
        fail_prefix: str | None = None,
        fail_mode: str | None = None,
        from_where: str | None = None,
        properties: Sequence[str] = (),
        rebalance_ms: int | None = None,
    ) -> BackgroundClient:
        """A consumer in the background until :meth:`BackgroundClient.stop` (or
        ``timeout``); it is killed in teardown if still running."""
        tag = self._next("consumer")
        args = self._consume_args(
            namesrv, group, topic, 0, timeout, expression, 0.0, fail_prefix, fail_mode,
            from_where, properties, rebalance_ms,
        )  # fmt: skip
        command = self._command("consume", [*args, "--stdin-stop"], tag)
        client = BackgroundClient(f"{self.name} consumer", command, self.cwd, tag, timeout)
        self.background.append(client)
        return client

    def close(self) -> None:
        for client in self.background:
            client.kill()


@pytest.fixture
def ons_driver(ali_ons: NodeEnv, tmp_path: Path) -> Iterator[Driver]:
    """ali-ons' Producer and Consumer, through node/ons_broker_client.js."""
    driver = Driver("ons", [ali_ons.node, str(ali_ons.broker_client)], ali_ons.directory, tmp_path)
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture
def cpp_driver(cpp_client: CppEnv, tmp_path: Path) -> Iterator[Driver]:
    """The C++ client's Producer and PushConsumer, through cpp_client.py."""
    driver = Driver(
        "cpp", [cpp_client.python, str(cpp_client.script)], cpp_client.script.parent, tmp_path
    )
    try:
        yield driver
    finally:
        driver.close()


# ---------------------------------------------------------------------------
# rmqtwist's own Producer and consumers, as a third driver
# ---------------------------------------------------------------------------

RMQTWIST_CLIENT_SCRIPT = INTEROP_DIR / "rmqtwist_client.py"


class RmqtwistDriver(Driver):
    """rmqtwist's Producer and PushConsumer (or PullConsumer) through rmqtwist_client.py,
    with the command line of the other two drivers; ``rebalance_ms`` sets the consumer's
    rebalance interval, as for ali-ons.

    With no ``from_where``, its consumers start from the first offset: the scenarios
    expect a new group to read a young queue from offset 0, which ali-ons and the C++
    client get from the 4.x rule (QUERY_CONSUMER_OFFSET answers 0 there); rmqtwist asks
    as Java 5 does (setZeroIfNotFound=false), is told the group has no offset, and a
    CONSUME_FROM_LAST_OFFSET group then starts at the end of the queue."""

    def _consume_args(self, *args: Any) -> list[str]:
        command = super()._consume_args(*args)
        from_where, rebalance_ms = args[9], args[11]
        if from_where is None:
            command += ["--from", "first"]
        if rebalance_ms is not None:
            command += ["--rebalance-ms", str(rebalance_ms)]
        return command


def rmqtwist_driver_with(name: str, consumer: str, work: Path, *options: str) -> RmqtwistDriver:
    """A driver running rmqtwist_client.py with ``--consumer consumer`` and ``options``
    (its options before the mode, e.g. ``--batch 5``)."""
    if not RMQTWIST_CLIENT_SCRIPT.is_file():
        pytest.fail(f"the rmqtwist driver {RMQTWIST_CLIENT_SCRIPT} is missing", pytrace=False)
    prefix = [sys.executable, str(RMQTWIST_CLIENT_SCRIPT), "--consumer", consumer, *options]
    return RmqtwistDriver(name, prefix, INTEROP_DIR, work)


@pytest.fixture
def rmqtwist_driver(tmp_path: Path) -> Iterator[Driver]:
    """rmqtwist's Producer and PushConsumer, through rmqtwist_client.py."""
    driver = rmqtwist_driver_with("rmqtwist", "push", tmp_path)
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture
def rmqtwist_pull_driver(tmp_path: Path) -> Iterator[Driver]:
    """rmqtwist's Producer and lite PullConsumer, through rmqtwist_client.py."""
    driver = rmqtwist_driver_with("rmqtwist_pull", "pull", tmp_path)
    try:
        yield driver
    finally:
        driver.close()
