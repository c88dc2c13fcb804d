"""The :class:`Producer` and its errors and results (see :mod:`rmqtwist.producer`)."""

from __future__ import annotations

import enum
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist._setup import client_setup
from rmqtwist.acl import Credentials
from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.consumer._base import heartbeat_request
from rmqtwist.errors import RemotingCallError, RemotingError
from rmqtwist.headers import (
    SendMessageRequestHeaderV2,
    SendMessageResponseHeader,
    UnregisterClientRequestHeader,
)
from rmqtwist.message import (
    Message,
    MessageSysFlag,
    Property,
    UniqueIdGenerator,
    compress_body,
    encode_batch,
    encode_properties,
)
from rmqtwist.routing import (
    MessageQueue,
    RouteError,
    RouteTable,
    TopicNotFoundError,
    TopicRoute,
)
from rmqtwist.routing import NoRouteError as _RouteNoRouteError

_log = Logger()

#: The topic whose route a producer uses for a topic the name servers do not know.
DEFAULT_TOPIC: Final = "TBW102"
#: Response codes after which Java's 4.9 producer tries again.
RETRY_CODES: Final = frozenset({17, 14, 1, 16, 204, 205})
_COMPRESSED: Final = int(MessageSysFlag.COMPRESSED | MessageSysFlag.COMPRESSION_ZLIB)


class ProducerError(RemotingError):
    """Base of the producer's errors."""


class NoRouteError(ProducerError, _RouteNoRouteError):
    """No name server gave a route with a writable master queue for the topic."""


class ProducerClosedError(ProducerError):
    """The producer is not started, or has been shut down."""


class SendFailedError(ProducerError):
    """A send failed on every try; :attr:`causes` holds ``(broker_name, error)`` per try."""

    def __init__(self, topic: str, causes: Sequence[tuple[str, BaseException]]) -> None:
        self.topic = topic
        self.causes = list(causes)
        tries = "; ".join(f"{name}: {error}" for name, error in self.causes)
        super().__init__(f"send to {topic!r} failed after {len(self.causes)} tries ({tries})")


class BrokerResponseError(ProducerError):
    """A broker answered a send with a code that is not a success."""

    def __init__(self, code: int, remark: str | None) -> None:
        self.code = code
        self.remark = remark
        try:
            name = ResponseCode(code).name
        except ValueError:
            name = "UNKNOWN"
        super().__init__(f"{name} ({code}): {remark or ''}")


class SendStatus(enum.Enum):
    """How a broker took a message (Java's ``SendStatus``)."""

    SEND_OK = "SEND_OK"
    FLUSH_DISK_TIMEOUT = "FLUSH_DISK_TIMEOUT"
    FLUSH_SLAVE_TIMEOUT = "FLUSH_SLAVE_TIMEOUT"
    SLAVE_NOT_AVAILABLE = "SLAVE_NOT_AVAILABLE"


