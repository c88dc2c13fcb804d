"""Messages, properties, ids and the stored-record and batch codecs (rmqtwist.message)."""

from __future__ import annotations

import contextlib
import datetime
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmqtwist.errors import MalformedMessage, ProtocolError
from rmqtwist.message import (
    COMPRESS_OVER,
    MAGIC_CODE_V1,
    MAGIC_CODE_V2,
    RECORD_PHYSICAL_OFFSET_POS,
    RECORD_QUEUE_OFFSET_POS,
    BatchItem,
    Message,
    MessageExt,
    MessageSysFlag,
    Property,
    RecordSummary,
    UniqueIdGenerator,
    compress_body,
    decode_batch,
    decode_properties,
    decode_record,
    decode_records,
    decompress_body,
    encode_batch,
    encode_properties,
    encode_record,
    offset_msg_id,
    pack_host,
    parse_offset_msg_id,
    set_record_offsets,
    summarize_record,
    tag_hash,
    transaction_type,
    unpack_host,
)

# ---------------------------------------------------------------------------
# The worked example of shared/broker.md section 5
# ---------------------------------------------------------------------------

WORKED_HEX = (
    "0000006ADAA320A73610A686000000000000000000000000000000000000000000000000000000000000"
    "018BCFE568007F0000010000C3500000018BCFE568647F00000100002A9F000000000000000000000000"
    "0000000568656C6C6F01540009544147530154616741"
)
WORKED = bytes.fromhex(WORKED_HEX)
WORKED_FIELDS: dict[str, Any] = {
    "topic": "T",
    "body": b"hello",
    "properties": "TAGS\x01TagA",
    "queue_id": 0,
    "born_timestamp": 1700000000000,
    "born_host": "127.0.0.1:50000",
    "store_timestamp": 1700000000100,
    "store_host": "127.0.0.1:10911",
}


def record(**changes: Any) -> bytearray:
    """The worked example's record with some fields changed."""
    return encode_record(**{**WORKED_FIELDS, **changes})


def patched(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    """``data`` with ``value`` packed (big-endian ``fmt``) over the bytes at ``pos``."""
    out = bytearray(data)
    struct.pack_into(">" + fmt, out, pos, value)
    return bytes(out)


def test_worked_example_encodes_exactly() -> None:
    encoded = record()
    assert type(encoded) is bytearray
    assert encoded.hex().upper() == WORKED_HEX


def test_worked_example_decodes() -> None:
    message, end = decode_record(WORKED)
    assert end == 106
    assert message == MessageExt(
        "T",
        b"hello",
        tags="TagA",
        queue_id=0,
        queue_offset=0,
        physical_offset=0,
        sys_flag=0,
        born_timestamp=1700000000000,
        born_host="127.0.0.1:50000",
        store_timestamp=1700000000100,
        store_host="127.0.0.1:10911",
        body_crc=zlib.crc32(b"hello") & 0x7FFFFFFF,
        store_size=106,
        magic=MAGIC_CODE_V1,
    )
    assert message.body_crc == 0x3610A686
    assert message.offset_msg_id == "7F00000100002A9F0000000000000000"
    assert message.msg_id == "7F00000100002A9F0000000000000000"
    assert message.wire_properties() == {"TAGS": "TagA"}
    assert decode_records(WORKED) == [message]


def test_worked_example_summary() -> None:
    assert summarize_record(WORKED) == RecordSummary(
        size=106,
        topic="T",
        queue_id=0,
        queue_offset=0,
        physical_offset=0,
        sys_flag=0,
        store_timestamp=1700000000100,
        tags="TagA",
    )


def test_worked_example_offset_id() -> None:
    assert offset_msg_id("127.0.0.1:10911", 0) == "7F00000100002A9F0000000000000000"
    assert parse_offset_msg_id("7F00000100002A9F0000000000000000") == ("127.0.0.1:10911", 0)


def test_record_offsets_are_where_the_constants_say() -> None:
    data = record()
    set_record_offsets(data, 7, 0x0102030405060708)
    assert data[RECORD_QUEUE_OFFSET_POS:RECORD_PHYSICAL_OFFSET_POS] == (7).to_bytes(8, "big")
    assert data[RECORD_PHYSICAL_OFFSET_POS : RECORD_PHYSICAL_OFFSET_POS + 8] == bytes(range(1, 9))
    message, _ = decode_record(data)
    assert (message.queue_offset, message.physical_offset) == (7, 0x0102030405060708)
    assert message.offset_msg_id == "7F00000100002A9F0102030405060708"
    assert data[:20] == WORKED[:20] and data[36:] == WORKED[36:]


def test_record_fields_land_at_their_offsets() -> None:
    data = record(
        queue_id=3,
        flag=-2,
        queue_offset=4,
        physical_offset=5,
        sys_flag=0x301,
        reconsume_times=6,
        prepared_transaction_offset=7,
    )
    assert struct.unpack_from(">iiqqi", data, 12) == (3, -2, 4, 5, 0x301)
    assert struct.unpack_from(">iq", data, 72) == (6, 7)
    assert struct.unpack_from(">i", data, 4) == (-626843481,)


# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------


def test_magic_codes_are_javas_ints() -> None:
    assert struct.unpack(">i", struct.pack(">I", MAGIC_CODE_V1)) == (-626843481,)
    assert struct.unpack(">i", struct.pack(">I", MAGIC_CODE_V2)) == (-626843477,)
    assert COMPRESS_OVER == 4096


def test_sys_flag_bits() -> None:
    assert MessageSysFlag.COMPRESSED | MessageSysFlag.COMPRESSION_ZLIB == 0x301
    assert [int(f) for f in MessageSysFlag] == [1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200]
    assert int(MessageSysFlag.TRANSACTION_ROLLBACK) == 0xC
    assert transaction_type(0x301) == 0
    assert transaction_type(0x4 | 0x1) == MessageSysFlag.TRANSACTION_PREPARED
    assert transaction_type(0x8 | 0x30) == MessageSysFlag.TRANSACTION_COMMIT
    assert transaction_type(0xC) == MessageSysFlag.TRANSACTION_ROLLBACK


def test_property_names_are_javas_wire_names() -> None:
    names = {k: v for k, v in vars(Property).items() if not k.startswith("_")}
    assert all(k == v for k, v in names.items())
    for broker_md_name in [
        "TAGS",
        "KEYS",
        "UNIQ_KEY",
        "WAIT",
        "DELAY",
        "RETRY_TOPIC",
        "REAL_TOPIC",
        "REAL_QID",
        "ORIGIN_MESSAGE_ID",
        "RECONSUME_TIME",
        "MAX_RECONSUME_TIMES",
        "TRAN_MSG",
        "PGROUP",
        "MIN_OFFSET",
        "MAX_OFFSET",
        "CONSUME_START_TIME",
        "MSG_REGION",
        "TRACE_ON",
        "CLUSTER",
        "TRAN_PREPARED_QUEUE_OFFSET",
        "TRANSACTION_CHECK_TIMES",
        "CHECK_IMMUNITY_TIME_IN_SECONDS",
        "INSTANCE_ID",
        "CORRELATION_ID",
        "REPLY_TO_CLIENT",
        "TTL",
        "ARRIVE_TIME",
        "MSG_TYPE",
        "BUYER_ID",
        "INNER_MULTI_DISPATCH",
        "INNER_MULTI_QUEUE_OFFSET",
    ]:
        assert names[broker_md_name] == broker_md_name


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


def test_encode_properties_like_java() -> None:
    assert encode_properties({}) == ""
    assert encode_properties({"TAGS": "A"}) == "TAGS\x01A"
    assert encode_properties({"a": "1", "b": "2"}) == "a\x011\x02b\x012"
    # Java's reader splits at the first \x01, so a value may hold one.
    assert encode_properties({"a": "1\x012"}) == "a\x011\x012"


@pytest.mark.parametrize(
    "properties",
    [{"a\x01": "1"}, {"a\x02": "1"}, {"a": "1\x02"}, {"TAGS": "A", "b\x02c": "x"}],
)
def test_encode_properties_refuses_separators(properties: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="separate properties"):
        encode_properties(properties)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("TAGS\x01A", {"TAGS": "A"}),
        ("TAGS\x01A\x02", {"TAGS": "A"}),  # ONS and CPP keep the final \x02
        ("a\x011\x02b\x012\x02", {"a": "1", "b": "2"}),
        ("a\x011\x02\x02b\x012", {"a": "1", "b": "2"}),  # empty entry
        ("ab\x02c\x013", {"c": "3"}),  # no \x01
        ("\x011\x02c\x013", {"c": "3"}),  # empty name
        ("a\x01\x02c\x013", {"c": "3"}),  # empty value
        ("a\x01", {}),
        ("a\x011\x012", {"a": "1\x012"}),  # split at the first \x01
        ("a\x011\x02a\x012", {"a": "2"}),  # the last one wins
        ("ab", {}),
        ("\x02\x02", {}),
        ("k\x01v\x02\x01", {"k": "v"}),
        ("é\x01ü\x02😀\x01x", {"é": "ü", "😀": "x"}),
    ],
)
def test_decode_properties_reads_as_java(text: str, expected: dict[str, str]) -> None:
    assert decode_properties(text) == expected


