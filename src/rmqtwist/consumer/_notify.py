"""NOTIFY_CONSUMER_IDS_CHANGED (40): the broker's word that a group's members changed.

A client has one processor per request code, and several consumers (push and lite pull,
of one group or of several) may share a client, so one :class:`NotifyRouter` per client
hands each notification to the consumers of the group it names. Consumers are held by
weak reference: one dropped without :meth:`shutdown` is not kept alive by its client.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from rmqtwist.client import RemotingClient
from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand
from rmqtwist.headers import NotifyConsumerIdsChangedRequestHeader
from rmqtwist.interfaces import IRequestContext, IRequestProcessor

__all__ = ["NotifyRouter", "notify_router"]

_log = Logger()


@implementer(IRequestProcessor)
class NotifyRouter:
    """Calls the bound methods watching the consumer group a notification names."""

    def __init__(self) -> None:
        self._watchers: dict[str, list[weakref.WeakMethod[Callable[[], None]]]] = {}

    def watch(self, group: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (a bound method) on each notification for ``group``."""
        self._watchers.setdefault(group, []).append(weakref.WeakMethod(callback))

    def unwatch(self, group: str, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` for ``group``; nothing if it was not watching."""
        kept = [ref for ref in self._watchers.get(group, ()) if ref() not in (None, callback)]
        if kept:
            self._watchers[group] = kept
        else:
            self._watchers.pop(group, None)

    def watching(self, group: str) -> int:
        """How many live callbacks watch ``group``."""
        return sum(ref() is not None for ref in self._watchers.get(group, ()))

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> None:
        try:
            group = NotifyConsumerIdsChangedRequestHeader.from_command(request).consumer_group
        except ValueError as error:
            _log.info("Ignoring an unreadable NOTIFY_CONSUMER_IDS_CHANGED: {e}", e=error)
            return None
        for ref in list(self._watchers.get(group, ())):
            callback = ref()
            if callback is not None:
                callback()
        return None

    def reject_request(self) -> bool:
        return False


_ROUTERS: weakref.WeakKeyDictionary[RemotingClient, NotifyRouter] = weakref.WeakKeyDictionary()


def notify_router(client: RemotingClient) -> NotifyRouter:
    """``client``'s router, registered on it as the code-40 processor the first time."""
    router = _ROUTERS.get(client)
    if router is None:
        router = _ROUTERS[client] = NotifyRouter()
        client.register_processor(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, router)
    return router
