"""The producer behind blocking methods (:class:`BlockingProducer`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, cast

import crochet

from rmqtwist.blocking._common import (
    REACTOR_TIMEOUT,
    TIMED_OUT,
    WAIT_MARGIN,
    check_timeout,
    quick,
    refuse_reactor_thread,
    wait,
)
from rmqtwist.errors import RemotingTimeoutError
from rmqtwist.producer import Producer, SendResult

if TYPE_CHECKING:
    from types import TracebackType

    from rmqtwist.message import Message
    from rmqtwist.producer import Selector
    from rmqtwist.routing import MessageQueue

__all__ = ["BlockingProducer"]

_INSTEAD = "the asynchronous BlockingProducer.producer (a Producer)"
#: How long ``shutdown()`` may take: UNREGISTER_CLIENT to each broker (3 s each, at
#: once) and closing the client.
_SHUTDOWN_WAIT = 15.0

_P = TypeVar("_P", bound=Producer)


class BlockingProducerBase(Generic[_P]):
    """What the blocking producers share: making the asynchronous producer in the
    reactor thread, starting it, waiting for a send's outcome, shutting down, and use as
    a context manager. A subclass says how to make its producer (:meth:`_create`)."""

    #: The asynchronous producer underneath. Its methods must only be called in the
    #: reactor thread (e.g. through ``crochet.run_in_reactor``).
    producer: _P
    #: What to use in the reactor thread instead, for RuntimeError's message.
    _instead = _INSTEAD
    #: The asynchronous class to make in the reactor thread instead of this one.
    _asynchronous = "Producer"

    def __init__(
        self,
        group: str,
        name_servers: str | Iterable[str],
        *,
        start: bool = True,
        **producer_options: Any,
    ) -> None:
        name = type(self).__name__
        what = f"{name}()"
        refuse_reactor_thread(what, self._asynchronous)
        if "reactor" in producer_options:
            raise TypeError(f"{name} runs on crochet's reactor: do not pass reactor=")
        crochet.setup()
        self.producer = quick(
            lambda: self._create(group, name_servers, producer_options),
            what=what,
            instead=self._asynchronous,
        )
        if start:
            self.start()

    def _create(self, group: str, name_servers: str | Iterable[str], options: dict[str, Any]) -> _P:
        """Make the asynchronous producer; runs in the reactor thread."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the producer (its route refresh and heartbeat timers); again does nothing."""
        quick(self.producer.start, what="start()", instead=self._instead)

    # -- sending ----------------------------------------------------------------------

    def _deadline(self, timeout: float | None, tries: int) -> float:
        """How long to wait for a send whose tries have ``timeout`` seconds each: the
        producer's own deadlines fire first; this only guards against a stuck reactor."""
        each = self.producer.send_timeout if timeout is None else timeout
        # Each try may also fetch a route (and TBW102's) from every name server in turn.
        route = 2 * self.producer.send_timeout * len(self.producer.name_servers)
        return tries * (each + route) + WAIT_MARGIN

    def _send(self, what: str, method: Any, args: tuple[Any, ...], seconds: float) -> Any:
        """Run ``method(*args)`` in the reactor thread and wait up to ``seconds`` for its
        outcome."""
        refuse_reactor_thread(what, self._instead)
        result = wait(method, args, seconds)
        if result is TIMED_OUT:
            raise RemotingTimeoutError(
                f"{what}: no outcome within {seconds:g} s (the reactor thread was too busy "
                "to report it)"
            )
        return result

    # -- closing ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the timers, unregister from the brokers used and close the producer's own
        client; return once done. Calling it again does nothing."""
        refuse_reactor_thread("shutdown()", self._instead)
        if wait(self.producer.shutdown, (), _SHUTDOWN_WAIT + REACTOR_TIMEOUT) is TIMED_OUT:
            raise RemotingTimeoutError("shutdown(): the producer did not finish in time")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} group={self.producer.group!r}>"


class BlockingProducer(BlockingProducerBase[Producer]):
    """A :class:`~rmqtwist.producer.Producer` of ``group`` behind blocking methods.

    ``name_servers`` is ``"host:port"``, ``"a:1;b:2"`` or a list; the keyword arguments
    go to :class:`~rmqtwist.producer.Producer` as they are (``send_timeout``,
    ``retries``, ``credentials``, ...; not ``reactor``: it runs on crochet's). Creating
    one calls ``crochet.setup()`` and starts the producer, unless ``start=False`` (then
    call :meth:`start`). Use it as a context manager, or call :meth:`shutdown` when done.
    """

    def _create(
        self, group: str, name_servers: str | Iterable[str], options: dict[str, Any]
    ) -> Producer:
        return Producer(group, name_servers, **options)

    def send(
        self,
        message: Message,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
        *,
        selector: Selector | None = None,
        sharding_key: str | None = None,
    ) -> SendResult:
        """Send ``message`` and return its :class:`~rmqtwist.producer.SendResult`.

        As :meth:`Producer.send <rmqtwist.producer.Producer.send>`: ``timeout`` (default
        ``send_timeout``) bounds each try, ``queue``, ``selector`` or ``sharding_key``
        choose the queue. Raises :class:`~rmqtwist.producer.ProducerError` and its
        subclasses (:class:`~rmqtwist.producer.SendFailedError` with each try's cause,
        :class:`~rmqtwist.producer.NoRouteError`, ...), RuntimeError in the reactor thread.
        """
        if timeout is not None:
            check_timeout(timeout)
        fixed = queue is not None or selector is not None or sharding_key is not None
        tries = 1 if fixed else 1 + self.producer.retries

        def go() -> Any:
            return self.producer.send(
                message, queue, timeout, selector=selector, sharding_key=sharding_key
            )

        return cast("SendResult", self._send("send()", go, (), self._deadline(timeout, tries)))

    def send_oneway(self, message: Message, queue: MessageQueue | None = None) -> None:
        """Send ``message`` with no answer from the broker; return once it is written."""
        self._send(
            "send_oneway()", self.producer.send_oneway, (message, queue), self._deadline(None, 1)
        )

    def send_batch(
        self, messages: Iterable[Message], queue: MessageQueue | None = None
    ) -> SendResult:
        """Send messages of one topic as one batch (see :meth:`Producer.send_batch
        <rmqtwist.producer.Producer.send_batch>`); ValueError for none."""
        items = list(messages)
        if not items:
            raise ValueError("send_batch needs at least one message")
        tries = 1 if queue is not None else 1 + self.producer.retries
        return cast(
            "SendResult",
            self._send(
                "send_batch()",
                self.producer.send_batch,
                (items, queue),
                self._deadline(None, tries),
            ),
        )
