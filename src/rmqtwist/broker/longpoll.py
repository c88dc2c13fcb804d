"""Long polling: pulls that found nothing, held until a message arrives for their queue or
their suspend time runs out (never an immediate PULL_NOT_FOUND loop)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["HeldPull", "HeldPulls"]


class HeldPull:
    """One held pull: the offset it waits past, its tag filter and what to run to answer it."""

    __slots__ = ("codes", "done", "key", "offset", "rerun", "timer")

    def __init__(
        self,
        key: tuple[str, int],
        offset: int,
        codes: frozenset[int] | None,
        rerun: Callable[[], None],
    ) -> None:
        self.key = key
        self.offset = offset
        self.codes = codes
        self.rerun = rerun
        self.timer: IDelayedCall | None = None
        self.done = False


class HeldPulls:
    """The held pulls of a broker, by (topic, queue id)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._held: dict[tuple[str, int], list[HeldPull]] = {}
        self.count = 0

    def hold(
        self,
        topic: str,
        queue_id: int,
        offset: int,
        codes: frozenset[int] | None,
        timeout: float,
        rerun: Callable[[], None],
    ) -> HeldPull:
        """Hold a pull at ``offset``; ``rerun()`` is called once: when a matching message
        arrives past ``offset``, or after ``timeout`` seconds."""
        key = (topic, queue_id)
        held = HeldPull(key, offset, codes, rerun)
        self._held.setdefault(key, []).append(held)
        self.count += 1
        held.timer = self._clock.callLater(max(timeout, 0.0), self._expire, held)
        return held

    def _remove(self, held: HeldPull) -> None:
        held.done = True
        self.count -= 1
        waiting = self._held.get(held.key)
        if waiting is not None:
            with contextlib.suppress(ValueError):
                waiting.remove(held)
            if not waiting:
                del self._held[held.key]

    def _expire(self, held: HeldPull) -> None:
        if held.done:
            return
        held.timer = None
        self._remove(held)
        held.rerun()

    def notify(self, topic: str, queue_id: int, max_offset: int, code: int | None) -> None:
        """A message with tag hash ``code`` was stored; ``max_offset`` is the queue's new
        max offset. Wakes the pulls it is for (``code`` None: wake all that it passes)."""
        waiting = self._held.get((topic, queue_id))
        if not waiting:
            return
        wake = [
            held
            for held in waiting
            if max_offset > held.offset
            and (code is None or held.codes is None or code in held.codes)
        ]
        for held in wake:
            self._answer(held)

    def waiting(self) -> dict[tuple[str, int], int]:
        """How many pulls are held per queue (for tests and introspection)."""
        return {key: len(held) for key, held in self._held.items()}

    def release_all(self) -> None:
        """Answer every held pull now (the broker is stopping)."""
        for key in list(self._held):
            for held in list(self._held.get(key, [])):
                self._answer(held)

    def _answer(self, held: HeldPull) -> None:
        """Stop ``held``'s timer, forget it and answer it (once)."""
        if held.done:
            return
        timer, held.timer = held.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._remove(held)
        held.rerun()