NAME = st.text(st.characters(codec="utf-8", exclude_characters="\x01\x02"), min_size=1)
PROPERTIES = st.dictionaries(NAME, NAME, max_size=8)


@given(PROPERTIES)
def test_properties_round_trip(properties: dict[str, str]) -> None:
    text = encode_properties(properties)
    assert decode_properties(text) == properties
    assert decode_properties(text + "\x02") == properties


# ---------------------------------------------------------------------------
# Tag hash
# ---------------------------------------------------------------------------


def java_hash(text: str) -> int:
    """String.hashCode by its definition: sum of s[i] * 31^(n-1-i) over UTF-16 units."""
    data = text.encode("utf-16-be", "surrogatepass")
    units = struct.unpack(f">{len(data) // 2}H", data)
    n = len(units)
    value = sum(int(u) * pow(31, n - 1 - i, 1 << 32) for i, u in enumerate(units)) % (1 << 32)
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("TagA", 2598919),
        ("hello", 99162322),
        ("Hello World", -862545276),
        ("😀", 0xD83D * 31 + 0xDE00),  # one astral char: two UTF-16 units
        ("\ud800", 0xD800),  # a lone surrogate, as a Java String may hold
        (None, 0),
        ("", 0),
    ],
)
def test_tag_hash_is_java_string_hash_code(tags: str | None, expected: int) -> None:
    assert tag_hash(tags) == expected


@given(st.text(max_size=60))
def test_tag_hash_matches_the_definition(tags: str) -> None:
    result = tag_hash(tags)
    assert result == java_hash(tags)
    assert -(1 << 31) <= result < 1 << 31


