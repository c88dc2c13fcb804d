"""Messages and the byte layouts that carry them. Pure: no Twisted, no I/O, time injected.

- :class:`Message` is what a producer sends (topic, body, tags, keys, other properties);
  :class:`MessageExt` is a stored message as a consumer gets it back.
- Properties travel as one string, ``k\\x01v\\x02k\\x01v``: :func:`encode_properties` and
  :func:`decode_properties` (with Java's parsing quirks); :class:`Property` names the keys.
- The stored record, the commit-log entry that a PULL body concatenates:
  :func:`encode_record`, :func:`set_record_offsets`, :func:`summarize_record` (a cheap look,
  for a store's index), :func:`decode_record` and :func:`decode_records`. Decoding checks
  every length against the record and the buffer: a lying one raises
  :class:`~rmqtwist.errors.MalformedMessage` naming the field and the byte.
- The body of SEND_BATCH_MESSAGE: :func:`encode_batch`, :func:`decode_batch`.
- Ids: :func:`offset_msg_id` (store host + commit-log offset, what a send response
  carries) and :class:`UniqueIdGenerator` (the client-made UNIQ_KEY). :func:`tag_hash` is
  Java's ``String.hashCode``, the tag code a consume queue filters on.
- :func:`compress_body` / :func:`decompress_body`: the zlib bodies of large messages.

Layouts are Apache RocketMQ 4.9's byte for byte, big-endian, plus 5.x's V2 magic code
(a 2-byte topic length) for topics over 127 UTF-8 bytes.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import ipaddress
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar

from rmqtwist.errors import MalformedMessage

__all__ = [
    "COMPRESS_OVER",
    "MAGIC_CODE_V1",
    "MAGIC_CODE_V2",
    "RECORD_PHYSICAL_OFFSET_POS",
    "RECORD_QUEUE_OFFSET_POS",
    "BatchItem",
    "Message",
    "MessageExt",
    "MessageSysFlag",
    "Property",
    "RecordSummary",
    "UniqueIdGenerator",
    "compress_body",
    "decode_batch",
    "decode_properties",
    "decode_record",
    "decode_records",
    "decompress_body",
    "encode_batch",
    "encode_properties",
    "encode_record",
    "offset_msg_id",
    "pack_host",
    "parse_offset_msg_id",
    "set_record_offsets",
    "summarize_record",
    "tag_hash",
    "transaction_type",
    "unpack_host",
]

#: The record magic code (Java writes it as the int32 -626843481): 1-byte topic length.
MAGIC_CODE_V1: Final = 0xDAA320A7
#: RocketMQ 5's magic code for records whose topic length is a 2-byte short.
MAGIC_CODE_V2: Final = 0xDAA320AB
#: Producers compress bodies of this many bytes or more (Java's compressMsgBodyOverHowmuch).
COMPRESS_OVER: Final = 4096
#: The int64 queue (logical) offset lives at bytes 20..28 of every record.
RECORD_QUEUE_OFFSET_POS: Final = 20
#: The int64 physical (commit-log) offset lives at bytes 28..36 of every record.
RECORD_PHYSICAL_OFFSET_POS: Final = 28


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


class Property:
    """Property names, spelled as Java's ``MessageConst`` spells them on the wire."""

    TAGS: Final = "TAGS"
    KEYS: Final = "KEYS"  # space-separated
    UNIQ_KEY: Final = "UNIQ_KEY"  # the client-made message id
    WAIT: Final = "WAIT"  # "true": wait for the store (the broker drops it)
    DELAY: Final = "DELAY"  # delay level
    RETRY_TOPIC: Final = "RETRY_TOPIC"
    REAL_TOPIC: Final = "REAL_TOPIC"
    REAL_QID: Final = "REAL_QID"
    TRAN_MSG: Final = "TRAN_MSG"  # "true": a half (prepared) message
    PGROUP: Final = "PGROUP"
    MIN_OFFSET: Final = "MIN_OFFSET"
    MAX_OFFSET: Final = "MAX_OFFSET"
    BUYER_ID: Final = "BUYER_ID"
    ORIGIN_MESSAGE_ID: Final = "ORIGIN_MESSAGE_ID"
    TRANSFER_FLAG: Final = "TRANSFER_FLAG"
    CORRECTION_FLAG: Final = "CORRECTION_FLAG"
    MQ2_FLAG: Final = "MQ2_FLAG"
    RECONSUME_TIME: Final = "RECONSUME_TIME"
    MSG_REGION: Final = "MSG_REGION"
    TRACE_ON: Final = "TRACE_ON"
    MAX_RECONSUME_TIMES: Final = "MAX_RECONSUME_TIMES"
    CONSUME_START_TIME: Final = "CONSUME_START_TIME"
    TRAN_PREPARED_QUEUE_OFFSET: Final = "TRAN_PREPARED_QUEUE_OFFSET"
    TRANSACTION_CHECK_TIMES: Final = "TRANSACTION_CHECK_TIMES"
    CHECK_IMMUNITY_TIME_IN_SECONDS: Final = "CHECK_IMMUNITY_TIME_IN_SECONDS"
    INSTANCE_ID: Final = "INSTANCE_ID"
    CORRELATION_ID: Final = "CORRELATION_ID"
    REPLY_TO_CLIENT: Final = "REPLY_TO_CLIENT"
    TTL: Final = "TTL"
    ARRIVE_TIME: Final = "ARRIVE_TIME"
    PUSH_REPLY_TIME: Final = "PUSH_REPLY_TIME"
    CLUSTER: Final = "CLUSTER"
    MSG_TYPE: Final = "MSG_TYPE"
    INNER_MULTI_DISPATCH: Final = "INNER_MULTI_DISPATCH"
    INNER_MULTI_QUEUE_OFFSET: Final = "INNER_MULTI_QUEUE_OFFSET"


