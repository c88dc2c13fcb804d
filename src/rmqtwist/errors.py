"""The exceptions rmqtwist raises.

``RemotingError`` is the root. ``ProtocolError`` and its subclasses mean the *peer* sent
bytes that are not a valid frame: the only safe reaction is to close that connection.
``MalformedMessage`` is the one for a frame *body* that should hold stored messages or a
batch and does not.
``EncodeError`` means a command of ours cannot be put on the wire as asked, and
``HeaderError`` that ext_fields do not make the typed custom header asked for.
``RemotingCallError`` and its subclasses say why a request we sent got no response;
``RPCHookAbort`` is how an RPC hook refuses a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rmqtwist.command import RemotingCommand

__all__ = [
    "BodyError",
    "CircuitOpenError",
    "ClientClosedError",
    "ConnectBackoffError",
    "ConnectError",
    "ConnectionLimitError",
    "ConnectionLostError",
    "EncodeError",
    "FrameTooLarge",
    "HeaderError",
    "MalformedFrame",
    "MalformedMessage",
    "NoNameServerError",
    "ProtocolError",
    "RPCHookAbort",
    "RemotingCallError",
    "RemotingError",
    "RemotingTimeoutError",
    "SendRequestError",
    "TooManyRequestsError",
    "WrongProtocol",
]


class RemotingError(Exception):
    """Root of every error rmqtwist raises on purpose."""


class ProtocolError(RemotingError):
    """The peer sent something that is not a valid remoting frame; close the connection.

    ``decoded`` holds the commands that a :class:`~rmqtwist.codec.FrameDecoder` decoded
    from the same ``feed()`` call before it met the bad frame, so that nothing sent before
    the error is lost.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.decoded: list[RemotingCommand] = []


class FrameTooLarge(ProtocolError):
    """A frame's length prefix announces more than the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"frame of {size} bytes (length prefix included) exceeds the limit of {limit} bytes"
        )
        self.size = size
        self.limit = limit


class MalformedFrame(ProtocolError):
    """A frame whose lengths disagree, or whose header cannot be decoded."""


class HeaderTooLarge(MalformedFrame):
    """A frame's header is longer than the header limit, or holds more ext_fields than the
    ext-field limit: refused before (or while) the header is parsed, so that one frame
    cannot hold the reactor for seconds. ``size`` and ``limit`` are bytes, or fields."""

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class MalformedMessage(ProtocolError):
    """Stored-message records (a pull body) or a batch body whose lengths lie, whose magic
    code is unknown or that is cut short; or a body compressed in a way we cannot inflate.
    The message says which field, and at which byte."""


class WrongProtocol(ProtocolError):
    """The connection's first bytes belong to another protocol (HTTP, HTTP/2, TLS, SSH,
    a PROXY protocol header, Redis RESP, AMQP)."""

    def __init__(self, protocol: str, first_bytes: bytes) -> None:
        super().__init__(
            f"the peer speaks {protocol}, not the RocketMQ remoting protocol "
            f"(first bytes {first_bytes!r})"
        )
        self.protocol = protocol
        self.first_bytes = first_bytes


class EncodeError(RemotingError, ValueError):
    """A command cannot be encoded as asked (a value out of range for the wire format)."""


class HeaderError(RemotingError, ValueError):
    """ext_fields cannot be turned into the typed custom header asked for.

    ``field`` is the Java (wire) name of the offending field.
    """

    def __init__(self, header: str, field: str, message: str) -> None:
        super().__init__(f"{header}.{field}: {message}")
        self.header = header
        self.field = field


class BodyError(RemotingError, ValueError):
    """A request's body is not what its code needs (not JSON, a field missing, ...)."""


class RemotingCallError(RemotingError):
    """A request we sent did not get its response."""


class RemotingTimeoutError(RemotingCallError, TimeoutError):
    """No response came within the request's timeout."""


class ConnectionLostError(RemotingCallError, ConnectionError):
    """The connection closed (or was never open) before the response came."""


class SendRequestError(RemotingCallError):
    """The request could not be written to the connection."""


class TooManyRequestsError(RemotingCallError):
    """No in-flight permit came free within the request's timeout (the budget is spent)."""


class ClientClosedError(RemotingCallError):
    """The client was closed before the call could finish (or was called after close)."""


class ConnectError(RemotingCallError, ConnectionError):
    """No connection to the address could be made; the request was never sent.

    ``address`` is the ``host:port`` that could not be reached (None when no single
    address is to blame, e.g. every name server failed).
    """

    def __init__(self, message: str, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class ConnectBackoffError(ConnectError):
    """Connecting to ``address`` failed recently and the next attempt is not due before
    the call's deadline: the call fails at once instead of waiting in vain.

    ``retry_in`` is how many seconds until the next attempt is allowed.
    """

    def __init__(self, message: str, address: str, retry_in: float) -> None:
        super().__init__(message, address)
        self.retry_in = retry_in


class CircuitOpenError(ConnectBackoffError):
    """The address's circuit breaker is open after repeated connect failures: calls to
    it fail fast until it turns half-open (``retry_in`` seconds from now)."""


class ConnectionLimitError(ConnectError):
    """A new connection is needed but the pool is at its ``max_connections`` and none of
    its connections is idle enough to close."""


class NoNameServerError(ConnectError):
    """A call to "the current name server" with no name-server address configured."""


class RPCHookAbort(RemotingError):
    """Raised by an RPC hook's ``before_request`` to refuse a request.

    A server answers the request with ``code`` and ``remark`` instead of processing it;
    a client fails the call with this exception instead of sending it.
    """

    def __init__(self, code: int, remark: str | None = None) -> None:
        super().__init__(f"request refused by an RPC hook: code {code}, remark {remark!r}")
        self.code = code
        self.remark = remark
