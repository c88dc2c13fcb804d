"""Frames: one command <-> one whole frame, and the incremental FrameDecoder."""

from __future__ import annotations

import struct
from typing import Any

from rmqtwist._logsafe import clip as _clip
from rmqtwist.codec._binary import _decode_binary_header, _encode_binary_header
from rmqtwist.codec._json import _decode_json_header, _encode_json_header
from rmqtwist.codec._layout import (
    _BIN_TYPE_WORD,
    _FRAME_BIN,
    _FRAME_BIN_BARE,
    _HEADER_LENGTH_MAX,
    _INT32,
    _INT32_MAX,
    _JSON,
    _PREFIX,
    _ROCKETMQ,
    DEFAULT_MAX_EXT_FIELDS,
    DEFAULT_MAX_FRAME_LENGTH,
    DEFAULT_MAX_HEADER_LENGTH,
)
from rmqtwist.codec._sniff import _SIGNATURE_FIRST_BYTES, sniff_wrong_protocol
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import (
    EncodeError,
    FrameTooLarge,
    HeaderTooLarge,
    MalformedFrame,
    ProtocolError,
)


def encode_header(command: RemotingCommand, serialize_type: int | None = None) -> bytes:
    """The header bytes of ``command`` alone (no length words)."""
    stype = command.serialize_type if serialize_type is None else serialize_type
    if stype == _JSON:
        return _encode_json_header(command, command.opaque, command.flag)
    if stype == _ROCKETMQ:
        return _encode_binary_header(command, command.opaque, command.flag)
    raise EncodeError(f"unknown serialize type {stype!r}")


def encode_frame(
    command: RemotingCommand,
    serialize_type: int | None = None,
    *,
    opaque: int | None = None,
    flag: int | None = None,
) -> bytes:
    """The whole frame of ``command``, 4-byte length prefix included.

    ``serialize_type``, ``opaque`` and ``flag``, when given, are written in place of the
    command's own (a connection stamps each request it sends this way, without
    building a new command first). Raises :class:`~rmqtwist.errors.EncodeError` when a
    value does not fit the chosen format (e.g. a code above 32767 in ROCKETMQ).
    """
    stype = command.serialize_type if serialize_type is None else serialize_type
    if opaque is None:
        opaque = command.opaque
    if flag is None:
        flag = command.flag
    if stype == _JSON:
        header = _encode_json_header(command, opaque, flag)
    elif stype == _ROCKETMQ:
        if not command.ext_fields:
            frame = _encode_bare_binary_frame(command, opaque, flag)
            if frame is not None:
                return frame
        header = _encode_binary_header(command, opaque, flag)
    else:
        raise EncodeError(f"unknown serialize type {stype!r}")
    header_len = len(header)
    if header_len > _HEADER_LENGTH_MAX:
        raise EncodeError(f"header of {header_len} bytes exceeds the 24-bit header length")
    body = command.body
    total = 4 + header_len + len(body)
    if total > _INT32_MAX:
        raise EncodeError(f"frame of {total} bytes exceeds the int32 length prefix")
    return _PREFIX.pack(total, (stype << 24) | header_len) + header + body


def _encode_bare_binary_frame(command: RemotingCommand, opaque: int, flag: int) -> bytes | None:
    """The whole ROCKETMQ frame of a command without ext_fields, packed at once; None
    when a value is out of range (the general path then names it) or the remark is
    not plain UTF-8."""
    remark = command.remark
    body = command.body
    try:
        if not remark:
            return (
                _FRAME_BIN_BARE.pack(
                    25 + len(body),
                    _BIN_TYPE_WORD | 21,
                    command.code,
                    command.language,
                    command.version,
                    opaque,
                    flag,
                    0,
                    0,
                )
                + body
            )
        text = remark.encode("utf-8")
        header_len = 21 + len(text)
        if header_len > _HEADER_LENGTH_MAX:
            return None
        return b"".join(
            (
                _FRAME_BIN.pack(
                    4 + header_len + len(body),
                    _BIN_TYPE_WORD | header_len,
                    command.code,
                    command.language,
                    command.version,
                    opaque,
                    flag,
                    len(text),
                ),
                text,
                b"\x00\x00\x00\x00",
                body,
            )
        )
    except (struct.error, UnicodeEncodeError):
        return None


