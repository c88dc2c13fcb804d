"""``python -m rmqtwist produce``: send messages from the command line or stdin."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredQueue

from rmqtwist.cli._common import (
    EXIT_NOT_SUCCESS,
    EXIT_OK,
    EXIT_STATUS_TEXT,
    CommandError,
    DropReasons,
    Interrupt,
    add_connection_options,
    check_connection,
    describe,
    key_value_arg,
    name_servers_arg,
    out,
    positive_int_arg,
    seconds_arg,
    unique_pairs,
)
from rmqtwist.cli._common import run as run_command
from rmqtwist.errors import RemotingError
from rmqtwist.message import Message
from rmqtwist.producer import Producer, SendResult, SendStatus

DESCRIPTION = f"""\
Send messages to TOPIC through the brokers the name server(s) NAMESRV list: BODY as one
message, or the file given by --file as one message, or else one message per line of
standard input (the line without its newline; empty lines are skipped, as RocketMQ
refuses empty bodies). Each message sent prints one line (--json: one JSON object with
status, msgId, offsetMsgId, brokerName, queueId, queueOffset). The first message that
cannot be sent (after the producer's retries) ends the command with status 1.

{EXIT_STATUS_TEXT}"""

#: Lines read ahead of the sends.
_READ_AHEAD = 64


def add_parser(commands: Any) -> None:
    produce = commands.add_parser(
        "produce",
        help="send messages (BODY, a file, or one per line of stdin)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    produce.add_argument(
        "name_servers", metavar="NAMESRV", type=name_servers_arg, help="name server host:port"
    )
    produce.add_argument("topic", metavar="TOPIC", help="the topic")
    produce.add_argument("body", metavar="BODY", nargs="?", help="one message's body (UTF-8)")
    produce.add_argument(
        "--file", metavar="F", help="send the bytes of file F as one message (- for stdin)"
    )
    produce.add_argument("--tag", metavar="T", help="the messages' tag")
    produce.add_argument(
        "--key",
        metavar="K",
        action="append",
        default=[],
        help="a key of the messages (repeatable)",
    )
    produce.add_argument(
        "--property",
        metavar="K=V",
        type=key_value_arg,
        action="append",
        default=[],
        help="a user property (repeatable; each name once)",
    )
    produce.add_argument(
        "--delay", metavar="LEVEL", type=positive_int_arg, help="delay level (1 = 1 s, ...)"
    )
    produce.add_argument(
        "--group",
        metavar="G",
        default="rmqtwist-cli",
        help="the producer group (default rmqtwist-cli)",
    )
    produce.add_argument(
        "--timeout",
        metavar="S",
        type=seconds_arg,
        default=3.0,
        help="seconds per send try (default 3)",
    )
    produce.add_argument("--json", action="store_true", help="one JSON object per message sent")
    add_connection_options(produce)
    produce.set_defaults(run=run, check=functools.partial(check, produce))


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks across arguments, and the message's fields checked before anything runs."""
    check_connection(parser, args)
    args.property = unique_pairs(parser, "--property", args.property)
    if args.body is not None and args.file is not None:
        parser.error("argument --file: not allowed with a BODY")
    try:
        template(args, b"")
    except (ValueError, TypeError) as e:
        parser.error(str(e))


def template(args: argparse.Namespace, body: bytes) -> Message:
    """The message to send with ``body``."""
    return Message(
        args.topic,
        body,
        tags=args.tag,
        keys=tuple(args.key),
        properties=args.property,
        delay_level=args.delay or 0,
    )


def result_json(result: SendResult) -> dict[str, Any]:
    return {
        "status": result.status.value,
        "msgId": result.msg_id,
        "offsetMsgId": result.offset_msg_id,
        "brokerName": result.queue.broker_name,
        "queueId": result.queue.queue_id,
        "queueOffset": result.queue_offset,
    }


def result_text(result: SendResult) -> str:
    return (
        f"{result.status.value} msgId={result.msg_id} broker={result.queue.broker_name} "
        f"queue={result.queue.queue_id} offset={result.queue_offset}"
    )


class Lines:
    """Lines of a file descriptor, read by a daemon thread (so that a blocked read never
    holds up the exit) a few lines ahead of the sends. The thread reads the descriptor
    itself, not ``sys.stdin``, whose buffer lock it would hold at the interpreter's exit."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._queue: DeferredQueue[bytes | BaseException | None] = DeferredQueue()
        self._room = threading.Semaphore(_READ_AHEAD)
        self._waiting: Deferred[bytes | BaseException | None] | None = None
        threading.Thread(target=self._read, name="rmqtwist-stdin", daemon=True).start()

    def _read(self) -> None:
        put = self._queue.put
        pending = b""
        try:
            while chunk := os.read(self._fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._room.acquire()
                    self._reactor.callFromThread(put, line)
            if pending:
                self._reactor.callFromThread(put, pending)
        except OSError as e:
            self._reactor.callFromThread(put, e)
        self._reactor.callFromThread(put, None)

    async def next(self) -> bytes | None:
        """The next line without its newline; None at the end (or once cancelled)."""
        self._waiting = self._queue.get()
        try:
            item = await self._waiting
        except CancelledError:
            return None
        finally:
            self._waiting = None
        if item is None:
            return None
        if isinstance(item, BaseException):
            raise CommandError(f"cannot read standard input: {item}")
        self._room.release()
        return item.removesuffix(b"\r")

    def cancel(self) -> None:
        """End :meth:`next`'s wait (Ctrl-C)."""
        if self._waiting is not None:
            self._waiting.cancel()


def _read_file(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    async def produce(reactor: Any, interrupt: Interrupt) -> int:
        client = args.connection.client(reactor)
        reasons = DropReasons.on(client)
        producer = Producer(
            args.group, args.name_servers, reactor=reactor, client=client, send_timeout=args.timeout
        )
        status = EXIT_OK
        sent = 0

        async def send(body: bytes) -> None:
            nonlocal status, sent
            try:
                result = await producer.send(template(args, body))
            except RemotingError as e:
                raise CommandError(
                    f"message {sent + 1} not sent ({sent} sent before it): {describe(e, reasons)}"
                ) from None
            sent += 1
            if result.status is not SendStatus.SEND_OK:
                status = EXIT_NOT_SUCCESS
            out(json.dumps(result_json(result)) if args.json else result_text(result))

        await producer.start()
        try:
            if args.body is not None:
                await send(args.body.encode("utf-8"))
            elif args.file is not None:
                await send(_read_file(args.file))
            else:
                lines = Lines(reactor, sys.stdin.fileno())
                interrupt.on(lines.cancel)
                while not interrupt.requested:
                    line = await lines.next()
                    if line is None:
                        break
                    if line:
                        await send(line)
        finally:
            await producer.shutdown()
            await client.close(timeout=0)
        return status

    return run_command("produce", produce)