# ---------------------------------------------------------------------------
# Hosts and offset ids
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "packed", "text"),
    [
        ("127.0.0.1:10911", "7F00000100002A9F", "127.0.0.1:10911"),
        ("0.0.0.0:0", "0000000000000000", "0.0.0.0:0"),
        ("255.255.255.255:65535", "FFFFFFFF0000FFFF", "255.255.255.255:65535"),
        ("[::1]:5", "00000000000000000000000000000001" + "00000005", "[::1]:5"),
        ("::1:5", "00000000000000000000000000000001" + "00000005", "[::1]:5"),
        ("[2001:DB8::2]:80", "20010DB8000000000000000000000002" + "00000050", "[2001:db8::2]:80"),
        (
            "[::ffff:1.2.3.4]:1",
            "00000000000000000000FFFF01020304" + "00000001",
            "[::ffff:102:304]:1",
        ),
    ],
)
def test_hosts(address: str, packed: str, text: str) -> None:
    assert pack_host(address).hex().upper() == packed
    assert unpack_host(bytes.fromhex(packed)) == text
    assert pack_host(text) == pack_host(address)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "not an 'ip:port' address"),
        (":80", "not an 'ip:port' address"),
        ("localhost:80", "not an IPv4 or IPv6 address"),
        ("1.2.3:80", "not an IPv4 or IPv6 address"),
        ("1.2.3.4:", "not a number in 0..65535"),
        ("1.2.3.4:65536", "not a number in 0..65535"),
        ("1.2.3.4:-1", "not a number in 0..65535"),
        ("1.2.3.4:٣", "not a number in 0..65535"),
    ],
)
def test_pack_host_refuses(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pack_host(address)


def test_unpack_host_refuses_other_sizes() -> None:
    with pytest.raises(ValueError, match="8 or 20 bytes, not 7"):
        unpack_host(bytes(7))
    assert unpack_host(bytearray(8)) == "0.0.0.0:0"  # type: ignore[arg-type]


def test_offset_ids_ipv6_and_negative() -> None:
    msg_id = offset_msg_id("[::1]:10911", 1234)
    assert len(msg_id) == 56
    assert msg_id == "00000000000000000000000000000001" + "00002A9F" + "00000000000004D2"
    assert parse_offset_msg_id(msg_id) == ("[::1]:10911", 1234)
    assert parse_offset_msg_id(msg_id.lower()) == ("[::1]:10911", 1234)
    assert offset_msg_id("1.2.3.4:5", -1).endswith("FFFFFFFFFFFFFFFF")
    assert parse_offset_msg_id(offset_msg_id("1.2.3.4:5", -1)) == ("1.2.3.4:5", -1)
    with pytest.raises(ValueError, match="int64"):
        offset_msg_id("1.2.3.4:5", 1 << 63)


@pytest.mark.parametrize(
    "msg_id",
    [
        "",
        "7F00000100002A9F000000000000000",
        "7F00000100002A9F00000000000000000",
        "X" * 32,
        "7F 00000100002A9F00000000000000 0",
        "7F00000100002A9F000000000000000" + "\u0660",
    ],
)
def test_parse_offset_msg_id_refuses(msg_id: str) -> None:
    with pytest.raises(ValueError, match="not an offset message id"):
        parse_offset_msg_id(msg_id)


# ---------------------------------------------------------------------------
# UNIQ_KEY ids
# ---------------------------------------------------------------------------


def local_ms(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> int:
    """Milliseconds since the epoch of a local date and time (as Java's Calendar)."""
    moment = datetime.datetime(year, month, day, hour, minute, second, us)
    return round(moment.timestamp() * 1000)


def clock_at(*times_ms: int) -> Callable[[], float]:
    """A clock giving each of ``times_ms`` in turn (in seconds), then the last forever."""
    values: Iterator[int] = iter(times_ms)
    last = [times_ms[0]]

    def clock() -> float:
        last[0] = next(values, last[0])
        return last[0] / 1000

    return clock


def test_unique_id_layout() -> None:
    now = local_ms(2024, 3, 15, 12, 0, 0, 250000)
    since_month = now - local_ms(2024, 3, 1)
    generator = UniqueIdGenerator("10.1.2.3", pid=0x11234, clock=clock_at(now))
    first, second = generator.next_id(), generator.next_id()
    assert len(first) == 32
    assert first[:8] == "0A010203"  # IP
    assert first[8:12] == "1234"  # (short) pid
    assert first[12:20] == second[12:20]  # the class-loader hash stand-in
    assert first[20:28] == f"{since_month:08X}"
    assert (first[28:], second[28:]) == ("0000", "0001")
    assert first == first.upper()


def test_unique_id_exact_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset")
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        monkeypatch.setattr(os, "urandom", lambda n: b"\xca\xfe\xba\xbe"[:n])
        generator = UniqueIdGenerator("127.0.0.1", pid=0x1234, clock=lambda: 1700000000.0)
        # 2023-11-14T22:13:20Z is 1,203,200,000 ms after 2023-11-01T00:00Z.
        assert generator.next_id() == "7F0000011234CAFEBABE47B760000000"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_unique_id_default_pid_and_ipv6() -> None:
    generator = UniqueIdGenerator("::1", clock=lambda: 1700000000.0)
    uid = generator.next_id()
    assert len(uid) == 56
    assert uid[:32] == "00000000000000000000000000000001"
    assert uid[32:36] == f"{os.getpid() & 0xFFFF:04X}"


def test_unique_id_counter_wraps_at_16_bits() -> None:
    generator = UniqueIdGenerator(clock=lambda: 1700000000.0)
    ids = [generator.next_id() for _ in range(0x10001)]
    assert ids[0xFFFF][-4:] == "FFFF"
    assert ids[0x10000][-4:] == "0000"
    assert len(set(ids[:0x10000])) == 0x10000


def test_unique_id_month_rolls_over() -> None:
    before = local_ms(2024, 3, 31, 23, 59, 59, 500000)
    after = local_ms(2024, 4, 1, 0, 0, 0, 500000)
    generator = UniqueIdGenerator(clock=clock_at(before, before, after))
    assert generator.next_id()[20:28] == f"{before - local_ms(2024, 3, 1):08X}"
    assert generator.next_id()[20:28] == "000001F4"  # 500 ms into April


def test_unique_id_december_rolls_into_january() -> None:
    before = local_ms(2023, 12, 31, 23, 0)
    after = local_ms(2024, 1, 1, 0, 0, 1)
    generator = UniqueIdGenerator(clock=clock_at(before, before, after))
    assert generator.next_id()[20:28] == f"{before - local_ms(2023, 12, 1):08X}"
    assert generator.next_id()[20:28] == f"{1000:08X}"


def test_unique_id_clock_stepping_back() -> None:
    start = local_ms(2024, 4, 1, 0, 0, 0, 5000)
    generator = UniqueIdGenerator(
        clock=clock_at(start, start - 10, start - 2_000_005, start - 1_000_005)
    )
    # Java: a small step back (under 1,000 s) before the month start gives 0 ...
    assert generator.next_id()[20:28] == "00000000"
    # ... a bigger one wraps, as an int32 written in hex.
    assert generator.next_id()[20:28] == f"{-2_000_000 & 0xFFFFFFFF:08X}"
    assert generator.next_id()[20:28] == f"{-1_000_000 & 0xFFFFFFFF:08X}"


def test_unique_id_refuses_a_non_ip() -> None:
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        UniqueIdGenerator("localhost")
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        UniqueIdGenerator("127.0.0.1:80")


# ---------------------------------------------------------------------------
# Compression
# ---------------------------------------------------------------------------


def test_compression_round_trip() -> None:
    body = b"RocketMQ " * 1000
    packed = compress_body(body)
    assert packed[:1] == b"\x78"  # a zlib stream
    assert packed == zlib.compress(body, 5)
    assert len(packed) < len(body)
    for sys_flag in (0x1, 0x301, 0x1 | 0x4):
        assert decompress_body(packed, sys_flag) == body
    assert decompress_body(packed, 0) is packed
    assert decompress_body(packed, 0x300) is packed  # the type alone says nothing


@pytest.mark.parametrize(
    ("sys_flag", "message"),
    [(0x101, "LZ4"), (0x201, "ZSTD"), (0x401, "unknown type"), (0x701, "unknown type")],
)
def test_decompress_refuses_what_is_not_zlib(sys_flag: int, message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        decompress_body(compress_body(b"x"), sys_flag)


def test_decompress_refuses_a_broken_stream() -> None:
    with pytest.raises(MalformedMessage, match="not a valid zlib stream"):
        decompress_body(b"hello", 1)


def test_decoded_body_inflates() -> None:
    body = b"payload " * 600
    data = record(body=compress_body(body), sys_flag=0x301)
    message, _ = decode_record(data)
    assert message.body == compress_body(body)  # as stored
    assert message.body_crc == zlib.crc32(compress_body(body)) & 0x7FFFFFFF
    assert message.decoded_body() == body
    plain, _ = decode_record(WORKED)
    assert plain.decoded_body() == b"hello"


# ---------------------------------------------------------------------------
# Message and MessageExt
# ---------------------------------------------------------------------------


def test_message_defaults_and_wire_properties() -> None:
    message = Message("T")
    assert (message.body, message.tags, message.keys, dict(message.properties)) == (
        b"",
        None,
        (),
        {},
    )
    assert message.wire_properties() == {}
    full = Message(
        "T",
        b"b",
        tags="A",
        keys=["k1", "k2"],
        properties={"UNIQ_KEY": "X", "WAIT": "true"},
        flag=3,
        delay_level=2,
    )
    assert full.keys == ("k1", "k2")
    assert full.wire_properties() == {
        "UNIQ_KEY": "X",
        "WAIT": "true",
        "TAGS": "A",
        "KEYS": "k1 k2",
        "DELAY": "2",
    }


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("k1 k2", ("k1", "k2")),
        ("  k1   k2 ", ("k1", "k2")),
        ("", ()),
        ("one", ("one",)),
        (["a", "b"], ("a", "b")),
        (iter(["a"]), ("a",)),
        (("é",), ("é",)),
    ],
)
def test_message_keys(keys: Any, expected: tuple[str, ...]) -> None:
    message = Message("T", keys=keys)
    assert message.keys == expected
    assert message.wire_properties().get("KEYS") == (" ".join(expected) or None)


def test_message_normalises() -> None:
    message = Message("T", bytearray(b"x"), tags="")  # type: ignore[arg-type]
    assert type(message.body) is bytes
    assert message.tags is None


def test_message_properties_are_a_read_only_copy() -> None:
    source = {"a": "1"}
    message = Message("T", properties=source)
    source["b"] = "2"
    assert dict(message.properties) == {"a": "1"}
    with pytest.raises(TypeError):
        message.properties["c"] = "3"  # type: ignore[index]
    with pytest.raises(AttributeError):
        message.topic = "U"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"topic": ""}, "non-empty topic"),
        ({"delay_level": -1}, "delay_level must be 0"),
        ({"flag": 1 << 31}, "does not fit an int32"),
        ({"tags": "a\x01b"}, "tags 'a\\\\x01b' holds"),
        ({"tags": "a\x02"}, "tags"),
        ({"keys": ["a b"]}, "or a space"),
        ({"keys": ["a\x02"]}, "a key"),
        ({"keys": [""]}, "keys cannot be empty"),
        ({"properties": {"a\x01": "1"}}, "property name"),
        ({"properties": {"a": "1\x02"}}, "property 'a'"),
        ({"properties": {"a": "1\x01"}}, "property 'a'"),
        ({"properties": {"": "1"}}, "cannot be empty"),
        ({"properties": {"a": ""}}, "cannot be empty"),
        ({"properties": {"TAGS": "A"}}, "pass tags="),
        ({"properties": {"KEYS": "A"}}, "pass keys="),
        ({"properties": {"DELAY": "1"}}, "pass delay_level="),
    ],
)
def test_message_validates(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Message(**{"topic": "T", **changes})


def test_message_refuses_non_text() -> None:
    with pytest.raises(TypeError, match="must be str"):
        Message("T", keys=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="must be str"):
        Message("T", properties={"a": 1})  # type: ignore[dict-item]


def test_from_wire() -> None:
    wire = {"TAGS": "A", "KEYS": "k1  k2", "DELAY": "3", "UNIQ_KEY": "U"}
    message = Message.from_wire("T", b"body", wire, flag=5)
    assert type(message) is Message
    assert message == Message(
        "T", b"body", tags="A", keys="k1 k2", properties={"UNIQ_KEY": "U"}, flag=5, delay_level=3
    )
    assert message.wire_properties() == {
        "UNIQ_KEY": "U",
        "TAGS": "A",
        "KEYS": "k1 k2",
        "DELAY": "3",
    }
    assert Message.from_wire("T", b"", {"DELAY": "0"}).wire_properties() == {}


def test_from_wire_keeps_what_message_would_refuse() -> None:
    # Java's reader splits at the first \x01, so a value read off the wire may hold more.
    message = Message.from_wire("T", b"", {"x": "1\x012", "TAGS": "a\x01b"})
    assert dict(message.properties) == {"x": "1\x012"}
    assert message.tags == "a\x01b"
    assert decode_properties(encode_properties(message.wire_properties())) == {
        "x": "1\x012",
        "TAGS": "a\x01b",
    }
    assert Message.from_wire("", b"", {}).topic == ""


@pytest.mark.parametrize("delay", ["abc", "-1", "+1", " 1", "1.5", "99999999999"])
def test_from_wire_keeps_a_junk_delay_as_a_property(delay: str) -> None:
    message = Message.from_wire("T", b"", {"DELAY": delay})
    assert message.delay_level == 0
    assert message.wire_properties() == {"DELAY": delay}


def test_message_ext_msg_id_prefers_uniq_key() -> None:
    with_key = MessageExt(
        "T",
        properties={"UNIQ_KEY": "0A0102030000000000000000000000AB"},
        store_host="127.0.0.1:10911",
        physical_offset=16,
    )
    assert with_key.msg_id == "0A0102030000000000000000000000AB"
    assert with_key.offset_msg_id == "7F00000100002A9F0000000000000010"
    without = MessageExt("T", store_host="127.0.0.1:10911", physical_offset=16)
    assert without.msg_id == without.offset_msg_id == "7F00000100002A9F0000000000000010"


def test_message_ext_is_not_validated_and_differs_from_message() -> None:
    ext = MessageExt("", keys="a b", properties={"x": "1\x012"})  # type: ignore[arg-type]
    assert ext.keys == ("a", "b")
    assert isinstance(ext, Message)
    assert ext != Message("T")
    assert Message("T") != MessageExt("T")


# ---------------------------------------------------------------------------
# encode_record
# ---------------------------------------------------------------------------


def test_record_length_formula() -> None:
    for body, topic, props in [(b"", "", ""), (b"x" * 1000, "Topic", "a\x01b"), (b"1", "é", "")]:
        data = record(body=body, topic=topic, properties=props)
        expected = 88 + len(body) + 1 + len(topic.encode()) + 2 + len(props.encode())
        assert len(data) == expected == struct.unpack_from(">i", data)[0]
    assert len(record(born_host="[::1]:1")) == 106 + 12
    assert len(record(born_host="[::1]:1", store_host="[::2]:2")) == 106 + 24
    assert len(record(topic="t" * 128)) == 106 + 127 + 1


@pytest.mark.parametrize(
    ("born", "store", "bits"),
    [
        ("1.2.3.4:5", "1.2.3.4:5", 0),
        ("[::1]:5", "1.2.3.4:5", 0x10),
        ("1.2.3.4:5", "[::1]:5", 0x20),
        ("[::1]:5", "[::1]:5", 0x30),
    ],
)
def test_record_v6_bits_follow_the_hosts(born: str, store: str, bits: int) -> None:
    for given_flags in (0, 0x30, 0x10, 0x301):
        data = record(born_host=born, store_host=store, sys_flag=given_flags)
        message, _ = decode_record(data)
        assert message.sys_flag == (given_flags & ~0x30) | bits
        assert (message.born_host, message.store_host) == (
            unpack_host(pack_host(born)),
            unpack_host(pack_host(store)),
        )


def test_record_magic_choice() -> None:
    assert decode_record(record())[0].magic == MAGIC_CODE_V1
    assert decode_record(record(topic="t" * 127))[0].magic == MAGIC_CODE_V1
    long_topic = decode_record(record(topic="t" * 128))[0]
    assert (long_topic.magic, long_topic.topic) == (MAGIC_CODE_V2, "t" * 128)
    # 64 two-byte characters are 128 UTF-8 bytes: V2 counts bytes, not characters.
    assert decode_record(record(topic="é" * 64))[0].magic == MAGIC_CODE_V2
    assert decode_record(record(topic="é" * 63))[0].magic == MAGIC_CODE_V1
    explicit = record(magic=MAGIC_CODE_V2)
    assert explicit[4:8] == bytes.fromhex("DAA320AB")
    assert explicit[93:96] == b"\x00\x01T"  # a 2-byte topic length
    assert decode_record(explicit)[0].magic == MAGIC_CODE_V2
    assert record(magic=MAGIC_CODE_V1) == record()
    assert record(magic=-626843481) == record()  # Java's int spelling
    assert record(magic=-626843477) == explicit
    assert record(topic="t" * 200, magic=MAGIC_CODE_V2) == record(topic="t" * 200)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"topic": "t" * 128, "magic": MAGIC_CODE_V1}, "1-byte length of a V1 record"),
        ({"magic": 0xCBD43194}, "unknown magic code 0xCBD43194"),
        ({"topic": "t" * 32768}, "at most 32767"),
        ({"properties": "p" * 32768}, "properties of 32768 UTF-8 bytes"),
        ({"queue_id": 1 << 31}, "out of range"),
        ({"queue_offset": 1 << 63}, "out of range"),
        ({"born_timestamp": -(1 << 63) - 1}, "out of range"),
        ({"sys_flag": 1 << 31}, "out of range"),
        ({"born_host": "nohost:1"}, "not an IPv4 or IPv6 address"),
        ({"topic": "\ud800"}, "surrogates not allowed"),
    ],
)
def test_record_refuses(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record(**changes)


def test_record_limits_are_inclusive() -> None:
    data = record(topic="t" * 32767, properties="p" * 32767)
    message, _ = decode_record(data)
    assert len(message.topic) == 32767
    assert summarize_record(data).topic == "t" * 32767


# ---------------------------------------------------------------------------
# Refusals of lying records
# ---------------------------------------------------------------------------

TWO = WORKED + WORKED

REFUSALS = [
    (WORKED[:3], "record at byte 0 is cut short: 3 bytes left, TOTALSIZE needs 4"),
    (WORKED[:50], "record at byte 0: TOTALSIZE 106 runs past the end of the data (50 bytes left)"),
    (WORKED[:105], "TOTALSIZE 106 runs past the end of the data (105 bytes left)"),
    (patched(WORKED, 0, "i", 107), "TOTALSIZE 107 runs past the end of the data (106 bytes"),
    (patched(WORKED, 0, "i", 90), "TOTALSIZE 90 is less than the smallest record (91 bytes)"),
    (patched(WORKED, 0, "i", -1), "TOTALSIZE -1 is less than the smallest record"),
    (
        patched(WORKED + b"\x00", 0, "i", 107),
        "PROPERTIESLENGTH 9 at byte 95 ends the record at byte 106, but TOTALSIZE 107 ends "
        "it at byte 107",
    ),
    (patched(WORKED, 4, "I", 0), "unknown MAGICCODE 0x00000000 at byte 4"),
    (patched(WORKED, 4, "I", 0xCBD43194), "unknown MAGICCODE 0xCBD43194 at byte 4"),
    (patched(WORKED, 84, "i", -1), "BODYLENGTH -1 at byte 84 is negative (TOTALSIZE 106)"),
    (patched(WORKED, 84, "i", 100), "BODYLENGTH 100 at byte 84 runs past the record"),
    (patched(WORKED, 84, "i", 1 << 30), "BODYLENGTH 1073741824 at byte 84 runs past"),
    (patched(WORKED, 84, "i", 6), "TOPICLENGTH 84 at byte 94 runs past the record"),
    (patched(WORKED, 93, "b", -128), "TOPICLENGTH -128 at byte 93 is negative"),
    (patched(WORKED, 93, "b", 12), "TOPICLENGTH 12 at byte 93 runs past the record"),
    (
        patched(WORKED, 93, "b", 0),
        "PROPERTIESLENGTH 21504 at byte 94 ends the record at byte 21600",
    ),
    (
        patched(WORKED, 95, "h", 10),
        "PROPERTIESLENGTH 10 at byte 95 ends the record at byte 107, "
        "but TOTALSIZE 106 ends it at byte 106",
    ),
    (patched(WORKED, 95, "h", 8), "PROPERTIESLENGTH 8 at byte 95 ends the record at byte 105"),
    (patched(WORKED, 95, "h", -1), "PROPERTIESLENGTH -1 at byte 95 ends the record at byte 96"),
    (patched(WORKED, 36, "i", 0x10), "BODYLENGTH 156516679 at byte 96 runs past the record"),
    (
        patched(WORKED, 36, "i", 0x30),
        "TOTALSIZE 106 is less than the fixed fields of SYSFLAG 0x30 (115 bytes)",
    ),
    (patched(WORKED, 4, "I", MAGIC_CODE_V2), "TOPICLENGTH 340 at byte 93 runs past the record"),
    (TWO[:-1], "record at byte 106: TOTALSIZE 106 runs past the end of the data (105 bytes"),
    (WORKED + b"\x00", "record at byte 106 is cut short: 1 bytes left"),
    (patched(TWO, 110, "I", 1), "record at byte 106: unknown MAGICCODE 0x00000001 at byte 110"),
]


@pytest.mark.parametrize(("data", "message"), REFUSALS)
def test_decode_records_refuses_lies(data: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_records(data)
    assert message in str(info.value)
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(("data", "message"), REFUSALS)
def test_summarize_and_decode_record_refuse_alike(data: bytes, message: str) -> None:
    pos = 106 if message.startswith("record at byte 106") else 0
    for read in (summarize_record, decode_record):
        with pytest.raises(MalformedMessage) as info:
            read(data, pos)
        assert message in str(info.value)


def test_v2_record_refusals() -> None:
    data = bytes(record(magic=MAGIC_CODE_V2))
    assert decode_records(data)[0].topic == "T"
    with pytest.raises(MalformedMessage, match="TOPICLENGTH -1 at byte 93 is negative"):
        decode_records(patched(data, 93, "h", -1))
    with pytest.raises(MalformedMessage, match="TOPICLENGTH 11 at byte 93 runs past"):
        decode_records(patched(data, 93, "h", 11))
    with pytest.raises(MalformedMessage, match="less than the fixed fields"):
        decode_records(patched(patched(data, 0, "i", 91), 4, "I", MAGIC_CODE_V2)[:91])


def test_every_truncation_is_refused() -> None:
    data = bytes(record(born_host="[::1]:1")) + WORKED
    for cut in range(1, len(data)):
        if cut == len(data) - len(WORKED):
            continue
        with pytest.raises(MalformedMessage):
            decode_records(data[:cut])


def test_decode_inputs_of_every_buffer_type() -> None:
    for data in (WORKED, bytearray(WORKED), memoryview(WORKED)):
        (message,) = decode_records(data)
        assert type(message.body) is bytes and message.body == b"hello"
        assert summarize_record(data).tags == "TagA"
    assert decode_records(b"") == []


def test_decode_record_at_a_position() -> None:
    data = b"junk" + WORKED + bytes(record(topic="U"))
    first, end = decode_record(data, 4)
    second, end2 = decode_record(data, end)
    assert (first.topic, second.topic, end, end2) == ("T", "U", 110, len(data))


def test_decoding_is_lenient_with_text_like_java() -> None:
    bad = bytes(record(topic="TT", properties="TAGS\x01ab"))
    bad = bad.replace(b"TT", b"T\xff").replace(b"ab\x00"[:2], b"a\xfe")
    message, _ = decode_record(bad)
    assert message.topic == "T\ufffd"
    assert message.tags == "a\ufffd"


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "tags"),
    [
        ("", None),
        ("TAGS\x01A", "A"),
        ("x\x011\x02TAGS\x01A\x02y\x012", "A"),
        ("TAGS\x01A\x02TAGS\x01B", "B"),
        ("TAGS\x01A\x02TAGS\x01", "A"),  # an empty value is skipped, as Java skips it
        ("xTAGS\x01A", None),
        ("x\x01TAGS\x01A", None),  # inside a value
        ("x\x01vTAGS\x01A\x02TAGS\x01B\x01C", "B\x01C"),
        ("TAGS\x01ü😀", "ü😀"),
        ("TAGS", None),
    ],
)
def test_summary_tags_match_decoding(properties: str, tags: str | None) -> None:
    data = record(properties=properties)
    assert summarize_record(data).tags == tags
    assert decode_record(data)[0].tags == tags


