"""What both stores need from a stored record (broker.md §4): fixed positions, the check an
appended record must pass, and the store-time search of ``offset_for_timestamp``."""

from __future__ import annotations

import mmap
import struct
from bisect import bisect_left
from collections.abc import Callable, Sequence

from rmqtwist.broker.store.interface import StoreError

__all__ = [
    "MAGIC_CODES",
    "MAX_RECORD_SIZE",
    "MIN_RECORD_SIZE",
    "PHYSICAL_OFFSET_POS",
    "SCAN_LIMIT",
    "Data",
    "check_record",
    "check_tag_hashes",
    "nearest_index",
    "physical_offset_of",
    "record_key",
    "set_offsets",
    "store_timestamp_of",
]

#: The smallest record there is: V1, IPv4 hosts, empty body, topic and properties.
MIN_RECORD_SIZE = 91
#: The largest record either store takes (Apache's maxMessageSize is 4 MiB of body).
MAX_RECORD_SIZE = 64 * 1024 * 1024
PHYSICAL_OFFSET_POS = 28
#: V1 and V2 magic codes as the signed int32 a record holds.
MAGIC_CODES = frozenset({-626843481, -626843477})
#: A filtered read looks at no more than this many entries (or ``max_count`` if more),
#: as Apache's pull scans at most 16,000 bytes of 20-byte consume-queue entries.
SCAN_LIMIT = 800

#: What records are read from: a chunk, a slice, a mapped segment.
Data = bytes | bytearray | memoryview | mmap.mmap

_BORNHOST_V6 = 0x10
_STOREHOST_V6 = 0x20
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_OFFSETS = struct.Struct(">qq")
# size, magic, body crc, queue id, flag, queue offset, physical offset, sys flag
_HEAD = struct.Struct(">iiiiiqqi")


def set_offsets(record: bytearray, queue_offset: int, physical_offset: int) -> None:
    """Write the queue and physical offsets into ``record[20:36]``."""
    _OFFSETS.pack_into(record, 20, queue_offset, physical_offset)


def physical_offset_of(data: Data, pos: int) -> int:
    """The physical offset written in the record at ``pos``."""
    value: int = _I64.unpack_from(data, pos + PHYSICAL_OFFSET_POS)[0]
    return value


def store_timestamp_of(data: Data, pos: int) -> int:
    """The store time of the record at ``pos`` (at 56, or 68 after an IPv6 born host)."""
    sys_flag: int = _I32.unpack_from(data, pos + 36)[0]
    value: int = _I64.unpack_from(data, pos + (68 if sys_flag & _BORNHOST_V6 else 56))[0]
    return value


def record_key(data: Data, pos: int, end: int) -> tuple[bytes, int]:
    """(topic as UTF-8, queue id) of the record at ``data[pos:end]``; ValueError if its
    fixed fields do not add up (bad magic, a body or topic running past ``end``)."""
    if end - pos < MIN_RECORD_SIZE:
        raise ValueError("shorter than any record")
    _size, magic, _crc, queue_id, _flag, _qo, _po, sys_flag = _HEAD.unpack_from(data, pos)
    if magic not in MAGIC_CODES:
        raise ValueError(f"bad magic code {magic & 0xFFFFFFFF:#x}")
    at = pos + 84
    if sys_flag & _BORNHOST_V6:
        at += 12
    if sys_flag & _STOREHOST_V6:
        at += 12
    if at + 4 > end:
        raise ValueError("the hosts run past the end")
    body_length: int = _I32.unpack_from(data, at)[0]
    at += 4 + body_length
    if body_length < 0 or at + 1 > end:
        raise ValueError(f"the body length {body_length} runs past the end")
    if magic == -626843481:
        topic_length = data[at]
        at += 1
    else:
        topic_length = (data[at] << 8) | data[at + 1]
        at += 2
    if at + topic_length + 2 > end:
        raise ValueError(f"the topic length {topic_length} runs past the end")
    return bytes(data[at : at + topic_length]), queue_id


def check_record(topic: str, queue_id: int, record: bytearray) -> int:
    """The size of ``record``, after checking that it is one whole record of that queue
    (its length field, magic, topic and queue id); :class:`StoreError` if not."""
    size = len(record)
    if size < MIN_RECORD_SIZE or size > MAX_RECORD_SIZE:
        raise StoreError(f"a record of {size} bytes cannot be stored")
    if _I32.unpack_from(record, 0)[0] != size:
        raise StoreError(f"the record's length field does not match its {size} bytes")
    try:
        key = record_key(record, 0, size)
    except ValueError as e:
        raise StoreError(f"not a stored-message record: {e}") from None
    if key != (topic.encode("utf-8"), queue_id):
        raise StoreError(f"the record is for queue {key[0]!r}:{key[1]}, not {topic!r}:{queue_id}")
    return size


def check_tag_hashes(tag_hashes: Sequence[int]) -> None:
    """StoreError unless each is a signed 32-bit int (what Java's String.hashCode gives)."""
    for value in tag_hashes:
        if not -0x80000000 <= value <= 0x7FFFFFFF:
            raise StoreError(f"the tag hash {value} is not a signed 32-bit int")


def nearest_index(lo: int, hi: int, timestamp: int, time_at: Callable[[int], int]) -> int:
    """Among entries ``lo..hi-1`` (store times non-decreasing), the first whose time is
    ``timestamp``, else the nearer of its neighbours (the earlier on a tie)."""
    i = bisect_left(range(lo, hi), timestamp, key=time_at) + lo
    if i < hi and time_at(i) == timestamp:
        return i
    if i == lo:
        return lo
    if i == hi:
        return hi - 1
    return i if time_at(i) - timestamp < timestamp - time_at(i - 1) else i - 1
