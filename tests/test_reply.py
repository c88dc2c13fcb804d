"""Reply (the Deferred a call returns) behaves like Twisted's Deferred in every way a
program can see: the same callbacks run, in the same order, with the same arguments,
and the Deferred ends in the same state. Random programs of Deferred operations run
once on a Deferred and once on a Reply, and their traces must be equal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

from rmqtwist._reply import _PLAIN_TYPES, FAST_PATH, Reply, is_deferred_or_failure


class Boom(Exception):
    pass


# What a callback does with its input:
#   ("value", n)      returns n
#   ("raise", n)      raises Boom(n)
#   ("echo",)         returns its input (a Failure too: an errback that passes it on)
#   ("fired", n)      returns succeed(n)
#   ("failed", n)     returns fail(Boom(n))
#   ("later", i)      returns the unfired helper Deferred number i (fired at the end)
#   ("add", n)        adds a callback returning n to the same Deferred, returns its input
#   ("await",)        ignores the input; a coroutine awaiting the Deferred sees it
Behaviour = tuple[Any, ...]

behaviours = st.one_of(
    st.tuples(st.just("value"), st.integers(0, 9)),
    st.tuples(st.just("raise"), st.integers(0, 9)),
    st.tuples(st.just("echo")),
    st.tuples(st.just("fired"), st.integers(0, 9)),
    st.tuples(st.just("failed"), st.integers(0, 9)),
    st.tuples(st.just("later"), st.integers(0, 2)),
    st.tuples(st.just("add"), st.integers(0, 9)),
)
# How a callback is added: addCallback, addErrback, addBoth, addCallbacks with an
# extra positional argument and keyword.
kinds = st.sampled_from(["callback", "errback", "both", "callbacks-args"])


@dataclass(frozen=True)
class Program:
    steps: list[tuple[str, Behaviour]]  # the callbacks added before it fires
    chained: bool  # returned (unfired) from an outer Deferred's callback first
    awaited: bool  # a coroutine awaits it
    paused: bool  # paused before firing, unpaused after
    cancel: bool  # cancelled instead of fired
    fire: tuple[str, int]  # ("callback", n) or ("errback", n)
    after: list[tuple[str, Behaviour]]  # callbacks added after it fired
    order: list[int]  # the order the "later" helpers fire in (value: 100 + i)


programs = st.builds(
    Program,
    steps=st.lists(st.tuples(kinds, behaviours), max_size=4),
    chained=st.booleans(),
    awaited=st.booleans(),
    paused=st.booleans(),
    cancel=st.booleans(),
    fire=st.tuples(st.sampled_from(["callback", "errback"]), st.integers(0, 9)),
    after=st.lists(st.tuples(kinds, behaviours), max_size=2),
    order=st.permutations([0, 1, 2]),
)


def shown(value: object) -> object:
    if isinstance(value, Failure):
        return ("Failure", value.type.__name__, str(value.value))
    if isinstance(value, Deferred):
        return "a Deferred"
    return value


def run(program: Program, cls: type[Deferred[Any]]) -> list[object]:
    trace: list[object] = []
    helpers: list[Deferred[Any]] = [Deferred() for _ in range(3)]
    cancelled: list[object] = []
    d: Deferred[Any] = cls(lambda x: cancelled.append("canceller"))

    def make(tag: str, behaviour: Behaviour) -> Any:
        def callback(result: object, *args: object, **kwargs: object) -> object:
            trace.append((tag, shown(result), args, tuple(sorted(kwargs.items()))))
            what = behaviour[0]
            if what == "value":
                return behaviour[1]
            if what == "raise":
                raise Boom(behaviour[1])
            if what == "echo":
                return result
            if what == "fired":
                return succeed(behaviour[1])
            if what == "failed":
                return fail(Boom(behaviour[1]))
            if what == "later":
                return helpers[behaviour[1]]
            if what == "add":
                d.addCallback(make(f"{tag}+", ("value", behaviour[1])))
                return result
            raise AssertionError(behaviour)

        return callback

    def add(target: Deferred[Any], tag: str, kind: str, behaviour: Behaviour) -> None:
        callback = make(tag, behaviour)
        if kind == "callback":
            target.addCallback(callback)
        elif kind == "errback":
            target.addErrback(callback)
        elif kind == "both":
            target.addBoth(callback)
        else:
            target.addCallbacks(callback, callback, ("x",), {"k": 1}, ("y",), {"k": 2})

    for i, (kind, behaviour) in enumerate(program.steps):
        add(d, f"step{i}", kind, behaviour)
    outer: Deferred[Any] | None = None
    if program.chained:
        outer = Deferred()
        outer.addCallback(lambda _: d)
        outer.callback("outer")
    if program.awaited:

        async def waiter() -> object:
            try:
                value = await d
            except Exception as e:
                trace.append(("awaited failure", type(e).__name__, str(e)))
                return "failed"
            trace.append(("awaited", shown(value)))
            return value

        awaiting = ensureDeferred(waiter())
    if program.paused:
        d.pause()
    if program.cancel:
        d.cancel()
    else:
        how, n = program.fire
        if how == "callback":
            d.callback(n)
        else:
            d.errback(Boom(n))
    trace.append(("fired", d.called, d.paused))
    if program.paused:
        d.unpause()
    for i, (kind, behaviour) in enumerate(program.after):
        add(d, f"after{i}", kind, behaviour)
    for i in program.order:
        if not helpers[i].called:
            helpers[i].callback(100 + i)
    trace.append(("cancelled", cancelled))
    for name, deferred in (("d", d), ("outer", outer)):
        if deferred is not None:
            ends: list[object] = []
            deferred.addBoth(ends.append)  # consumes a failure: nothing is logged
            trace.append((name, deferred.called, deferred.paused, [shown(e) for e in ends]))
    if program.awaited:
        results: list[object] = []
        awaiting.addBoth(results.append)
        trace.append(("coroutine", [shown(r) for r in results]))
    for i, helper in enumerate(helpers):
        helper.addErrback(lambda f: None)
        trace.append((f"helper{i}", helper.called))
    return trace


def test_the_fast_path_is_on_with_this_twisted() -> None:
    assert FAST_PATH  # else Reply is a plain Deferred and the tests below prove little


@settings(max_examples=600, deadline=None)
@given(programs)
def test_reply_behaves_like_a_deferred(program: Program) -> None:
    assert run(program, Reply) == run(program, Deferred)


def test_usual_case_runs_the_one_callback_with_its_arguments() -> None:
    d: Reply[int] = Reply()
    seen: list[object] = []
    d.addCallbacks(lambda r, a, k: seen.append((r, a, k)) or r + 1, None, ("a",), {"k": 2})
    d.callback(1)
    assert seen == [(1, "a", 2)]
    assert d.called and d.result == 2


def test_a_callback_that_raises_leaves_a_failure_for_the_next_errback() -> None:
    d: Reply[int] = Reply()

    def boom(_: int) -> None:
        raise Boom("x")

    d.addCallback(boom)
    d.callback(1)
    errors: list[Failure] = []
    d.addErrback(errors.append)
    assert errors and errors[0].check(Boom)


def test_firing_twice_is_an_error_as_for_a_deferred() -> None:
    from twisted.internet.defer import AlreadyCalledError

    d: Reply[int] = Reply()
    d.addCallback(lambda r: r)
    d.callback(1)
    with pytest.raises(AlreadyCalledError):
        d.callback(2)


def test_cancel_runs_the_canceller_and_fails_with_cancelled_error() -> None:
    cancelled: list[object] = []
    d: Reply[int] = Reply(cancelled.append)
    errors: list[Failure] = []
    d.addCallbacks(lambda r: r, errors.append)
    d.cancel()
    assert cancelled == [d]
    assert errors and errors[0].check(CancelledError)


def test_a_reply_starts_as_a_deferred_does() -> None:
    def canceller(d: Deferred[Any]) -> None:
        pass

    reply: Reply[int] = Reply(canceller, 7)
    assert vars(reply) == vars(Deferred(canceller))
    assert reply.opaque == 7
    assert not reply.called and not reply.paused and reply._debugInfo is None


def test_a_reply_made_while_debugging_records_its_creator_as_a_deferred_does() -> None:
    from twisted.internet.defer import getDebugging, setDebugging

    was = getDebugging()
    setDebugging(True)
    try:
        reply: Reply[int] = Reply()
        deferred: Deferred[int] = Deferred()
    finally:
        setDebugging(was)
    assert set(vars(reply)) == set(vars(deferred)) == {"_callbacks", "_canceller", "_debugInfo"}
    assert reply._debugInfo is not None and reply._debugInfo.creator


class Proxy:
    """A stand-in that claims the class of what it wraps, as proxies do."""

    def __init__(self, wrapped: object) -> None:
        self.wrapped = wrapped

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self.wrapped)


@pytest.mark.parametrize(
    "value",
    [
        None,
        1,
        "x",
        RuntimeError(),
        Deferred(),
        Reply(),
        Failure(Boom()),
        Proxy(Deferred()),
        Proxy(1),
    ],
)
def test_is_deferred_or_failure_answers_as_isinstance(value: object) -> None:
    expected = isinstance(value, (Deferred, Failure))
    assert is_deferred_or_failure(value) is expected
    assert is_deferred_or_failure(value) is expected  # and again, once its type is known
    assert Proxy not in _PLAIN_TYPES  # a type whose instances can differ is not remembered
    wrapped = getattr(value, "wrapped", value)
    if isinstance(wrapped, Deferred):
        wrapped.callback(None)


@pytest.mark.parametrize("cls", [Deferred, Reply])
def test_a_failure_left_unhandled_is_logged_when_collected(cls: type[Deferred[Any]]) -> None:
    # Twisted logs "Unhandled error in Deferred" for a Deferred garbage-collected with a
    # Failure: a Reply whose one callback raised must be no different.
    import gc

    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        d: Deferred[Any] = cls()

        def boom(_: object) -> None:
            raise Boom("left unhandled")

        d.addCallback(boom)
        d.callback(1)
        del d
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["log_format"] for e in events if e.get("isError")] == ["Unhandled error in Deferred:"]
    (failure,) = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(Boom) and str(failure.value) == "left unhandled"
