"""The binary ROCKETMQ header."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from rmqtwist.codec._layout import (
    _BIN_FIXED,
    _BIN_FIXED_EXT,
    _BIN_FIXED_SIZE,
    _INT16,
    _INT16_MAX,
    _INT16_MIN,
    _INT32,
    _INT32_MAX,
    _INT32_MIN,
    _LANGUAGE_BY_VALUE,
    _ROCKETMQ,
    _check_int,
)
from rmqtwist.command import RemotingCommand, _from_wire
from rmqtwist.errors import EncodeError, HeaderTooLarge, MalformedFrame


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


def _decode_ext(region: bytes | bytearray, max_fields: int | None = None) -> dict[str, str]:
    """The ext_fields entries of a ROCKETMQ header: ``int16 key length, key, int32 value
    length, value``, repeated to the end of ``region``.

    This loop is most of the cost of decoding a binary header, hence its shape: lengths
    read byte-wise (faster than struct for short entries), literal constants, and an
    all-ASCII region (the usual case) decoded once and sliced as text. More than
    ``max_fields`` entries raise :class:`~rmqtwist.errors.HeaderTooLarge` as soon as
    the one past the limit is met.
    """
    fields: dict[str, str] = {}
    end = len(region)
    text = str(region, "ascii") if region.isascii() else None
    pos = 0
    limit = end if max_fields is None else max_fields  # an entry takes 6 bytes or more
    left = limit
    while pos < end:
        if left == 0:
            raise HeaderTooLarge(
                f"ROCKETMQ header holds more than {limit} ext_fields, the limit", limit + 1, limit
            )
        left -= 1
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


def _decode_binary_header(
    buf: Any, start: int, end: int, body: bytes, max_ext_fields: int | None = None
) -> RemotingCommand:
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
        ext = MappingProxyType(_decode_ext(buf[pos:end], max_ext_fields)) if ext_len else None
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
