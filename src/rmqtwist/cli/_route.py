"""``python -m rmqtwist route`` and ``topics``: what the name servers know."""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

from rmqtwist.cli._common import (
    EXIT_NO_TOPIC,
    EXIT_OK,
    EXIT_STATUS_TEXT,
    CommandError,
    DropReasons,
    Interrupt,
    add_connection_options,
    check_connection,
    describe,
    name_servers_arg,
    out,
    seconds_arg,
)
from rmqtwist.cli._common import run as run_command
from rmqtwist.routing import (
    PERM_READ,
    PERM_WRITE,
    RouteError,
    RouteTable,
    TopicNotFoundError,
    TopicRoute,
)

ROUTE_DESCRIPTION = f"""\
Print TOPIC's route as the name server(s) NAMESRV give it (GET_ROUTEINFO_BY_TOPIC):
each broker with its addresses by broker id (0 is the master), then each queue with
its permission (read: consumers pull from it; write: producers send to it).

{EXIT_STATUS_TEXT}"""

TOPICS_DESCRIPTION = f"""\
Print every topic the name server(s) NAMESRV know, one per line, sorted
(GET_ALL_TOPIC_LIST_FROM_NAMESERVER); system topics (TBW102, RMQ_SYS_...) included.

{EXIT_STATUS_TEXT}"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name_servers", metavar="NAMESRV", type=name_servers_arg, help="name server host:port"
    )


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=seconds_arg,
        default=3.0,
        help="seconds for each name server's answer (default 3)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_connection_options(parser)


def add_parsers(commands: Any) -> None:
    route = commands.add_parser(
        "route",
        help="print a topic's brokers and queues",
        description=ROUTE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(route)
    route.add_argument("topic", metavar="TOPIC", help="the topic")
    _options(route)
    route.set_defaults(run=run_route, check=functools.partial(check_connection, route))
    topics = commands.add_parser(
        "topics",
        help="list the topics the name server knows",
        description=TOPICS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(topics)
    _options(topics)
    topics.set_defaults(run=run_topics, check=functools.partial(check_connection, topics))


def queue_perms(route: TopicRoute) -> list[tuple[str, int, int]]:
    """``(broker name, queue id, perm)`` for every queue readable or writable, sorted."""
    perms: dict[tuple[str, int], int] = {}
    for queue in route.read_queues:
        key = (queue.broker_name, queue.queue_id)
        perms[key] = perms.get(key, 0) | PERM_READ
    for queue in route.write_queues:
        key = (queue.broker_name, queue.queue_id)
        perms[key] = perms.get(key, 0) | PERM_WRITE
    return [(name, queue_id, perm) for (name, queue_id), perm in sorted(perms.items())]


def _perm_text(perm: int) -> str:
    return " ".join(w for bit, w in ((PERM_READ, "read"), (PERM_WRITE, "write")) if perm & bit)


def route_json(route: TopicRoute) -> dict[str, Any]:
    return {
        "topic": route.topic,
        "brokers": [
            {
                "brokerName": name,
                "addresses": {str(i): a for i, a in sorted(ids.items())},
                "master": ids.get(0),
            }
            for name, ids in sorted(route.brokers.items())
        ],
        "queues": [
            {
                "brokerName": name,
                "queueId": queue_id,
                "perm": perm,
                "read": bool(perm & PERM_READ),
                "write": bool(perm & PERM_WRITE),
            }
            for name, queue_id, perm in queue_perms(route)
        ],
        "readQueueNums": len(route.read_queues),
        "writeQueueNums": len(route.write_queues),
    }


def route_text(route: TopicRoute) -> str:
    lines = [
        f"topic {route.topic}: {len(route.brokers)} broker(s), "
        f"{len(route.write_queues)} write queue(s), {len(route.read_queues)} read queue(s)",
        "brokers:",
    ]
    for name, ids in sorted(route.brokers.items()):
        addresses = ", ".join(
            f"{i}={a}" + (" (master)" if i == 0 else "") for i, a in sorted(ids.items())
        )
        lines.append(f"  {name}  {addresses}")
    lines.append("queues:")
    width = max((len(name) for name in route.brokers), default=0)
    for name, queue_id, perm in queue_perms(route):
        lines.append(f"  {name:<{width}}  {queue_id:>3}  {_perm_text(perm)}")
    return "\n".join(lines)


def run_route(args: argparse.Namespace) -> int:
    async def route(reactor: Any, interrupt: Interrupt) -> int:
        client = args.connection.client(reactor)
        reasons = DropReasons.on(client)
        try:
            table = RouteTable(client, args.name_servers, timeout=args.timeout)
            try:
                found = await table.route(args.topic)
            except TopicNotFoundError:
                raise CommandError(f"topic {args.topic!r} does not exist", EXIT_NO_TOPIC) from None
            except RouteError as e:
                raise CommandError(describe(e, reasons)) from None
        finally:
            await client.close(timeout=0)
        out(json.dumps(route_json(found)) if args.json else route_text(found))
        return EXIT_OK

    return run_command("route", route)


def run_topics(args: argparse.Namespace) -> int:
    async def topics(reactor: Any, interrupt: Interrupt) -> int:
        client = args.connection.client(reactor)
        reasons = DropReasons.on(client)
        try:
            table = RouteTable(client, args.name_servers, timeout=args.timeout)
            try:
                names = await table.all_topics()
            except RouteError as e:
                raise CommandError(describe(e, reasons)) from None
        finally:
            await client.close(timeout=0)
        if args.json:
            out(json.dumps(names))
        else:
            for name in names:
                out(name)
        return EXIT_OK

    return run_command("topics", topics)