_INT8 = struct.Struct(">b")
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_INT64 = struct.Struct(">q")
_OFFSETS = struct.Struct(">qq")
_INT16_MAX = (1 << 15) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1

# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


def encode_properties(properties: Mapping[str, str]) -> str:
    """``k\\x01v\\x02k\\x01v``, as Java's writer makes it (no final ``\\x02``).

    A key holding ``\\x01`` or ``\\x02``, or a value holding ``\\x02``, would change the
    meaning of the string, so it raises ValueError. (A value may hold ``\\x01``: Java's
    reader splits an entry at its first one.) Java's reader drops entries whose key or
    value is empty; :class:`Message` refuses those up front.
    """
    parts = []
    for key, value in properties.items():
        if "\x01" in key or "\x02" in key or "\x02" in value:
            raise ValueError(
                f"property {key!r}={value!r}: names cannot hold \\x01 or \\x02 and "
                "values cannot hold \\x02 (they separate properties on the wire)"
            )
        parts.append(key + "\x01" + value)
    return "\x02".join(parts)


def decode_properties(text: str) -> dict[str, str]:
    """The properties in ``text``, read as Java's reader does.

    A trailing ``\\x02`` is fine. An entry with no ``\\x01``, an empty name or an empty
    value is skipped; an entry is split at its first ``\\x01`` (so a value may hold more);
    a repeated name keeps the last value.
    """
    result: dict[str, str] = {}
    if text:
        for entry in text.split("\x02"):
            sep = entry.find("\x01")
            if 0 < sep < len(entry) - 1:
                result[entry[:sep]] = entry[sep + 1 :]
    return result


def tag_hash(tags: str | None) -> int:
    """Java's ``String.hashCode`` of ``tags`` (over UTF-16 code units), a signed int32:
    the tag code consume queues filter on. 0 for None or "".

    >>> tag_hash("TagA")
    2598919
    """
    if not tags:
        return 0
    return _java_string_hash(tags)


@functools.lru_cache(maxsize=4096)
def _java_string_hash(text: str) -> int:
    units = text.encode("utf-16-be", "surrogatepass")
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + (units[i] << 8 | units[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


# ---------------------------------------------------------------------------
# Hosts and ids
# ---------------------------------------------------------------------------

_CACHE_MAX = 4096
_packed_hosts: dict[str, bytes] = {}
_host_texts: dict[bytes, str] = {}


def _parse_ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{what}: {text!r} is not an IPv4 or IPv6 address (host names are not resolved)"
        ) from None


def _pack_host(address: str) -> bytes:
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not an 'ip:port' address")
    ip = _parse_ip(host, repr(address))
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 0xFFFF):
        raise ValueError(f"{address!r}: the port {port_text!r} is not a number in 0..65535")
    return ip.packed + _INT32.pack(int(port_text))


