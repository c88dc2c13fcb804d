"""Pure encode/decode of remoting frames: bytes in, commands out. No I/O, no Twisted.

A frame is ``int32 total | int32 (serialize_type << 24 | header_length) | header | body``
(big-endian; ``total`` counts everything after itself). The header is JSON (written
byte-compatible with what Java's fastjson writes) or the binary ROCKETMQ layout.

- :func:`encode_frame` / :func:`decode_frame`: one command <-> one whole frame.
- :class:`FrameDecoder`: incremental; accepts data split at any byte, checks the length
  as soon as the 4-byte prefix is readable, buffers linearly.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from rmqtwist.codes import LanguageCode, SerializeType
from rmqtwist.command import RemotingCommand, _from_wire
from rmqtwist.errors import (
    EncodeError,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    WrongProtocol,
)

__all__ = [
    "DEFAULT_MAX_FRAME_LENGTH",
    "FrameDecoder",
    "decode_frame",
    "decode_header",
    "encode_frame",
    "encode_header",
    "sniff_wrong_protocol",
]

#: Java's default ``com.rocketmq.remoting.frameMaxLength``: counts the 4-byte prefix.
DEFAULT_MAX_FRAME_LENGTH: Final = 16 * 1024 * 1024

_INT16_MIN, _INT16_MAX = -(1 << 15), (1 << 15) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_HEADER_LENGTH_MAX = (1 << 24) - 1

_PREFIX = struct.Struct(">ii")  # total, serialize-type word
_INT32 = struct.Struct(">i")
_INT16 = struct.Struct(">h")
# code int16, language uint8, version int16, opaque int32, flag int32, remark length int32
_BIN_FIXED = struct.Struct(">hBhiii")
_BIN_FIXED_SIZE = _BIN_FIXED.size  # 17; with the ext length that follows, 21
_BIN_FIXED_EXT = struct.Struct(">hBhiiii")  # the same, plus the int32 after a 0 remark length

# A whole ROCKETMQ frame up to the remark: the two prefix words and the fixed header.
_FRAME_BIN = struct.Struct(">iihBhiii")
# ... and, for a command with no remark and no ext_fields, the two zero lengths too.
_FRAME_BIN_BARE = struct.Struct(">iihBhiiii")
_BIN_TYPE_WORD = 1 << 24  # ROCKETMQ in the serialize-type word, header length 0
_JSON = SerializeType.JSON
_ROCKETMQ = SerializeType.ROCKETMQ
_SERIALIZE_TYPES: dict[int, SerializeType] = {t.value: t for t in SerializeType}
_LANGUAGE_BY_VALUE: dict[int, LanguageCode] = {c.value: c for c in LanguageCode}
_LANGUAGE_BY_NAME: dict[str, LanguageCode] = {c.name: c for c in LanguageCode}
_LANGUAGE_NAME: dict[int, str] = {c.value: f'"{c.name}"' for c in LanguageCode}

# ---------------------------------------------------------------------------
# Wrong-protocol detection
# ---------------------------------------------------------------------------

# A signature matches when the first bytes agree with it as far as both go (at least 4
# bytes, or the whole signature): each of these as a frame's first word is a length far
# past any sane frame limit, so nothing that names a protocol could have been a frame.
_SIGNATURES: Final = (
    (b"PRI ", "HTTP/2 (a gRPC client on the remoting port?)"),
    (b"GET ", "HTTP"),
    (b"POST", "HTTP"),
    (b"PUT ", "HTTP"),
    (b"HEAD", "HTTP"),
    (b"HTTP", "HTTP"),
    (b"OPTIONS ", "HTTP"),
    (b"DELETE ", "HTTP"),
    (b"PATCH ", "HTTP"),
    (b"CONNECT ", "HTTP"),
    (b"TRACE ", "HTTP"),
    (b"\x16\x03", "TLS (a TLS client on a plaintext port)"),
    (b"SSH-", "SSH (an SSH client on the remoting port?)"),
    (b"PROXY ", "PROXY protocol v1 (a load balancer's header; this port does not expect it)"),
    (
        b"\r\n\r\n\x00\r\nQUIT\n",
        "PROXY protocol v2 (a load balancer's header; this port does not expect it)",
    ),
    (b"AMQP", "AMQP (a RabbitMQ/AMQP client on the remoting port?)"),
)

#: A Redis RESP command: an array header "*<count>\r\n" (what redis-cli and every Redis
#: client sends first), or as much of one as has arrived.
_RESP_ARRAY: Final = re.compile(rb"\*[0-9]+(?:\r\n|\r\Z|\Z)")
_RESP: Final = "Redis RESP (a Redis client on the remoting port?)"

_SIGNATURE_FIRST_BYTES: Final = frozenset(
    [signature[0] for signature, _ in _SIGNATURES] + [ord("*")]
)


def sniff_wrong_protocol(first_bytes: bytes) -> WrongProtocol | None:
    """A :class:`~rmqtwist.errors.WrongProtocol` error if a connection's first bytes
    belong to another protocol (HTTP/2, HTTP, a TLS ClientHello, SSH, a PROXY protocol
    v1 or v2 header, Redis RESP, AMQP), else None. Needs at least 4 bytes."""
    if not first_bytes or first_bytes[0] not in _SIGNATURE_FIRST_BYTES:
        return None
    first = bytes(first_bytes[:16])
    if first[0] == 0x2A:  # "*"
        if _RESP_ARRAY.match(first) is not None:
            return WrongProtocol(_RESP, first)
        return None
    for signature, protocol in _SIGNATURES:
        n = min(len(first), len(signature))
        if n >= min(4, len(signature)) and first[:n] == signature[:n]:
            return WrongProtocol(protocol, first)
    return None


# ---------------------------------------------------------------------------
# JSON header
# ---------------------------------------------------------------------------

# fastjson 1.2.69 escapes, in a double-quoted string (a value or a map key alike): the C0
# controls (\b \t \n \f \r short, the rest \u00XX, \u000B included), '"' and '\\',
# U+007F..U+009F, U+2028 and U+2029, with upper-case hex; nothing else ('/' included).
_ESCAPES: dict[int, str] = {c: f"\\u{c:04X}" for c in range(0x20)}
_ESCAPES.update({c: f"\\u{c:04X}" for c in range(0x7F, 0xA0)})
_ESCAPES.update(
    {
        0x08: "\\b",
        0x09: "\\t",
        0x0A: "\\n",
        0x0C: "\\f",
        0x0D: "\\r",
        0x22: '\\"',
        0x5C: "\\\\",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
    }
)
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\\x7f-\x9f\u2028\u2029]').search


def _quote(text: str) -> str:
    if _NEEDS_ESCAPE(text) is None:
        return '"' + text + '"'
    return '"' + text.translate(_ESCAPES) + '"'


def _json_ext(ext: Mapping[str, str]) -> str:
    """The members of the extFields object. Keys and values seldom need escaping (a send's
    properties do: \x01 and \x02): one check over all of them, then no quoting."""
    if ext and _NEEDS_ESCAPE("".join(ext)) is None:
        if _NEEDS_ESCAPE("".join(ext.values())) is None:
            return '"' + '","'.join([k + '":"' + v for k, v in ext.items()]) + '"'
        return ",".join(['"' + k + '":' + _quote(v) for k, v in ext.items()])
    return ",".join([_quote(k) + ":" + _quote(v) for k, v in ext.items()])


def _check_int(name: str, value: int, low: int, high: int, fmt: str) -> None:
    if not (low <= value <= high):
        raise EncodeError(f"{name} {value} does not fit the {fmt}")


def _encode_json_header(command: RemotingCommand, opaque: int, flag: int) -> bytes:
    code = command.code
    version = command.version
    if not (_INT32_MIN <= code <= _INT32_MAX):
        _check_int("code", code, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    if not (_INT32_MIN <= opaque <= _INT32_MAX):
        _check_int("opaque", opaque, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    if not (_INT32_MIN <= flag <= _INT32_MAX):
        _check_int("flag", flag, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    if not (_INT32_MIN <= version <= _INT32_MAX):
        _check_int("version", version, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    language = _LANGUAGE_NAME.get(command.language)
    if language is None:
        language = str(int(command.language))
    parts = ['{"code":', str(code)]
    ext = command.ext_fields
    if ext is not None:
        parts.append(',"extFields":{')
        parts.append(_json_ext(ext))
        parts.append("}")
    parts += (',"flag":', str(flag), ',"language":', language, ',"opaque":', str(opaque))
    remark = command.remark
    if remark is not None:
        parts += (',"remark":', _quote(remark))
    parts += (',"serializeTypeCurrentRPC":"JSON","version":', str(version), "}")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as e:
        raise EncodeError(f"header text is not encodable as UTF-8: {e}") from None


# Non-integer numbers become Decimals, so that an ext value 1e21 reads as Java's
# BigDecimal spells it ("1E+21") and nested numbers stay numbers.
_json_decode = json.JSONDecoder(parse_float=Decimal, parse_constant=str).decode


def _slow_int_field(header: Mapping[str, Any], key: str, default: int | None) -> int:
    value = header.get(key)
    if value is None:
        if default is None:
            raise MalformedFrame(f"JSON header has no {key!r}")
        return default
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,10}", value):
        value = int(value)  # fastjson accepts a quoted number for an int field
    if type(value) is int:
        if _INT32_MIN <= value <= _INT32_MAX:
            return value
        raise MalformedFrame(f"JSON header field {key!r} is out of int32 range: {value}")
    raise MalformedFrame(f"JSON header field {key!r} is not an integer: {value!r}")


def _ext_text(value: object) -> str:
    # What Java's Map<String, String> ends up holding when fastjson meets a non-string.
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_nested_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_quote(k) + ":" + _nested_json(v) for k, v in value.items()) + "}"
    return str(value)


def _nested_json(value: object) -> str:
    return _quote(value) if isinstance(value, str) else _ext_text(value)


#: A \\u escape of a UTF-16 surrogate (paired ones decode to one character; lone ones
#: decode to a code point no UTF-8 encoder writes).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_no_lone_surrogate(header: dict[str, Any]) -> None:
    """Refuse a header holding a lone surrogate (``"\\ud800"``): it could never be
    written back, as the binary header already refuses it."""
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end]
        raise MalformedFrame(
            f"JSON header holds a lone UTF-16 surrogate ({bad!a}), which is not text"
        ) from None


def _decode_json_header(text: str, body: bytes) -> RemotingCommand:
    try:
        header = _json_decode(text)
    except ValueError as e:
        raise MalformedFrame(f"JSON header is not valid JSON: {e}") from None
    if type(header) is not dict:
        raise MalformedFrame(f"JSON header is not an object: {text[:64]!r}")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None:
        _check_no_lone_surrogate(header)
    get = header.get
    code = get("code")
    opaque = get("opaque", 0)
    flag = get("flag", 0)
    version = get("version", 0)
    # One test for the common case; the slow path gives the precise error or coerces.
    if not (
        type(code) is int
        and type(opaque) is int
        and type(flag) is int
        and type(version) is int
        and _INT32_MIN <= code <= _INT32_MAX
        and _INT32_MIN <= opaque <= _INT32_MAX
        and _INT32_MIN <= flag <= _INT32_MAX
        and _INT32_MIN <= version <= _INT32_MAX
    ):
        code = _slow_int_field(header, "code", None)
        opaque = _slow_int_field(header, "opaque", 0)
        flag = _slow_int_field(header, "flag", 0)
        version = _slow_int_field(header, "version", 0)
    language_value = get("language")
    language: int
    if type(language_value) is str:
        found = _LANGUAGE_BY_NAME.get(language_value)
        if found is None:
            raise MalformedFrame(f"JSON header has an unknown language {language_value!r}")
        language = found
    elif language_value is None:
        language = LanguageCode.JAVA
    elif type(language_value) is int:
        language = _LANGUAGE_BY_VALUE.get(language_value, language_value)
    else:
        raise MalformedFrame(f"JSON header field 'language' is invalid: {language_value!r}")
    remark = get("remark")
    if remark is not None and type(remark) is not str:
        raise MalformedFrame(f"JSON header field 'remark' is not a string: {remark!r}")
    ext = get("extFields")
    if ext is not None:
        if type(ext) is not dict:
            raise MalformedFrame(f"JSON header field 'extFields' is not an object: {ext!r}")
        for value in ext.values():
            if type(value) is not str:
                ext = {key: _ext_text(value) for key, value in ext.items() if value is not None}
                break
        ext = MappingProxyType(ext)
    return _from_wire(code, language, version, opaque, flag, remark, ext, body, _JSON)


# ---------------------------------------------------------------------------
# ROCKETMQ binary header
# ---------------------------------------------------------------------------


def _encode_binary_header(command: RemotingCommand, opaque: int, flag: int) -> bytes:
    code = command.code
    version = command.version
    language = command.language
    if not (_INT16_MIN <= code <= _INT16_MAX):
        raise EncodeError(
            f"code {code} does not fit the int16 of a ROCKETMQ header "
            "(Java would truncate it); send this command with SerializeType.JSON"
        )
    if not (_INT16_MIN <= version <= _INT16_MAX):
        raise EncodeError(f"version {version} does not fit the int16 of a ROCKETMQ header")
    if not (0 <= language <= 255):
        raise EncodeError(f"language {language} does not fit the uint8 of a ROCKETMQ header")
    if not (_INT32_MIN <= opaque <= _INT32_MAX):
        _check_int("opaque", opaque, _INT32_MIN, _INT32_MAX, "int32 of a ROCKETMQ header")
    if not (_INT32_MIN <= flag <= _INT32_MAX):
        _check_int("flag", flag, _INT32_MIN, _INT32_MAX, "int32 of a ROCKETMQ header")
    try:
        remark = command.remark.encode("utf-8") if command.remark else b""
        parts = [_BIN_FIXED.pack(code, language, version, opaque, flag, len(remark)), remark]
        ext = command.ext_fields
        if ext:
            entries: list[bytes] = []
            pack16 = _INT16.pack
            pack32 = _INT32.pack
            for key, value in ext.items():
                k = key.encode("utf-8")
                v = value.encode("utf-8")
                if len(k) > _INT16_MAX:
                    raise EncodeError(
                        f"ext_fields key of {len(k)} bytes does not fit a ROCKETMQ header"
                    )
                entries += (pack16(len(k)), k, pack32(len(v)), v)
            ext_bytes = b"".join(entries)
            parts += (_INT32.pack(len(ext_bytes)), ext_bytes)
        else:
            parts.append(b"\x00\x00\x00\x00")
    except UnicodeEncodeError as e:
        raise EncodeError(f"header text is not encodable as UTF-8: {e}") from None
    return b"".join(parts)


def _decode_ext(region: bytes | bytearray) -> dict[str, str]:
    """The ext_fields entries of a ROCKETMQ header: ``int16 key length, key, int32 value
    length, value``, repeated to the end of ``region``.

    This loop is most of the cost of decoding a binary header, hence its shape: lengths
    read byte-wise (faster than struct for short entries), literal constants, and an
    all-ASCII region (the usual case) decoded once and sliced as text.
    """
    fields: dict[str, str] = {}
    end = len(region)
    text = str(region, "ascii") if region.isascii() else None
    pos = 0
    while pos < end:
        key_len = (region[pos] << 8) | region[pos + 1]
        key_end = pos + 2 + key_len
        value_start = key_end + 4
        if key_len > 0x7FFF or value_start > end:
            raise MalformedFrame(
                f"ROCKETMQ header ext_fields key length {key_len} runs past the header"
            )
        value_end = value_start + (
            (region[key_end] << 24)
            | (region[key_end + 1] << 16)
            | (region[key_end + 2] << 8)
            | region[key_end + 3]
        )
        if value_end > end:
            raise MalformedFrame(
                f"ROCKETMQ header ext_fields value length {value_end - value_start} "
                "runs past the header"
            )
        if text is None:
            fields[str(region[pos + 2 : key_end], "utf-8")] = str(
                region[value_start:value_end], "utf-8"
            )
        else:
            fields[text[pos + 2 : key_end]] = text[value_start:value_end]
        pos = value_end
    return fields


def _decode_binary_header(buf: Any, start: int, end: int, body: bytes) -> RemotingCommand:
    if end - start < _BIN_FIXED_SIZE + 4:
        raise MalformedFrame(
            f"ROCKETMQ header of {end - start} bytes is shorter than its 21-byte fixed part"
        )
    # One unpack reads the fixed part and, when there is no remark (most requests), the
    # ext_fields length after it too.
    code, language, version, opaque, flag, remark_len, ext_len = _BIN_FIXED_EXT.unpack_from(
        buf, start
    )
    pos = start + _BIN_FIXED_SIZE
    if remark_len < 0 or pos + remark_len + 4 > end:
        raise MalformedFrame(f"ROCKETMQ header remark length {remark_len} runs past the header")
    try:
        if remark_len:
            remark: str | None = str(buf[pos : pos + remark_len], "utf-8")
            pos += remark_len
            (ext_len,) = _INT32.unpack_from(buf, pos)
        else:
            remark = None
        pos += 4
        if ext_len < 0 or pos + ext_len != end:
            raise MalformedFrame(
                f"ROCKETMQ header ext_fields length {ext_len} does not end at the header's "
                f"end ({end - pos} bytes left)"
            )
        ext = MappingProxyType(_decode_ext(buf[pos:end])) if ext_len else None
    except IndexError:
        raise MalformedFrame("ROCKETMQ header ext_fields entry is cut short") from None
    except UnicodeDecodeError as e:
        raise MalformedFrame(f"ROCKETMQ header holds text that is not UTF-8: {e}") from None
    return _from_wire(
        code,
        _LANGUAGE_BY_VALUE.get(language, language),
        version,
        opaque,
        flag,
        remark,
        ext,
        body,
        _ROCKETMQ,
    )


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


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


def _decode_frame_at(buf: Any, pos: int, total: int, type_word: int) -> RemotingCommand:
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
        return _decode_binary_header(buf, start, end, body)
    if stype == 0:
        try:
            text = str(buf[start:end], "utf-8")
        except UnicodeDecodeError as e:
            raise MalformedFrame(f"JSON header is not UTF-8: {e}") from None
        return _decode_json_header(text, body)
    raise MalformedFrame(f"unknown serialize type {stype} in the header-length word")


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

    After a :class:`~rmqtwist.errors.ProtocolError` the decoder is dead: every later
    ``feed`` raises the same error. The commands decoded before the bad frame in the
    failing call are on the error's ``decoded`` list.
    """

    __slots__ = ("_buffer", "_error", "_first", "_need", "max_frame_length")

    def __init__(self, max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH) -> None:
        if max_frame_length < 8:
            raise ValueError(f"max_frame_length must be at least 8, got {max_frame_length}")
        self.max_frame_length = max_frame_length
        self._buffer = bytearray()
        self._need = 4  # bytes the buffer must hold before parsing is worth trying
        self._first = True
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of their frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[RemotingCommand]:
        """Add ``data``; return the commands of every frame it completes, in order."""
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
        unpack = _PREFIX.unpack_from
        try:
            if self._first and size >= 4:
                wrong = sniff_wrong_protocol(bytes(source[:16]))  # once per connection
                if wrong is not None:
                    raise wrong
                self._first = False
            while size - pos >= 8:
                total, type_word = unpack(source, pos)
                if total < 4 or total + 4 > limit:
                    _check_prefix(total, limit)
                if size - pos - 4 < total:
                    self._need = total + 4
                    break
                commands.append(_decode_frame_at(source, pos, total, type_word))
                pos += 4 + total
            else:
                if size - pos >= 4:
                    (total,) = _INT32.unpack_from(source, pos)
                    _check_prefix(total, limit)
                    self._need = total + 4
                else:
                    self._need = 4
        except Exception as e:
            error = (
                e if isinstance(e, ProtocolError) else MalformedFrame(f"undecodable frame: {e!r}")
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
