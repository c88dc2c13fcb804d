"""The requests a connection sends: opaques, permits, the pending table and its deadlines,
oneway writes."""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from rmqtwist._logsafe import clip_repr
from rmqtwist._reply import Reply
from rmqtwist.budgets import Permit, Permits
from rmqtwist.codec import encode_frame
from rmqtwist.codes import FLAG_ONEWAY, FLAG_RESPONSE, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.dispatcher import Dispatcher
from rmqtwist.errors import ConnectionLostError, RemotingTimeoutError, SendRequestError
from rmqtwist.framing import LengthPrefixed
from rmqtwist.protocol._common import _INT32_MAX, _Pending, _stamped

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

# The namespace the module had before it became a package, so log filters keep working.
_log = Logger(namespace="rmqtwist.protocol")


class _Outgoing(LengthPrefixed, TimeoutMixin):
    """RemotingProtocol's machinery for the requests it sends (invoke and invoke_oneway)."""

    # Set by RemotingProtocol.__init__ (and connectionMade); declared for the type checker.
    dispatcher: Dispatcher
    remote_address: str
    peer_host: str
    is_connected: bool
    is_writable: bool
    is_closing: bool
    activity: int
    _pending: dict[int, _Pending]
    _deadlines: list[_Pending]
    _deadline_sequence: int
    _deadline_timer: IDelayedCall | None
    _deadline_at: float
    _waiting: dict[Deferred[Permit], Permits]
    _next_opaque: int
    _held_permits: list[Permit]

    if TYPE_CHECKING:  # RemotingProtocol's

        def mark_closing(self) -> None: ...

        def close(self) -> None: ...

        def _over_unsent(self, size: int) -> bool: ...

        _write_paused: bool

    def _allocate_opaque(self) -> int:
        opaque = self._next_opaque
        pending = self._pending
        while opaque in pending:  # only after wrapping past a very old request
            opaque = opaque + 1 if opaque < _INT32_MAX else 0
        self._next_opaque = opaque + 1 if opaque < _INT32_MAX else 0
        return opaque

    def _wait_for_permit(self, permits: Permits, timeout: float) -> Deferred[Permit]:
        waiter = permits.acquire(timeout)
        if not waiter.called:
            self._waiting[waiter] = permits

            def forget(result: object) -> object:
                self._waiting.pop(waiter, None)
                if isinstance(result, Failure) and not isinstance(result.value, CancelledError):
                    self.dispatcher.calls_failed += 1
                return result

            waiter.addBoth(forget)
        return waiter

    def _send_request(
        self, request: RemotingCommand, timeout: float, permit: Permit | Permits
    ) -> Deferred[RemotingCommand]:
        dispatcher = self.dispatcher
        pending = self._pending
        opaque = self._next_opaque
        if opaque < _INT32_MAX and opaque not in pending:
            self._next_opaque = opaque + 1
        else:
            opaque = self._allocate_opaque()
        try:
            if dispatcher.hooks:
                request = dispatcher.before_request(self.remote_address, request)
                # after_response gets the request as sent: stamped, and kept so.
                flag = request.flag & ~(FLAG_RESPONSE | FLAG_ONEWAY)
                request = _stamped(request, opaque, flag, dispatcher.serialize_type)
                frame = encode_frame(request)
            else:
                flag = request.flag & ~(FLAG_RESPONSE | FLAG_ONEWAY)
                frame = encode_frame(request, dispatcher.serialize_type, opaque=opaque, flag=flag)
        except Exception as e:
            permit.release()
            dispatcher.calls_failed += 1
            return fail(e)

        # A Deferred, fired faster; cancelling it runs _cancel_reply (bound once).
        deferred: Reply[RemotingCommand] = Reply(self._cancel_reply, opaque)
        now = dispatcher.clock.seconds()
        deadline = now + timeout
        self._deadline_sequence = sequence = self._deadline_sequence + 1
        entry = pending[opaque] = (deadline, sequence, opaque, request, deferred, permit, timeout)
        heappush(self._deadlines, entry)
        if self._deadline_timer is None or deadline < self._deadline_at:
            self._arm_deadline_timer(deadline, now)
        dispatcher.requests_sent += 1
        try:  # the entry is registered before the write; write_frame's work, inlined
            self.activity += 1
            if self.timeOut is not None:
                self.resetTimeout()  # type: ignore[no-untyped-call]
            self.transport.write(frame)  # type: ignore[union-attr]
        except Exception as e:
            if pending.pop(opaque, None) is not None:
                permit.release()
                self._forget_deadline()
                dispatcher.calls_failed += 1
                deferred.errback(self._send_failed(request, e))
        return deferred

    def _cancel_reply(self, deferred: Deferred[RemotingCommand]) -> None:
        # The canceller of every Reply this connection hands out: forget its entry.
        assert isinstance(deferred, Reply)
        opaque = deferred.opaque
        entry = self._pending.get(opaque)
        if entry is not None and entry[4] is deferred:
            del self._pending[opaque]
            entry[5].release()
            self._forget_deadline()

    # -- deadlines of pending requests: one timer per connection -------------------------

    def _arm_deadline_timer(self, deadline: float, now: float) -> None:
        timer = self._deadline_timer
        if timer is not None and timer.active():
            timer.cancel()
        self._deadline_at = deadline
        self._deadline_timer = self.dispatcher.clock.callLater(
            max(deadline - now, 0.0), self._deadlines_due
        )

    def _clear_deadlines(self) -> None:
        timer, self._deadline_timer = self._deadline_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._deadlines.clear()

    def _forget_deadline(self) -> None:
        # An entry left the pending table early (answered, cancelled, unsendable).
        pending = self._pending
        heap = self._deadlines
        if not pending:
            heap.clear()  # the timer stays: it finds nothing due, then stops
        elif len(heap) > 2 * len(pending) + 64:  # compact: amortised O(1) per request
            heap[:] = [item for item in heap if pending.get(item[2]) is item]
            heapify(heap)

    def _deadlines_due(self) -> None:
        self._deadline_timer = None
        clock = self.dispatcher.clock
        # The timer stands for the deadline it was set for, even if float rounding
        # makes it run a hair early.
        limit = max(clock.seconds(), self._deadline_at)
        heap = self._deadlines
        pending = self._pending
        expired: list[_Pending] = []
        while heap and heap[0][0] <= limit:
            entry = heappop(heap)
            if pending.get(entry[2]) is entry:
                del pending[entry[2]]
                expired.append(entry)
        while heap and pending.get(heap[0][2]) is not heap[0]:
            heappop(heap)  # answered long ago
        if heap:
            self._arm_deadline_timer(heap[0][0], clock.seconds())
        for entry in expired:
            self._timed_out(entry)

    def _not_open(self) -> ConnectionLostError:
        state = "closing" if self.is_connected else "not connected"
        return ConnectionLostError(f"connection to {self.remote_address or 'peer'} is {state}")

    def _send_failed(self, request: RemotingCommand, error: Exception) -> SendRequestError:
        failed = SendRequestError(
            f"cannot write {code_name(request.code)} to {self.remote_address}: "
            f"{type(error).__name__}: {error}"
        )
        failed.__cause__ = error
        return failed

    def _timed_out(self, entry: _Pending) -> None:
        _, _, opaque, request, deferred, permit, timeout = entry
        permit.release()
        self.dispatcher.calls_failed += 1
        closing = self.dispatcher.close_on_timeout and not self.is_closing
        if closing:
            # Before the errback runs: a call it starts must not pick this connection.
            self.mark_closing()
        deferred.errback(
            RemotingTimeoutError(
                f"no response from {self.remote_address} to {code_name(request.code)} "
                f"(opaque {opaque}) within {timeout:g} s"
            )
        )
        if closing:
            _log.info("Closing {peer} after a request timed out", peer=self.remote_address)
            self.close()

    def _late_response(self, response: RemotingCommand) -> None:
        dispatcher = self.dispatcher
        dispatcher.late_responses += 1
        dropped = dispatcher.log_limiter.allow(("late response", self.peer_host))
        if dropped is not None:
            _log.info(
                "Dropping a response from {peer} that matches no pending request "
                "(late after a timeout or cancel?): {response} ({dropped} more such "
                "responses from this peer not logged)",
                peer=self.remote_address,
                response=clip_repr(response),
                dropped=dropped,
            )

    def _send_oneway_counted(self, permit: Permit, request: RemotingCommand) -> None:
        try:
            self._send_oneway(request, permit)
        except Exception:
            self.dispatcher.calls_failed += 1
            raise

    def _send_oneway(self, request: RemotingCommand, permit: Permit | None) -> None:
        """Write ``request`` as oneway; ``permit`` is the one waited for, or None when one
        was free and is taken only if the write leaves the buffer past high water."""
        try:
            if not self.is_connected or self.is_closing:
                raise self._not_open()
            dispatcher = self.dispatcher
            if dispatcher.hooks:
                request = dispatcher.before_request(self.remote_address, request)
            opaque = self._next_opaque
            if opaque < _INT32_MAX and opaque not in self._pending:
                self._next_opaque = opaque + 1
            else:
                opaque = self._allocate_opaque()
            frame = encode_frame(
                request,
                dispatcher.serialize_type,
                opaque=opaque,
                flag=(request.flag | FLAG_ONEWAY) & ~FLAG_RESPONSE,
            )
            if self._write_paused and self._over_unsent(len(frame)):
                raise self._not_open()
            try:  # write_frame's work, inlined
                self.activity += 1
                if self.timeOut is not None:
                    self.resetTimeout()  # type: ignore[no-untyped-call]
                self.transport.write(frame)  # type: ignore[union-attr]
            except Exception as e:
                raise self._send_failed(request, e) from e
        except BaseException:
            if permit is not None:
                permit.release()
            raise
        dispatcher.requests_sent += 1
        if self.is_writable:
            if permit is not None:
                permit.release()
            return
        # The write buffer is past its high-water mark: like Java, which frees the permit
        # when the write completes, hold one until the buffer drains.
        if permit is None:
            permit = dispatcher.oneway_permits.try_acquire()
        if permit is not None:
            self._held_permits.append(permit)
