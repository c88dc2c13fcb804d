"""What all connections of one server (or client) share, and one request being processed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from rmqtwist._logsafe import LogLimiter, clip, clip_repr
from rmqtwist.budgets import Permits
from rmqtwist.codes import ResponseCode, SerializeType, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.interfaces import (
    IChannelEventListener,
    IRequestContext,
    IRequestProcessor,
    IRPCHook,
)

if TYPE_CHECKING:
    from rmqtwist.protocol import RemotingProtocol

__all__ = ["Dispatcher", "Registrar", "RequestContext"]

_log = Logger()


class _Registration:
    __slots__ = ("blocking", "processor")

    def __init__(self, processor: IRequestProcessor, blocking: bool) -> None:
        self.processor = processor
        self.blocking = blocking


class Dispatcher:
    """What all connections of one server (or one client) share.

    - processors by request code, and a default one (:meth:`register_processor`,
      :meth:`register_default_processor`); a processor with ``blocking = True`` (or
      registered with ``blocking=True``) runs in a bounded thread pool, never on the
      reactor thread;
    - RPC hooks and channel-event listeners, run in registration order;
    - budgets for requests this side sends (``oneway_permits``, ``async_permits``) and
      limits on requests being processed (``max_in_flight`` for all connections,
      ``max_in_flight_per_connection``), past which requests are answered
      SYSTEM_BUSY ``[OVERLOAD]`` at once;
    - the idle timeout, write high-water mark, the serialize type forced on requests it
      sends (None: each request's own), whether a request timeout closes the
      connection, and the clock.
    """

    def __init__(
        self,
        reactor: Any = None,
        *,
        idle_timeout: float | None = 120.0,
        oneway_permits: int = 256,
        async_permits: int = 64,
        max_in_flight: int = 10_000,
        max_in_flight_per_connection: int = 1_000,
        blocking_threads: int = 16,
        write_high_water: int = 64 * 1024,
        serialize_type: SerializeType | None = None,
        close_on_timeout: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.idle_timeout = idle_timeout
        self.oneway_permits = Permits(oneway_permits, "oneway", reactor)
        self.async_permits = Permits(async_permits, "async", reactor)
        if max_in_flight < 1 or max_in_flight_per_connection < 1:
            raise ValueError("in-flight limits must be at least 1")
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_connection = max_in_flight_per_connection
        self.blocking_threads = blocking_threads
        self.write_high_water = write_high_water
        self.serialize_type = serialize_type
        self.close_on_timeout = close_on_timeout
        self.in_flight = 0
        self._processors: dict[int, _Registration] = {}
        self._default: _Registration | None = None
        self.hooks: list[IRPCHook] = []
        self.listeners: list[IChannelEventListener] = []
        #: The open connections (added in connectionMade, removed in connectionLost).
        self.connections: set[RemotingProtocol] = set()
        self._pool: ThreadPool | None = None
        # Counters, read by stats processors and tests.
        self.connections_made = 0
        self.connections_closed = 0
        self.requests_received = 0
        self.responses_sent = 0
        self.requests_rejected = 0
        self.requests_overloaded = 0
        self.requests_unsupported = 0
        self.processor_errors = 0
        self.requests_sent = 0
        #: Calls of ours that failed (timed out, lost, refused by a hook...; not cancelled).
        self.calls_failed = 0
        self.late_responses = 0
        #: Repeated per-peer log lines (late responses, invalid frames, processor
        #: failures...) go through this: at most one per peer and event every 10 s.
        self.log_limiter = LogLimiter(reactor)

    # -- registration -----------------------------------------------------------------

    def register_processor(
        self, code: int, processor: IRequestProcessor, blocking: bool | None = None
    ) -> None:
        """Route requests with ``code`` to ``processor`` (replacing any earlier one)."""
        self._processors[int(code)] = _Registration(
            IRequestProcessor(processor), _is_blocking(processor, blocking)
        )

    def register_default_processor(
        self, processor: IRequestProcessor, blocking: bool | None = None
    ) -> None:
        """Route requests no other processor is registered for to ``processor``."""
        self._default = _Registration(
            IRequestProcessor(processor), _is_blocking(processor, blocking)
        )

    def register_rpc_hook(self, hook: IRPCHook) -> None:
        """Run ``hook`` around every request (after those registered before it)."""
        self.hooks.append(IRPCHook(hook))

    def register_listener(self, listener: IChannelEventListener) -> None:
        """Tell ``listener`` about every connection's events."""
        self.listeners.append(IChannelEventListener(listener))

    def processor_for(self, code: int) -> _Registration | None:
        """The registration that handles ``code``, or None."""
        return self._processors.get(code, self._default)

    @property
    def processor_codes(self) -> list[int]:
        """The codes with a processor of their own."""
        return sorted(self._processors)

    # -- events -----------------------------------------------------------------------

    def notify(self, event: str, channel: RemotingProtocol, *args: object) -> None:
        """Call ``event`` (on_connect, ...) on every listener; log what they raise."""
        for listener in self.listeners:
            try:
                getattr(listener, event)(channel.remote_address, channel, *args)
            except Exception:
                _log.failure(
                    "Channel event listener {listener!r} raised in {event}",
                    listener=listener,
                    event=event,
                )

    # -- hooks ------------------------------------------------------------------------

    def before_request(self, remote: str, request: RemotingCommand) -> RemotingCommand:
        """Run every hook's before step; raises what a hook raises (RPCHookAbort...)."""
        for hook in self.hooks:
            replaced = hook.before_request(remote, request)
            if replaced is not None:
                request = replaced
        return request

    def after_response(
        self, remote: str, request: RemotingCommand, response: RemotingCommand
    ) -> RemotingCommand:
        """Run every hook's after step."""
        for hook in self.hooks:
            replaced = hook.after_response(remote, request, response)
            if replaced is not None:
                response = replaced
        return response

    # -- blocking processors ----------------------------------------------------------

    def run_blocking(
        self, processor: IRequestProcessor, context: RequestContext, request: RemotingCommand
    ) -> Deferred[Any]:
        """Run ``processor`` in the dispatcher's thread pool (started on first use)."""
        if self._pool is None:
            self._pool = ThreadPool(0, self.blocking_threads, name="rmqtwist-processors")
            self._pool.start()
        reactor: IReactorThreads = self.reactor
        return deferToThreadPool(reactor, self._pool, processor.process_request, context, request)

    def stop(self) -> None:
        """Stop the thread pool of blocking processors, if one was started."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()


class Registrar:
    """Registration on an object that has a :class:`Dispatcher` (servers and clients)."""

    dispatcher: Dispatcher

    def register_processor(
        self, code: int, processor: IRequestProcessor, blocking: bool | None = None
    ) -> None:
        """Answer requests with ``code`` with ``processor`` (``blocking``: in a thread)."""
        self.dispatcher.register_processor(code, processor, blocking)

    def register_default_processor(
        self, processor: IRequestProcessor, blocking: bool | None = None
    ) -> None:
        """Answer requests that no code-specific processor takes with ``processor``."""
        self.dispatcher.register_default_processor(processor, blocking)

    def register_rpc_hook(self, hook: IRPCHook) -> None:
        """Run ``hook`` around every request sent and received, on every connection."""
        self.dispatcher.register_rpc_hook(hook)

    def register_listener(self, listener: IChannelEventListener) -> None:
        """Tell ``listener`` about connects, closes, errors and idle timeouts."""
        self.dispatcher.register_listener(listener)


def _is_blocking(processor: object, blocking: bool | None) -> bool:
    return bool(getattr(processor, "blocking", False)) if blocking is None else blocking


# ---------------------------------------------------------------------------
# Processing one incoming request
# ---------------------------------------------------------------------------


@implementer(IRequestContext)
class RequestContext:
    """One incoming request being processed: what its processor is given."""

    __slots__ = ("_done", "_received", "channel", "request", "responded")

    def __init__(self, channel: RemotingProtocol, request: RemotingCommand) -> None:
        self.channel = channel
        self.request = request  # replaced by what the RPC hooks' before step returns
        self._received = request  # as it came: its opaque, oneway bit, serialize type
        self.responded = False
        self._done = False  # the in-flight slot has been given back

    def respond(self, response: RemotingCommand) -> None:
        """Send ``response`` to this request (see :class:`IRequestContext`)."""
        if self.responded:
            raise RuntimeError(f"{self.request!r} was already answered")
        self.responded = True
        self._finish()
        self.channel._send_response(self._received, response, self.request)

    def _fail(self, failure: Failure) -> None:
        if self.responded:
            _log.failure("Processor failed after responding", failure)
            return
        channel = self.channel
        channel.dispatcher.processor_errors += 1
        dropped = channel.dispatcher.log_limiter.allow(("processor failed", channel.peer_host))
        if dropped is not None:
            _log.failure(
                "Processor for {code} from {peer} failed; answering SYSTEM_ERROR "
                "({dropped} such failures from this peer not logged)",
                failure,
                code=code_name(self.request.code),
                peer=channel.remote_address,
                dropped=dropped,
            )
        error = failure.value
        self.respond(
            RemotingCommand.response_to(
                self.request, ResponseCode.SYSTEM_ERROR, clip(f"{type(error).__name__}: {error}")
            )
        )

    def _complete(self, result: object) -> None:
        if result is None:
            if self._received.is_oneway:
                self._finish()  # nothing to wait for; a later respond() is dropped
            return  # the processor answers later through respond()
        if self.responded:
            _log.error(
                "Processor for {code} from {peer} returned {result} but had already "
                "answered through respond(); dropping it",
                code=code_name(self.request.code),
                peer=self.channel.remote_address,
                result=clip_repr(result),
            )
            return
        if not isinstance(result, RemotingCommand):
            self._fail(
                Failure(TypeError(f"processor returned {type(result).__name__}, not a command"))  # type: ignore[no-untyped-call]
            )
            return
        self.respond(result)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self.channel._request_done(self)
