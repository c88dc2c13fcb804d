"""``twist rmq-remoting`` with processors of your own, and its graceful stop.

The processors and their plugin are in ``plugins/`` next to this file (copied to a
temporary directory first, so that Twisted's plugin cache is not written into the
checkout). The program lists the processor plugins ``twist`` finds, starts

    twist --log-format=text rmq-remoting --listen tcp:0:interface=127.0.0.1 \\
        --processor upper --processor slow --shutdown-timeout 5

talks to it over a plain socket, sends it SIGTERM while the slow processor is still
working, and shows that the answer still comes before the connection closes. Last, the
lines the server logged, without their timestamps.

Run from a checkout:  PYTHONPATH=src python docs/examples/twist_plugin.py
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from rmqtwist import RemotingCommand, code_name
from rmqtwist.codec import FrameDecoder, encode_frame

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"
UPPER, SLOW, GET_ROUTEINFO_BY_TOPIC = 9001, 9002, 105


def twist() -> list[str]:
    """The ``twist`` of this interpreter's environment."""
    script = Path(sys.executable).with_name("twist")
    return [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]


class Connection:
    """A blocking socket that sends and receives commands."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = FrameDecoder()
        self.received: list[RemotingCommand] = []

    def send(self, request: RemotingCommand) -> None:
        self.sock.sendall(encode_frame(request))

    def receive(self) -> RemotingCommand | None:
        """The next command, or None when the server has closed the connection."""
        while not self.received:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.received += self.decoder.feed(data)
        return self.received.pop(0)


def show(response: RemotingCommand | None) -> None:
    if response is None:
        print("  the server closed the connection")
    else:
        name = code_name(response.code, response=True)
        print(f"  {name} remark={response.remark!r} body={response.body!r}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plugins = Path(tmp) / "plugins"
        shutil.copytree(HERE / "plugins", plugins, ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(SRC)])}

        print("$ twist rmq-remoting --help-processors")
        listing = subprocess.run(
            [*twist(), "rmq-remoting", "--help-processors"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        print(listing.stdout, end="")

        command = ["rmq-remoting", "--listen", "tcp:0:interface=127.0.0.1"]
        command += ["--processor", "upper", "--processor", "slow", "--shutdown-timeout", "5"]
        server = subprocess.Popen(
            [*twist(), "--log-format=text", *command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            log = []
            assert server.stdout is not None
            for line in server.stdout:  # wait until it says where it listens
                log.append(line)
                listening = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if listening:
                    break
            else:
                raise SystemExit("twist exited:\n" + "".join(log))
            port = int(listening.group(1))

            connection = Connection(port)
            print("upper:")
            connection.send(RemotingCommand.request(UPPER, body=b"hello", opaque=1))
            show(connection.receive())
            print("a code no --processor answers:")
            connection.send(RemotingCommand.request(GET_ROUTEINFO_BY_TOPIC, opaque=2))
            show(connection.receive())
            print("slow, then upper, and SIGTERM while slow works:")
            connection.send(RemotingCommand.request(SLOW, opaque=3))
            connection.send(RemotingCommand.request(UPPER, body=b"meanwhile", opaque=4))
            show(connection.receive())  # upper's answer: slow is in flight by now
            server.send_signal(signal.SIGTERM)
            show(connection.receive())
            show(connection.receive())
            connection.sock.close()
            status = server.wait(timeout=30)
            print(f"twist exited after SIGTERM: {status in (0, -signal.SIGTERM)}")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        log += server.stdout.readlines()
        server.stdout.close()

    print("what it logged:")
    for line in log:
        message = line.partition(" ")[2].rstrip()  # without the timestamp
        message = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", message)
        print("  " + re.sub(r"(starting on|TCP Port) \d+", r"\1 PORT", message))


if __name__ == "__main__":
    main()
