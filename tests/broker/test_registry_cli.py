"""``twist rmq-remoting --name-server`` and ``--version``: the options, and three real
``twist`` processes (one name server, two brokers registering with it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.python import usage

from rmqtwist._version import __version__
from rmqtwist.tap import Options, broker_config

SRC = Path(__file__).resolve().parents[2] / "src"


def _parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_name_server_option() -> None:
    config = broker_config(_parse("--name-server", "10.0.0.1:9876;10.0.0.2:9876"))
    assert config.name_server == "10.0.0.1:9876;10.0.0.2:9876"
    config = broker_config(_parse("--name-server", "a:1", "--name-server", "b:2;"))
    assert config.name_server == "a:1;b:2"
    assert broker_config(_parse()).name_server is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--name-server", "nohost"), "--name-server takes host:port[;host:port], not 'nohost'"),
        (("--name-server", ";"), "--name-server needs a host:port"),
        (("--name-server", "a:1", "--processor", "echo"), "--name-server configure the broker"),
    ],
)
def test_bad_name_server_option(argv: tuple[str, ...], expected: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        _parse(*argv)
    assert expected in str(info.value)


def _twist() -> list[str]:
    script = Path(sys.executable).with_name("twist")
    return [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]


def _environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(SRC) + (os.pathsep + path if path else "")}


def test_version_prints_rmqtwists_version() -> None:
    done = subprocess.run(
        [*_twist(), "rmq-remoting", "--version"],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"rmqtwist {__version__.public()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Twist:
    def __init__(self, log: Path, *args: str) -> None:
        self.port = _free_port()
        self.log_path = log
        self.log_file = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [*_twist(), "--log-format=text", "rmq-remoting", "--port", str(self.port), *args],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=_environment(),
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"{text!r} not in the log within {timeout} s:\n{self.log}")

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=15)
        finally:
            self.log_file.close()


@pytest.fixture
def processes() -> Iterator[list[_Twist]]:
    started: list[_Twist] = []
    yield started
    for process in reversed(started):
        process.stop()


def test_two_twist_brokers_register_with_a_third(tmp_path: Path, processes: list[_Twist]) -> None:
    ns = _Twist(tmp_path / "ns.log", "--broker-name", "ns")
    processes.append(ns)
    ns.wait_for("listening on")
    b1 = _Twist(tmp_path / "b1.log", "--broker-name", "b1", "--name-server", ns.address)
    processes.append(b1)
    b2 = _Twist(tmp_path / "b2.log", "--broker-name", "b2", "--name-server", ns.address)
    processes.append(b2)
    b1.wait_for(f"Registered broker b1 ({b1.address}) with name server {ns.address}")
    b2.wait_for(f"Registered broker b2 ({b2.address}) with name server {ns.address}")
    ns.wait_for(f"Broker b1 (id 0, cluster DefaultCluster) registered at {b1.address}")
    ns.wait_for(f"Broker b2 (id 0, cluster DefaultCluster) registered at {b2.address}")
    b2.stop()
    ns.wait_for(f"Broker b2 (id 0) at {b2.address} unregistered")
    assert "Traceback" not in ns.log + b1.log + b2.log
