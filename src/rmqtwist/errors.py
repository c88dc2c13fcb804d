"""The exceptions rmqtwist raises.

``RemotingError`` is the root. ``ProtocolError`` and its subclasses mean the *peer* sent
bytes that are not a valid frame: the only safe reaction is to close that connection.
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
    "ConnectionLostError",
    "EncodeError",
    "FrameTooLarge",
    "HeaderError",
    "MalformedFrame",
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


class WrongProtocol(ProtocolError):
    """The connection's first bytes belong to another protocol (HTTP, HTTP/2, TLS)."""

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


class RPCHookAbort(RemotingError):
    """Raised by an RPC hook's ``before_request`` to refuse a request.

    A server answers the request with ``code`` and ``remark`` instead of processing it;
    a client fails the call with this exception instead of sending it.
    """

    def __init__(self, code: int, remark: str | None = None) -> None:
        super().__init__(f"request refused by an RPC hook: code {code}, remark {remark!r}")
        self.code = code
        self.remark = remark