def decode_header(header: bytes, serialize_type: int) -> RemotingCommand:
    """Decode header bytes alone (no length words) into a command with an empty body."""
    return _decode_frame_at(header, -8, 4 + len(header), (int(serialize_type) << 24) | len(header))


def _decode_frame_at(
    buf: Any, pos: int, total: int, type_word: int, max_ext_fields: int | None = None
) -> RemotingCommand:
    """Decode the frame whose serialize-type word is at ``pos + 4`` and whose ``total``
    (bytes after the prefix) is already checked to be available in ``buf``."""
    header_len = type_word & 0xFFFFFF
    stype = (type_word >> 24) & 0xFF
    if header_len > total - 4:
        raise MalformedFrame(
            f"header length {header_len} exceeds the frame's {total - 4} bytes after the "
            "header-length word"
        )
    start = pos + 8
    end = start + header_len
    body = bytes(buf[end : pos + 4 + total])
    if stype == 1:
        return _decode_binary_header(buf, start, end, body, max_ext_fields)
    if stype == 0:
        try:
            text = str(buf[start:end], "utf-8")
        except UnicodeDecodeError as e:
            raise MalformedFrame(f"JSON header is not UTF-8: {e}") from None
        return _decode_json_header(text, body, max_ext_fields)
    raise MalformedFrame(f"unknown serialize type {stype} in the header-length word")


def _header_too_large(header_len: int, limit: int) -> HeaderTooLarge:
    return HeaderTooLarge(
        f"header of {header_len} bytes exceeds the header limit of {limit} bytes",
        header_len,
        limit,
    )


def _check_prefix(total: int, max_frame_length: int) -> None:
    if total < 4:
        raise MalformedFrame(
            f"length prefix {total} is less than the 4 bytes of the header-length word"
        )
    if total + 4 > max_frame_length:
        raise FrameTooLarge(total + 4, max_frame_length)


def decode_frame(data: bytes) -> RemotingCommand:
    """Decode exactly one whole frame (length prefix included).

    Raises :class:`~rmqtwist.errors.MalformedFrame` if ``data`` is truncated or has
    bytes past the frame, :class:`~rmqtwist.errors.WrongProtocol` if it starts like
    another protocol (see :func:`sniff_wrong_protocol`).
    """
    size = len(data)
    if size >= 4 and data[0] in _SIGNATURE_FIRST_BYTES:
        wrong = sniff_wrong_protocol(data[:16])
        if wrong is not None:
            raise wrong
    if size < 8:
        raise MalformedFrame(f"a frame has at least 8 bytes, got {size}")
    total, type_word = _PREFIX.unpack_from(data, 0)
    if total < 4:
        raise MalformedFrame(
            f"length prefix {total} is less than the 4 bytes of the header-length word"
        )
    if total + 4 > size:
        raise MalformedFrame(f"frame is truncated: the prefix says {total + 4} bytes, got {size}")
    if total + 4 < size:
        raise MalformedFrame(
            f"{size - total - 4} bytes follow the frame (the prefix says {total + 4} bytes)"
        )
    return _decode_frame_at(data, 0, total, type_word)


