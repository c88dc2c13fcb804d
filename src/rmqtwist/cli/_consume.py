"""``python -m rmqtwist consume``: print a topic's messages as they arrive."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import time
from typing import Any, Final

from rmqtwist.cli._common import (
    EXIT_OK,
    EXIT_STATUS_TEXT,
    CommandError,
    DropReasons,
    Interrupt,
    StdoutClosed,
    add_connection_options,
    check_connection,
    describe,
    err,
    name_servers_arg,
    out,
    out_bytes,
    positive_int_arg,
    seconds_arg,
)
from rmqtwist.cli._common import run as run_command
from rmqtwist.client import RemotingClient
from rmqtwist.codes import ResponseCode
from rmqtwist.errors import RemotingError
from rmqtwist.message import MessageExt
from rmqtwist.routing import MessageQueue, RouteError, RouteTable

DESCRIPTION = f"""\
Print the messages of TOPIC as they arrive, as consumer group G (clustering: several
consume commands of one group share the queues). Without --json each message's body is
written as it is, followed by a newline; with --json one object per message: topic,
brokerName, queueId, queueOffset, msgId, tags, keys, properties, reconsumeTimes,
bornTimestamp, and body (text) or bodyHex (when the body is not UTF-8). A running count
and rate go to stderr when it is a terminal. The group's offsets are committed as the
messages are printed and on exit (--count reached, Ctrl-C), so the next run of the group
continues where this one stopped; a message is committed only once printed.
--from tells where a group with no committed offset starts: the first message still
stored, or the last (only messages sent from now on; the default, as Java's).

{EXIT_STATUS_TEXT}"""

#: Seconds between commits while messages flow.
COMMIT_INTERVAL: Final = 1.0
#: Seconds a poll waits for messages before the loop looks at Ctrl-C again.
POLL_TIMEOUT: Final = 0.5
#: Seconds between two updates of the count and rate on a terminal.
PROGRESS_INTERVAL: Final = 0.25


def add_parser(commands: Any) -> None:
    consume = commands.add_parser(
        "consume",
        help="print a topic's messages as they arrive",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    consume.add_argument(
        "name_servers", metavar="NAMESRV", type=name_servers_arg, help="name server host:port"
    )
    consume.add_argument("topic", metavar="TOPIC", help="the topic")
    consume.add_argument("--group", metavar="G", required=True, help="the consumer group")
    consume.add_argument(
        "--tag",
        metavar="EXPR",
        default="*",
        help="tags to receive: 'TagA || TagB', or * for all (the default)",
    )
    consume.add_argument(
        "--from",
        dest="start",
        choices=["first", "last"],
        default="last",
        help="where a group without a committed offset starts (default last)",
    )
    consume.add_argument(
        "--count", metavar="N", type=positive_int_arg, help="exit after N messages"
    )
    consume.add_argument(
        "--timeout",
        metavar="S",
        type=seconds_arg,
        default=3.0,
        help="seconds for each broker or name server call (default 3)",
    )
    consume.add_argument("--json", action="store_true", help="one JSON object per message")
    add_connection_options(consume)
    consume.set_defaults(run=run, check=functools.partial(check_connection, consume))


def message_json(message: MessageExt, broker_name: str | None) -> dict[str, Any]:
    """The JSON object printed for ``message``."""
    body = message.decoded_body()
    result: dict[str, Any] = {
        "topic": message.topic,
        "brokerName": broker_name,
        "queueId": message.queue_id,
        "queueOffset": message.queue_offset,
        "msgId": message.msg_id,
        "tags": message.tags,
        "keys": list(message.keys),
        "properties": dict(message.properties),
        "reconsumeTimes": message.reconsume_times,
        "bornTimestamp": message.born_timestamp,
    }
    try:
        result["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        result["bodyHex"] = body.hex()
    return result


class Progress:
    """The running count and rate, on one line of a terminal's stderr."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._started = time.monotonic()
        self._shown = 0.0
        self.count = 0

    def add(self) -> None:
        self.count += 1
        now = time.monotonic()
        if self.enabled and now - self._shown >= PROGRESS_INTERVAL:
            self._shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        rate = self.count / max(now - self._started, 1e-9)
        sys.stderr.write(f"\r{self.count} messages, {rate:.1f}/s ")
        sys.stderr.flush()

    def end(self) -> None:
        if self.enabled and self.count:
            self._show(time.monotonic())
            err("")


def _consumers() -> Any:
    """:mod:`rmqtwist.consumer`, looked up when the command runs."""
    return importlib.import_module("rmqtwist.consumer")


class Printer:
    """Prints messages as ``--json`` asks, counting them; finds each message's broker
    name from the topic's route (by the store host's address)."""

    def __init__(self, args: argparse.Namespace, routes: RouteTable) -> None:
        self.args = args
        self.routes = routes
        self.progress = Progress()
        self._brokers: dict[str, str] = {}  # store host -> broker name

    async def broker_name(self, message: MessageExt) -> str | None:
        host = message.store_host
        if host not in self._brokers:
            try:
                route = await self.routes.route(self.args.topic, refresh=True)
            except RemotingError:
                return None
            for name, ids in route.brokers.items():
                for address in ids.values():
                    self._brokers[address] = name
            if host not in self._brokers and len(route.brokers) == 1:
                self._brokers[host] = next(iter(route.brokers))
        return self._brokers.get(host)

    async def print(self, message: MessageExt) -> None:
        """Print ``message`` (StdoutClosed when stdout's reader has gone)."""
        if self.args.json:
            out(json.dumps(message_json(message, await self.broker_name(message))))
        else:
            out_bytes(message.decoded_body() + b"\n")
        self.progress.add()

    def done(self) -> bool:
        """Whether --count messages have been printed."""
        count: int | None = self.args.count
        return count is not None and self.progress.count >= count


async def _with_pull(
    args: argparse.Namespace, reactor: Any, client: RemotingClient, interrupt: Interrupt
) -> None:
    """Consume with the lite pull consumer: one message per poll, committed once printed."""
    consumers = _consumers()
    ConsumeFrom, PullConsumer = consumers.ConsumeFrom, consumers.PullConsumer  # noqa: N806
    printer = Printer(args, RouteTable(client, args.name_servers, timeout=args.timeout))
    consumer = PullConsumer(
        args.group,
        args.name_servers,
        reactor=reactor,
        client=client,
        auto_commit=False,
        consume_from=ConsumeFrom.FIRST if args.start == "first" else ConsumeFrom.LAST,
        poll_batch_size=1,  # so that everything a poll returned is printed before a commit
    )
    # Ctrl-C ends the loop (it looks every POLL_TIMEOUT) instead of cancelling a poll
    # whose messages would then count as returned but never be printed.
    interrupt.on(lambda: None)
    printed_all = True  # every message a poll returned has been printed
    last_commit = time.monotonic()
    try:
        await _check_access(printer.routes, args.topic)
        consumer.subscribe(args.topic, args.tag)
        await consumer.start()
        while not interrupt.requested and not printer.done():
            if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                await consumer.commit()
                last_commit = time.monotonic()
            for message in await consumer.poll(POLL_TIMEOUT):
                printed_all = False
                try:
                    await printer.print(message)
                except StdoutClosed:
                    # Not printed: pull its queue from it again, so that the commit
                    # below stops right before it.
                    queue = await _queue_of(consumer.assignment(), message, printer)
                    if queue is not None:
                        consumer.seek(queue, message.queue_offset)
                        printed_all = True
                    raise
                printed_all = True
    finally:
        printer.progress.end()
        try:
            if printed_all:
                await consumer.commit()
        finally:
            await consumer.shutdown()


async def _check_access(routes: RouteTable, topic: str) -> None:
    """Fail (RouteError) if the name servers refuse the topic's route with NO_PERMISSION
    (an ACL, wrong credentials): the pull consumer would otherwise keep trying, silent.
    Any other failure is left to the consumer, which waits for the topic."""
    try:
        await routes.route(topic)
    except RouteError as e:
        if ResponseCode.NO_PERMISSION in e.codes:
            raise


async def _queue_of(
    assigned: frozenset[MessageQueue], message: MessageExt, printer: Printer
) -> MessageQueue | None:
    """The assigned queue ``message`` came from (None when that cannot be told)."""
    candidates = [
        q for q in assigned if q.topic == message.topic and q.queue_id == message.queue_id
    ]
    if len(candidates) > 1:
        name = await printer.broker_name(message)
        candidates = [q for q in candidates if q.broker_name == name]
    return candidates[0] if len(candidates) == 1 else None


def run(args: argparse.Namespace) -> int:
    async def consume(reactor: Any, interrupt: Interrupt) -> int:
        if not hasattr(_consumers(), "PullConsumer"):
            raise CommandError("this rmqtwist has no rmqtwist.consumer.PullConsumer yet")
        client = args.connection.client(reactor)
        reasons = DropReasons.on(client)
        try:
            await _with_pull(args, reactor, client, interrupt)
        except RemotingError as e:
            raise CommandError(describe(e, reasons)) from None
        finally:
            await client.close(timeout=0)
        return EXIT_OK

    return run_command("consume", consume)