@given(
    st.lists(
        st.sampled_from(["TAGS", "\x01", "\x02", "a", "é", "TAGS\x01", "\x02TAGS\x01"]),
        max_size=12,
    ).map("".join)
)
def test_summary_tags_agree_with_decode_properties(properties: str) -> None:
    assert summarize_record(record(properties=properties)).tags == decode_properties(
        properties
    ).get("TAGS")


# ---------------------------------------------------------------------------
# Round trips and garbage
# ---------------------------------------------------------------------------

INT32 = st.integers(-(1 << 31), (1 << 31) - 1)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
TEXT = st.characters(codec="utf-8", exclude_characters="\x01\x02")  # no lone surrogates
HOSTS = st.one_of(
    st.builds(lambda ip, port: f"{ip}:{port}", st.ip_addresses(v=4), st.integers(0, 65535)),
    st.builds(lambda ip, port: f"[{ip}]:{port}", st.ip_addresses(v=6), st.integers(0, 65535)),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    names = st.text(TEXT, min_size=1, max_size=12).filter(
        lambda k: k not in ("TAGS", "KEYS", "DELAY")
    )
    return Message(
        draw(st.text(TEXT, min_size=1, max_size=150)),
        draw(st.binary(max_size=300)),
        tags=draw(st.none() | st.text(TEXT, min_size=1, max_size=20)),
        keys=draw(st.lists(st.text(TEXT.filter(lambda c: c != " "), min_size=1), max_size=3)),
        properties=draw(st.dictionaries(names, st.text(TEXT, min_size=1, max_size=20), max_size=5)),
        flag=draw(INT32),
        delay_level=draw(st.integers(0, 18)),
    )


@st.composite
def records(draw: st.DrawFn) -> tuple[Message, dict[str, Any]]:
    message = draw(messages())
    fields: dict[str, Any] = {
        "queue_id": draw(INT32),
        "queue_offset": draw(INT64),
        "physical_offset": draw(INT64),
        "sys_flag": draw(INT32),
        "born_timestamp": draw(INT64),
        "born_host": draw(HOSTS),
        "store_timestamp": draw(INT64),
        "store_host": draw(HOSTS),
        "reconsume_times": draw(INT32),
        "prepared_transaction_offset": draw(INT64),
    }
    short = len(message.topic.encode()) <= 127
    fields["magic"] = draw(
        st.sampled_from([None, MAGIC_CODE_V1, MAGIC_CODE_V2] if short else [None, MAGIC_CODE_V2])
    )
    return message, fields


def encode_message(message: Message, fields: dict[str, Any]) -> bytearray:
    return encode_record(
        topic=message.topic,
        body=message.body,
        properties=encode_properties(message.wire_properties()),
        flag=message.flag,
        **fields,
    )


@given(records())
def test_record_round_trip(case: tuple[Message, dict[str, Any]]) -> None:
    message, fields = case
    data = encode_message(message, fields)
    decoded, end = decode_record(bytes(data))
    assert end == len(data)
    expected_magic = fields["magic"] or (
        MAGIC_CODE_V1 if len(message.topic.encode()) <= 127 else MAGIC_CODE_V2
    )
    host_bits = (0x10 if len(pack_host(fields["born_host"])) == 20 else 0) | (
        0x20 if len(pack_host(fields["store_host"])) == 20 else 0
    )
    assert decoded == MessageExt(
        message.topic,
        message.body,
        message.tags,
        message.keys,
        message.properties,
        message.flag,
        message.delay_level,
        queue_id=fields["queue_id"],
        queue_offset=fields["queue_offset"],
        physical_offset=fields["physical_offset"],
        sys_flag=(fields["sys_flag"] & ~0x30) | host_bits,
        born_timestamp=fields["born_timestamp"],
        born_host=unpack_host(pack_host(fields["born_host"])),
        store_timestamp=fields["store_timestamp"],
        store_host=unpack_host(pack_host(fields["store_host"])),
        reconsume_times=fields["reconsume_times"],
        prepared_transaction_offset=fields["prepared_transaction_offset"],
        body_crc=zlib.crc32(message.body) & 0x7FFFFFFF,
        store_size=len(data),
        magic=expected_magic,
    )
    assert summarize_record(data) == RecordSummary(
        len(data),
        message.topic,
        fields["queue_id"],
        fields["queue_offset"],
        fields["physical_offset"],
        decoded.sys_flag,
        fields["store_timestamp"],
        message.tags,
    )
    # Re-encoding what was decoded gives the same bytes (the property order aside).
    again = encode_message(decoded, {**fields, "sys_flag": decoded.sys_flag})
    assert decode_record(again)[0] == decoded
    assert decoded.offset_msg_id == offset_msg_id(fields["store_host"], fields["physical_offset"])
    assert parse_offset_msg_id(decoded.offset_msg_id) == (
        decoded.store_host,
        fields["physical_offset"],
    )


@given(st.lists(records(), min_size=1, max_size=5))
def test_records_concatenated(cases: list[tuple[Message, dict[str, Any]]]) -> None:
    body = b"".join(encode_message(m, f) for m, f in cases)
    decoded = decode_records(body)
    assert [(d.topic, d.body, d.tags) for d in decoded] == [
        (m.topic, m.body, m.tags) for m, _ in cases
    ]


@given(st.binary(max_size=400))
def test_garbage_raises_only_malformed_message(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_records(data)
    with contextlib.suppress(MalformedMessage):
        summarize_record(data)
    with contextlib.suppress(MalformedMessage):
        decode_batch(data)


@given(records(), st.data())
def test_damaged_records_raise_only_malformed_message(
    case: tuple[Message, dict[str, Any]], data: st.DataObject
) -> None:
    raw = bytearray(encode_message(*case))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for damaged in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(MalformedMessage):
            decode_records(damaged)
        with contextlib.suppress(MalformedMessage):
            summarize_record(damaged)


def test_ten_thousand_records_decode_in_linear_time() -> None:
    body = bytearray()
    for i in range(10_000):
        data = record(properties=f"TAGS\x01Tag{i % 7}\x02UNIQ_KEY\x01{i:032X}")
        set_record_offsets(data, i, len(body))
        body += data
    start = time.perf_counter()
    decoded = decode_records(bytes(body))
    elapsed = time.perf_counter() - start
    assert len(decoded) == 10_000
    assert [m.queue_offset for m in decoded] == list(range(10_000))
    assert decoded[-1].physical_offset == len(body) - len(data)
    assert decoded[1234].msg_id == f"{1234:032X}"
    assert elapsed < 5.0  # about 0.05 s; quadratic slicing would take far longer
    pos, summaries = 0, []
    while pos < len(body):
        summary = summarize_record(body, pos)
        summaries.append(summary)
        pos += summary.size
    assert [s.tags for s in summaries[:8]] == [f"Tag{i % 7}" for i in range(8)]


def test_encoding_is_fast_enough() -> None:
    start = time.perf_counter()
    for i in range(10_000):
        record(queue_id=i & 7, properties="TAGS\x01TagA\x02UNIQ_KEY\x01" + "A" * 32)
    assert time.perf_counter() - start < 2.0  # about 0.015 s


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------

BATCH_ONE = bytes.fromhex("0000001E0000000000000000000000070000000268690006544147530141")


def test_batch_encodes_like_java() -> None:
    assert encode_batch([Message("T", b"hi", tags="A", flag=7)]) == BATCH_ONE
    assert encode_batch([]) == b""
    two = encode_batch([Message("T", b"hi", tags="A", flag=7), Message("T")])
    assert two == BATCH_ONE + bytes.fromhex("00000016000000000000000000000000000000000000")


def test_batch_decodes() -> None:
    assert decode_batch(BATCH_ONE) == [BatchItem(7, b"hi", {"TAGS": "A"})]
    assert decode_batch(b"") == []
    # Like Java, MAGICCODE and BODYCRC are not looked at.
    assert decode_batch(patched(patched(BATCH_ONE, 4, "i", -1), 8, "i", 5)) == decode_batch(
        BATCH_ONE
    )
    assert decode_batch(bytearray(BATCH_ONE)) == decode_batch(memoryview(BATCH_ONE))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            BATCH_ONE[:21],
            "batch entry at byte 0 is cut short: 21 bytes left, its fixed fields need 22",
        ),
        (BATCH_ONE[:29], "TOTALSIZE 30 runs past the end of the data (29 bytes left)"),
        (patched(BATCH_ONE, 0, "i", 31), "TOTALSIZE 31 runs past the end of the data (30 bytes"),
        (patched(BATCH_ONE, 0, "i", 21), "TOTALSIZE 21 is less than the smallest entry (22 bytes)"),
        (patched(BATCH_ONE, 0, "i", -5), "TOTALSIZE -5 is less than the smallest entry"),
        (patched(BATCH_ONE, 16, "i", -1), "BODYLENGTH -1 at byte 16 is negative (TOTALSIZE 30)"),
        (patched(BATCH_ONE, 16, "i", 9), "BODYLENGTH 9 at byte 16 runs past the entry"),
        (patched(BATCH_ONE, 16, "i", 3), "PROPERTIESLENGTH 1620 at byte 23 ends the entry"),
        (
            patched(BATCH_ONE, 22, "h", 7),
            "PROPERTIESLENGTH 7 at byte 22 ends the entry at byte "
            "31, but TOTALSIZE 30 ends it at byte 30",
        ),
        (
            patched(BATCH_ONE, 22, "h", -1),
            "PROPERTIESLENGTH -1 at byte 22 ends the entry at byte 23",
        ),
        (
            patched(BATCH_ONE + b"\x00", 0, "i", 31),
            "PROPERTIESLENGTH 6 at byte 22 ends the entry at byte 30, but TOTALSIZE 31",
        ),
        (BATCH_ONE + BATCH_ONE[:25], "batch entry at byte 30: TOTALSIZE 30 runs past the end"),
        (BATCH_ONE + b"\x00", "batch entry at byte 30 is cut short: 1 bytes left"),
    ],
)
def test_batch_refuses_lies(data: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_batch(data)
    assert message in str(info.value)


def test_batch_refuses_what_java_refuses() -> None:
    with pytest.raises(ValueError, match="one topic"):
        encode_batch([Message("T"), Message("U")])
    with pytest.raises(ValueError, match="delayed"):
        encode_batch([Message("T", delay_level=1)])
    with pytest.raises(ValueError, match="at most 32767"):
        encode_batch([Message("T", properties={"p": "x" * 32767})])


@given(st.lists(messages(), max_size=5))
def test_batch_round_trip(items: list[Message]) -> None:
    items = [
        Message(
            "T", m.body, m.tags, m.keys, m.properties, m.flag
        )  # one topic, no delay, as a batch holds
        for m in items
    ]
    decoded = decode_batch(encode_batch(items))
    assert decoded == [BatchItem(m.flag, m.body, m.wire_properties()) for m in items]
    assert [Message.from_wire("T", d.body, d.properties, d.flag) for d in decoded] == items


# ---------------------------------------------------------------------------
# Purity
# ---------------------------------------------------------------------------


def test_message_imports_nothing_from_twisted() -> None:
    # The package and every module in it, listed from its path: a new module is checked
    # even before __init__ imports it.
    import pkgutil
    import subprocess

    import rmqtwist.message

    names = ["rmqtwist.message"] + [
        "rmqtwist.message." + info.name for info in pkgutil.iter_modules(rmqtwist.message.__path__)
    ]
    assert "rmqtwist.message._record" in names
    code = (
        "import importlib, sys; "
        f"[importlib.import_module(n) for n in {names!r}]; "
        "print(any(m == 'twisted' or m.startswith('twisted.') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_dataclass_replace_keeps_validating() -> None:
    import dataclasses

    message = Message("T", tags="A", keys="k")
    assert dataclasses.replace(message, tags="B") == Message("T", tags="B", keys=("k",))
    with pytest.raises(ValueError, match="non-empty topic"):
        dataclasses.replace(message, topic="")
    ext, _ = decode_record(WORKED)
    assert dataclasses.replace(ext, queue_offset=9).queue_offset == 9


def test_with_properties_merges_and_keeps_the_rest() -> None:
    message = Message("T", b"b", "A", "k1 k2", {"x": "1", "y": "2"}, flag=3, delay_level=2)
    copy = message.with_properties({"y": "9", "z": "3"})
    assert copy.properties == {"x": "1", "y": "9", "z": "3"}
    assert (copy.topic, copy.body, copy.tags, copy.keys, copy.flag, copy.delay_level) == (
        "T", b"b", "A", ("k1", "k2"), 3, 2,
    )  # fmt: skip
    assert message.properties == {"x": "1", "y": "2"}  # the original is untouched
    with pytest.raises(ValueError):
        message.with_properties({"bad": "a\x01b"})
