"""The pool's connections, the factory that makes them and the connect attempt calls share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from rmqtwist.protocol import RemotingProtocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall

    from rmqtwist.client._client import RemotingClient


class _ClientConnection(RemotingProtocol):
    client: RemotingClient
    address: str
    idle_since: float
    swept_activity: int

    def mark_closing(self) -> None:
        super().mark_closing()
        self.client._drop_from_pool(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.client._connection_lost(self)


class _ClientFactory(Factory):
    protocol = _ClientConnection

    def __init__(self, client: RemotingClient, address: str) -> None:
        self.client = client
        self.address = address

    def buildProtocol(self, addr: IAddress | None) -> _ClientConnection:
        client = self.client
        connection = _ClientConnection()
        connection.factory = self
        connection.dispatcher = client.dispatcher
        connection.max_frame_length = client.config.max_frame_length
        connection.client = client
        connection.address = self.address
        connection.idle_since = client.clock.seconds()
        connection.swept_activity = 0
        return connection


class _Attempt:
    """One connect attempt to an address, shared by every call that needs it."""

    __slots__ = (
        "address",
        "connecting",
        "outcome",
        "start_at",
        "started",
        "starter",
        "timer",
        "waiters",
    )

    def __init__(self, address: str, start_at: float) -> None:
        self.address = address
        self.start_at = start_at
        self.started: float | None = None
        self.starter: IDelayedCall | None = None  # the attempt waits out a backoff
        self.connecting: Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.waiters: list[Deferred[_ClientConnection]] = []
        # An endpoint may connect (or fail) before the first call waits: keep the outcome.
        self.outcome: _ClientConnection | Exception | None = None

    def wait(self) -> Deferred[_ClientConnection]:
        if isinstance(self.outcome, Exception):
            return fail(self.outcome)
        if self.outcome is not None:
            return succeed(self.outcome)
        waiter: Deferred[_ClientConnection] = Deferred(self._forget)
        self.waiters.append(waiter)
        return waiter

    def _forget(self, waiter: Deferred[_ClientConnection]) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)

    def settle(self, result: _ClientConnection | Exception) -> None:
        self.outcome = result
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if isinstance(result, Exception):
                waiter.errback(result)
            else:
                waiter.callback(result)
