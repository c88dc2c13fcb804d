"""What a record's header says about it: the magic codes and the SYSFLAG bits."""

from __future__ import annotations

import enum
from typing import Final

#: The record magic code (Java writes it as the int32 -626843481): 1-byte topic length.
MAGIC_CODE_V1: Final = 0xDAA320A7
#: RocketMQ 5's magic code for records whose topic length is a 2-byte short.
MAGIC_CODE_V2: Final = 0xDAA320AB


class MessageSysFlag(enum.IntFlag):
    """The bits of a record's SYSFLAG (Java's ``MessageSysFlag``)."""

    COMPRESSED = 0x1
    MULTI_TAGS = 0x2
    TRANSACTION_PREPARED = 0x4
    TRANSACTION_COMMIT = 0x8
    TRANSACTION_ROLLBACK = 0xC
    BORNHOST_V6 = 0x10
    STOREHOST_V6 = 0x20
    NEED_UNWRAP = 0x40
    INNER_BATCH = 0x80
    COMPRESSION_LZ4 = 0x100
    COMPRESSION_ZSTD = 0x200
    COMPRESSION_ZLIB = 0x300


def transaction_type(sys_flag: int) -> int:
    """The transaction part of ``sys_flag``: 0 (none), PREPARED, COMMIT or ROLLBACK."""
    return sys_flag & 0xC
