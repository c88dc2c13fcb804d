"""The Deferred a call returns: Twisted's, with a shorter path for the usual firing.

A client fires one Deferred per response, and most of them have exactly one callback
pair (the caller's ``addCallbacks``) when they fire. Twisted's ``Deferred.callback``
runs a general loop built for chains, pauses and nested Deferreds; for this one case
it costs about as much as decoding the response. :class:`Reply` is a ``Deferred``
(``isinstance`` holds, and Twisted chains it like any other, since it records its
subclasses) whose :meth:`~Reply.callback` does the usual case itself:

- the Deferred has not fired, is not paused, holds exactly one callback pair that is a
  plain function (not a link from a chained Deferred), and Deferred debugging is off;
- the result given is neither a Deferred nor a Failure.

It then calls that callback as Twisted would (``_runningCallbacks`` set around it, an
exception caught as a ``Failure``) and stores what it returns. If that is a Deferred
or a Failure, or the callback added more callbacks, the rest is handed to Twisted's
own loop, with a pass-through pair in front so that the loop sees the value exactly as
if it had just called the callback itself. Anything else goes to
``Deferred.callback`` unchanged. tests/test_reply.py checks, on random programs of
Deferred operations, that a Reply behaves like a Deferred in every observable way.

It relies on Deferred internals that have been stable for years (``_callbacks``,
``_runningCallbacks``, ``_canceller``, ``_debugInfo``, the ``_CONTINUE`` link); if the
installed Twisted lacks any of them, :data:`FAST_PATH` is False and a Reply is a plain
Deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["FAST_PATH", "Reply", "is_deferred_or_failure"]

T = TypeVar("T")

_CONTINUE: object = getattr(defer, "_CONTINUE", None)


def _has_internals() -> bool:
    probe: Deferred[None] = Deferred()
    probe.addCallbacks(lambda r: r, lambda f: f)
    return (
        _CONTINUE is not None
        and isinstance(getattr(probe, "_callbacks", None), list)
        and len(probe._callbacks) == 1
        and len(probe._callbacks[0]) == 2
        and len(probe._callbacks[0][0]) == 3
        and probe._runningCallbacks is False
        and hasattr(probe, "_canceller")
        and getattr(probe, "_debugInfo", False) is None
        and callable(getattr(probe, "_runCallbacks", None))
    )


#: Whether :class:`Reply` takes its short path (False: a plain Deferred).
FAST_PATH = _has_internals()


def _init_sets_only_callbacks_and_canceller() -> bool:
    probe: Deferred[None] = Deferred(lambda d: None)
    return FAST_PATH and set(vars(probe)) == {"_callbacks", "_canceller"}


# Deferred.__init__ sets these two attributes (and debug information when
# Deferred.debug is on); a Reply sets them itself when that is all it would do.
_LEAN_INIT = _init_sets_only_callbacks_and_canceller()


# Deferred is an ABC (it derives from Awaitable), so ``isinstance(x, Deferred)`` runs
# ABCMeta.__instancecheck__, a Python-level call, for every result. What it answers
# depends only on the value's type, so the plain types met are remembered in a set;
# a type that overrides ``__class__`` (a proxy) is never remembered, since its
# instances can answer differently. (Registering a virtual subclass of Deferred after
# its instances went by would also go unseen; nothing does that.)
_PLAIN_TYPES: set[type] = {type(None)}
_PLAIN_TYPES_MAX = 256  # a bound, should a program make classes on the fly


def is_deferred_or_failure(value: object) -> bool:
    """``isinstance(value, (Deferred, Failure))``, answered from a set for plain types."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return False
    if isinstance(value, (Deferred, Failure)):
        return True
    if len(_PLAIN_TYPES) < _PLAIN_TYPES_MAX and not any(
        "__class__" in vars(base) for base in kind.__mro__[:-1]
    ):
        _PLAIN_TYPES.add(kind)
    return False


def _passthrough(result: object) -> object:
    return result


_PASSTHROUGH: Any = (_passthrough, (), {})
_PASSTHROUGH_PAIR: Any = (_PASSTHROUGH, _PASSTHROUGH)


class Reply(Deferred[T]):
    """A Deferred that fires its one plain callback without Twisted's general loop.

    ``opaque`` is the request's opaque, for the connection's canceller.
    """

    __slots__ = ("opaque",)

    def __init__(
        self, canceller: Callable[[Deferred[Any]], None] | None = None, opaque: int = 0
    ) -> None:
        self.opaque = opaque
        if _LEAN_INIT and not self.debug:  # Deferred.__init__'s work, without a call
            self._callbacks = []
            self._canceller = canceller
        else:
            super().__init__(canceller)

    def callback(self, result: T | Deferred[T] | Failure) -> None:
        callbacks = self._callbacks
        if (
            len(callbacks) == 1
            and FAST_PATH
            and not self.called
            and not self.paused
            and self._debugInfo is None
            and not self.debug
            and (type(result) in _PLAIN_TYPES or not is_deferred_or_failure(result))
        ):
            (function, args, kwargs), _ = callbacks[0]
            if function is not _CONTINUE:
                del callbacks[0]
                self.called = True
                self._canceller = None  # as Deferred does: no cycle through it
                self.result = result  # what the callback may read, as in Twisted's loop
                self._runningCallbacks = True
                value: Any
                try:
                    # ** of Twisted's empty MappingProxyType would build a dict: skipped.
                    value = (
                        function(result, *args, **kwargs)  # type: ignore[operator]
                        if kwargs
                        else function(result, *args)  # type: ignore[operator]
                    )
                except BaseException:
                    value = Failure(captureVars=self.debug)  # type: ignore[no-untyped-call]
                finally:
                    self._runningCallbacks = False
                self.result = value
                if callbacks or (type(value) not in _PLAIN_TYPES and is_deferred_or_failure(value)):
                    # Twisted's loop takes it from here, as if it had made the call.
                    callbacks.insert(0, _PASSTHROUGH_PAIR)
                    self._runCallbacks()
                return
        super().callback(result)  # type: ignore[arg-type]
