"""``LengthPrefixed``: remoting frames on a Twisted connection.

The protocol feeds every byte it receives to a :class:`~rmqtwist.codec.FrameDecoder` and
calls :meth:`LengthPrefixed.command_received` once per decoded command. A frame the codec
rejects (too large, malformed, another protocol's greeting) is logged with its reason and
the connection is aborted: the stream cannot be resynchronised after a bad frame. Nothing
raised while decoding or handling a command escapes ``dataReceived``.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist.codec import (
    DEFAULT_MAX_EXT_FIELDS,
    DEFAULT_MAX_FRAME_LENGTH,
    DEFAULT_MAX_HEADER_LENGTH,
    FrameDecoder,
    encode_frame,
)
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import ProtocolError

__all__ = ["LengthPrefixed", "LengthPrefixedFactory", "format_address"]


def format_address(address: IAddress | None) -> str:
    """``host:port`` for TCP addresses (``[host]:port`` for IPv6), else ``str(address)``."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        if isinstance(name, bytes):
            return name.decode("utf-8", "replace")
        return str(name) if name is not None else str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LengthPrefixed(Protocol):
    """A connection that speaks remoting frames. Subclass it and override
    :meth:`command_received`; send with :meth:`send_command`."""

    #: Largest frame accepted, 4-byte prefix included (set by the factory).
    max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH
    #: Largest header accepted (bytes), and most ext_fields in one (None: no limit).
    max_header_length: int | None = DEFAULT_MAX_HEADER_LENGTH
    max_ext_fields: int | None = DEFAULT_MAX_EXT_FIELDS
    _log = Logger()
    _decoder: FrameDecoder | None = None
    _failed = False

    def connectionMade(self) -> None:
        """Start a fresh :class:`~rmqtwist.codec.FrameDecoder` for this connection."""
        self._decoder = self._new_decoder()

    def _new_decoder(self) -> FrameDecoder:
        return FrameDecoder(self.max_frame_length, self.max_header_length, self.max_ext_fields)

    @property
    def peer(self) -> str:
        """The remote address as ``host:port`` (empty before the connection is made)."""
        transport = self.transport
        return format_address(transport.getPeer()) if transport is not None else ""

    def dataReceived(self, data: bytes) -> None:
        """Feed ``data`` to the decoder and hand each whole command to
        :meth:`command_received`; on a protocol error, :meth:`protocol_error`."""
        if self._failed:
            return
        decoder = self._decoder
        if decoder is None:  # dataReceived before connectionMade: only in odd test set-ups
            decoder = self._decoder = self._new_decoder()
        error: ProtocolError | None = None
        try:
            commands = decoder.feed(data)
        except ProtocolError as e:
            commands, error = e.decoded, e
        for command in commands:
            try:
                self.command_received(command)
            except Exception:
                self._log.failure(
                    "Handling a command from {peer} raised; the connection stays open: {command!r}",
                    peer=self.peer,
                    command=command,
                )
        if error is not None:
            self._failed = True
            try:
                self.protocol_error(error)
            except Exception:
                self._log.failure("protocol_error() raised for {peer}", peer=self.peer)
                self.abort()

    def command_received(self, command: RemotingCommand) -> None:
        """Called once per command decoded from the peer, in arrival order."""
        self._log.warn(
            "{peer} sent {command!r}, which nothing handles", peer=self.peer, command=command
        )

    def protocol_error(self, error: ProtocolError) -> None:
        """The peer sent bytes that are not a valid frame: log why, abort the connection.

        Override to add to this (call ``super()``); the connection cannot carry on.
        """
        self._log.warn(
            "{peer} sent an invalid frame, closing the connection: {error_type}: {error}",
            peer=self.peer,
            error_type=type(error).__name__,
            error=str(error),
        )
        self.abort()

    def send_command(self, command: RemotingCommand, serialize_type: int | None = None) -> None:
        """Encode ``command`` (in ``serialize_type``, default its own) and write it.

        Raises :class:`~rmqtwist.errors.EncodeError` before writing anything if the
        command cannot be encoded.
        """
        frame = encode_frame(command, serialize_type)
        if self.transport is None:
            raise RuntimeError("send_command() before the connection was made")
        self.write_frame(frame)

    def write_frame(self, frame: bytes) -> None:
        """Write one already-encoded frame: every write of a subclass goes through here."""
        transport = self.transport
        assert transport is not None
        transport.write(frame)

    def abort(self) -> None:
        """Close the connection at once, dropping anything not yet written."""
        transport = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Drop the decoder and whatever partial frame it held."""
        self._decoder = None


class LengthPrefixedFactory(ServerFactory):
    """Builds :class:`LengthPrefixed` protocols (or the subclass in ``protocol``) and gives
    each the factory's ``max_frame_length``. Works for listening and connecting alike."""

    protocol: type[Protocol] = LengthPrefixed

    def __init__(
        self,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
        *,
        max_header_length: int | None = DEFAULT_MAX_HEADER_LENGTH,
        max_ext_fields: int | None = DEFAULT_MAX_EXT_FIELDS,
    ) -> None:
        if max_frame_length < 8:
            raise ValueError(f"max_frame_length must be at least 8, got {max_frame_length}")
        FrameDecoder(max_frame_length, max_header_length, max_ext_fields)  # checks them
        self.max_frame_length = max_frame_length
        self.max_header_length = max_header_length
        self.max_ext_fields = max_ext_fields

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol = super().buildProtocol(addr)
        if isinstance(protocol, LengthPrefixed):
            protocol.max_frame_length = self.max_frame_length
            protocol.max_header_length = self.max_header_length
            protocol.max_ext_fields = self.max_ext_fields
        return cast("Protocol | None", protocol)

    def __repr__(self) -> str:
        name = getattr(self.protocol, "__name__", repr(self.protocol))
        return f"<{type(self).__name__} protocol={name} max_frame_length={self.max_frame_length}>"
