"""``LengthPrefixed``: remoting frames on a Twisted connection.

The protocol feeds every byte it receives to a :class:`~rmqtwist.codec.FrameDecoder` and
calls :meth:`LengthPrefixed.command_received` once per decoded command. A frame the codec
rejects (too large, malformed, another protocol's greeting) is logged with its reason and
the connection is aborted: the stream cannot be resynchronised after a bad frame. Nothing
raised while decoding or handling a command escapes ``dataReceived``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from rmqtwist._logsafe import clip, clip_repr
from rmqtwist.codec import (
    DEFAULT_MAX_EXT_FIELDS,
    DEFAULT_MAX_FRAME_LENGTH,
    DEFAULT_MAX_HEADER_LENGTH,
    FrameDecoder,
    encode_frame,
)
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import ProtocolError

if TYPE_CHECKING:
    from rmqtwist.budgets import BufferBudget

#: Commands decoded at a time: while a connection's commands are held (its write buffer
#: is full), the rest of a read waits as bytes, and at most this many as commands.
_BATCH = 64

__all__ = ["LengthPrefixed", "LengthPrefixedFactory", "abort_transport", "format_address"]


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


def abort_transport(transport: ITransport) -> None:
    """Close ``transport`` at once (``abortConnection``, dropping unwritten bytes) where
    it can, else as soon as it has written what it holds (``loseConnection``)."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class LengthPrefixed(Protocol):
    """A connection that speaks remoting frames. Subclass it and override
    :meth:`command_received`; send with :meth:`send_command`."""

    #: Largest frame accepted, 4-byte prefix included (set by the factory).
    max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH
    #: Largest header accepted (bytes), and most ext_fields in one (None: no limit).
    max_header_length: int | None = DEFAULT_MAX_HEADER_LENGTH
    max_ext_fields: int | None = DEFAULT_MAX_EXT_FIELDS
    _log = Logger()
    #: The server-wide budget of partial-frame bytes this connection counts against
    #: (set by the factory; None: no budget).
    buffer_budget: BufferBudget | None = None
    _decoder: FrameDecoder | None = None
    _failed = False
    _holding = False
    _backlog: deque[RemotingCommand] | None = None

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
        :meth:`command_received`; on a protocol error, :meth:`protocol_error`.

        While commands are held (:meth:`hold_commands`), the ones decoded wait, in order,
        for :meth:`release_commands`."""
        if self._failed:
            return
        decoder = self._decoder
        if decoder is None:  # dataReceived before connectionMade: only in odd test set-ups
            decoder = self._decoder = self._new_decoder()
        self._decode(decoder, data)

    def _decode(self, decoder: FrameDecoder, data: bytes) -> None:
        """Decode and hand over commands in batches while not held; what is left of the
        read stays in the decoder as bytes."""
        error: ProtocolError | None = None
        while True:
            if self._holding:
                try:
                    decoder.feed(data, 0)  # keep the bytes, decode nothing
                except ProtocolError as e:
                    error = e
                break
            try:
                commands = decoder.feed(data, _BATCH)
            except ProtocolError as e:
                commands, error = e.decoded, e
            data = b""
            if commands:
                self.frames_received(len(commands))
                deliver = self._deliver
                for index, command in enumerate(commands):
                    if self._holding:  # e.g. the write buffer filled up: keep the rest
                        self._backlog = deque(commands[index:])
                        break
                    deliver(command)
            if error is not None or len(commands) < _BATCH or self.transport is None:
                break
        budget = self.buffer_budget
        if budget is not None:
            budget.update(self, decoder.buffered)
        if error is not None:
            self._failed = True
            self._backlog = None  # answers to these could never be sent now
            try:
                self.protocol_error(error)
            except Exception:
                self._log.failure("protocol_error() raised for {peer}", peer=self.peer)
                self.abort()

    def _deliver(self, command: RemotingCommand) -> None:
        try:
            self.command_received(command)
        except Exception:
            self._log.failure(
                "Handling a command from {peer} raised; the connection stays open: {command}",
                peer=self.peer,
                command=clip_repr(command),
            )

    def _deliver_backlog(self) -> None:
        backlog = self._backlog
        while backlog and not self._holding and self.transport is not None:
            self._deliver(backlog.popleft())
        if not backlog:
            self._backlog = None

    def hold_commands(self) -> None:
        """Stop handing decoded commands to :meth:`command_received`: those decoded
        from now on (the rest of the current read included) wait, in order."""
        self._holding = True

    def release_commands(self) -> None:
        """Hand the commands held back to :meth:`command_received`, then decode the
        bytes held, until the next :meth:`hold_commands` (which one of them may cause)."""
        self._holding = False
        if self._backlog:
            self._deliver_backlog()
        decoder = self._decoder
        if not self._holding and not self._failed and decoder is not None and decoder.buffered:
            self._decode(decoder, b"")

    @property
    def held_commands(self) -> int:
        """Commands decoded but not yet handed over (while held; at most a batch)."""
        return len(self._backlog) if self._backlog else 0

    @property
    def held_bytes(self) -> int:
        """Bytes read but not yet decoded (a partial frame, or frames held)."""
        return self._decoder.buffered if self._decoder is not None else 0

    def frames_received(self, count: int) -> None:
        """Called after a read that completed ``count`` frames, before they are handled."""

    def command_received(self, command: RemotingCommand) -> None:
        """Called once per command decoded from the peer, in arrival order."""
        self._log.warn(
            "{peer} sent {command}, which nothing handles",
            peer=self.peer,
            command=clip_repr(command),
        )

    def protocol_error(self, error: ProtocolError) -> None:
        """The peer sent bytes that are not a valid frame: log why, abort the connection.

        Override to add to this (call ``super()``); the connection cannot carry on.
        """
        self._log.warn(
            "{peer} sent an invalid frame, closing the connection: {error_type}: {error}",
            peer=self.peer,
            error_type=type(error).__name__,
            error=clip(str(error)),
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
        abort_transport(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Drop the decoder and whatever partial frame it held."""
        self._decoder = None
        self._backlog = None
        if self.buffer_budget is not None:
            self.buffer_budget.forget(self)


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