def pack_host(address: str) -> bytes:
    """A host as records store it: 4 (IPv4) or 16 (IPv6) address bytes, then the port as
    an int32. ``"1.2.3.4:5"`` gives 8 bytes, ``"[::1]:5"`` (or ``"::1:5"``) 20."""
    packed = _packed_hosts.get(address)
    if packed is None:
        packed = _pack_host(address)
        if len(_packed_hosts) >= _CACHE_MAX:
            _packed_hosts.clear()
        _packed_hosts[address] = packed
    return packed


def unpack_host(data: bytes) -> str:
    """The ``"ip:port"`` (``"[ip6]:port"``) text of a host packed as :func:`pack_host` does."""
    if type(data) is not bytes:
        data = bytes(data)
    text = _host_texts.get(data)
    if text is None:
        if len(data) == 8:
            text = f"{ipaddress.IPv4Address(data[:4])}:{_INT32.unpack_from(data, 4)[0]}"
        elif len(data) == 20:
            text = f"[{ipaddress.IPv6Address(data[:16])}]:{_INT32.unpack_from(data, 16)[0]}"
        else:
            raise ValueError(f"a packed host is 8 or 20 bytes, not {len(data)}")
        if len(_host_texts) >= _CACHE_MAX:
            _host_texts.clear()
        _host_texts[data] = text
    return text


def offset_msg_id(store_host: str, physical_offset: int) -> str:
    """The offset message id: packed store host + int64 commit-log offset, in upper-case
    hex (32 chars for an IPv4 store host, 56 for IPv6). What a send response's msgId is."""
    try:
        return (pack_host(store_host) + _INT64.pack(physical_offset)).hex().upper()
    except struct.error:
        raise ValueError(f"physical offset {physical_offset} does not fit an int64") from None


def parse_offset_msg_id(msg_id: str) -> tuple[str, int]:
    """(store host, physical offset) of an offset message id; ValueError if it is not one."""
    if len(msg_id) in (32, 56):
        try:
            raw = bytes.fromhex(msg_id)
        except ValueError:
            pass
        else:
            if len(raw) * 2 == len(msg_id):
                host_size = 8 if len(raw) == 16 else 20
                return unpack_host(raw[:host_size]), _INT64.unpack_from(raw, host_size)[0]
    raise ValueError(f"{msg_id!r} is not an offset message id (32 or 56 hex digits)")


def _month_bounds(ms: int) -> tuple[int, int]:
    # Java's Calendar in the default (local) time zone: this month's start, the next one's.
    start = datetime.datetime.fromtimestamp(ms / 1000).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    if start.month == 12:
        following = start.replace(year=start.year + 1, month=1)
    else:
        following = start.replace(month=start.month + 1)
    return round(start.timestamp() * 1000), round(following.timestamp() * 1000)


