"""Keeping peer-controlled values from flooding the log: :func:`clip` shortens a value
to a few hundred characters (saying how long it was), and :class:`LogLimiter` lets a
repeated event through at most once per interval, counting what it held back.

Pure Python (no Twisted import): the codec uses :func:`clip` in its error messages.
"""

from __future__ import annotations

from typing import Final, Protocol

__all__ = ["CLIP_LENGTH", "LogLimiter", "clip", "clip_repr"]

#: The most characters of one peer-controlled value that reach a log line.
CLIP_LENGTH: Final = 300


def clip(text: str, limit: int = CLIP_LENGTH) -> str:
    """``text`` itself if at most ``limit`` characters, else its start followed by
    ``...[N chars]`` (N: the original length)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text)} chars]"


def clip_repr(value: object, limit: int = CLIP_LENGTH) -> str:
    """``repr(value)``, clipped (see :func:`clip`)."""
    return clip(repr(value), limit)


class _Clock(Protocol):
    def seconds(self) -> float: ...


class LogLimiter:
    """Lets an event per key through at most once per ``interval`` seconds.

    :meth:`allow` returns None while the key is held back (counting it), else the number
    of events of that key held back since the last one let through, which the log line
    should report. At most ``max_keys`` keys are remembered (the oldest is forgotten), so
    that many peers cannot grow it without bound.
    """

    def __init__(self, clock: _Clock, interval: float = 10.0, max_keys: int = 1024) -> None:
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        #: key -> [time of the last event let through, events held back since]
        self._keys: dict[object, list[float]] = {}

    def allow(self, key: object = None) -> int | None:
        """None to drop this event; else how many were dropped before it (often 0)."""
        now = self.clock.seconds()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        dropped = 0 if entry is None else int(entry[1])
        if entry is None:
            if len(self._keys) >= self.max_keys:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = [now, 0]
        else:
            entry[0] = now
            entry[1] = 0
        return dropped

    def forget(self, key: object) -> int:
        """Forget ``key`` (e.g. its connection closed); the count it was holding back."""
        entry = self._keys.pop(key, None)
        return 0 if entry is None else int(entry[1])
