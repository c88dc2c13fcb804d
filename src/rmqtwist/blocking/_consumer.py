"""The lite pull consumer behind blocking methods (:class:`BlockingConsumer`)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import crochet
from twisted.internet.defer import Deferred

from rmqtwist.blocking._common import (
    REACTOR_TIMEOUT,
    TIMED_OUT,
    WAIT_MARGIN,
    check_timeout,
    quick,
    refuse_reactor_thread,
    wait,
)
from rmqtwist.consumer import PullConsumer
from rmqtwist.errors import RemotingTimeoutError

if TYPE_CHECKING:
    from types import TracebackType

    from rmqtwist.message import MessageExt
    from rmqtwist.routing import MessageQueue

__all__ = ["BlockingConsumer"]

_INSTEAD = "the asynchronous BlockingConsumer.consumer (a PullConsumer)"
#: How long a call that talks to the brokers (start, commit, seeks) may take before the
#: blocking side gives up: each of its requests has a deadline of its own, shorter.
_CALL_WAIT = 30.0


class BlockingConsumer:
    """A :class:`~rmqtwist.consumer.PullConsumer` of ``group`` behind blocking methods.

    With ``topic``, it subscribes to it with ``expression`` (``"TagA || TagB"``, ``"*"``
    for all). The keyword arguments go to :class:`~rmqtwist.consumer.PullConsumer` as
    they are (``consume_from``, ``auto_commit``, ``poll_batch_size``, ...; not
    ``reactor``: it runs on crochet's). Creating one calls ``crochet.setup()`` and starts
    the consumer, unless ``start=False`` (then subscribe or assign and call
    :meth:`start`). Use it as a context manager, or call :meth:`shutdown` when done.

    One thread at a time should poll: the messages of a queue come in order, and a
    batch goes to whichever call asked first.
    """

    #: The asynchronous consumer underneath. Its methods must only be called in the
    #: reactor thread (e.g. through ``crochet.run_in_reactor``).
    consumer: PullConsumer

    def __init__(
        self,
        group: str,
        name_servers: str | Iterable[str],
        topic: str | None = None,
        expression: str = "*",
        *,
        start: bool = True,
        **consumer_options: Any,
    ) -> None:
        refuse_reactor_thread("BlockingConsumer()", "PullConsumer")
        if "reactor" in consumer_options:
            raise TypeError("BlockingConsumer runs on crochet's reactor: do not pass reactor=")
        crochet.setup()
        self.consumer = quick(
            lambda: PullConsumer(group, name_servers, **consumer_options),
            what="BlockingConsumer()",
            instead="PullConsumer",
        )
        # Messages a poll with a limit got past it (a poll that waited while the limit
        # changed): handed out first by the next poll.
        self._pending: deque[MessageExt] = deque()
        self._batch_size: int = self.consumer.poll_batch_size
        self._limited = 0  # polls with a limit in flight (reactor thread only)
        try:
            if topic is not None:
                self.subscribe(topic, expression)
            if start:
                self.start()
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to see
                self.shutdown()
            raise

    # -- how calls are made -----------------------------------------------------------

    def _quick(self, what: str, function: Any, *args: Any) -> Any:
        return quick(function, *args, what=what, instead=_INSTEAD)

    def _call(self, what: str, function: Any, args: tuple[Any, ...], seconds: float) -> Any:
        refuse_reactor_thread(what, _INSTEAD)
        result = wait(function, args, seconds)
        if result is TIMED_OUT:
            raise RemotingTimeoutError(f"{what}: no outcome within {seconds:g} s")
        return result

    # -- set up -----------------------------------------------------------------------

    def subscribe(self, topic: str, expression: str = "*") -> None:
        """Consume ``topic`` (messages whose tag ``expression`` matches) with the group:
        its queues are shared among the group's members and rebalanced."""
        self._quick("subscribe()", self.consumer.subscribe, topic, expression)

    def assign(self, queues: Iterable[MessageQueue]) -> None:
        """Consume exactly ``queues``, with no rebalancing."""
        self._quick("assign()", self.consumer.assign, list(queues))

    def start(self) -> None:
        """Start the consumer: return once its first heartbeat and rebalance are done."""
        self._call("start()", self.consumer.start, (), _CALL_WAIT)

    # -- consuming --------------------------------------------------------------------

    def poll(self, timeout: float = 5.0, max_messages: int | None = None) -> list[MessageExt]:
        """The next batch of messages (at most ``max_messages``, default the consumer's
        ``poll_batch_size``), waiting up to ``timeout`` seconds for one; an empty list
        when none came. Raises the consumer's errors
        (:class:`~rmqtwist.consumer.ConsumerClosedError` before start or after shutdown,
        ...)."""
        check_timeout(timeout)
        if max_messages is not None and max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages!r}")
        refuse_reactor_thread("poll()", _INSTEAD)
        if self._pending:
            count = len(self._pending) if max_messages is None else max_messages
            return [self._pending.popleft() for _ in range(min(count, len(self._pending)))]
        batch = cast(
            "list[MessageExt]",
            self._call("poll()", self._poll_up_to, (timeout, max_messages), timeout + WAIT_MARGIN),
        )
        if max_messages is not None and len(batch) > max_messages:
            self._pending.extend(batch[max_messages:])
            del batch[max_messages:]
        return batch

    def _poll_up_to(self, timeout: float, limit: int | None) -> Deferred[list[MessageExt]]:
        # In the reactor thread: a poll of at most ``limit`` messages. The consumer takes
        # ``poll_batch_size`` when it hands a batch out (at once, or when messages come
        # for a poll that waits), so the limit stays set until the poll fires.
        consumer = self.consumer
        polled: Deferred[list[MessageExt]]
        if limit is None or limit >= self._batch_size:
            polled = consumer.poll(timeout)
            return polled
        self._limited += 1
        consumer.poll_batch_size = limit

        def restore(result: Any) -> Any:
            self._limited -= 1
            if self._limited == 0:
                consumer.poll_batch_size = self._batch_size
            return result

        polled = consumer.poll(timeout)
        return polled.addBoth(restore)

    def messages(
        self, timeout: float = 5.0, max_messages: int | None = None
    ) -> Iterator[MessageExt]:
        """Yield messages as they come; stop when none came for ``timeout`` seconds, or
        after ``max_messages``::

            for message in consumer.messages(timeout=5):
                handle(message)

        It takes the messages one at a time, so that the consumer has handed out only
        what was yielded (a ``break`` leaves nothing fetched behind, and a commit covers
        no message the loop has not seen); :meth:`poll` takes whole batches, which is
        faster. With auto-commit (the default), what was handed out is committed every
        few seconds and at :meth:`shutdown`, the message in hand included: for
        at-least-once, pass ``auto_commit=False`` and call :meth:`commit` after handling.
        """
        check_timeout(timeout)
        if max_messages is not None and max_messages < 0:
            raise ValueError(f"max_messages must be >= 0, got {max_messages!r}")
        count = 0
        while max_messages is None or count < max_messages:
            batch = self.poll(timeout, 1)
            if not batch:
                return
            count += 1
            yield batch[0]

    def commit(self) -> None:
        """Commit the offsets of the messages handed out so far to the brokers."""
        self._call("commit()", self.consumer.commit, (), _CALL_WAIT)

    def seek(self, queue: MessageQueue, offset: int) -> None:
        """Consume ``queue`` from ``offset`` on (drops messages fetched but not handed
        out)."""
        self._pending.clear()
        self._quick("seek()", self.consumer.seek, queue, offset)

    def seek_to_begin(self, queue: MessageQueue) -> None:
        """Consume ``queue`` from its first stored message on."""
        self._pending.clear()
        self._call("seek_to_begin()", self.consumer.seek_to_begin, (queue,), _CALL_WAIT)

    def seek_to_end(self, queue: MessageQueue) -> None:
        """Consume ``queue`` from its next new message on."""
        self._pending.clear()
        self._call("seek_to_end()", self.consumer.seek_to_end, (queue,), _CALL_WAIT)

    def committed(self, queue: MessageQueue) -> int | None:
        """The group's committed offset of ``queue`` at its broker (None: none yet)."""
        return cast(
            "int | None", self._call("committed()", self.consumer.committed, (queue,), _CALL_WAIT)
        )

    def assignment(self) -> frozenset[MessageQueue]:
        """The queues this consumer reads now."""
        return cast(
            "frozenset[MessageQueue]", self._quick("assignment()", self.consumer.assignment)
        )

    def fetch_queues(self, topic: str) -> list[MessageQueue]:
        """The readable queues of ``topic``'s route (for :meth:`assign`)."""
        return cast(
            "list[MessageQueue]",
            self._call("fetch_queues()", self.consumer.fetch_queues, (topic,), _CALL_WAIT),
        )

    # -- closing ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop fetching, commit (with auto-commit), unregister from the brokers and close
        the consumer's own client; return once done. Calling it again does nothing."""
        refuse_reactor_thread("shutdown()", _INSTEAD)
        if wait(self.consumer.shutdown, (), _CALL_WAIT + REACTOR_TIMEOUT) is TIMED_OUT:
            raise RemotingTimeoutError("shutdown(): the consumer did not finish in time")

    def __enter__(self) -> BlockingConsumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<BlockingConsumer group={getattr(self.consumer, 'group', '?')!r}>"
