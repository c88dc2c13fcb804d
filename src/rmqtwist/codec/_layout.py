"""The frame's numbers: the default limit, int ranges, Structs and the code tables that the
encoders and decoders share."""

from __future__ import annotations

import struct
from typing import Final

from rmqtwist.codes import LanguageCode, SerializeType
from rmqtwist.errors import EncodeError

#: Java's default ``com.rocketmq.remoting.frameMaxLength``: counts the 4-byte prefix.
DEFAULT_MAX_FRAME_LENGTH: Final = 16 * 1024 * 1024

#: Largest header accepted by default (bytes, the header alone). Java's clients send at most
#: a few hundred bytes (454 in the 4.9.8 transcripts: a SEND_MESSAGE_V2); a send's
#: properties, the one large field, are limited to 32767 bytes by the broker's store
#: format, and JSON escaping of their separators at most triples that in practice.
DEFAULT_MAX_HEADER_LENGTH: Final = 256 * 1024

#: Most ext_fields entries accepted in one header by default (Java's largest headers have
#: about 15; an ACL-signed one a few more).
DEFAULT_MAX_EXT_FIELDS: Final = 1024

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


def _check_int(name: str, value: int, low: int, high: int, fmt: str) -> None:
    if not (low <= value <= high):
        raise EncodeError(f"{name} {value} does not fit the {fmt}")
