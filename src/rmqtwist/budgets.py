"""In-flight budgets: Java's semaphores, as permits that are released exactly once."""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from rmqtwist.errors import TooManyRequestsError

__all__ = ["Permit", "Permits"]


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
