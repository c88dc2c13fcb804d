"""In-flight budgets (Java's semaphores, as permits that are released exactly once), and
the server-wide budget of buffered partial-frame bytes."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from rmqtwist._logsafe import LogLimiter
from rmqtwist.errors import TooManyRequestsError

__all__ = ["BufferBudget", "Permit", "Permits"]

_log = Logger()


class Permit:
    """One permit of a :class:`Permits` budget; :meth:`release` it once (more is a no-op)."""

    __slots__ = ("_permits",)

    def __init__(self, permits: Permits) -> None:
        self._permits: Permits | None = permits

    def release(self) -> None:
        """Give the permit back. Safe to call more than once: only the first counts."""
        permits, self._permits = self._permits, None
        if permits is not None:
            permits._release()


class Permits:
    """A budget of in-flight requests (Java's semaphores): at most ``limit`` held at once.

    :meth:`acquire` waits up to a timeout for a permit; each :class:`Permit` is released
    exactly once however its request ends.
    """

    def __init__(self, limit: int, name: str, clock: IReactorTime) -> None:
        if limit < 1:
            raise ValueError(f"{name} budget must be at least 1, got {limit}")
        self.limit = limit
        self.name = name
        self.in_use = 0
        self._clock = clock
        self._waiters: deque[Deferred[Permit]] = deque()

    @property
    def available(self) -> int:
        """Permits free right now."""
        return self.limit - self.in_use

    def try_acquire(self) -> Permit | None:
        """A permit if one is free now (and nobody is queued before us), else None."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return Permit(self)
        return None

    def take(self) -> bool:
        """Take a permit now without a :class:`Permit` object (True if one was free).

        For a caller that can guarantee one :meth:`release` per successful take itself,
        e.g. by releasing when it pops the entry that holds it (cheaper per request).
        """
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    def release(self) -> None:
        """Give back one permit taken with :meth:`take`."""
        if self._waiters:
            self._waiters.popleft().callback(Permit(self))  # the slot passes straight on
        else:
            self.in_use -= 1

    _release = release  # what a Permit object calls

    def acquire(self, timeout: float) -> Deferred[Permit]:
        """A Deferred of a permit, failing with TooManyRequestsError after ``timeout``."""
        permit = self.try_acquire()
        if permit is not None:
            return succeed(permit)
        waiter: Deferred[Permit] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(waiter)

        def expired() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.errback(
                    TooManyRequestsError(
                        f"no {self.name} permit came free within {timeout:g} s "
                        f"({self.limit} in flight)"
                    )
                )

        timer = self._clock.callLater(timeout, expired)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        waiter.addBoth(done)
        return waiter

    def _withdraw(self, waiter: Deferred[Permit], error: Exception) -> None:
        # Fail a waiter from acquire() that is still queued (its connection is gone).
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.errback(error)


class _Holder(Protocol):
    """What :class:`BufferBudget` needs of a connection."""

    @property
    def peer(self) -> str: ...

    def abort(self) -> None: ...


class BufferBudget:
    """A server-wide budget of buffered partial-frame bytes, shared by its connections.

    Each connection reports what its decoder holds after every read (:meth:`update`).
    While the total is over ``limit``, the connections holding the most are aborted
    (logged at most once per 10 s, with a count of those not logged), so that many peers
    each sending most of a large frame cannot make the server hold gigabytes.
    """

    def __init__(self, limit: int, clock: IReactorTime) -> None:
        if limit < 1:
            raise ValueError(f"the buffer budget must be at least 1 byte, got {limit}")
        self.limit = limit
        self.total = 0
        #: Connections closed for the budget so far.
        self.closed = 0
        self._held: dict[_Holder, int] = {}
        self._log_limiter = LogLimiter(clock)

    def update(self, connection: _Holder, buffered: int) -> None:
        """``connection`` now holds ``buffered`` bytes of partial frames."""
        held = self._held
        before = held.pop(connection, 0)
        if buffered:
            held[connection] = buffered
        self.total += buffered - before
        if self.total > self.limit:
            self._trim()

    def forget(self, connection: _Holder) -> None:
        """``connection`` closed: what it held no longer counts."""
        self.total -= self._held.pop(connection, 0)

    def held_by(self, connection: _Holder) -> int:
        """The bytes ``connection`` counts for now."""
        return self._held.get(connection, 0)

    def _trim(self) -> None:
        for connection, held in sorted(self._held.items(), key=lambda item: -item[1]):
            if self.total <= self.limit:
                break
            dropped = self._log_limiter.allow()
            if dropped is not None:
                _log.warn(
                    "Closing {peer}: it holds {held} bytes of unfinished frames, the most of "
                    "any connection, and all connections together held {total}, over the "
                    "server's budget of {limit} (max_buffered_bytes); {dropped} other such "
                    "closes not logged",
                    peer=connection.peer,
                    held=held,
                    total=self.total,
                    limit=self.limit,
                    dropped=dropped,
                )
            self.forget(connection)
            self.closed += 1
            connection.abort()
