"""The stored record, the commit-log entry that a PULL body concatenates (broker.md
section 4): :func:`encode_record`, :func:`set_record_offsets`, :func:`summarize_record`
(a cheap look, for a store's index), :func:`decode_record` and :func:`decode_records`.

Decoding checks every length against the record and the buffer: a lying one raises
:class:`~rmqtwist.errors.MalformedMessage` naming the field and the byte. encode_record
and decode_records are on the broker's hot path: precompiled Structs, caches, plain ints.
"""

from __future__ import annotations

import struct
import zlib
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from rmqtwist.errors import MalformedMessage
from rmqtwist.message import _hosts
from rmqtwist.message._flags import MAGIC_CODE_V1, MAGIC_CODE_V2
from rmqtwist.message._hosts import _CACHE_MAX, pack_host, unpack_host
from rmqtwist.message._model import MessageExt, _split_wire, _unchecked
from rmqtwist.message._properties import decode_properties

#: The int64 queue (logical) offset lives at bytes 20..28 of every record.
RECORD_QUEUE_OFFSET_POS: Final = 20
#: The int64 physical (commit-log) offset lives at bytes 28..36 of every record.
RECORD_PHYSICAL_OFFSET_POS: Final = 28

# Hot path: the Structs and the host caches whose methods encode_record and decode_records
# call are bound here by assignment, not imported by name. CPython 3.11 compiles
# ``name.method()`` on an imported name as an attribute load plus a bound-method call
# (no LOAD_METHOD), measurably slower per record.
_INT8 = struct.Struct(">b")
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_OFFSETS = struct.Struct(">qq")
_INT16_MAX = (1 << 15) - 1
_packed_hosts: Final = _hosts._packed_hosts  # the caches pack_host and unpack_host fill
_host_texts: Final = _hosts._host_texts


def _fixed_part(born_size: int, store_size: int) -> struct.Struct:
    # TOTALSIZE, MAGICCODE, BODYCRC, QUEUEID, FLAG, QUEUEOFFSET, PHYSICALOFFSET, SYSFLAG,
    # BORNTIMESTAMP, BORNHOST, STORETIMESTAMP, STOREHOST, RECONSUMETIMES,
    # PREPAREDTRANSACTIONOFFSET, BODYLENGTH
    return struct.Struct(f">iIiiiqqiq{born_size}sq{store_size}siqi")


_HOSTS_V6: Final = 0x30  # BORNHOST_V6 | STOREHOST_V6, as a plain int (IntFlag ops are slow)
# The fixed part of a record by its SYSFLAG & 0x30: 88, 100, 100 or 112 bytes.
_FIXED: Final = {
    0x00: _fixed_part(8, 8),
    0x10: _fixed_part(20, 8),
    0x20: _fixed_part(8, 20),
    0x30: _fixed_part(20, 20),
}
_SYSFLAG_POS: Final = 36
_MIN_RECORD: Final = _FIXED[0].size + 1 + 2  # V1, IPv4 hosts, empty body, topic, properties
_topic_fields: dict[str, tuple[int, bytes]] = {}


def _topic_field(topic: str) -> tuple[int, bytes]:
    # (magic, length-prefixed topic) with the magic chosen by the topic's length.
    cached = _topic_fields.get(topic)
    if cached is None:
        data = topic.encode("utf-8")
        if len(data) <= 127:
            cached = (MAGIC_CODE_V1, _INT8.pack(len(data)) + data)
        elif len(data) <= _INT16_MAX:
            cached = (MAGIC_CODE_V2, _INT16.pack(len(data)) + data)
        else:
            raise ValueError(f"topic of {len(data)} UTF-8 bytes; a record holds at most 32767")
        if len(_topic_fields) >= _CACHE_MAX:
            _topic_fields.clear()
        _topic_fields[topic] = cached
    return cached


