"""``python -m rmqtwist echo``: the smallest server to try clients against."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import globalLogBeginner, textFileLogObserver

from rmqtwist.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
    Interrupt,
    err,
    out,
)
from rmqtwist.cli._common import run as run_command
from rmqtwist.codec import DEFAULT_MAX_FRAME_LENGTH
from rmqtwist.codes import ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.framing import LengthPrefixed, LengthPrefixedFactory, format_address

DESCRIPTION = """\
Run an echo server: every request is answered SUCCESS with its own ext_fields and body
and the remark "ok", in the request's serialize type; oneway requests get no answer.
It is a bare length-prefixed protocol, with none of the server's processors, hooks or
limits (for those, run "twist rmq-remoting"). Stop it with Ctrl-C."""


class EchoProtocol(LengthPrefixed):
    """Answers every request with SUCCESS, echoing its ext_fields and body."""

    def command_received(self, command: RemotingCommand) -> None:
        if command.is_response or command.is_oneway:
            return
        self.send_command(
            RemotingCommand.response_to(
                command,
                ResponseCode.SUCCESS,
                remark="ok",
                ext_fields=command.ext_fields,
                body=command.body,
            )
        )


def add_parser(commands: Any) -> None:
    echo = commands.add_parser(
        "echo",
        help="run an echo server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    echo.add_argument("--port", type=int, default=10911, help="TCP port (default 10911)")
    echo.add_argument("--host", default="0.0.0.0", help="interface (default all)")
    echo.add_argument(
        "--max-frame-length",
        type=int,
        default=DEFAULT_MAX_FRAME_LENGTH,
        help="largest frame accepted, length prefix included (default 16 MiB)",
    )
    echo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        err(f"{PROG}: error: --port {args.port} is not a TCP port")
        return EXIT_USAGE

    async def serve(reactor: Any, interrupt: Interrupt) -> int:
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stdout)], redirectStandardIO=False
        )
        factory = LengthPrefixedFactory(max_frame_length=args.max_frame_length)
        factory.protocol = EchoProtocol
        try:
            port = reactor.listenTCP(args.port, factory, interface=args.host)
        except CannotListenError as e:
            raise CommandError(str(e)) from None
        out(f"rmqtwist echo server listening on {format_address(port.getHost())}")
        await interrupt.wait()
        await port.stopListening()
        return EXIT_OK

    return run_command("echo", serve)
