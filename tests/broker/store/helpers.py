"""Records, fake reactors and thread pools for the store tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, formatEvent

from rmqtwist.message import encode_properties, encode_record, tag_hash

BORN = "127.0.0.1:40000"
STORE = "127.0.0.1:10911"


def make_record(
    topic: str = "T",
    queue_id: int = 0,
    body: bytes = b"hello",
    *,
    tags: str | None = "TagA",
    keys: str | None = None,
    store_timestamp: int = 1_000,
    born_host: str = BORN,
    properties: dict[str, str] | None = None,
) -> bytearray:
    """A stored-message record as the broker hands it to a store."""
    props = dict(properties or {})
    if tags is not None:
        props["TAGS"] = tags
    if keys is not None:
        props["KEYS"] = keys
    return encode_record(
        topic=topic,
        body=body,
        properties=encode_properties(props),
        queue_id=queue_id,
        born_timestamp=store_timestamp - 1,
        born_host=born_host,
        store_timestamp=store_timestamp,
        store_host=STORE,
    )


def put(store: Any, topic: str = "T", queue_id: int = 0, body: bytes = b"hello", **kw: Any) -> Any:
    """Append one record made by :func:`make_record`; its AppendResult."""
    tags = kw.get("tags", "TagA")
    record = make_record(topic, queue_id, body, **kw)
    return store.append(topic, queue_id, record, tag_hash(tags), kw.get("store_timestamp", 1_000))


def fired(d: Deferred[Any]) -> Any:
    """The result (or Failure) of a Deferred that has already fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


class ThreadlessReactor(Clock):
    """A Clock that also takes callFromThread (run at once): deferToThreadPool needs it."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> FakeThreadPool:
        raise AssertionError("the tests pass a thread pool")


class FakeThreadPool:
    """Keeps the jobs given to it until the test runs them, one by one, in this thread."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(
        self, on_result: Callable[..., Any], f: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        self.jobs.append((on_result, f, args))

    def run_one(self) -> None:
        on_result, f, args = self.jobs.pop(0)
        try:
            result = f(*args)
        except BaseException:
            from twisted.python.failure import Failure

            on_result(False, Failure())
        else:
            on_result(True, result)


class CapturedLog:
    """A Logger whose events are kept, to check what a store logged."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self.logger = Logger(observer=self.events.append)

    @property
    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]
