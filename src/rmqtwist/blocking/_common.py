"""How the blocking classes hand a call to crochet's reactor thread and wait for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import crochet
from twisted.internet.defer import CancelledError, Deferred
from twisted.python import threadable
from twisted.python.failure import Failure

from rmqtwist.errors import ClientClosedError, RemotingTimeoutError

_T = TypeVar("_T")

#: How much longer than a call's own deadline a blocking call waits for the reactor
#: thread to report. The client's deadline fires first and raises the real error; the
#: margin only matters when the reactor thread is too busy to run it in time.
WAIT_MARGIN = 1.0
#: How long a call that does no I/O (registering, reading the pool's state) waits for
#: the reactor thread.
REACTOR_TIMEOUT = 10.0

#: What :func:`wait` returns when no outcome came in time.
TIMED_OUT: Any = object()


def _given_up(failure: Failure) -> Failure | None:
    # A call is cancelled only by a waiter that gave up on it and raised already: the
    # CancelledError has no one to go to (crochet would log it as unhandled).
    return None if isinstance(failure.value, CancelledError) else failure


@crochet.run_in_reactor
def _in_reactor(function: Callable[..., Any], *args: Any) -> Any:
    # Runs in the reactor thread; a Deferred returned is waited for by the EventualResult.
    result = function(*args)
    if isinstance(result, Deferred):
        result.addErrback(_given_up)
    return result


def refuse_reactor_thread(what: str, instead: str) -> None:
    """Raise RuntimeError if called in the reactor thread, where waiting would deadlock;
    ``instead`` names what to use there."""
    if threadable.isInIOThread():  # type: ignore[no-untyped-call]
        raise RuntimeError(
            f"{what} was called in the reactor thread, where waiting would deadlock: "
            f"use {instead} there"
        )


def wait(function: Callable[..., Any], args: tuple[Any, ...], seconds: float) -> Any:
    """Run ``function(*args)`` in the reactor thread and wait up to ``seconds`` for its
    result (a Deferred's, if it returns one). If none comes in time, cancel the call and
    return :data:`TIMED_OUT` (the caller raises, with no crochet object left in the
    traceback)."""
    try:
        result = _in_reactor(function, *args)
        return result.wait(seconds)
    except crochet.ReactorStopped:
        raise ClientClosedError("the reactor has stopped (the program is exiting)") from None
    except crochet.TimeoutError:
        pass
    # The call forgets the request (a response that comes is dropped). The Deferred
    # fires at once with the CancelledError that _given_up swallows; until then the
    # reactor's queue holds the result, which crochet needs alive for the outcome.
    result.cancel()
    return TIMED_OUT


def quick(function: Callable[..., _T], *args: Any, what: str, instead: str) -> _T:
    """Run ``function(*args)``, which does no I/O, in the reactor thread."""
    refuse_reactor_thread(what, instead)
    result = wait(function, args, REACTOR_TIMEOUT)
    if result is TIMED_OUT:
        raise RemotingTimeoutError(
            f"{what}: the reactor thread did not run it within {REACTOR_TIMEOUT:g} s "
            "(is it blocked?)"
        )
    return cast("_T", result)


def check_timeout(timeout: float) -> None:
    """Refuse a negative or NaN number of seconds (a negative wait would not wait)."""
    if not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
