"""The zlib bodies of large messages: :func:`compress_body` and :func:`decompress_body`."""

from __future__ import annotations

import zlib
from typing import Final

from rmqtwist.errors import MalformedMessage

#: Producers compress bodies of this many bytes or more (Java's compressMsgBodyOverHowmuch).
COMPRESS_OVER: Final = 4096


def compress_body(body: bytes, level: int = 5) -> bytes:
    """``body`` as a zlib stream (RFC 1950), as Java's Deflater at ``level`` writes it."""
    return zlib.compress(body, level)


_COMPRESSION_NAMES: Final = {1: "LZ4", 2: "ZSTD"}


def decompress_body(body: bytes, sys_flag: int) -> bytes:
    """``body`` inflated when ``sys_flag`` has COMPRESSED (0x1), else ``body`` itself.

    The compression type (bits 8-10) 0 or 3 is zlib; LZ4, ZSTD (only Java producers
    write those) and unknown types raise MalformedMessage, as does a broken stream.
    """
    if not sys_flag & 0x1:  # COMPRESSED
        return body
    kind = (sys_flag >> 8) & 0x7
    if kind in (0, 3):
        try:
            return zlib.decompress(body)
        except zlib.error as e:
            raise MalformedMessage(f"the compressed body is not a valid zlib stream: {e}") from None
    name = _COMPRESSION_NAMES.get(kind, f"an unknown type ({kind})")
    raise MalformedMessage(
        f"the body is compressed with {name} (SYSFLAG 0x{sys_flag & 0xFFFFFFFF:X}); "
        "only zlib is supported"
    )
