"""A call off the fast path: it connects (or chooses a name server) before it sends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from rmqtwist.codes import code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import (
    ClientClosedError,
    ConnectError,
    EncodeError,
    NoNameServerError,
    RemotingTimeoutError,
    RPCHookAbort,
    TooManyRequestsError,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from rmqtwist.client._client import RemotingClient
    from rmqtwist.client._connection import _ClientConnection


class _Call:
    """One call that is not on the fast path: it connects (or chooses a name server) first."""

    __slots__ = (
        "address",
        "candidates",
        "client",
        "deadline",
        "errors",
        "name_server",
        "oneway",
        "request",
        "result",
        "sent_at",
        "stage",
        "started",
        "timeout",
        "timer",
    )

    def __init__(
        self,
        client: RemotingClient,
        address: str | None,
        request: RemotingCommand,
        timeout: float,
        oneway: bool,
    ) -> None:
        self.client = client
        self.request = request
        self.oneway = oneway
        self.timeout = timeout
        self.started = client.clock.seconds()
        self.deadline = self.started + timeout
        self.result: Deferred[Any] = Deferred(self._cancelled)
        self.stage: Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.name_server = address is None
        self.address = address
        self.candidates: list[str] = []
        self.errors: list[str] = []
        self.sent_at = 0.0

    # -- choosing where to connect ----------------------------------------------------

    def start(self) -> None:
        if self.address is not None:
            self._connect(self.address)
            return
        self.candidates = self.client._name_server_candidates()
        if not self.candidates:
            self._finish(
                NoNameServerError(
                    "no name-server address is set: call update_name_server_address_list()"
                )
            )
            return
        self._next_candidate()

    def _next_candidate(self) -> None:
        self.address = self.candidates.pop(0)
        self._connect(self.address)

    def _connect(self, address: str) -> None:
        client = self.client
        now = client.clock.seconds()
        remaining = self.deadline - now
        try:
            connecting = client._connection_for(address, self.deadline)
        except ConnectError as e:
            self._connect_failed(address, e)
            return
        except ClientClosedError as e:
            self._finish(e)
            return
        if connecting.called:  # the pool had a usable connection
            connecting.addCallbacks(
                self._connected,
                self._connect_errback,
                callbackArgs=(address,),
                errbackArgs=(address,),
            )
            return
        # With other name servers left, one that hangs may take only its share of the
        # deadline, so that a dead address never eats a whole call.
        wait = remaining / (1 + len(self.candidates)) if self.candidates else remaining
        self.stage = connecting
        self.timer = client.clock.callLater(max(wait, 0.0), self._connect_too_slow, address)
        connecting.addCallbacks(
            self._connected_later,
            self._connect_errback_later,
            callbackArgs=(connecting, address),
            errbackArgs=(connecting, address),
        )

    def _connected_later(
        self, connection: _ClientConnection, stage: Deferred[Any], address: str
    ) -> None:
        if self.stage is stage:  # else the call moved on; the pool keeps the connection
            self.stage = None
            self._connected(connection, address)

    def _connect_errback_later(self, failure: Failure, stage: Deferred[Any], address: str) -> None:
        if self.stage is stage:  # else cancelled by us: the call moved on
            self.stage = None
            self._connect_errback(failure, address)

    def _connect_too_slow(self, address: str) -> None:
        self.timer = None
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.cancel()  # leaves the shared attempt; it goes on for the pool
        waited = self.client.clock.seconds() - self.started
        if self.candidates:
            self.client._record_error(address)
            self.errors.append(f"{address}: still connecting after {waited:.3g} s")
            self._next_candidate()
            return
        self._finish(
            RemotingTimeoutError(
                f"no connection to {address} within the call's {self.timeout:g} s deadline"
                + (f" (tried {'; '.join(self.errors)})" if self.errors else "")
            )
        )

    def _connect_errback(self, failure: Failure, address: str) -> None:
        self._stop_timer()
        error = failure.value
        if isinstance(error, ConnectError):
            self._connect_failed(address, error)
        else:  # ClientClosedError, or the connection closed while we waited for it to drain
            self._finish(failure)

    def _connect_failed(self, address: str, error: ConnectError) -> None:
        client = self.client
        if self.name_server:
            client._record_error(address)
            self.errors.append(f"{address}: {error}")
            if self.candidates and client.clock.seconds() < self.deadline:
                self._next_candidate()
                return
            if len(self.errors) > 1:
                combined = ConnectError(
                    f"no name server could be reached: {'; '.join(self.errors)}"
                )
                combined.__cause__ = error
                self._finish(combined)
                return
        self._finish(error)

    # -- sending ----------------------------------------------------------------------

    def _connected(self, connection: _ClientConnection, address: str) -> None:
        self._stop_timer()
        client = self.client
        now = client.clock.seconds()
        remaining = self.deadline - now
        if remaining <= 0:
            self._finish(
                RemotingTimeoutError(
                    f"the call's {self.timeout:g} s deadline passed while connecting to {address}"
                )
            )
            return
        self.sent_at = now
        stage: Deferred[Any]
        if self.oneway:
            stage = connection.invoke_oneway(self.request, remaining)
        else:
            stage = connection.invoke(self.request, remaining)
        if stage.called:
            stage.addBoth(self._done, address)
            return
        self.stage = stage
        stage.addBoth(self._done_later, stage, address)

    def _done_later(self, result: object, stage: Deferred[Any], address: str) -> None:
        if self.stage is not stage:
            return  # cancelled: the outer Deferred has its CancelledError already
        self.stage = None
        self._done(result, address)

    def _done(self, result: object, address: str) -> None:
        spent = self.sent_at - self.started
        if isinstance(result, Failure) and type(result.value) is RemotingTimeoutError and spent:
            # The connection was given what was left of the deadline: say what the
            # caller asked for instead.
            error = RemotingTimeoutError(
                f"no response from {address} to {code_name(self.request.code)} within the "
                f"call's {self.timeout:g} s deadline ({spent:.3g} s of it spent connecting)"
            )
            error.__cause__ = result.value
            result = Failure(error)  # type: ignore[no-untyped-call]
        if self.name_server:
            client = self.client
            if isinstance(result, Failure):
                if not isinstance(result.value, RPCHookAbort | EncodeError | TooManyRequestsError):
                    client._record_error(address)
            else:
                client._record_success(address, client.clock.seconds() - self.sent_at)
        self._finish(result, counted=True)

    # -- ending -----------------------------------------------------------------------

    def _stop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _finish(self, result: object, counted: bool = False) -> None:
        # ``counted``: the result came from the connection, which counted a failure.
        self._stop_timer()
        self.client._calls.discard(self)
        if self.result.called:
            return
        if isinstance(result, Failure | Exception):
            if not counted:
                self.client._errors += 1
            self.result.errback(result)
        else:
            self.result.callback(result)

    def fail(self, error: Exception) -> None:
        """End the call with ``error`` now, forgetting whatever it waits on."""
        stage, self.stage = self.stage, None
        self._stop_timer()
        if stage is not None:
            stage.cancel()
        self._finish(error)

    def _cancelled(self, _: Deferred[Any]) -> None:
        stage, self.stage = self.stage, None
        self._stop_timer()
        self.client._calls.discard(self)
        if stage is not None:
            stage.cancel()  # forgets the pending entry (or leaves the connect attempt)