_STATUS_BY_CODE: Final = {
    ResponseCode.SUCCESS: SendStatus.SEND_OK,
    ResponseCode.FLUSH_DISK_TIMEOUT: SendStatus.FLUSH_DISK_TIMEOUT,
    ResponseCode.FLUSH_SLAVE_TIMEOUT: SendStatus.FLUSH_SLAVE_TIMEOUT,
    ResponseCode.SLAVE_NOT_AVAILABLE: SendStatus.SLAVE_NOT_AVAILABLE,
}


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send gave: ``msg_id`` is the UNIQ_KEY (comma-joined for a batch),
    ``offset_msg_id`` the broker's store id, ``queue_offset`` the first message's."""

    status: SendStatus
    msg_id: str
    offset_msg_id: str
    queue: MessageQueue
    queue_offset: int


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same in every process (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(text.encode("utf-8"))


Selector = Callable[[Sequence[MessageQueue], Message], MessageQueue]


class Producer:
    """Sends messages of ``group`` through the brokers the ``name_servers`` list.

    ``client`` is a :class:`~rmqtwist.client.RemotingClient` to share (not closed by
    :meth:`shutdown`); by default one is made on ``reactor``. See the module doc for
    routes, retries and fault avoidance. With ``credentials``
    (:class:`~rmqtwist.acl.Credentials`) every request is signed for a broker with ACL
    (the signing hook is registered on ``client``, shared or not).
    """

    def __init__(
        self,
        group: str,
        name_servers: str | Iterable[str],
        *,
        reactor: Any = None,
        client: RemotingClient | None = None,
        send_timeout: float = 3.0,
        retries: int = 2,
        compress_over: int = 4096,
        route_refresh: float = 30.0,
        heartbeat_interval: float = 30.0,
        isolation: float = 30.0,
        default_topic_queue_nums: int = 4,
        client_id: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.group = group
        self.name_servers, reactor, self.client, self._own_client = client_setup(
            "a producer", name_servers, reactor, client, credentials
        )
        self.reactor = reactor
        self.send_timeout = send_timeout
        self.retries = retries
        self.compress_over = compress_over
        self.route_refresh = route_refresh
        self.heartbeat_interval = heartbeat_interval
        self.isolation = isolation
        self.default_topic_queue_nums = default_topic_queue_nums
        self.client_id = client_id or f"127.0.0.1@{os.getpid()}#{id(self)}"
        self._ids = UniqueIdGenerator(clock=reactor.seconds)
        #: The routes, fetched from the name servers and cached.
        self.routes = RouteTable(self.client, self.name_servers, timeout=send_timeout)
        self._via_default: dict[str, TopicRoute] = {}  # topics sent with TBW102's route
        self._index = 0
        self._avoid_until: dict[str, float] = {}
        self._used: dict[str, str] = {}  # broker name -> master address
        self._loops: list[LoopingCall] = []
        self._running = False

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start the route refresh and heartbeat timers; fires at once."""
        if self._running:
            return succeed(None)
        self._running = True
        for interval, function in (
            (self.route_refresh, self._refresh_routes),
            (self.heartbeat_interval, self._heartbeat_all),
        ):
            loop = LoopingCall(function)
            loop.clock = self.reactor
            loop.start(interval, now=False).addErrback(
                lambda f: _log.failure("producer timer failed", f)
            )
            self._loops.append(loop)
        return succeed(None)

    def shutdown(self) -> Deferred[None]:
        """Stop the timers, send UNREGISTER_CLIENT to the brokers used, close our client."""
        return ensureDeferred(self._shutdown())

    async def _shutdown(self) -> None:
        if not self._running:
            return
        self._running = False
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        header = UnregisterClientRequestHeader(client_id=self.client_id, producer_group=self.group)
        calls = [
            self.client.invoke(address, header.to_request(RequestCode.UNREGISTER_CLIENT), 3.0)
            for address in self._used.values()
        ]
        await DeferredList(calls, consumeErrors=True)
        if self._own_client:
            await self.client.close()

    # -- routes -----------------------------------------------------------------------

    async def _route(self, topic: str, refresh: bool = False) -> tuple[TopicRoute, bool]:
        """``topic``'s route and whether it is TBW102's (the topic is not known yet)."""
        if not refresh:
            cached = self.routes.cached(topic)
            if cached is not None and cached.write_queues:
                return cached, False
            fallback = self._via_default.get(topic)
            if fallback is not None:
                return fallback, True
        try:
            route = await self.routes.route(topic, refresh=True)
        except TopicNotFoundError:
            return await self._default_route(topic, refresh), True
        except RouteError as error:
            fallback = self._via_default.get(topic)
            if fallback is not None:
                return fallback, True
            raise NoRouteError(str(error)) from error
        if not route.write_queues:
            raise NoRouteError(f"no writable master queue for {topic!r}")
        self._via_default.pop(topic, None)
        return route, False

    async def _default_route(self, topic: str, refresh: bool) -> TopicRoute:
        try:
            default = await self.routes.route(DEFAULT_TOPIC, refresh=refresh)
        except RouteError as error:
            raise NoRouteError(f"{topic!r} is not known and {error}") from error
        # As Java: at most defaultTopicQueueNums queues per broker, the count the broker
        # gives a topic it auto-creates.
        queues = tuple(
            MessageQueue(topic, q.broker_name, q.queue_id)
            for q in default.write_queues
            if q.queue_id < self.default_topic_queue_nums
        )
        if not queues:
            raise NoRouteError(f"no writable master queue for {topic!r} (nor {DEFAULT_TOPIC})")
        route = TopicRoute(topic, default.brokers, queues, ())
        self._via_default[topic] = route
        return route

    def _refresh_routes(self) -> Deferred[None]:
        async def refresh() -> None:
            await self.routes.refresh_all()
            for topic in list(self._via_default):
                try:
                    await self._route(topic, refresh=True)
                except Exception as error:
                    _log.info("route refresh of {topic} failed: {error}", topic=topic, error=error)

        return ensureDeferred(refresh())

    # -- heartbeats -------------------------------------------------------------------

    def _heartbeat_request(self) -> RemotingCommand:
        return heartbeat_request(self.client_id, (), (self.group, "CLIENT_INNER_PRODUCER"))

    def _heartbeat(self, address: str) -> Deferred[Any]:
        d = self.client.invoke(address, self._heartbeat_request(), self.send_timeout)
        d.addErrback(lambda f: _log.info("heartbeat to {a} failed: {f}", a=address, f=f.value))
        return d

    def _heartbeat_all(self) -> Deferred[Any]:
        return DeferredList([self._heartbeat(a) for a in self._used.values()])

    # -- choosing a queue -------------------------------------------------------------

    def _avoided(self, broker_name: str) -> bool:
        now: float = self.reactor.seconds()
        return self._avoid_until.get(broker_name, 0.0) > now

    def _pick(self, route: TopicRoute, last_broker: str | None) -> MessageQueue:
        queues = route.queues
        for _ in range(len(queues)):
            self._index += 1
            queue = queues[self._index % len(queues)]
            if queue.broker_name != last_broker and not self._avoided(queue.broker_name):
                return queue
        for _ in range(len(queues)):
            self._index += 1
            queue = queues[self._index % len(queues)]
            if queue.broker_name != last_broker:
                return queue
        self._index += 1
        return queues[self._index % len(queues)]

    # -- sending ----------------------------------------------------------------------

    def send(
        self,
        message: Message,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
        *,
        selector: Selector | None = None,
        sharding_key: str | None = None,
    ) -> Deferred[SendResult]:
        """Send ``message``; fires with a :class:`SendResult` or fails with a
        :class:`ProducerError` (:class:`SendFailedError` holding each try's cause).

        ``timeout`` (default ``send_timeout``) bounds each try: unlike Java's, whose
        timeout covers every try together, so a broker that times out is still retried
        elsewhere. ``queue`` fixes the queue (no retry elsewhere);
        ``selector(queues, message)`` picks one of the writable queues, and
        ``sharding_key`` picks by :func:`stable_hash`, so a key always maps to one queue
        while the route stays the same (ordered sends are not retried on another queue).
        """
        picked: MessageQueue | None = None
        if queue is None and selector is None and sharding_key is None and self._running:
            fast = self._send_fast(message, timeout)
            if isinstance(fast, Deferred):
                return fast
            picked = fast  # the queue the round robin gave: the slow path's first try
        return ensureDeferred(
            self._send(
                [message],
                queue,
                timeout,
                selector,
                sharding_key,
                batch=False,
                oneway=False,
                picked=picked,
            )
        )

    # The common case, a known route and a broker already in use, without a coroutine:
    # one request and one callback (the coroutine costs about as much CPU as the send
    # itself). A failure is handed on to _send, which makes the remaining tries.

    def _send_fast(
        self, message: Message, timeout: float | None
    ) -> Deferred[SendResult] | MessageQueue | None:
        # A Deferred when sent; else the queue picked (or None) for the slow path.
        topic = message.topic
        route = self.routes.cached(topic)
        if route is None or not route.write_queues or topic in self._via_default:
            return None
        target = self._pick(route, None)
        name = target.broker_name
        address = route.masters.get(name)
        if address is None or self._used.get(name) != address:
            return target  # the slow path registers the broker and sends it a heartbeat
        extra = self._extra(message)
        request = self._single_request(message, extra, target)
        timeout = self.send_timeout if timeout is None else timeout
        deferred: Deferred[Any] = self.client.invoke(address, request, timeout)
        deferred.addCallbacks(
            self._fast_answer,
            self._fast_failure,
            callbackArgs=(message, extra, target, timeout),
            errbackArgs=(message, extra, target, timeout),
        )
        return deferred

    def _fast_answer(
        self,
        response: RemotingCommand,
        message: Message,
        extra: dict[str, str],
        target: MessageQueue,
        timeout: float,
    ) -> SendResult | Deferred[SendResult]:
        status = _STATUS_BY_CODE.get(response.code)  # type: ignore[call-overload]
        if status is not None:
            header = SendMessageResponseHeader.from_command(response)
            return SendResult(
                status,
                extra[Property.UNIQ_KEY],
                header.msg_id,
                MessageQueue(target.topic, target.broker_name, header.queue_id),
                header.queue_offset,
            )
        cause = BrokerResponseError(response.code, response.remark)
        if response.code not in RETRY_CODES or self.retries < 1:
            raise SendFailedError(target.topic, [(target.broker_name, cause)])
        self._avoid_until[target.broker_name] = self.reactor.seconds() + self.isolation
        return self._send_rest(message, extra, target, timeout, cause)

    def _fast_failure(
        self,
        failure: Failure,
        message: Message,
        extra: dict[str, str],
        target: MessageQueue,
        timeout: float,
    ) -> Failure | Deferred[SendResult]:
        error = failure.value
        if not isinstance(error, RemotingCallError | ConnectionError | TimeoutError):
            return failure
        self._avoid_until[target.broker_name] = self.reactor.seconds() + self.isolation
        if self.retries < 1:
            raise SendFailedError(target.topic, [(target.broker_name, error)])
        return self._send_rest(message, extra, target, timeout, error)

    def _send_rest(
        self,
        message: Message,
        extra: dict[str, str],
        target: MessageQueue,
        timeout: float,
        cause: BaseException,
    ) -> Deferred[SendResult]:
        # The same UNIQ_KEY on every try, as Java's producer keeps one message id.
        prepared = message.with_properties(extra)
        return ensureDeferred(
            self._send(
                [prepared],
                None,
                timeout,
                None,
                None,
                batch=False,
                oneway=False,
                causes=[(target.broker_name, cause)],
                last_broker=target.broker_name,
            )
        )

    def send_oneway(self, message: Message, queue: MessageQueue | None = None) -> Deferred[None]:
        """Send ``message`` with no answer; fires once written (no retry)."""

        async def go() -> None:
            await self._send([message], queue, None, None, None, batch=False, oneway=True)

        return ensureDeferred(go())

    def send_batch(
        self, messages: Iterable[Message], queue: MessageQueue | None = None
    ) -> Deferred[SendResult]:
        """Send messages of one topic as one SEND_BATCH_MESSAGE; ``msg_id`` joins their
        UNIQ_KEYs with commas and ``queue_offset`` is the first one's."""
        items = list(messages)
        if not items:
            raise ValueError("send_batch needs at least one message")
        return ensureDeferred(self._send(items, queue, None, None, None, batch=True, oneway=False))

    def _extra(self, message: Message) -> dict[str, str]:
        """The properties the producer adds: a UNIQ_KEY (unless given) and WAIT=true."""
        properties = message.properties
        extra = {Property.UNIQ_KEY: properties.get(Property.UNIQ_KEY) or self._ids.next_id()}
        if Property.WAIT not in properties:
            extra[Property.WAIT] = "true"
        return extra

    def _prepare(self, message: Message) -> tuple[Message, str]:
        extra = self._extra(message)
        return message.with_properties(extra), extra[Property.UNIQ_KEY]

    def _single_request(
        self, message: Message, extra: dict[str, str], queue: MessageQueue
    ) -> RemotingCommand:
        sys_flag = 0
        body = message.body
        if len(body) >= self.compress_over:
            body = compress_body(body)
            sys_flag |= _COMPRESSED
        wire = message.wire_properties()
        wire.update(extra)
        if wire.get(Property.TRAN_MSG) == "true":
            # As Java's producer: what makes the broker keep it as a half message.
            sys_flag |= MessageSysFlag.TRANSACTION_PREPARED
        header = SendMessageRequestHeaderV2(
            a=self.group,
            b=message.topic,
            c=DEFAULT_TOPIC,
            d=self.default_topic_queue_nums,
            e=queue.queue_id,
            f=sys_flag,
            g=int(self.reactor.seconds() * 1000),
            h=message.flag,
            i=encode_properties(wire),
            j=0,
            m=False,
        )
        return header.to_request(RequestCode.SEND_MESSAGE_V2, body)

    def _request(
        self, messages: list[Message], queue: MessageQueue, batch: bool
    ) -> RemotingCommand:
        first = messages[0]
        if not batch:
            return self._single_request(first, {}, queue)
        header = SendMessageRequestHeaderV2(
            a=self.group,
            b=first.topic,
            c=DEFAULT_TOPIC,
            d=self.default_topic_queue_nums,
            e=queue.queue_id,
            f=0,
            g=int(self.reactor.seconds() * 1000),
            h=first.flag,
            i=None,
            j=0,
            m=True,
        )
        return header.to_request(RequestCode.SEND_BATCH_MESSAGE, encode_batch(messages))

    async def _send(
        self,
        messages: list[Message],
        queue: MessageQueue | None,
        timeout: float | None,
        selector: Selector | None,
        sharding_key: str | None,
        *,
        batch: bool,
        oneway: bool,
        causes: list[tuple[str, BaseException]] | None = None,
        last_broker: str | None = None,
        picked: MessageQueue | None = None,
    ) -> SendResult:
        if not self._running:
            raise ProducerClosedError("the producer is not started or has been shut down")
        topic = messages[0].topic
        prepared = [self._prepare(m) for m in messages]
        messages = [m for m, _ in prepared]
        msg_id = ",".join(uniq for _, uniq in prepared)
        timeout = self.send_timeout if timeout is None else timeout
        fixed = queue is not None or selector is not None or sharding_key is not None
        causes = [] if causes is None else causes  # tries made already (by _send_fast)
        tries = 1 if fixed or oneway else 1 + self.retries
        for attempt in range(len(causes), tries):
            route, via_default = await self._route(topic, refresh=attempt > 0)
            if queue is not None:
                target = queue
            elif selector is not None:
                target = selector(route.queues, messages[0])
            elif sharding_key is not None:
                target = route.queues[stable_hash(sharding_key) % len(route.queues)]
            elif picked is not None and picked in route.write_queues:
                target = picked  # chosen by _send_fast's round robin already
            else:
                target = self._pick(route, last_broker)
            picked = None
            last_broker = target.broker_name
            address = route.masters.get(target.broker_name)
            if address is None:
                raise NoRouteError(f"no master address for broker {target.broker_name!r}")
            request = self._request(messages, target, batch)
            if address not in self._used.values():
                self._used[target.broker_name] = address
                self._heartbeat(address)
            try:
                if oneway:
                    await self.client.invoke_oneway(address, request, timeout)
                    return SendResult(SendStatus.SEND_OK, msg_id, "", target, -1)
                response = await self.client.invoke(address, request, timeout)
            except (RemotingCallError, ConnectionError, TimeoutError) as error:
                self._avoid_until[target.broker_name] = self.reactor.seconds() + self.isolation
                causes.append((target.broker_name, error))
                continue
            status = _STATUS_BY_CODE.get(response.code)  # type: ignore[call-overload]
            if status is not None:
                if via_default:  # the broker has made the topic: ask for its own route next
                    self._via_default.pop(topic, None)
                header = SendMessageResponseHeader.from_command(response)
                return SendResult(
                    status,
                    msg_id,
                    header.msg_id,
                    MessageQueue(topic, target.broker_name, header.queue_id),
                    header.queue_offset,
                )
            causes.append((target.broker_name, BrokerResponseError(response.code, response.remark)))
            if response.code not in RETRY_CODES:
                break
            self._avoid_until[target.broker_name] = self.reactor.seconds() + self.isolation
        raise SendFailedError(topic, causes)