class UniqueIdGenerator:
    """Makes UNIQ_KEY message ids laid out as Java's ``MessageClientIDSetter`` lays them.

    Upper-case hex of: the client's IP (4 or 16 bytes), the pid (2 bytes), a random
    stand-in for Java's class-loader hash (4 bytes), milliseconds since the start of the
    current month in local time (4 bytes), and a counter (2 bytes): 32 hex digits for an
    IPv4 address, 56 for IPv6. ``clock`` returns seconds since the epoch.
    """

    def __init__(
        self,
        address: str = "127.0.0.1",
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        ip = _parse_ip(address, "UniqueIdGenerator address")
        if pid is None:
            pid = os.getpid()
        fixed = ip.packed + struct.pack(">HI", pid & 0xFFFF, int.from_bytes(os.urandom(4)))
        self._prefix = fixed.hex().upper()
        self._clock = clock
        self._counter = 0
        self._month_start, self._next_month_start = _month_bounds(self._now())

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def next_id(self) -> str:
        """A new id. Ids from one generator differ for 65536 calls within a millisecond."""
        now = self._now()
        if now >= self._next_month_start:
            self._month_start, self._next_month_start = _month_bounds(now)
        diff = (now - self._month_start) & 0xFFFFFFFF  # Java's (int) cast
        if diff >= 0xFFF0BDC1:  # -1,000,000 < diff < 0 as an int32: clock stepped back
            diff = 0
        counter = self._counter
        self._counter = (counter + 1) & 0xFFFF
        return f"{self._prefix}{diff:08X}{counter:04X}"


# ---------------------------------------------------------------------------
# Compression
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

_EMPTY_PROPERTIES: Mapping[str, str] = MappingProxyType({})
_FIELD_PROPERTIES: Final = (Property.TAGS, Property.KEYS, Property.DELAY)


def _split_keys(text: str) -> tuple[str, ...]:
    return tuple([key for key in text.split(" ") if key])


def _normalise(message: Message) -> None:
    # Shared by Message and MessageExt: the canonical types of keys, properties, body, tags.
    keys = message.keys
    if type(keys) is not tuple:
        keys = _split_keys(keys) if isinstance(keys, str) else tuple(keys)
        object.__setattr__(message, "keys", keys)
    if type(message.properties) is not MappingProxyType:
        object.__setattr__(message, "properties", MappingProxyType(dict(message.properties)))
    if type(message.body) is not bytes:
        object.__setattr__(message, "body", bytes(message.body))
    if message.tags == "":
        object.__setattr__(message, "tags", None)


def _check_text(what: str, text: object, *, allow_space: bool = True) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, not {type(text).__name__} ({text!r})")
    if "\x01" in text or "\x02" in text or (not allow_space and " " in text):
        extra = "" if allow_space else " or a space"
        raise ValueError(
            f"{what} {text!r} holds \\x01 or \\x02{extra}, which separate properties on the wire"
        )


def _validate(message: Message) -> None:
    if not isinstance(message.topic, str) or not message.topic:
        raise ValueError(f"a message needs a non-empty topic, not {message.topic!r}")
    if not _INT32_MIN <= message.flag <= _INT32_MAX:
        raise ValueError(f"flag {message.flag} does not fit an int32")
    if not 0 <= message.delay_level <= _INT32_MAX:
        raise ValueError(f"delay_level must be 0 (no delay) or more, not {message.delay_level}")
    if message.tags is not None:
        _check_text("tags", message.tags)
    for key in message.keys:
        _check_text("a key", key, allow_space=False)
        if not key:
            raise ValueError("keys cannot be empty strings")
    for name, value in message.properties.items():
        _check_text("property name", name)
        _check_text(f"property {name!r}", value)
        if not name or not value:
            raise ValueError(
                f"property {name!r}={value!r}: names and values cannot be empty "
                "(Java's reader drops such entries)"
            )
        if name in _FIELD_PROPERTIES:
            field_name = "tags" if name == "TAGS" else "keys" if name == "KEYS" else "delay_level"
            raise ValueError(f"pass {field_name}= rather than a {name} property")


def _split_wire(properties: dict[str, str]) -> tuple[str | None, tuple[str, ...], int]:
    # Takes TAGS, KEYS and a well-formed DELAY out of ``properties`` (in place).
    tags = properties.pop(Property.TAGS, None)
    keys_text = properties.pop(Property.KEYS, None)
    keys = _split_keys(keys_text) if keys_text else ()
    delay_level = 0
    delay = properties.get(Property.DELAY)
    if delay is not None and delay.isascii() and delay.isdigit() and int(delay) <= _INT32_MAX:
        delay_level = int(delay)
        del properties[Property.DELAY]
    return tags, keys, delay_level


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """What a producer sends, immutable.

    ``keys`` may be given as a str (split on spaces) or any iterable of str; it is kept
    as a tuple and goes on the wire space-joined as KEYS. ``properties`` holds every
    other property (user ones, UNIQ_KEY, WAIT, ...), kept as a read-only mapping; TAGS,
    KEYS and DELAY come from ``tags``, ``keys`` and ``delay_level`` instead. Raises
    ValueError for an empty topic, a negative delay level, or a property, tag or key that
    holds ``\\x01``/``\\x02`` (or is empty).
    """

    topic: str
    body: bytes = b""
    tags: str | None = None
    keys: tuple[str, ...] = ()
    properties: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY_PROPERTIES)
    flag: int = 0
    delay_level: int = 0

    def __init__(
        self,
        topic: str,
        body: bytes = b"",
        tags: str | None = None,
        keys: str | Iterable[str] = (),
        properties: Mapping[str, str] = _EMPTY_PROPERTIES,
        flag: int = 0,
        delay_level: int = 0,
    ) -> None:
        # Written out (not generated) so that ``keys`` may be typed as a str or iterable.
        for name, value in (
            ("topic", topic),
            ("body", body),
            ("tags", tags),
            ("keys", keys),
            ("properties", properties),
            ("flag", flag),
            ("delay_level", delay_level),
        ):
            object.__setattr__(self, name, value)
        _normalise(self)
        _validate(self)

    def wire_properties(self) -> dict[str, str]:
        """Every property as the wire carries it: ``properties`` plus TAGS, KEYS, DELAY."""
        result = dict(self.properties)
        if self.tags is not None:
            result[Property.TAGS] = self.tags
        if self.keys:
            result[Property.KEYS] = " ".join(self.keys)
        if self.delay_level:
            result[Property.DELAY] = str(self.delay_level)
        return result

    @classmethod
    def from_wire(
        cls, topic: str, body: bytes, properties: Mapping[str, str], flag: int = 0
    ) -> Message:
        """The message a producer sent, from the wire's properties (TAGS, KEYS and DELAY
        become fields). Not validated: whatever the wire carried is kept as it is; a DELAY
        that is not a number stays among the properties."""
        rest = dict(properties)
        tags, keys, delay_level = _split_wire(rest)
        return _unchecked(
            Message,
            topic,
            bytes(body),
            tags or None,
            keys,
            MappingProxyType(rest),
            flag,
            delay_level,
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MessageExt(Message):
    """A stored message as a consumer sees it (see :func:`decode_record`).

    ``body`` is as stored: still compressed when ``sys_flag & 1``; :meth:`decoded_body`
    inflates it. ``physical_offset`` is the commit-log offset (what CONSUMER_SEND_MSG_BACK
    names), ``store_size`` the record's TOTALSIZE. Not validated, unlike :class:`Message`:
    it holds whatever was stored.
    """

    queue_id: int = 0
    queue_offset: int = 0
    physical_offset: int = 0
    sys_flag: int = 0
    born_timestamp: int = 0
    born_host: str = "0.0.0.0:0"
    store_timestamp: int = 0
    store_host: str = "0.0.0.0:0"
    reconsume_times: int = 0
    prepared_transaction_offset: int = 0
    body_crc: int = 0
    store_size: int = 0
    magic: int = MAGIC_CODE_V1

    def __post_init__(self) -> None:
        _normalise(self)

    @property
    def offset_msg_id(self) -> str:
        """The offset message id: store host + physical offset."""
        return offset_msg_id(self.store_host, self.physical_offset)

    @property
    def msg_id(self) -> str:
        """The id Java and C++ consumers show: UNIQ_KEY when set, else the offset id."""
        return self.properties.get(Property.UNIQ_KEY) or offset_msg_id(
            self.store_host, self.physical_offset
        )

    def decoded_body(self) -> bytes:
        """The body, inflated if it was stored compressed (MalformedMessage if it cannot be)."""
        return decompress_body(self.body, self.sys_flag)


_M = TypeVar("_M", bound=Message)
# The slot setters of each message class, in field order: they skip the frozen __setattr__.
_SETTERS: Final = {
    cls: tuple(getattr(cls, f.name).__set__ for f in dataclasses.fields(cls))
    for cls in (Message, MessageExt)
}


def _unchecked(cls: type[_M], *values: object) -> _M:
    # An instance from its field values in field order, with no __init__/__post_init__
    # (twice as fast as the frozen __init__): for values that are canonical already.
    message = object.__new__(cls)
    for setter, value in zip(_SETTERS[cls], values, strict=True):
        setter(message, value)
    return message


# ---------------------------------------------------------------------------
# Stored records
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------

# TOTALSIZE, MAGICCODE (0), BODYCRC (0), FLAG, BODYLENGTH
_BATCH_HEAD = struct.Struct(">iiiii")
_BATCH_MIN: Final = _BATCH_HEAD.size + 2


@dataclasses.dataclass(frozen=True, slots=True)
class BatchItem:
    """One message of a batch body: its flag, body and properties."""

    flag: int
    body: bytes
    properties: dict[str, str]


def encode_batch(messages: Iterable[Message]) -> bytes:
    """The body of SEND_BATCH_MESSAGE: each message as TOTALSIZE, MAGICCODE 0, BODYCRC 0,
    FLAG, BODYLENGTH + body, PROPERTIESLENGTH + properties (its TAGS, KEYS and others).

    As Java's producer does, refuses (ValueError) messages of different topics and
    delayed ones. Add UNIQ_KEY to each message's properties before, if wanted.
    """
    parts: list[bytes] = []
    topic = None
    for message in messages:
        if topic is None:
            topic = message.topic
        elif message.topic != topic:
            raise ValueError(f"a batch holds one topic: {topic!r} and {message.topic!r}")
        if message.delay_level:
            raise ValueError("a batch cannot hold delayed messages (delay_level > 0)")
        props = encode_properties(message.wire_properties()).encode("utf-8")
        if len(props) > _INT16_MAX:
            raise ValueError(
                f"properties of {len(props)} UTF-8 bytes; a batch entry holds at most 32767"
            )
        body = message.body
        size = _BATCH_MIN + len(body) + len(props)
        parts += (
            _BATCH_HEAD.pack(size, 0, 0, message.flag, len(body)),
            body,
            _INT16.pack(len(props)),
            props,
        )
    return b"".join(parts)


def decode_batch(body: bytes | bytearray | memoryview) -> list[BatchItem]:
    """The messages of a batch body. Like Java, ignores each entry's MAGICCODE and
    BODYCRC; a lying TOTALSIZE, BODYLENGTH or PROPERTIESLENGTH, or a cut-short entry,
    raises MalformedMessage naming the field and its byte."""
    items = []
    pos = 0
    size = len(body)
    while pos < size:
        left = size - pos
        if left < _BATCH_MIN:
            raise MalformedMessage(
                f"batch entry at byte {pos} is cut short: {left} bytes left, its fixed "
                f"fields need {_BATCH_MIN}"
            )
        total, _, _, flag, body_size = _BATCH_HEAD.unpack_from(body, pos)
        if total > left:
            raise MalformedMessage(
                f"batch entry at byte {pos}: TOTALSIZE {total} runs past the end of the "
                f"data ({left} bytes left)"
            )
        if total < _BATCH_MIN:
            raise MalformedMessage(
                f"batch entry at byte {pos}: TOTALSIZE {total} is less than the smallest "
                f"entry ({_BATCH_MIN} bytes)"
            )
        body_pos = pos + _BATCH_HEAD.size
        props_size_pos = body_pos + body_size
        end = pos + total
        if body_size < 0 or props_size_pos + 2 > end:
            raise MalformedMessage(
                f"batch entry at byte {pos}: BODYLENGTH {body_size} at byte {body_pos - 4} "
                f"{'is negative' if body_size < 0 else 'runs past the entry'} "
                f"(TOTALSIZE {total})"
            )
        props_size = _INT16.unpack_from(body, props_size_pos)[0]
        props_pos = props_size_pos + 2
        if props_pos + props_size != end:
            raise MalformedMessage(
                f"batch entry at byte {pos}: PROPERTIESLENGTH {props_size} at byte "
                f"{props_size_pos} ends the entry at byte {props_pos + props_size}, but "
                f"TOTALSIZE {total} ends it at byte {end}"
            )
        items.append(
            BatchItem(
                flag,
                bytes(body[body_pos:props_size_pos]),
                decode_properties(str(body[props_pos:end], "utf-8", "replace")),
            )
        )
        pos = end
    return items
