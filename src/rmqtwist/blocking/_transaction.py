"""The transaction producer behind blocking methods (:class:`BlockingTransactionProducer`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from rmqtwist.blocking._common import check_timeout
from rmqtwist.blocking._producer import BlockingProducerBase
from rmqtwist.producer import (
    LocalTransactionState,
    ProducerClosedError,
    TransactionProducer,
    TransactionSendResult,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorThreads

    from rmqtwist.message import Message, MessageExt

__all__ = ["BlockingTransactionProducer"]

#: The local transaction of one send: ``execute(message, arg)``, a plain function.
BlockingExecute: TypeAlias = Callable[["Message", Any], LocalTransactionState]
#: The answer to a broker's check: ``check(message)``, a plain function.
BlockingCheck: TypeAlias = Callable[["MessageExt"], LocalTransactionState]

#: How many ``execute`` and ``check`` calls run at once, at most.
THREADS = 10


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


class _DaemonThreadPool(ThreadPool):
    """A pool whose idle workers do not keep the process alive: a program that forgets
    :meth:`BlockingTransactionProducer.shutdown` still exits (Python joins the threads
    that are not daemons before crochet's exit handler could stop the pool)."""

    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]  # noqa: N815


class BlockingTransactionProducer(BlockingProducerBase[TransactionProducer]):
    """A :class:`~rmqtwist.producer.TransactionProducer` of ``group`` behind blocking
    methods: :meth:`send` sends a message in a transaction and returns its
    :class:`~rmqtwist.producer.TransactionSendResult`.

    ``check(message)`` answers the brokers' CHECK_TRANSACTION_STATE for a half message
    left UNKNOWN (``message`` is the stored half message, a
    :class:`~rmqtwist.message.MessageExt`) with a
    :class:`~rmqtwist.producer.LocalTransactionState`. It is a plain function, and so is
    each send's ``execute``: both run in a thread pool of this object's (at most
    ``threads`` at once), never in the reactor thread, so they may block (a database
    call, a lock). As with the asynchronous producer, one that raises, or returns
    something that is not a ``LocalTransactionState``, counts as UNKNOWN (logged, and
    told to the broker in END_TRANSACTION's remark): the broker checks the message
    later.

    The other arguments are :class:`BlockingProducer`'s: ``name_servers`` is
    ``"host:port"``, ``"a:1;b:2"`` or a list, the keyword arguments go to the
    producer as they are (``send_timeout``, ``retries``, ``credentials``, ...; not
    ``reactor``), ``start=False`` leaves it to :meth:`start`. Use it as a context
    manager, or call :meth:`shutdown` when done.
    """

    _instead = "the asynchronous BlockingTransactionProducer.producer (a TransactionProducer)"
    _asynchronous = "TransactionProducer"

    def __init__(
        self,
        group: str,
        name_servers: str | Iterable[str],
        check: BlockingCheck,
        *,
        start: bool = True,
        threads: int = THREADS,
        **producer_options: Any,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads!r}")
        self.check = check
        self._pool = _DaemonThreadPool(0, threads, name="rmqtwist-transactions")
        self._pool_lock = threading.Lock()
        self._pool_started = False
        self._closed = False
        super().__init__(group, name_servers, start=start, **producer_options)

    def _create(
        self, group: str, name_servers: str | Iterable[str], options: dict[str, Any]
    ) -> TransactionProducer:
        # The argument each send passes is (execute, arg): the producer's execute is
        # this object's, which runs the send's own execute in the pool.
        return TransactionProducer(
            group, name_servers, self._execute_in_pool, self._check_in_pool, **options
        )

    # -- running the user's functions off the reactor thread -----------------------------

    def _in_pool(
        self, function: Callable[..., LocalTransactionState], *args: Any
    ) -> Deferred[LocalTransactionState]:
        """Run ``function(*args)`` in the pool (started on first use); runs in the reactor
        thread, and fires there with the function's result."""
        with self._pool_lock:
            if not self._pool_started:
                self._pool.start()
                self._pool_started = True
        threads = cast("IReactorThreads", self.producer.reactor)
        return deferToThreadPool(threads, self._pool, function, *args)

    def _execute_in_pool(
        self, message: Message, argument: tuple[BlockingExecute, Any]
    ) -> Deferred[LocalTransactionState]:
        execute, arg = argument
        return self._in_pool(execute, message, arg)

    def _check_in_pool(self, message: MessageExt) -> Deferred[LocalTransactionState]:
        return self._in_pool(self.check, message)

    # -- sending ------------------------------------------------------------------------

    def send(
        self,
        message: Message,
        execute: BlockingExecute,
        arg: Any = None,
        timeout: float | None = None,
    ) -> TransactionSendResult:
        """Send ``message`` in a transaction: as a half message, then run
        ``execute(message, arg)`` in the pool and tell the broker its outcome; return
        the :class:`~rmqtwist.producer.TransactionSendResult` (``local_state`` is what
        the broker was told).

        As :meth:`TransactionProducer.send_in_transaction
        <rmqtwist.producer.TransactionProducer.send_in_transaction>`: ``execute`` gets
        the message as sent (with its UNIQ_KEY, the ``transaction_id``); a half send
        that fails raises the send's error (:class:`~rmqtwist.producer.SendFailedError`,
        ...) and ``execute`` does not run; ``execute`` raising gives UNKNOWN, not an
        exception here; ``timeout`` (default ``send_timeout``) bounds each send try; a
        delay level raises ValueError. After :meth:`shutdown` it raises
        :class:`~rmqtwist.producer.ProducerClosedError`; in the reactor thread,
        RuntimeError.
        """
        if timeout is not None:
            check_timeout(timeout)
        if message.delay_level:
            raise ValueError("a transactional message cannot have a delay level")
        if self._closed:
            raise ProducerClosedError("the transaction producer has been shut down")
        # The half send and END_TRANSACTION (oneway, its own send_timeout), waited for
        # within the usual deadline; execute's own time is not bounded (it is the
        # caller's).
        return cast(
            "TransactionSendResult",
            self._send(
                "send()",
                self.producer.send_in_transaction,
                (message, (execute, arg), timeout),
                threading.TIMEOUT_MAX,
            ),
        )

    # -- closing --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop answering checks and shut the producer down as
        :meth:`BlockingProducer.shutdown`, then stop the pool, waiting for an
        ``execute`` or ``check`` still running. Calling it again does nothing."""
        self._closed = True
        super().shutdown()
        with self._pool_lock:
            started, self._pool_started = self._pool_started, False
        if started:
            self._pool.stop()
