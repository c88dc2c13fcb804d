"""The NOTIFY_CONSUMER_IDS_CHANGED (40) router every consumer of a client shares."""

from __future__ import annotations

import gc
from typing import Any

from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand
from rmqtwist.consumer._notify import NotifyRouter, notify_router


class Client:
    def __init__(self) -> None:
        self.processors: dict[int, Any] = {}

    def register_processor(self, code: int, processor: Any) -> None:
        assert code not in self.processors, "one processor per code"
        self.processors[code] = processor


class Member:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name = calls, name

    def notified(self) -> None:
        self.calls.append(self.name)


def notify(group: str | None) -> RemotingCommand:
    fields = None if group is None else {"consumerGroup": group}
    return RemotingCommand.request(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, fields)


def test_one_router_per_client_registered_once() -> None:
    client, other = Client(), Client()
    router = notify_router(client)  # type: ignore[arg-type]
    assert notify_router(client) is router  # type: ignore[arg-type]
    assert notify_router(other) is not router  # type: ignore[arg-type]
    assert client.processors == {RequestCode.NOTIFY_CONSUMER_IDS_CHANGED: router}


def test_each_watcher_of_the_named_group_only() -> None:
    calls: list[str] = []
    router = NotifyRouter()
    a, b, c = Member(calls, "a"), Member(calls, "b"), Member(calls, "c")
    router.watch("G", a.notified)
    router.watch("G", b.notified)
    router.watch("H", c.notified)
    router.process_request(None, notify("G"))  # type: ignore[arg-type]
    assert calls == ["a", "b"]
    router.unwatch("G", a.notified)
    router.unwatch("G", a.notified)  # twice is nothing
    router.unwatch("X", a.notified)
    router.process_request(None, notify("G"))  # type: ignore[arg-type]
    router.process_request(None, notify("Z"))  # type: ignore[arg-type]
    # Unreadable (no group): logged and ignored.
    router.process_request(None, notify(None))  # type: ignore[arg-type]
    assert calls == ["a", "b", "b"]
    assert (router.watching("G"), router.watching("H")) == (1, 1)
    assert router.reject_request() is False


def test_a_consumer_dropped_without_shutdown_is_not_kept_alive() -> None:
    calls: list[str] = []
    router = NotifyRouter()
    member = Member(calls, "gone")
    router.watch("G", member.notified)
    del member
    gc.collect()
    assert router.watching("G") == 0
    router.process_request(None, notify("G"))  # type: ignore[arg-type]
    assert calls == []
