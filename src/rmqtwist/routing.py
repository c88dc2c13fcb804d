"""Topic routes from RocketMQ name servers, shared by the producer and the consumers.

A route (GET_ROUTEINFO_BY_TOPIC, 105) names the brokers holding a topic, with their
addresses by broker id (0 is the master), and per broker the topic's read and write queue
counts and permission. :func:`parse_route` reads the body, in standard JSON or with the
unquoted integer keys Java's fastjson writes for ``brokerAddrs``; :class:`RouteTable`
asks the name servers in turn and caches what it got, so a name server that is down, or a
refresh that fails, does not lose a route already known.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger

from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import RemotingError
from rmqtwist.headers import GetRouteInfoRequestHeader

__all__ = [
    "PERM_READ",
    "PERM_WRITE",
    "MessageQueue",
    "NoRouteError",
    "RouteError",
    "RouteTable",
    "TopicNotFoundError",
    "TopicRoute",
    "parse_route",
    "split_addresses",
]

_log = Logger()

#: Queue permission bits (Java's ``PermName``).
PERM_READ: Final = 4
PERM_WRITE: Final = 2
_MASTER_ID: Final = 0


class RouteError(RemotingError):
    """Base of the errors about routes. ``codes`` holds the response codes the name
    servers answered with (empty when none answered), so that a caller can tell an ACL
    refusal (NO_PERMISSION) from a missing topic without reading the message."""

    def __init__(self, message: str, codes: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.codes: frozenset[int] = frozenset(codes)


class NoRouteError(RouteError):
    """No name server gave a usable route for the topic."""


class TopicNotFoundError(NoRouteError):
    """Every name server that answered said the topic does not exist (TOPIC_NOT_EXIST)."""


def split_addresses(addresses: str | Iterable[str]) -> list[str]:
    """``"h1:9876;h2:9876"`` (Java's separator) or an iterable of addresses, as a list."""
    if isinstance(addresses, str):
        addresses = addresses.split(";")
    return [a.strip() for a in addresses if a.strip()]


@dataclass(frozen=True, slots=True, order=True)
class MessageQueue:
    """One queue of a topic on one broker (Java's ``MessageQueue``)."""

    topic: str
    broker_name: str
    queue_id: int

    def __str__(self) -> str:
        return f"{self.topic}@{self.broker_name}:{self.queue_id}"


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """A parsed route: addresses per broker, and the queues producers and consumers use.

    ``write_queues`` are those of brokers with a master (id 0) whose permission allows
    writing; ``read_queues`` those of brokers with any address whose permission allows
    reading. Both are sorted by broker name, then queue id, as Java orders them.
    """

    topic: str
    brokers: Mapping[str, Mapping[int, str]]
    write_queues: tuple[MessageQueue, ...]
    read_queues: tuple[MessageQueue, ...]
    #: Broker name -> master address, for brokers that have a master (made once).
    masters: Mapping[str, str] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        masters = {name: ids[_MASTER_ID] for name, ids in self.brokers.items() if _MASTER_ID in ids}
        object.__setattr__(self, "masters", MappingProxyType(masters))

    @property
    def queues(self) -> tuple[MessageQueue, ...]:
        """The writable queues: what a producer chooses from."""
        return self.write_queues

    def address(self, broker_name: str) -> str | None:
        """The master's address, else the address with the lowest broker id, else None."""
        ids = self.brokers.get(broker_name)
        if not ids:
            return None
        return ids.get(_MASTER_ID) or ids[min(ids)]


_UNQUOTED_KEY = re.compile(r"([{,]\s*)(-?\d+)(\s*:)")


def parse_route(topic: str, body: bytes) -> TopicRoute:
    """Parse a TopicRouteData body, with quoted or Java's unquoted ``brokerAddrs`` keys.

    Raises ``ValueError``, ``KeyError`` or ``TypeError`` for a body that is not a route.
    """
    text = body.decode("utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        data = json.loads(_UNQUOTED_KEY.sub(r'\1"\2"\3', text))
    brokers: dict[str, dict[int, str]] = {}
    for broker in data.get("brokerDatas") or ():
        addresses = broker.get("brokerAddrs") or {}
        ids = {int(str(k).strip()): str(v) for k, v in addresses.items() if v}
        if ids:
            brokers[str(broker["brokerName"])] = ids
    writes: list[MessageQueue] = []
    reads: list[MessageQueue] = []
    for queue_data in sorted(data.get("queueDatas") or (), key=lambda q: str(q["brokerName"])):
        name = str(queue_data["brokerName"])
        known = brokers.get(name)
        if not known:
            continue
        perm = int(queue_data.get("perm", 0))
        if perm & PERM_WRITE and _MASTER_ID in known:
            count = int(queue_data.get("writeQueueNums", 0))
            writes.extend(MessageQueue(topic, name, i) for i in range(count))
        if perm & PERM_READ:
            count = int(queue_data.get("readQueueNums", 0))
            reads.extend(MessageQueue(topic, name, i) for i in range(count))
    return TopicRoute(topic, brokers, tuple(writes), tuple(reads))


class RouteTable:
    """Routes fetched from ``name_servers`` through ``client``, cached per topic.

    A name server that fails or answers something unreadable is passed over for the next
    one; :meth:`route` fails with :class:`TopicNotFoundError` when the name servers that
    answered all said TOPIC_NOT_EXIST, else with :class:`NoRouteError` naming each cause.
    """

    def __init__(
        self,
        client: RemotingClient,
        name_servers: str | Iterable[str],
        *,
        timeout: float = 3.0,
    ) -> None:
        self.client = client
        self.name_servers = split_addresses(name_servers)
        if not self.name_servers:
            raise ValueError("at least one name server address is needed")
        self.timeout = timeout
        self._routes: dict[str, TopicRoute] = {}

    def cached(self, topic: str) -> TopicRoute | None:
        """The route last fetched for ``topic``, or None."""
        return self._routes.get(topic)

    def forget(self, topic: str) -> None:
        """Drop ``topic``'s cached route (it is fetched again when next asked for)."""
        self._routes.pop(topic, None)

    @property
    def topics(self) -> list[str]:
        """The topics with a cached route."""
        return list(self._routes)

    def route(self, topic: str, refresh: bool = False) -> Deferred[TopicRoute]:
        """``topic``'s route: the cached one, or fetched (always, with ``refresh``). A
        failed refresh of a cached route is logged and gives the cached route."""
        cached = self._routes.get(topic)
        if cached is not None and not refresh:
            return succeed(cached)
        return ensureDeferred(self._route(topic, cached))

    async def _route(self, topic: str, cached: TopicRoute | None) -> TopicRoute:
        try:
            route = await self._fetch(topic)
        except RouteError as error:
            if cached is not None:
                _log.info("route refresh of {topic} failed: {error}", topic=topic, error=error)
                return cached
            raise
        self._routes[topic] = route
        return route

    async def _ask(self, request: RemotingCommand) -> list[tuple[str, RemotingCommand | str]]:
        """Ask the name servers in turn; stop at the first SUCCESS. Gives each answer."""
        answers: list[tuple[str, RemotingCommand | str]] = []
        for address in self.name_servers:
            try:
                response = await self.client.invoke(address, request, self.timeout)
            except RemotingError as error:
                answers.append((address, str(error)))
                continue
            answers.append((address, response))
            if response.code == ResponseCode.SUCCESS:
                break
        return answers

    async def _fetch(self, topic: str) -> TopicRoute:
        request = GetRouteInfoRequestHeader(topic=topic).to_request(
            RequestCode.GET_ROUTEINFO_BY_TOPIC
        )
        errors: list[str] = []
        codes: list[int] = []
        not_found = answered = 0
        for address, answer in await self._ask(request):
            answered += not isinstance(answer, str)
            if not isinstance(answer, str):
                codes.append(answer.code)
            if isinstance(answer, str):
                errors.append(f"{address}: {answer}")
            elif answer.code == ResponseCode.SUCCESS and answer.body:
                try:
                    return parse_route(topic, answer.body)
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    errors.append(f"{address}: unreadable route ({error!r})")
            else:
                not_found += answer.code == ResponseCode.TOPIC_NOT_EXIST
                errors.append(f"{address}: code {answer.code} {answer.remark or ''}".rstrip())
        detail = "; ".join(errors)
        if not_found and not_found == answered:
            raise TopicNotFoundError(f"topic {topic!r} does not exist ({detail})", codes)
        raise NoRouteError(f"no route for {topic!r}: {detail}", codes)

    def refresh_all(self) -> Deferred[None]:
        """Fetch every cached topic's route again; failures are logged, old routes kept."""

        async def refresh() -> None:
            for topic in list(self._routes):
                try:
                    await self.route(topic, refresh=True)
                except RouteError as error:  # pragma: no cover - cached routes are kept
                    _log.info("route refresh of {topic} failed: {error}", topic=topic, error=error)

        return ensureDeferred(refresh())

    def brokers(self) -> dict[str, dict[int, str]]:
        """Every broker named by a cached route: name -> {broker id: address}."""
        merged: dict[str, dict[int, str]] = {}
        for route in self._routes.values():
            for name, ids in route.brokers.items():
                merged.setdefault(name, {}).update(ids)
        return merged

    def all_topics(self) -> Deferred[list[str]]:
        """Every topic the name servers know (GET_ALL_TOPIC_LIST_FROM_NAMESERVER, 206)."""
        return ensureDeferred(self._all_topics())

    async def _all_topics(self) -> list[str]:
        request = RemotingCommand.request(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER)
        errors: list[str] = []
        codes: list[int] = []
        for address, answer in await self._ask(request):
            if isinstance(answer, str):
                errors.append(f"{address}: {answer}")
                continue
            codes.append(answer.code)
            if answer.code == ResponseCode.SUCCESS:
                try:
                    data: Any = json.loads((answer.body or b"{}").decode("utf-8"))
                    return sorted(str(t) for t in data.get("topicList") or ())
                except (ValueError, AttributeError, TypeError) as error:
                    errors.append(f"{address}: unreadable topic list ({error!r})")
            else:
                errors.append(f"{address}: code {answer.code} {answer.remark or ''}".rstrip())
        raise RouteError(f"no topic list: {'; '.join(errors)}", codes)
