"""The command line, ``python -m rmqtwist COMMAND``: kcat-like tools for RocketMQ.

``produce`` sends messages, ``consume`` prints them as they arrive, ``route`` and
``topics`` show what the name servers know, ``call`` sends one remoting request and
prints its response, and ``echo`` runs the smallest server to try clients against. One
module per command (``rmqtwist.cli._produce``, ...); :func:`main` parses the command
line and runs one. See :doc:`/howto/command-line` for the commands, their output and
their exit statuses (the ``EXIT_*`` constants).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rmqtwist._version import __version__
from rmqtwist.cli import _call, _consume, _echo, _produce, _route
from rmqtwist.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_TOPIC,
    EXIT_NOT_SUCCESS,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_STATUS_TEXT,
    EXIT_USAGE,
    PROG,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_SUCCESS",
    "EXIT_NO_TOPIC",
    "EXIT_OK",
    "EXIT_PIPE_CLOSED",
    "EXIT_USAGE",
    "main",
    "parser",
]

DESCRIPTION = """\
Command-line tools for Apache RocketMQ's remoting protocol, kcat-style: send and
receive messages, look at routes and topics, send one raw request, or run an echo
server. NAMESRV is a name server's host:port (several: h1:9876;h2:9876); the dev broker
("twist rmq-remoting") is its own name server. "python -m rmqtwist COMMAND --help"
describes each command."""


def version() -> str:
    """rmqtwist's version, as ``--version`` prints it."""
    return f"rmqtwist {__version__.public()}"


def parser() -> argparse.ArgumentParser:
    """The command line's parser: one subcommand per tool."""
    top = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EXIT_STATUS_TEXT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=version())
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _produce.add_parser(commands)
    _consume.add_parser(commands)
    _route.add_parsers(commands)
    _call.add_parser(commands)
    _echo.add_parser(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command; its exit status."""
    top = parser()
    args = top.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    status: int = args.run(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