def encode_record(
    *,
    topic: str,
    body: bytes,
    properties: str,
    queue_id: int,
    flag: int = 0,
    queue_offset: int = 0,
    physical_offset: int = 0,
    sys_flag: int = 0,
    born_timestamp: int,
    born_host: str,
    store_timestamp: int,
    store_host: str,
    reconsume_times: int = 0,
    prepared_transaction_offset: int = 0,
    magic: int | None = None,
) -> bytearray:
    """One stored record (broker.md section 4), ready for a store or a PULL body.

    ``properties`` is the already encoded string (:func:`encode_properties`). The
    BORNHOST_V6/STOREHOST_V6 bits of ``sys_flag`` are set or cleared from the hosts; the
    body CRC is computed here. ``magic`` None picks V1, or V2 when the topic is over 127
    UTF-8 bytes. A value that does not fit its field raises ValueError.
    """
    born = _packed_hosts.get(born_host) or pack_host(born_host)
    store = _packed_hosts.get(store_host) or pack_host(store_host)
    hosts = (0x10 if len(born) == 20 else 0) | (0x20 if len(store) == 20 else 0)
    record_magic, topic_field = _topic_field(topic)
    if magic is not None and magic & 0xFFFFFFFF != record_magic:
        record_magic = _other_magic(topic, magic)
        topic_field = _INT16.pack(len(topic_field) - 1) + topic_field[1:]
    props = properties.encode("utf-8")
    props_size = len(props)
    if props_size > _INT16_MAX:
        raise ValueError(f"properties of {props_size} UTF-8 bytes; a record holds at most 32767")
    fixed = _FIXED[hosts]
    body_size = len(body)
    try:
        record = bytearray(
            fixed.pack(
                fixed.size + body_size + len(topic_field) + 2 + props_size,
                record_magic,
                zlib.crc32(body) & 0x7FFFFFFF,
                queue_id,
                flag,
                queue_offset,
                physical_offset,
                (sys_flag & ~_HOSTS_V6) | hosts,
                born_timestamp,
                born,
                store_timestamp,
                store,
                reconsume_times,
                prepared_transaction_offset,
                body_size,
            )
        )
    except struct.error as e:
        raise ValueError(f"a record field is out of range: {e}") from None
    record += body
    record += topic_field
    record += _INT16.pack(props_size)
    record += props
    return record


def _other_magic(topic: str, magic: int) -> int:
    # An explicit magic that differs from the automatic one: only V2 for a short topic.
    magic &= 0xFFFFFFFF
    if magic == MAGIC_CODE_V2:
        return magic
    if magic == MAGIC_CODE_V1:
        raise ValueError(
            f"topic of {len(topic.encode('utf-8'))} UTF-8 bytes does not fit the 1-byte "
            "length of a V1 record (at most 127)"
        )
    raise ValueError(f"unknown magic code 0x{magic:08X}")


def set_record_offsets(record: bytearray, queue_offset: int, physical_offset: int) -> None:
    """Write the queue and physical offsets into ``record`` (bytes 20..36), in place."""
    _OFFSETS.pack_into(record, RECORD_QUEUE_OFFSET_POS, queue_offset, physical_offset)


_Buffer = bytes | bytearray | memoryview


_Located = tuple[tuple[Any, ...], int, int, int, int, int, int]
# TOTALSIZE, MAGICCODE and SYSFLAG in one go.
_PEEK = struct.Struct(">iI28xi")


def _locate(data: _Buffer, pos: int) -> _Located:
    """Check every length of the record at ``pos``.

    Returns (the fixed fields, record end, body end, topic position, topic end,
    properties position, magic); the body starts where the fixed fields end.
    """
    left = len(data) - pos
    if left < _PEEK.size:
        if left < 4:
            raise MalformedMessage(
                f"record at byte {pos} is cut short: {left} bytes left, TOTALSIZE needs 4"
            )
        total = magic = sys_flag = _INT32.unpack_from(data, pos)[0]
    else:
        total, magic, sys_flag = _PEEK.unpack_from(data, pos)
    if total > left:
        raise MalformedMessage(
            f"record at byte {pos}: TOTALSIZE {total} runs past the end of the data "
            f"({left} bytes left)"
        )
    if total < _MIN_RECORD:
        raise MalformedMessage(
            f"record at byte {pos}: TOTALSIZE {total} is less than the smallest record "
            f"({_MIN_RECORD} bytes)"
        )
    if magic == MAGIC_CODE_V1:
        topic_size_len = 1
    elif magic == MAGIC_CODE_V2:
        topic_size_len = 2
    else:
        raise MalformedMessage(
            f"record at byte {pos}: unknown MAGICCODE 0x{magic:08X} at byte {pos + 4}"
        )
    fixed = _FIXED[sys_flag & _HOSTS_V6]
    end = pos + total
    body_pos = pos + fixed.size
    if body_pos + topic_size_len + 2 > end:
        raise MalformedMessage(
            f"record at byte {pos}: TOTALSIZE {total} is less than the fixed fields of "
            f"SYSFLAG 0x{sys_flag & 0xFFFFFFFF:X} ({fixed.size + topic_size_len + 2} bytes)"
        )
    values = fixed.unpack_from(data, pos)
    body_size = values[14]
    body_end = body_pos + body_size
    if body_size < 0 or body_end + topic_size_len + 2 > end:
        raise MalformedMessage(
            f"record at byte {pos}: BODYLENGTH {body_size} at byte {body_pos - 4} "
            f"{'is negative' if body_size < 0 else 'runs past the record'} "
            f"(TOTALSIZE {total})"
        )
    if topic_size_len == 1:
        topic_size = _INT8.unpack_from(data, body_end)[0]
    else:
        topic_size = _INT16.unpack_from(data, body_end)[0]
    topic_pos = body_end + topic_size_len
    topic_end = topic_pos + topic_size
    if topic_size < 0 or topic_end + 2 > end:
        raise MalformedMessage(
            f"record at byte {pos}: TOPICLENGTH {topic_size} at byte {body_end} "
            f"{'is negative' if topic_size < 0 else 'runs past the record'} "
            f"(TOTALSIZE {total})"
        )
    props_size = _INT16.unpack_from(data, topic_end)[0]
    props_pos = topic_end + 2
    if props_pos + props_size != end:
        raise MalformedMessage(
            f"record at byte {pos}: PROPERTIESLENGTH {props_size} at byte {topic_end} "
            f"ends the record at byte {props_pos + props_size}, but TOTALSIZE {total} "
            f"ends it at byte {end}"
        )
    return values, end, body_end, topic_pos, topic_end, props_pos, magic


