"""Pure encode/decode of remoting frames: bytes in, commands out. No I/O, no Twisted.

A frame is ``int32 total | int32 (serialize_type << 24 | header_length) | header | body``
(big-endian; ``total`` counts everything after itself). The header is JSON (written
byte-compatible with what Java's fastjson writes) or the binary ROCKETMQ layout.

- :func:`encode_frame` / :func:`decode_frame`: one command <-> one whole frame.
- :class:`FrameDecoder`: incremental; accepts data split at any byte, checks the length
  as soon as the 4-byte prefix is readable, buffers linearly.
"""

from rmqtwist.codec._frame import (
    FrameDecoder,
    decode_frame,
    decode_header,
    encode_frame,
    encode_header,
)
from rmqtwist.codec._layout import (
    DEFAULT_MAX_EXT_FIELDS,
    DEFAULT_MAX_FRAME_LENGTH,
    DEFAULT_MAX_HEADER_LENGTH,
)
from rmqtwist.codec._sniff import sniff_wrong_protocol

__all__ = [
    "DEFAULT_MAX_EXT_FIELDS",
    "DEFAULT_MAX_FRAME_LENGTH",
    "DEFAULT_MAX_HEADER_LENGTH",
    "FrameDecoder",
    "decode_frame",
    "decode_header",
    "encode_frame",
    "encode_header",
    "sniff_wrong_protocol",
]
