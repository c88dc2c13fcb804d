"""``python -m rmqtwist``: small command-line tools.

``python -m rmqtwist echo [--port 10911] [--host 0.0.0.0]`` runs an echo server: every
request is answered SUCCESS with its own ext_fields and body and remark ``ok``, in the
request's serialize type; oneway requests get no answer. It is the smallest peer to test
clients against: a bare :class:`~rmqtwist.framing.LengthPrefixed`, with none of the
server's processors, hooks or limits (for those, run ``twist rmq-remoting``).
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet.error import CannotListenError
from twisted.logger import globalLogBeginner, textFileLogObserver

from rmqtwist.codec import DEFAULT_MAX_FRAME_LENGTH
from rmqtwist.codes import ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.framing import LengthPrefixed, LengthPrefixedFactory, format_address


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rmqtwist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo", help="run an echo server")
    echo.add_argument("--port", type=int, default=10911, help="TCP port (default 10911)")
    echo.add_argument("--host", default="0.0.0.0", help="interface (default all)")
    echo.add_argument(
        "--max-frame-length",
        type=int,
        default=DEFAULT_MAX_FRAME_LENGTH,
        help="largest frame accepted, length prefix included (default 16 MiB)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from twisted.internet import reactor

    if not 0 <= args.port <= 65535:
        print(f"python -m rmqtwist: error: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    factory = LengthPrefixedFactory(max_frame_length=args.max_frame_length)
    factory.protocol = EchoProtocol
    try:
        port = reactor.listenTCP(args.port, factory, interface=args.host)
    except CannotListenError as e:
        print(f"python -m rmqtwist: error: {e}", file=sys.stderr)
        return 1
    print(f"rmqtwist echo server listening on {format_address(port.getHost())}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