def _tags_in(data: _Buffer, start: int, end: int) -> str | None:
    # The TAGS value decode_properties would find, without decoding every property.
    raw = bytes(data[start:end])
    i = raw.rfind(b"TAGS\x01")
    while i >= 0:
        if i == 0 or raw[i - 1] == 2:
            stop = raw.find(b"\x02", i + 5)
            if stop < 0:
                stop = len(raw)
            if stop > i + 5:
                return raw[i + 5 : stop].decode("utf-8", "replace")
        i = raw.rfind(b"TAGS\x01", 0, i)
    return None


class RecordSummary(NamedTuple):
    """What a store's index needs from one record (see :func:`summarize_record`)."""

    size: int
    topic: str
    queue_id: int
    queue_offset: int
    physical_offset: int
    sys_flag: int
    store_timestamp: int
    tags: str | None


def summarize_record(data: bytes | bytearray | memoryview, pos: int = 0) -> RecordSummary:
    """A cheap look at the record at ``pos``: sizes checked as :func:`decode_record`
    does (MalformedMessage if they lie), the body and most properties left unread."""
    values, end, _, topic_pos, topic_end, props_pos, _ = _locate(data, pos)
    return RecordSummary(
        end - pos,
        str(data[topic_pos:topic_end], "utf-8", "replace"),
        values[3],
        values[5],
        values[6],
        values[7],
        values[10],
        _tags_in(data, props_pos, end),
    )


def decode_record(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[MessageExt, int]:
    """The record at ``pos`` and the position just past it.

    Raises MalformedMessage, naming the field and its byte, when a length lies (runs
    past the record or the data, or disagrees with TOTALSIZE), the magic code is unknown
    or the data is cut short. Text that is not valid UTF-8 is decoded with U+FFFD, as
    Java does.
    """
    values, end, body_end, topic_pos, topic_end, props_pos, magic = _locate(data, pos)
    (
        total,
        _,
        body_crc,
        queue_id,
        flag,
        queue_offset,
        physical_offset,
        sys_flag,
        born_timestamp,
        born,
        store_timestamp,
        store,
        reconsume_times,
        prepared_transaction_offset,
        body_size,
    ) = values
    properties = (
        decode_properties(str(data[props_pos:end], "utf-8", "replace")) if props_pos < end else {}
    )
    tags, keys, delay_level = _split_wire(properties)
    message = _unchecked(
        MessageExt,
        str(data[topic_pos:topic_end], "utf-8", "replace"),
        bytes(data[body_end - body_size : body_end]),
        tags,
        keys,
        MappingProxyType(properties),
        flag,
        delay_level,
        queue_id,
        queue_offset,
        physical_offset,
        sys_flag,
        born_timestamp,
        _host_texts.get(born) or unpack_host(born),
        store_timestamp,
        _host_texts.get(store) or unpack_host(store),
        reconsume_times,
        prepared_transaction_offset,
        body_crc,
        total,
        magic,
    )
    return message, end


def decode_records(body: bytes | bytearray | memoryview) -> list[MessageExt]:
    """Every record of a PULL body, in order, in linear time (MalformedMessage as
    :func:`decode_record`)."""
    messages = []
    pos = 0
    size = len(body)
    while pos < size:
        message, pos = decode_record(body, pos)
        messages.append(message)
    return messages
