"""RemotingProtocol: the connection's lifecycle, flow control, bytes in and out, the two
calls and introspection."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from rmqtwist._logsafe import clip
from rmqtwist.budgets import Permit, Permits
from rmqtwist.codes import FLAG_RESPONSE, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.dispatcher import Dispatcher, RequestContext
from rmqtwist.errors import (
    ConnectionLostError,
    ProtocolError,
)
from rmqtwist.framing import LengthPrefixed, format_address
from rmqtwist.interfaces import IChannel
from rmqtwist.protocol._common import _check_timeout, _Pending
from rmqtwist.protocol._incoming import _Incoming
from rmqtwist.protocol._outgoing import _Outgoing

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall


# The namespace the module had before it became a package, so log filters keep working.
_log = Logger(namespace="rmqtwist.protocol")

_channel_ids = itertools.count(1)


@implementer(IChannel, IPushProducer)
class RemotingProtocol(_Outgoing, _Incoming, LengthPrefixed, TimeoutMixin):
    """A remoting connection that sends and answers requests (see the module doc).

    Set ``dispatcher`` before the connection is made (factories do).
    """

    dispatcher: Dispatcher

    #: Seconds a frame may take to arrive whole once its first byte has (None: no limit).
    frame_timeout: float | None = None
    #: Seconds after connecting by which the peer must have sent one whole frame.
    first_frame_timeout: float | None = None
    #: Most bytes written while the write buffer is past its high-water mark; past it the
    #: connection is aborted (None: no limit). The factory sets these three.
    max_unsent_bytes: int | None = None
    #: Most requests handled from one read (or one drain) before the other connections
    #: get their turn: the rest waits for the next reactor turn (None: no limit).
    max_commands_per_turn: int | None = None

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
        self.peer_host = ""
        # flow control: paused by the transport, and bytes written since
        self._write_paused = False
        self._unsent = 0
        # the deadline of the frame being received (or of the first frame)
        self._frame_timer: IDelayedCall | None = None
        self._got_frames = False
        # The invalid frame that made us close the connection, named to callers.
        self._dropped_for: ProtocolError | None = None
        # fairness: requests handled in this turn, and whether we gave the turn away
        self._turn = 0
        self._yielding = False
        self._turn_call: IDelayedCall | None = None

    # -- connection lifecycle ---------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        dispatcher = self.dispatcher
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        self.remote_address = format_address(peer)
        self.peer_host = str(getattr(peer, "host", self.remote_address))
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
        if self.first_frame_timeout is not None:
            self._frame_timer = dispatcher.clock.callLater(
                self.first_frame_timeout, self._frame_timed_out, True
            )
        dispatcher.connections.add(self)
        dispatcher.connections_made += 1
        dispatcher.notify("on_connect", self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.is_connected = False
        self.is_writable = False
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        self._cancel_frame_timer()
        turn_call, self._turn_call = self._turn_call, None
        if turn_call is not None and turn_call.active():
            turn_call.cancel()
        super().connectionLost(reason)
        dispatcher = self.dispatcher
        dispatcher.connections.discard(self)
        dispatcher.connections_closed += 1
        why = reason.getErrorMessage() if reason is not None else "connection closed"
        dropped_for = self._dropped_for
        if dropped_for is not None:
            why = (
                "we closed it because the peer sent an invalid frame: "
                f"{type(dropped_for).__name__}: {clip(str(dropped_for))}"
            )

        def lost(what: str) -> Exception:
            error = ConnectionLostError(f"connection to {self.remote_address} lost {what}: {why}")
            error.__cause__ = dropped_for
            return error

        self._release_held_permits()
        self._fail_calls(lost)
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
        """Log why (at most once per peer every 10 s, with a count), abort; calls still
        waiting for an answer fail with a ConnectionLostError naming the error."""
        self._dropped_for = error
        self.dispatcher.notify("on_exception", self, error)
        dropped = self.dispatcher.log_limiter.allow(("invalid frame", self.peer_host))
        if dropped is not None:
            _log.warn(
                "{peer} sent an invalid frame, closing the connection: {error_type}: {error} "
                "({dropped} more invalid frames from this peer not logged)",
                peer=self.remote_address,
                error_type=type(error).__name__,
                error=clip(str(error)),
                dropped=dropped,
            )
        self.abort()

    # -- frame deadlines (slow peers must not hold connection slots) ------------------

    def frames_received(self, count: int) -> None:
        self._got_frames = True
        limit = self.max_commands_per_turn
        if limit is not None:
            self._turn += count
            if self._turn > limit and not self._yielding:
                self._yield_turn()

    def _cancel_frame_timer(self) -> None:
        timer, self._frame_timer = self._frame_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check_frame_deadline(self) -> None:
        """After a read: a frame completed stops its deadline (and the first frame's);
        a frame begun starts one (not while reading is paused: the peer could not send
        the rest)."""
        if self._got_frames:
            self._got_frames = False
            self._cancel_frame_timer()
        if (
            self._frame_timer is None
            and self.frame_timeout is not None
            and self.is_connected
            and not self._write_paused
        ):
            decoder = self._decoder
            if decoder is not None and decoder.buffered:
                self._frame_timer = self.dispatcher.clock.callLater(
                    self.frame_timeout, self._frame_timed_out
                )

    def _frame_timed_out(self, first: bool = False) -> None:
        """The frame begun (or, ``first``, the first frame) did not arrive in time."""
        self._frame_timer = None
        if not self.is_connected:
            return
        decoder = self._decoder
        buffered = decoder.buffered if decoder is not None else 0
        dropped = self.dispatcher.log_limiter.allow(("frame timeout", self.peer_host))
        if dropped is not None:
            if first and not buffered:
                what = "sent nothing within {seconds} s of connecting"
            elif first:
                what = "sent no whole frame within {seconds} s of connecting ({buffered} bytes)"
            else:
                what = (
                    "began a frame that did not arrive whole within {seconds} s ({buffered} bytes)"
                )
            _log.info(
                "Closing {peer}: it " + what + " ({dropped} more such closes not logged)",
                peer=self.remote_address,
                seconds=self.first_frame_timeout if first else self.frame_timeout,
                buffered=buffered,
                dropped=dropped,
            )
        self.abort()

    def _over_unsent(self, size: int) -> bool:
        """Count ``size`` bytes written while the write buffer is full; past
        ``max_unsent_bytes``, log and abort (True: do not write them)."""
        self._unsent += size
        limit = self.max_unsent_bytes
        if limit is None or self._unsent <= limit:
            return False
        dropped = self.dispatcher.log_limiter.allow(("unsent", self.peer_host))
        if dropped is not None:
            _log.warn(
                "Closing {peer}: it does not read what is sent to it ({unsent} bytes written "
                "since its write buffer filled up, over the limit of {limit}) ({dropped} more "
                "such closes not logged)",
                peer=self.remote_address,
                unsent=self._unsent,
                limit=limit,
                dropped=dropped,
            )
        self.abort()
        return True

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
        """Our write buffer passed the high-water mark: stop reading from this peer, and
        stop handling what was already read (the rest waits, in order)."""
        self.is_writable = False
        self._write_paused = True
        self.hold_commands()
        if self._frame_timer is not None and self.frame_timeout is not None:
            self._cancel_frame_timer()  # we stop reading: the frame cannot arrive now
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """The write buffer drained: handle what was held, read again, and free the
        oneway permits held."""
        self.is_writable = self.is_connected and not self.is_closing
        self._write_paused = False
        self._unsent = 0
        self._release_held_permits()
        if self.is_writable and self._writable_waiters:
            waiters, self._writable_waiters = self._writable_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self._turn = 0
        if not self._yielding:  # else the end of the turn does this
            self._resume_input()

    def _resume_input(self) -> None:
        """Handle what was held, then read again, unless that fills the write buffer
        or uses up the turn again."""
        self.release_commands()
        if self._write_paused or self._yielding:
            return
        if self.is_connected and (self._got_frames or self.frame_timeout is not None):
            self._check_frame_deadline()
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    # -- fairness: a turn of at most max_commands_per_turn requests, then the others' --

    def _yield_turn(self) -> None:
        """This connection has had its share of this reactor turn: hold the rest of
        what it sent, stop reading it, and carry on in the next turn."""
        self._yielding = True
        self.hold_commands()
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._turn_call = self.dispatcher.clock.callLater(0, self._end_turn)

    def _end_turn(self) -> None:
        self._turn_call = None
        self._yielding = False
        self._turn = 0
        if self.is_connected and not self._write_paused:  # else resumeProducing does it
            self._resume_input()

    def _release_held_permits(self) -> None:
        held, self._held_permits = self._held_permits, []
        for permit in held:
            permit.release()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the clean-up."""

    # -- bytes in and out -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._turn = 0
        self.activity += 1
        if self.timeOut is not None:
            self.resetTimeout()  # type: ignore[no-untyped-call]
        super().dataReceived(data)
        if self._got_frames or self.frame_timeout is not None:
            self._check_frame_deadline()

    def write_frame(self, frame: bytes) -> None:
        """Write one frame; every write (``send_command`` too) resets the idle timer."""
        if self._write_paused and self._over_unsent(len(frame)):
            return
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