class FrameDecoder:
    """Incremental frame decoder: feed it bytes as they arrive, get whole commands back.

    ``max_frame_length`` counts the 4-byte prefix, as Java's does: a frame of exactly
    that many bytes on the wire is accepted, one byte more raises
    :class:`~rmqtwist.errors.FrameTooLarge` as soon as the prefix is readable, before
    any of the body is buffered. The first frame is also checked for another
    protocol's greeting (:class:`~rmqtwist.errors.WrongProtocol`).

    ``max_header_length`` bounds the header alone: a longer one raises
    :class:`~rmqtwist.errors.HeaderTooLarge` as soon as the two length words are
    readable, before it is buffered or parsed; ``max_ext_fields`` bounds the entries of
    its ext_fields (checked while parsing). Both keep one frame's decode short: a
    16 MiB header of 1.7 million fields would take seconds. None: no such limit.

    After a :class:`~rmqtwist.errors.ProtocolError` the decoder is dead: every later
    ``feed`` raises the same error. The commands decoded before the bad frame in the
    failing call are on the error's ``decoded`` list.
    """

    __slots__ = (
        "_buffer",
        "_error",
        "_first",
        "_need",
        "max_ext_fields",
        "max_frame_length",
        "max_header_length",
    )

    def __init__(
        self,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
        max_header_length: int | None = DEFAULT_MAX_HEADER_LENGTH,
        max_ext_fields: int | None = DEFAULT_MAX_EXT_FIELDS,
    ) -> None:
        if max_frame_length < 8:
            raise ValueError(f"max_frame_length must be at least 8, got {max_frame_length}")
        if max_header_length is not None and max_header_length < 0:
            raise ValueError(f"max_header_length must not be negative, got {max_header_length}")
        if max_ext_fields is not None and max_ext_fields < 0:
            raise ValueError(f"max_ext_fields must not be negative, got {max_ext_fields}")
        self.max_frame_length = max_frame_length
        self.max_header_length = max_header_length
        self.max_ext_fields = max_ext_fields
        self._buffer = bytearray()
        self._need = 4  # bytes the buffer must hold before parsing is worth trying
        self._first = True
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of their frame."""
        return len(self._buffer)

    def feed(self, data: bytes, max_commands: int | None = None) -> list[RemotingCommand]:
        """Add ``data``; return the commands of every frame it completes, in order.

        With ``max_commands``, at most that many: the bytes of the frames after them stay
        buffered, undecoded, until a later call (``feed(b"", n)`` goes on with them; 0
        only adds ``data``). A connection that must stop handling requests mid-read
        keeps the rest as bytes this way rather than as decoded commands."""
        if self._error is not None:
            self._error.decoded = []
            raise self._error
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []
            source: Any = buffer
        else:
            if len(data) < self._need:
                buffer += data
                return []
            source = data
        commands: list[RemotingCommand] = []
        pos = 0
        size = len(source)
        limit = self.max_frame_length
        header_limit = self.max_header_length
        if header_limit is None:
            header_limit = _HEADER_LENGTH_MAX
        max_fields = self.max_ext_fields
        room = -1 if max_commands is None else max_commands
        unpack = _PREFIX.unpack_from
        try:
            if self._first and size >= 4:
                wrong = sniff_wrong_protocol(bytes(source[:16]))  # once per connection
                if wrong is not None:
                    raise wrong
                self._first = False
            while size - pos >= 8:
                if len(commands) == room:
                    self._need = 0  # whole frames may be buffered: decode on any feed
                    break
                total, type_word = unpack(source, pos)
                if total < 4 or total + 4 > limit:
                    _check_prefix(total, limit)
                if type_word & 0xFFFFFF > header_limit:
                    raise _header_too_large(type_word & 0xFFFFFF, header_limit)
                if size - pos - 4 < total:
                    self._need = total + 4
                    break
                commands.append(_decode_frame_at(source, pos, total, type_word, max_fields))
                pos += 4 + total
            else:
                if size - pos >= 4:
                    (total,) = _INT32.unpack_from(source, pos)
                    _check_prefix(total, limit)
                    self._need = 8  # the header-length word is checked once it is here
                else:
                    self._need = 4
        except Exception as e:
            error = (
                e
                if isinstance(e, ProtocolError)
                else MalformedFrame(f"undecodable frame: {_clip(repr(e))}")
            )
            error.decoded = commands
            self._error = error
            self._buffer = bytearray()
            raise error from None
        if source is buffer:
            del buffer[:pos]
        elif pos < size:
            buffer += source[pos:]
        return commands
