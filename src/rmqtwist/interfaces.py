"""The zope interfaces through which applications plug into a remoting connection.

- :class:`IRequestProcessor` answers requests of one or more codes.
- :class:`IRPCHook` sees (and may replace or refuse) every request and response.
- :class:`IChannelEventListener` hears connects, closes, errors and idle timeouts.
- :class:`IChannel` and :class:`IRequestContext` are what those are given.
- :class:`IProcessorPlugin` and :class:`IRPCHookPlugin` make processors and hooks
  discoverable as Twisted plugins (``twist rmq-remoting --processor NAME``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from rmqtwist.command import RemotingCommand

__all__ = [
    "IChannel",
    "IChannelEventListener",
    "IProcessorPlugin",
    "IRPCHook",
    "IRPCHookPlugin",
    "IRequestContext",
    "IRequestProcessor",
]


class IChannel(Interface):
    """One remoting connection, as processors, hooks and listeners see it."""

    channel_id = Attribute("A short id, unique in this process, for logs (str).")
    local_address = Attribute("This end's address as 'host:port' (str).")
    remote_address = Attribute("The peer's address as 'host:port' (str).")
    is_writable = Attribute(
        "True while the connection is open and its write buffer is under the high-water mark."
    )
    is_connected = Attribute("True until the connection is lost.")

    def invoke(request: RemotingCommand, timeout: float = 3.0) -> Deferred[RemotingCommand]:
        """Send ``request`` to the peer; a Deferred firing with its response.

        Fails with :class:`~rmqtwist.errors.RemotingTimeoutError` after ``timeout``
        seconds, :class:`~rmqtwist.errors.ConnectionLostError` if the connection goes
        first, :class:`~rmqtwist.errors.TooManyRequestsError` if the async budget is
        spent. Cancelling it forgets the request.
        """

    def invoke_oneway(request: RemotingCommand, timeout: float = 3.0) -> Deferred[None]:
        """Send ``request`` with the oneway flag; a Deferred firing with None once written.

        Waits up to ``timeout`` for a oneway permit; a permit is held while the
        connection's write buffer is past its high-water mark."""

    def close() -> None:
        """Close the connection after what is already written has been sent."""


class IRequestContext(Interface):
    """What a processor is given along with each request."""

    channel = Attribute("The :class:`IChannel` the request came in on.")
    request = Attribute("The request being processed (after the RPC hooks' before step).")
    responded = Attribute("True once a response has been sent (or dropped for a oneway).")

    def respond(response: RemotingCommand) -> None:
        """Send the response to this request now or later (when the processor returned
        None). The opaque, response flag and serialize type are set from the request;
        the after-hooks run. A second call raises; a oneway request's response is dropped.
        """


class IRequestProcessor(Interface):
    """Answers requests. Registered on a server (or client) for codes, or as default."""

    def process_request(
        context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand | Deferred[RemotingCommand] | None:
        """Handle ``request``; return a :class:`~rmqtwist.command.RemotingCommand`, a
        Deferred of one, or None (no reply now: reply later with ``context.respond``).
        An exception (or a failed Deferred) becomes a SYSTEM_ERROR response carrying the
        exception text; the connection stays open."""

    def reject_request() -> bool:
        """True to shed load: the request is answered SYSTEM_BUSY ``[REJECTREQUEST]``
        without being processed."""


class IRPCHook(Interface):
    """Sees every request before it is processed (or sent) and every response after.

    Each method returns None to keep the command as it is, or a replacement command
    (commands are immutable: a signing hook returns a signed copy). ``before_request``
    may raise :class:`~rmqtwist.errors.RPCHookAbort` to refuse the request with a
    response code and remark. ``after_response`` also sees the answers the connection
    makes itself (REQUEST_CODE_NOT_SUPPORTED, ``[REJECTREQUEST]``, ``[OVERLOAD]``),
    which no ``before_request`` preceded. The same hooks run on a client for its
    outgoing requests and their responses.
    """

    def before_request(remote_address: str, request: RemotingCommand) -> RemotingCommand | None:
        """Called before a request is processed (server) or sent (client)."""

    def after_response(
        remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> RemotingCommand | None:
        """Called after a response is made (server) or received (client)."""


class IChannelEventListener(Interface):
    """Hears what happens to connections. Exceptions it raises are logged and ignored."""

    def on_connect(remote_address: str, channel: IChannel) -> None:
        """A connection was made."""

    def on_close(remote_address: str, channel: IChannel) -> None:
        """A connection was closed (by either side, for any reason)."""

    def on_exception(remote_address: str, channel: IChannel, error: Exception) -> None:
        """The peer sent bytes that are not a valid frame; the connection will close."""

    def on_idle(remote_address: str, channel: IChannel) -> None:
        """Nothing was read or written for the idle timeout; the connection will close."""


class IProcessorPlugin(Interface):
    """A named factory of request processors, found with ``twisted.plugin.getPlugins``."""

    name = Attribute("The name ``--processor NAME`` selects it by (str).")
    description = Attribute("One line for ``--help`` (str).")
    codes = Attribute(
        "The request codes the processor answers when registered without CODE= "
        "(a sequence of int); empty means it registers as the default processor."
    )

    def make_processor() -> IRequestProcessor:
        """A new :class:`IRequestProcessor`."""


class IRPCHookPlugin(Interface):
    """A named factory of RPC hooks, found with ``twisted.plugin.getPlugins``."""

    name = Attribute("The name ``--hook NAME`` selects it by (str).")
    description = Attribute("One line for ``--help`` (str).")

    def make_hook() -> IRPCHook:
        """A new :class:`IRPCHook`."""
