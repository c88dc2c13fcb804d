"""The remoting connection: requests both ways over one length-prefixed stream.

A RocketMQ connection is symmetric: either side may send requests and must answer the
other's. :class:`RemotingProtocol` does both.

- Outgoing: :meth:`RemotingProtocol.invoke` registers the request in a pending table
  keyed by opaque (a per-connection counter) *before* writing it; the response pops its
  entry; a timeout or the loss of the connection fails it. Every Deferred fires once.
- Incoming: a request is routed to the processor registered for its code (else the
  default one, else REQUEST_CODE_NOT_SUPPORTED), through the RPC hooks, within the
  in-flight limits, and answered in its own serialize type; oneway requests never are.

What all connections of one server (or client) share lives in a
:class:`~rmqtwist.dispatcher.Dispatcher`: processors, hooks, listeners, budgets, limits,
the clock.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from rmqtwist._reply import Reply
from rmqtwist.budgets import Permit, Permits
from rmqtwist.codec import encode_frame
from rmqtwist.codes import FLAG_ONEWAY, FLAG_RESPONSE, ResponseCode, SerializeType, code_name
from rmqtwist.command import RemotingCommand, _from_wire
from rmqtwist.dispatcher import Dispatcher, RequestContext
from rmqtwist.errors import (
    ConnectionLostError,
    ProtocolError,
    RemotingTimeoutError,
    RPCHookAbort,
    SendRequestError,
)
from rmqtwist.framing import LengthPrefixed, format_address
from rmqtwist.interfaces import IChannel

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = [
    "OVERLOAD_REMARK",
    "REJECT_REMARK",
    "Dispatcher",
    "Permit",
    "Permits",
    "RemotingProtocol",
    "RequestContext",
]

_log = Logger()

REJECT_REMARK = "[REJECTREQUEST]system busy, start flow control for a while"
OVERLOAD_REMARK = "[OVERLOAD]system busy, start flow control for a while"
_INT32_MAX = (1 << 31) - 1
_channel_ids = itertools.count(1)


def _stamped(
    command: RemotingCommand, opaque: int, flag: int, forced: SerializeType | None
) -> RemotingCommand:
    """``command`` with ``opaque``, ``flag`` and the serialize type (``forced``, or its own).

    Like ``command.replace(...)``, but through the codec's constructor: the command's
    fields were checked when it was built, and these three are ours (3x faster).
    """
    return _from_wire(
        command.code,
        command.language,
        command.version,
        opaque,
        flag,
        command.remark,
        command.ext_fields,
        command.body,
        command.serialize_type if forced is None else forced,
    )


# ---------------------------------------------------------------------------


def _check_timeout(timeout: float) -> None:
    # A real reactor's callLater asserts delay >= 0: failing there would leak the permit.
    if not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")


def _addressed(response: RemotingCommand, request: RemotingCommand) -> RemotingCommand:
    """``response`` with the opaque and serialize type of ``request`` and flag bit 0 set."""
    if (
        response.opaque != request.opaque
        or response.flag != FLAG_RESPONSE
        or response.serialize_type != request.serialize_type
    ):
        response = response.replace(
            opaque=request.opaque,
            flag=(response.flag | FLAG_RESPONSE) & ~FLAG_ONEWAY,
            serialize_type=request.serialize_type,
        )
    return response


#: A request of ours waiting for its response, as one tuple (a class costs more per
#: request): ``(deadline, sequence, opaque, request, deferred, permit, timeout)``.
#: It is both the pending table's value and the deadline heap's item: the heap orders
#: by ``(deadline, sequence)``, and the unique sequence keeps it from comparing further.
#: ``request`` is the request as given (stamped with opaque and flag only when RPC
#: hooks need to see it so); ``permit`` is a :class:`Permit`, or the budget itself when
#: taken with :meth:`Permits.take`.
_Pending = tuple[
    float, int, int, RemotingCommand, Deferred[RemotingCommand], "Permit | Permits", float
]


@implementer(IChannel, IPushProducer)
class RemotingProtocol(LengthPrefixed, TimeoutMixin):
    """A remoting connection that sends and answers requests (see the module doc).

    Set ``dispatcher`` before the connection is made (factories do).
    """

    dispatcher: Dispatcher

    def __init__(self) -> None:
        self.channel_id = f"ch{next(_channel_ids)}"
        self.remote_address = ""
        self.local_address = ""
        self.is_connected = False
        self.is_writable = False
        #: True once close() or abort() was called: nothing new should be sent.
        self.is_closing = False
        #: Bumped by every read and write: a pool's idle sweep compares it between sweeps.
        self.activity = 0
        self._pending: dict[int, _Pending] = {}
        # Deadlines of pending requests: a heap of the pending entries and one timer for
        # the earliest. An answered entry stays in the heap until it is popped or the
        # heap is compacted (cheaper than a timer per request). The timer outlives the
        # last answer: it runs once at its time and finds nothing due, which costs less
        # than cancelling it and setting a new one for the next request.
        self._deadlines: list[_Pending] = []
        self._deadline_sequence = 0
        self._deadline_timer: IDelayedCall | None = None
        self._deadline_at = 0.0
        self._writable_waiters: list[Deferred[None]] = []
        # calls of ours still waiting for a permit, failed at once if the connection goes
        self._waiting: dict[Deferred[Permit], Permits] = {}
        self._processing: set[RequestContext] = set()
        self._next_opaque = 1
        self._cancel_reply = self._cancel_reply  # type: ignore[method-assign]  # bound once
        self._paused_reading = False
        self._held_permits: list[Permit] = []

    # -- connection lifecycle ---------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        dispatcher = self.dispatcher
        transport = self.transport
        assert transport is not None
        self.remote_address = format_address(transport.getPeer())
        self.local_address = format_address(transport.getHost())
        self.is_connected = True
        self.is_writable = True
        self.callLater = dispatcher.clock.callLater  # type: ignore[method-assign,assignment]
        self.setTimeout(dispatcher.idle_timeout)  # type: ignore[no-untyped-call]
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError):  # e.g. a UNIX socket: no Nagle to turn off
                set_no_delay(True)
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = dispatcher.write_high_water
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        dispatcher.connections.add(self)
        dispatcher.connections_made += 1
        dispatcher.notify("on_connect", self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.is_connected = False
        self.is_writable = False
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        super().connectionLost(reason)
        dispatcher = self.dispatcher
        dispatcher.connections.discard(self)
        dispatcher.connections_closed += 1
        why = reason.getErrorMessage() if reason is not None else "connection closed"
        self._release_held_permits()
        self._fail_calls(
            lambda what: ConnectionLostError(
                f"connection to {self.remote_address} lost {what}: {why}"
            )
        )
        processing, self._processing = self._processing, set()
        for context in processing:  # their answers have nowhere to go now
            context._done = True
            dispatcher.in_flight -= 1
        dispatcher.notify("on_close", self)

    def _fail_calls(self, error: Callable[[str], Exception]) -> None:
        # Fail every call of ours on this connection; ``error(what)`` builds each error.
        writable_waiters, self._writable_waiters = self._writable_waiters, []
        for writable in writable_waiters:
            writable.errback(error("while waiting for the write buffer to drain"))
        # Permit waiters first, so that the permits released below go to other connections.
        waiting, self._waiting = self._waiting, {}
        for waiter, permits in waiting.items():
            permits._withdraw(waiter, error(f"while waiting for a {permits.name} permit"))
        pending, self._pending = self._pending, {}
        self._clear_deadlines()
        self.dispatcher.calls_failed += len(pending)
        for _, _, opaque, request, deferred, permit, _ in pending.values():
            permit.release()
            deferred.errback(
                error(f"before the response to {code_name(request.code)} (opaque {opaque})")
            )

    def fail_calls(self, error: Callable[[str], Exception]) -> None:
        """Fail at once every call of ours still waiting on this connection.

        Pending requests, calls waiting for a permit and :meth:`when_writable` waiters
        each fail with ``error(what)``, where ``what`` says what the call was waiting
        for (``"before the response to SEND_MESSAGE (opaque 7)"``). Their permits are
        released. The connection itself stays open: a client closing after its drain
        deadline uses this to fail the rest with its own error before closing.
        """
        self._fail_calls(error)

    def in_flight_calls(self) -> list[Deferred[Any]]:
        """The Deferreds of the calls of ours that have not finished on this connection."""
        calls: list[Deferred[Any]] = [entry[4] for entry in self._pending.values()]
        calls.extend(self._waiting)
        calls.extend(self._writable_waiters)
        return calls

    def when_writable(self) -> Deferred[None]:
        """A Deferred that fires once the write buffer is below its high-water mark.

        It fires at once if it already is, and fails with ConnectionLostError if the
        connection closes first. Cancelling it forgets the wait.
        """
        if self.is_writable:
            return succeed(None)
        if not self.is_connected or self.is_closing:
            return fail(ConnectionLostError(f"connection to {self.remote_address} is closed"))
        waiter: Deferred[None] = Deferred(lambda d: self._writable_waiters.remove(d))
        self._writable_waiters.append(waiter)
        return waiter

    def timeoutConnection(self) -> None:
        """Idle for the idle timeout: raise the IDLE event, then abort the connection.

        Abort rather than a graceful close: an idle connection has nothing in flight
        worth waiting for, and when it is idle because the peer stopped reading, a
        graceful close would wait for a write buffer that never drains."""
        _log.info(
            "Closing {peer}: idle for {seconds} s", peer=self.remote_address, seconds=self.timeOut
        )
        self.dispatcher.notify("on_idle", self)
        self.abort()

    def protocol_error(self, error: ProtocolError) -> None:
        self.dispatcher.notify("on_exception", self, error)
        super().protocol_error(error)

    def mark_closing(self) -> None:
        """No new call may start on this connection (a pool drops it; see the client)."""
        self.is_closing = True
        self.is_writable = False

    def close(self) -> None:
        """Close after what is already written has been sent."""
        self.mark_closing()
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Close at once, dropping anything not yet written."""
        self.mark_closing()
        super().abort()

    # -- flow control (IPushProducer: the transport tells us its write buffer is full) --

    def pauseProducing(self) -> None:
        """Our write buffer passed the high-water mark: stop reading from this peer."""
        self.is_writable = False
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """The write buffer drained: read again, and free the oneway permits held."""
        self.is_writable = self.is_connected and not self.is_closing
        self._release_held_permits()
        if self.is_writable and self._writable_waiters:
            waiters, self._writable_waiters = self._writable_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _release_held_permits(self) -> None:
        held, self._held_permits = self._held_permits, []
        for permit in held:
            permit.release()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the clean-up."""

    # -- bytes in and out -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.activity += 1
        if self.timeOut is not None:
            self.resetTimeout()  # type: ignore[no-untyped-call]
        super().dataReceived(data)

    def write_frame(self, frame: bytes) -> None:
        """Write one frame; every write (``send_command`` too) resets the idle timer."""
        self.activity += 1
        if self.timeOut is not None:
            self.resetTimeout()  # type: ignore[no-untyped-call]
        transport = self.transport
        assert transport is not None
        transport.write(frame)

    def command_received(self, command: RemotingCommand) -> None:
        if not command.flag & FLAG_RESPONSE:
            self._request_received(command)
            return
        # A response to a request of ours, handled here rather than in a method of its
        # own: this runs once per response, and a call less is a client's CPU saved.
        pending = self._pending
        entry = pending.pop(command.opaque, None)
        if entry is None:
            self._late_response(command)
            return
        entry[5].release()
        if not pending or len(self._deadlines) > 2 * len(pending) + 64:
            self._forget_deadline()  # the heap emptied, or a compaction is due
        dispatcher = self.dispatcher
        if dispatcher.hooks:
            try:
                command = dispatcher.after_response(self.remote_address, entry[3], command)
            except Exception as e:
                dispatcher.calls_failed += 1
                entry[4].errback(e)
                return
        entry[4].callback(command)

    # -- requests we send -------------------------------------------------------------

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

    def invoke(self, request: RemotingCommand, timeout: float = 3.0) -> Deferred[RemotingCommand]:
        """Send ``request`` to the peer and return a Deferred of its response.

        The Deferred fails with :class:`~rmqtwist.errors.RemotingTimeoutError` after
        ``timeout`` seconds, :class:`~rmqtwist.errors.ConnectionLostError` if the
        connection closes first, :class:`~rmqtwist.errors.TooManyRequestsError` if no
        async permit comes free in time, :class:`~rmqtwist.errors.RPCHookAbort` if a hook
        refuses it, :class:`~rmqtwist.errors.EncodeError` if it cannot be encoded.
        Cancelling it forgets the request (a late response is then dropped).
        Raises ValueError at once for a negative ``timeout``.
        """
        if not timeout >= 0:
            _check_timeout(timeout)
        if not self.is_connected or self.is_closing:
            self.dispatcher.calls_failed += 1
            return fail(self._not_open())
        permits = self.dispatcher.async_permits
        if permits.take():  # released once, when the entry leaves the pending table
            return self._send_request(request, timeout, permits)
        started = self.dispatcher.clock.seconds()
        waiting = self._wait_for_permit(self.dispatcher.async_permits, timeout)

        def got_permit(permit: Permit) -> Deferred[RemotingCommand]:
            left = timeout - (self.dispatcher.clock.seconds() - started)
            if not self.is_connected or self.is_closing:
                permit.release()
                self.dispatcher.calls_failed += 1
                return fail(self._not_open())
            return self._send_request(request, max(left, 0.0), permit)

        return waiting.addCallback(got_permit)

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
        self.dispatcher.late_responses += 1
        _log.info(
            "Dropping a response from {peer} that matches no pending request "
            "(late after a timeout or cancel?): {response!r}",
            peer=self.remote_address,
            response=response,
        )

    def invoke_oneway(self, request: RemotingCommand, timeout: float = 3.0) -> Deferred[None]:
        """Send ``request`` with the oneway flag; fires with None once it is written.

        Waits up to ``timeout`` for a oneway permit (TooManyRequestsError after that).
        Raises ValueError at once for a negative ``timeout``.
        """
        if not timeout >= 0:
            _check_timeout(timeout)
        if not self.is_connected or self.is_closing:
            self.dispatcher.calls_failed += 1
            return fail(self._not_open())
        permits = self.dispatcher.oneway_permits
        if permits.in_use < permits.limit and not permits._waiters:
            # A permit is free: the write is synchronous, so one is only taken if it
            # has to be held past the write (see _send_oneway).
            try:
                self._send_oneway(request, None)
            except Exception as e:
                self.dispatcher.calls_failed += 1
                return fail(e)
            return succeed(None)
        return self._wait_for_permit(permits, timeout).addCallback(
            self._send_oneway_counted, request
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

    # -- requests we answer -----------------------------------------------------------

    def _request_received(self, request: RemotingCommand) -> None:
        dispatcher = self.dispatcher
        dispatcher.requests_received += 1
        registration = dispatcher.processor_for(request.code)
        if registration is None:
            dispatcher.requests_unsupported += 1
            self._answer_now(
                request,
                ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                f" request type {request.code} not supported",
            )
            return
        processor = registration.processor
        reject = getattr(processor, "reject_request", None)
        try:
            rejected = bool(reject()) if reject is not None else False
        except Exception:
            _log.failure("reject_request() raised; treating it as False")
            rejected = False
        if rejected:
            dispatcher.requests_rejected += 1
            self._answer_now(request, ResponseCode.SYSTEM_BUSY, REJECT_REMARK)
            return
        if (
            dispatcher.in_flight >= dispatcher.max_in_flight
            or len(self._processing) >= dispatcher.max_in_flight_per_connection
        ):
            dispatcher.requests_overloaded += 1
            self._answer_now(request, ResponseCode.SYSTEM_BUSY, OVERLOAD_REMARK)
            return
        context = RequestContext(self, request)
        self._processing.add(context)
        dispatcher.in_flight += 1
        if dispatcher.hooks:
            try:
                request = context.request = dispatcher.before_request(self.remote_address, request)
            except RPCHookAbort as abort:
                context.respond(RemotingCommand.response_to(request, abort.code, abort.remark))
                return
            except Exception:
                context._fail(Failure())  # type: ignore[no-untyped-call]
                return
        if registration.blocking:
            dispatcher.run_blocking(processor, context, request).addCallbacks(
                context._complete, context._fail
            )
            return
        try:
            result = processor.process_request(context, request)
        except Exception:
            context._fail(Failure())  # type: ignore[no-untyped-call]
            return
        # Deferred is an ABC: isinstance() is a Python-level call, skipped for the
        # usual results.
        if (
            result is not None
            and type(result) is not RemotingCommand
            and isinstance(result, Deferred)
        ):
            result.addCallbacks(context._complete, context._fail)
        else:
            context._complete(result)

    def _answer_now(self, request: RemotingCommand, code: int, remark: str) -> None:
        if not request.is_oneway:
            self._send_response(request, RemotingCommand.response_to(request, code, remark))

    def _request_done(self, context: RequestContext) -> None:
        if context in self._processing:
            self._processing.discard(context)
            self.dispatcher.in_flight -= 1

    def _send_response(
        self,
        request: RemotingCommand,
        response: RemotingCommand,
        processed: RemotingCommand | None = None,
    ) -> None:
        """Answer ``request`` (as received: its opaque, oneway bit and serialize type
        decide) with ``response``; the after-hooks see ``processed``, the request as the
        before-hooks left it (default ``request``)."""
        if request.is_oneway:
            return  # a oneway request gets no reply of any kind
        response = _addressed(response, request)
        dispatcher = self.dispatcher
        try:
            if dispatcher.hooks:
                response = dispatcher.after_response(
                    self.remote_address, request if processed is None else processed, response
                )
                response = _addressed(response, request)  # a hook may have built a new one
            frame = encode_frame(response)
        except Exception as e:
            _log.failure("Cannot send the response to {request!r}", request=request)
            frame = encode_frame(
                RemotingCommand.response_to(
                    request, ResponseCode.SYSTEM_ERROR, f"{type(e).__name__}: {e}"
                )
            )
        if len(frame) > self.max_frame_length:
            error_frame = self._too_large_answer(request, response, len(frame))
            if error_frame is None:
                return
            frame = error_frame
        if not self.is_connected:
            _log.debug(
                "Dropping the response to {request!r}: {peer} is gone",
                request=request,
                peer=self.remote_address,
            )
            return
        dispatcher.responses_sent += 1
        self.write_frame(frame)

    def _too_large_answer(
        self, request: RemotingCommand, response: RemotingCommand, size: int
    ) -> bytes | None:
        """The SYSTEM_ERROR frame sent instead of an answer over the frame limit (a peer
        with the same limit, Java's default included, would refuse it), or None when even
        that does not fit."""
        limit = self.max_frame_length
        _log.warn(
            "The answer to {request_code} from {peer} (code {response_code}) is {size} bytes, "
            "over the frame limit {limit}: answering SYSTEM_ERROR instead",
            request_code=code_name(request.code),
            response_code=response.code,
            size=size,
            limit=limit,
            peer=self.remote_address,
        )
        frame = encode_frame(
            RemotingCommand.response_to(
                request,
                ResponseCode.SYSTEM_ERROR,
                f"the answer was {size} bytes, over the frame limit {limit}",
            )
        )
        return frame if len(frame) <= limit else None

    # -- introspection ----------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Requests sent on this connection still waiting for their response."""
        return len(self._pending)

    @property
    def processing_count(self) -> int:
        """Requests from the peer still being processed."""
        return len(self._processing)

    def __repr__(self) -> str:
        return (
            f"<RemotingProtocol {self.channel_id} {self.local_address} <-> "
            f"{self.remote_address} pending={len(self._pending)} "
            f"processing={len(self._processing)}>"
        )
