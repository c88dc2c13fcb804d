"""The requests a connection answers: routing to a processor, limits, hooks, the response."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist._logsafe import clip, clip_repr
from rmqtwist.codec import encode_frame
from rmqtwist.codes import ResponseCode, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.dispatcher import Dispatcher, RequestContext
from rmqtwist.errors import RPCHookAbort
from rmqtwist.framing import LengthPrefixed
from rmqtwist.protocol._common import OVERLOAD_REMARK, REJECT_REMARK, _addressed

# The namespace the module had before it became a package, so log filters keep working.
_log = Logger(namespace="rmqtwist.protocol")


class _Incoming(LengthPrefixed):
    """RemotingProtocol's machinery for the requests its peer sends."""

    # Set by RemotingProtocol.__init__ (and connectionMade); declared for the type checker.
    dispatcher: Dispatcher
    remote_address: str
    peer_host: str
    is_connected: bool
    _processing: set[RequestContext]

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
        # self is a RemotingProtocol: _Incoming is only ever one of its bases.
        context = RequestContext(self, request)  # type: ignore[arg-type]
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
            dropped = dispatcher.log_limiter.allow(("cannot answer", self.peer_host))
            if dropped is not None:
                _log.failure(
                    "Cannot send the response to {request} from {peer} ({dropped} such "
                    "failures from this peer not logged)",
                    request=clip_repr(request),
                    peer=self.remote_address,
                    dropped=dropped,
                )
            frame = encode_frame(
                RemotingCommand.response_to(
                    request, ResponseCode.SYSTEM_ERROR, clip(f"{type(e).__name__}: {e}")
                )
            )
        if len(frame) > self.max_frame_length:
            error_frame = self._too_large_answer(request, response, len(frame))
            if error_frame is None:
                return
            frame = error_frame
        if not self.is_connected:
            _log.debug(
                "Dropping the response to {request}: {peer} is gone",
                request=clip_repr(request),
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
