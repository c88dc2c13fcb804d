"""The pure codec: both header formats, whole frames, the incremental decoder."""

from __future__ import annotations

import contextlib
import json
import struct
import sys
import tracemalloc
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmqtwist import (
    EncodeError,
    FrameTooLarge,
    LanguageCode,
    MalformedFrame,
    ProtocolError,
    RemotingCommand,
    SerializeType,
    WrongProtocol,
)
from rmqtwist.codec import (
    DEFAULT_MAX_FRAME_LENGTH,
    FrameDecoder,
    decode_frame,
    decode_header,
    encode_frame,
    encode_header,
)
from tests.strategies import commands, wire_normal

JSON = SerializeType.JSON
ROCKETMQ = SerializeType.ROCKETMQ

# The worked example of shared/protocol.md section 2.
WORKED_EXAMPLE = bytes.fromhex(
    "00000041 01000039 0069 00 0141 01020304 00000001 00000006 676f6c64656e"
    "0000001e 0005 616c706861 00000005 6669727374 0004 7a657461 00000004 6c617374"
    "626f6479".replace(" ", "")
)


def frame(header: bytes, body: bytes = b"", stype: int = 0) -> bytes:
    """A frame around raw header bytes, for inputs the encoder would never make."""
    return struct.pack(">ii", 4 + len(header) + len(body), (stype << 24) | len(header)) + (
        header + body
    )


def json_frame(header: object, body: bytes = b"") -> bytes:
    return frame(json.dumps(header).encode(), body)


# ---------------------------------------------------------------------------
# Worked example and exact bytes
# ---------------------------------------------------------------------------


def test_worked_example_decodes() -> None:
    command = decode_frame(WORKED_EXAMPLE)
    assert command == RemotingCommand(
        code=105,
        language=LanguageCode.JAVA,
        version=321,
        opaque=0x01020304,
        flag=1,
        remark="golden",
        ext_fields={"alpha": "first", "zeta": "last"},
        body=b"body",
        serialize_type=ROCKETMQ,
    )
    assert command.is_response
    assert list(command.ext_fields or ()) == ["alpha", "zeta"]


def test_worked_example_reencodes_exactly() -> None:
    assert encode_frame(decode_frame(WORKED_EXAMPLE)) == WORKED_EXAMPLE


def test_json_header_is_byte_compatible_with_fastjson() -> None:
    command = RemotingCommand(
        code=105,
        language=LanguageCode.JAVA,
        version=401,
        opaque=7,
        remark="x",
        ext_fields={"topic": "T"},
    )
    expected = (
        b'{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"JAVA","opaque":7,'
        b'"remark":"x","serializeTypeCurrentRPC":"JSON","version":401}'
    )
    assert encode_header(command) == expected
    assert encode_frame(command) == frame(expected)


def test_json_header_omits_null_remark_and_ext_fields() -> None:
    header = encode_header(RemotingCommand(code=0, language=LanguageCode.JAVA, version=1))
    assert header == (
        b'{"code":0,"flag":0,"language":"JAVA","opaque":0,'
        b'"serializeTypeCurrentRPC":"JSON","version":1}'
    )


def test_json_ext_fields_keep_insertion_order() -> None:
    command = RemotingCommand(code=1, ext_fields={"z": "1", "a": "2", "m": "3"})
    header = encode_header(command)
    assert header.index(b'"z"') < header.index(b'"a"') < header.index(b'"m"')
    assert list(decode_frame(encode_frame(command)).ext_fields or ()) == ["z", "a", "m"]


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("a/b", '"a/b"'),  # fastjson leaves '/' alone by default
        ("\b\t\n\f\r", '"\\b\\t\\n\\f\\r"'),
        ("\x00\x01\x0b\x1f", '"\\u0000\\u0001\\u000B\\u001F"'),
        ("\x7f\x85\x9f\xa0", '"\\u007F\\u0085\\u009F\xa0"'),
        ("line\u2028sep", '"line\\u2028sep"'),
        ("para\u2029sep", '"para\\u2029sep"'),
        ("中文 é ☃ 😀", '"中文 é ☃ 😀"'),  # raw UTF-8, no \\u escapes
    ],
)
def test_json_strings_use_fastjson_escapes(text: str, escaped: str) -> None:
    command = RemotingCommand(code=1, remark=text, ext_fields={text: text})
    header = encode_header(command).decode("utf-8")
    assert f'"remark":{escaped}' in header
    assert f'"extFields":{{{escaped}:{escaped}}}' in header
    assert decode_frame(encode_frame(command)) == command


def _fastjson_escaped(ch: str) -> str:
    r"""How fastjson 1.2.69 (SerializeWriter.writeStringWithDoubleQuote with the default
    features, IOUtils' tables) writes one character inside a double-quoted string: \b \t
    \n \f \r \" \\ short; the other C0 controls, U+007F..U+009F, U+2028 and U+2029 as
    \uXXXX in upper-case hex; every other character raw."""
    c = ord(ch)
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    short.update({0x22: '\\"', 0x5C: "\\\\"})
    if c in short:
        return short[c]
    if c < 0x20 or 0x7F <= c < 0xA0 or c in (0x2028, 0x2029):
        return f"\\u{c:04X}"
    return ch


_ALL_CODE_POINTS = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]


def test_every_escaped_code_point_is_escaped_alone() -> None:
    # One at a time, so the check that skips escaping a string must see each of them too
    # (a character written raw is pinned by the runs below, whichever path writes it).
    wrong = []
    for ch in [ch for ch in _ALL_CODE_POINTS if _fastjson_escaped(ch) != ch]:
        header = encode_header(RemotingCommand(code=1, remark=ch, ext_fields={ch: ch}))
        quoted = '"' + _fastjson_escaped(ch) + '"'
        text = header.decode("utf-8")
        if f'"remark":{quoted}' not in text or f'"extFields":{{{quoted}:{quoted}}}' not in text:
            wrong.append(f"U+{ord(ch):04X}")
    assert wrong == []


def test_every_code_point_is_escaped_as_fastjson_does_in_a_run() -> None:
    for start in range(0, len(_ALL_CODE_POINTS), 8192):
        chunk = _ALL_CODE_POINTS[start : start + 8192]
        remark = "".join(chunk)
        ext = {f"k{ch}": f"{ch}v" for ch in chunk}
        text = encode_header(RemotingCommand(code=1, remark=remark, ext_fields=ext)).decode()
        quoted = '"' + "".join(map(_fastjson_escaped, chunk)) + '"'
        assert f'"remark":{quoted}' in text
        members = ",".join(f'"k{_fastjson_escaped(ch)}":"{_fastjson_escaped(ch)}v"' for ch in chunk)
        assert f'"extFields":{{{members}}}' in text


def test_unknown_language_value_is_written_as_a_number() -> None:
    command = RemotingCommand(code=1, language=99)
    assert b'"language":99' in encode_header(command)
    assert decode_frame(encode_frame(command)).language == 99


# ---------------------------------------------------------------------------
# Tolerant JSON input
# ---------------------------------------------------------------------------


def test_json_any_key_order_and_unknown_keys() -> None:
    raw = (
        b'{"version":121,"opaque":3,"unknownKey":[1,2],"flag":2,"code":34,'
        b'"language":"JAVA","serializeTypeCurrentRPC":"JSON","remark":null}'
    )
    command = decode_frame(frame(raw))
    assert (command.code, command.opaque, command.flag, command.version) == (34, 3, 2, 121)
    assert command.remark is None and command.ext_fields is None
    assert command.is_oneway


@pytest.mark.parametrize(
    ("language", "expected"),
    [("JAVA", 0), ("GO", 9), ("NODE_JS", 13), (3, LanguageCode.PYTHON), (200, 200)],
)
def test_json_language_by_name_or_number(language: object, expected: int) -> None:
    command = decode_frame(json_frame({"code": 1, "language": language}))
    assert command.language == expected
    if isinstance(expected, LanguageCode):
        assert command.language is expected


def test_json_missing_optional_keys() -> None:
    command = decode_frame(json_frame({"code": 105}))
    assert command.language == LanguageCode.JAVA  # Java's default
    assert (command.opaque, command.flag, command.version) == (0, 0, 0)
    assert command.remark is None and command.ext_fields is None and command.body == b""


def test_json_ali_ons_and_cpp_ext_values_become_java_strings() -> None:
    # ali-ons sends numbers and booleans; the C++ client mixes ints and strings.
    header = {
        "code": 310,
        "language": "JAVA",
        "version": 121,
        "opaque": 1,
        "flag": 0,
        "extFields": {
            "a": "G",
            "d": 4,
            "e": -1,
            "k": False,
            "t": True,
            "big": 12345678901234567890,
            "f": 1.5,
            "n": None,
            "o": {"x": [1, "y"]},
        },
    }
    command = decode_frame(json_frame(header))
    assert command.ext_fields == {
        "a": "G",
        "d": "4",
        "e": "-1",
        "k": "false",
        "t": "true",
        "big": "12345678901234567890",
        "f": "1.5",
        "o": '{"x":[1,"y"]}',
    }


def test_json_non_integer_numbers_are_spelled_as_java_bigdecimal() -> None:
    raw = b'{"code":1,"extFields":{"f":1e21,"g":-0.5,"n":{"a":[1,2.0,null,"s"]}}}'
    command = decode_frame(frame(raw))
    assert command.ext_fields == {"f": "1E+21", "g": "-0.5", "n": '{"a":[1,2.0,null,"s"]}'}


def test_json_go_and_cpp_empty_remark_is_kept() -> None:
    command = decode_frame(json_frame({"code": 1, "language": "GO", "remark": ""}))
    assert command.remark == ""


def test_json_quoted_numbers_are_accepted() -> None:
    command = decode_frame(json_frame({"code": "105", "opaque": "-2"}))
    assert (command.code, command.opaque) == (105, -2)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"opaque": 1}', "no 'code'"),
        (b'{"code": "abc"}', "'code' is not an integer"),
        (b'{"code": true}', "'code' is not an integer"),
        (b'{"code": 2147483648}', "out of int32 range"),
        (b'{"code": 1, "opaque": -2147483649}', "out of int32 range"),
        (b'{"code": 1, "flag": 1.5}', "'flag' is not an integer"),
        (b'{"code": 1, "language": "KLINGON"}', "unknown language"),
        (b'{"code": 1, "language": [1]}', "'language' is invalid"),
        (b'{"code": 1, "remark": 5}', "'remark' is not a string"),
        (b'{"code": 1, "extFields": [1]}', "'extFields' is not an object"),
        (b'{"code": 1, "remark": "\xff"}', "not UTF-8"),
        (b'{"code": 1} trailing', "not valid JSON"),
    ],
)
def test_json_malformed_headers(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedFrame, match=message):
        decode_frame(frame(raw))


# ---------------------------------------------------------------------------
# ROCKETMQ binary header
# ---------------------------------------------------------------------------


def test_binary_empty_remark_and_ext_fields_mean_null() -> None:
    command = RemotingCommand(code=1, remark="", ext_fields={}, serialize_type=ROCKETMQ)
    header = encode_header(command)
    assert header[-8:] == b"\x00" * 8  # remark length 0, ext length 0
    decoded = decode_frame(encode_frame(command))
    assert decoded.remark is None and decoded.ext_fields is None


def test_binary_empty_strings_inside_ext_fields_are_kept() -> None:
    command = RemotingCommand(code=1, ext_fields={"": "", "k": ""}, serialize_type=ROCKETMQ)
    assert decode_frame(encode_frame(command)).ext_fields == {"": "", "k": ""}


def test_binary_non_ascii_text() -> None:
    command = RemotingCommand(
        code=1, remark="é☃", ext_fields={"ключ": "值😀", "k": "v"}, serialize_type=ROCKETMQ
    )
    assert decode_frame(encode_frame(command)) == command


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"code": 200050}, "code 200050 does not fit the int16"),
        ({"code": -32769}, "int16"),
        ({"version": 40000}, "version 40000 does not fit the int16"),
        ({"language": 256}, "language 256 does not fit the uint8"),
        ({"language": -1}, "uint8"),
        ({"opaque": 1 << 31}, "opaque 2147483648 does not fit the int32"),
        ({"flag": -(1 << 31) - 1}, "flag"),
        ({"ext_fields": {"k" * 40000: "v"}}, "key of 40000 bytes"),
        ({"remark": "\ud800"}, "not encodable as UTF-8"),
    ],
)
def test_binary_refuses_what_it_cannot_carry(changes: dict[str, object], message: str) -> None:
    command = RemotingCommand(code=1, serialize_type=ROCKETMQ).replace(**changes)
    with pytest.raises(EncodeError, match=message):
        encode_frame(command)


def test_pop_codes_still_encode_in_json() -> None:
    command = RemotingCommand(code=200050, serialize_type=ROCKETMQ)
    with pytest.raises(EncodeError, match=r"send this command with SerializeType\.JSON"):
        encode_frame(command)
    assert decode_frame(encode_frame(command, JSON)).code == 200050


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"code": 1 << 31}, "code"),
        ({"opaque": -(1 << 31) - 1}, "opaque"),
        ({"flag": 1 << 32}, "flag"),
        ({"version": 1 << 40}, "version"),
        ({"remark": "\udc00"}, "not encodable as UTF-8"),
    ],
)
def test_json_refuses_out_of_range(changes: dict[str, object], message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode_frame(RemotingCommand(code=1).replace(**changes))


def test_unknown_serialize_type_cannot_be_encoded() -> None:
    with pytest.raises(EncodeError, match="unknown serialize type"):
        encode_frame(RemotingCommand(code=1), 7)


def binary_header(
    remark: bytes = b"", ext: bytes = b"", remark_len: int | None = None, ext_len: int | None = None
) -> bytes:
    fixed = struct.pack(">hBhii", 10, 0, 401, 1, 0)
    return (
        fixed
        + struct.pack(">i", len(remark) if remark_len is None else remark_len)
        + remark
        + struct.pack(">i", len(ext) if ext_len is None else ext_len)
        + ext
    )


def entry(
    key: bytes, value: bytes, key_len: int | None = None, value_len: int | None = None
) -> bytes:
    return (
        struct.pack(">h", len(key) if key_len is None else key_len)
        + key
        + struct.pack(">i", len(value) if value_len is None else value_len)
        + value
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x00" * 20, "shorter than its 21-byte fixed part"),
        (binary_header(b"abc", remark_len=100), "remark length 100 runs past"),
        (binary_header(b"abc", remark_len=-1), "remark length -1"),
        (binary_header(ext=entry(b"k", b"v"), ext_len=100), "ext_fields length 100"),
        (binary_header(ext=entry(b"k", b"v"), ext_len=-5), "ext_fields length -5"),
        (binary_header(ext=entry(b"k", b"v"), ext_len=3), "ext_fields length 3"),
        (binary_header(ext=entry(b"k", b"v", key_len=50)), "key length 50 runs past"),
        (binary_header(ext=entry(b"k", b"v", key_len=-1)), "key length"),
        (binary_header(ext=entry(b"k", b"v", value_len=50)), "value length 50 runs past"),
        (binary_header(ext=entry(b"k", b"v", value_len=-1)), "value length"),
        (binary_header(ext=entry(b"k", b"v")[:-3]), "runs past"),
        (binary_header(b"\xff\xfe"), "not UTF-8"),
        (binary_header(ext=entry(b"\xc3", b"v")), "not UTF-8"),
        (binary_header(ext=entry(b"k", b"v\xe2\x82")), "not UTF-8"),
        (binary_header() + b"junk", "does not end at the header's end"),
    ],
)
def test_binary_malformed_headers(header: bytes, message: str) -> None:
    data = frame(header, b"body", stype=1)
    with pytest.raises(MalformedFrame, match=message):
        decode_frame(data)
    with pytest.raises(MalformedFrame, match=message):
        FrameDecoder().feed(data)


def test_decode_header_alone() -> None:
    command = RemotingCommand(code=12, ext_fields={"k": "v"}, serialize_type=ROCKETMQ)
    assert decode_header(encode_header(command), ROCKETMQ) == command
    assert decode_header(encode_header(command, JSON), JSON) == command.replace(serialize_type=JSON)


# ---------------------------------------------------------------------------
# Whole frames
# ---------------------------------------------------------------------------


def test_serialize_type_override() -> None:
    command = RemotingCommand(code=1, serialize_type=ROCKETMQ)
    data = encode_frame(command, JSON)
    assert data[4] == 0
    assert decode_frame(data).serialize_type == JSON


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "at least 8 bytes"),
        (b"\x00\x00\x00\x04\x00\x00", "at least 8 bytes"),
        (b"\x00\x00\x00\x03\x00\x00\x00\x00", "less than the 4 bytes"),
        (b"\xff\xff\xff\xff\x00\x00\x00\x00", "length prefix -1"),
        (b"\x00\x00\x00\x10\x00\x00\x00\x00", "truncated"),
        (frame(b'{"code":1}') + b"x", "1 bytes follow the frame"),
        (b"\x00\x00\x00\x06\x00\x00\x00\x05{}", "header length 5 exceeds"),
        (b"\x00\x00\x00\x04\x02\x00\x00\x00", "unknown serialize type 2"),
        (frame(b'{"code":1}', stype=0x7F), "unknown serialize type 127"),
    ],
)
def test_malformed_frames(data: bytes, message: str) -> None:
    with pytest.raises(MalformedFrame, match=message):
        decode_frame(data)


@pytest.mark.parametrize(
    ("data", "protocol"),
    [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP"),
        (b"POST /api HTTP/1.1\r\n", "HTTP"),
        (b"HTTP/1.1 200 OK\r\n", "HTTP"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "TLS"),
        (b"OPTIONS * HTTP/1.1\r\n", "HTTP"),
        (b"DELETE /x HTTP/1.1\r\n", "HTTP"),
        (b"CONNECT host:443 HTTP/1.1\r\n", "HTTP"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "SSH"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 10911\r\n", "PROXY protocol v1"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c", "PROXY protocol v2"),
        (b"*1\r\n$4\r\nPING\r\n", "Redis RESP"),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", "Redis RESP"),
        (b"*12\r\n$4\r\n", "Redis RESP"),
        (b"AMQP\x00\x00\x09\x01", "AMQP"),
    ],
)
def test_wrong_protocol_is_named(data: bytes, protocol: str) -> None:
    with pytest.raises(WrongProtocol, match=f"the peer speaks {protocol}") as info:
        decode_frame(data)
    assert info.value.first_bytes == data[:16]
    decoder = FrameDecoder()
    with pytest.raises(WrongProtocol):
        for byte in data:  # even when it arrives a byte at a time
            decoder.feed(bytes([byte]))
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "data",
    [
        b"*1x\r\n",  # not a RESP array header
        b"*\r\n\x00",
        b"PROXZ x",
        b"SSH_",
        b"\r\n\r\n\x00\r\nQUIX\n",  # PROXY v2's signature, but not quite
    ],
)
def test_near_misses_are_not_named(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(data + bytes(16))
    assert not isinstance(info.value, WrongProtocol)


def test_wrong_protocol_only_at_connection_start() -> None:
    decoder = FrameDecoder()
    assert len(decoder.feed(encode_frame(RemotingCommand(code=1)))) == 1
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"GET / HTTP/1.1\r\n")


# ---------------------------------------------------------------------------
# FrameDecoder: splitting, limits, errors
# ---------------------------------------------------------------------------


def test_frame_limit_counts_the_prefix_like_java() -> None:
    # 16,777,216 bytes on the wire (total 16,777,212) is accepted, one more is not.
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">i", DEFAULT_MAX_FRAME_LENGTH - 4)) == []
    with pytest.raises(FrameTooLarge) as info:
        FrameDecoder().feed(struct.pack(">i", DEFAULT_MAX_FRAME_LENGTH - 3))
    assert info.value.size == DEFAULT_MAX_FRAME_LENGTH + 1
    assert info.value.limit == DEFAULT_MAX_FRAME_LENGTH


def test_frame_exactly_at_a_small_limit() -> None:
    command = RemotingCommand(code=1, body=b"x" * 10)
    data = encode_frame(command)
    assert FrameDecoder(max_frame_length=len(data)).feed(data) == [command]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_length=len(data) - 1).feed(data)


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_length=1024)
    with pytest.raises(FrameTooLarge, match="2004 bytes"):
        decoder.feed(struct.pack(">ii", 2000, 10))  # only the 8 prefix bytes
    assert decoder.buffered == 0


def test_lying_length_never_allocates_the_claimed_size() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        # Claims a frame just under 16 MiB, then sends a few bytes of it.
        decoder.feed(struct.pack(">ii", DEFAULT_MAX_FRAME_LENGTH - 4, 2) + b"{}" + b"x" * 100)
        decoder.feed(b"y" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered == 8 + 2 + 200
    assert peak < 64 * 1024, peak


def test_after_an_error_the_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(MalformedFrame):
        decoder.feed(b"\x00\x00\x00\x01")
    with pytest.raises(MalformedFrame) as info:
        decoder.feed(encode_frame(RemotingCommand(code=1)))
    assert info.value.decoded == []


def test_commands_before_a_bad_frame_are_not_lost() -> None:
    good = [RemotingCommand(code=i, opaque=i) for i in range(3)]
    data = b"".join(encode_frame(c) for c in good) + frame(b"not json")
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder().feed(data)
    assert info.value.decoded == good


def test_decoder_rejects_a_tiny_limit() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        FrameDecoder(max_frame_length=4)


def test_many_frames_in_one_chunk_and_a_partial_tail() -> None:
    cmds = [RemotingCommand(code=i, opaque=i, body=bytes(i)) for i in range(200)]
    data = b"".join(encode_frame(c) for c in cmds)
    decoder = FrameDecoder()
    assert decoder.feed(data[:-5]) == cmds[:-1]
    assert decoder.buffered == len(encode_frame(cmds[-1])) - 5
    assert decoder.feed(data[-5:]) == cmds[-1:]
    assert decoder.buffered == 0


def test_large_frame_in_small_chunks() -> None:
    command = RemotingCommand(code=1, body=bytes(range(256)) * 4096)  # 1 MiB
    data = encode_frame(command)
    decoder = FrameDecoder()
    out: list[RemotingCommand] = []
    for i in range(0, len(data), 1000):
        out += decoder.feed(data[i : i + 1000])
    assert out == [command]
    assert decoder.buffered == 0


def test_decoded_ext_fields_are_read_only() -> None:
    command = decode_frame(encode_frame(RemotingCommand(code=1, ext_fields={"k": "v"})))
    assert isinstance(command.ext_fields, MappingProxyType)
    for stype in SerializeType:
        decoded = decode_frame(encode_frame(command, stype))
        with pytest.raises(TypeError):
            decoded.ext_fields["k"] = "w"  # type: ignore[index]


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


@given(commands())
def test_round_trip(command: RemotingCommand) -> None:
    assert decode_frame(encode_frame(command)) == wire_normal(command)


@given(commands(JSON))
def test_json_round_trip_is_exact(command: RemotingCommand) -> None:
    assert decode_frame(encode_frame(command)) == command


@given(commands(ROCKETMQ))
def test_binary_reencoding_is_stable(command: RemotingCommand) -> None:
    data = encode_frame(command)
    assert encode_frame(decode_frame(data)) == data


@given(st.lists(commands(), min_size=1, max_size=6), st.data())
def test_any_split_gives_the_same_commands(
    cmds: list[RemotingCommand], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(c) for c in cmds)
    expected = [wire_normal(c) for c in cmds]

    whole = FrameDecoder().feed(stream)
    assert whole == expected

    decoder = FrameDecoder()
    bytewise = [c for i in range(len(stream)) for c in decoder.feed(stream[i : i + 1])]
    assert bytewise == expected

    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    split = [c for piece in pieces for c in decoder.feed(piece)]
    assert split == expected
    assert decoder.buffered == 0


@given(st.lists(commands(), max_size=3), st.binary(max_size=200), st.data())
def test_garbage_raises_only_protocol_errors(
    cmds: list[RemotingCommand], garbage: bytes, data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(c) for c in cmds) + garbage
    cut = data.draw(st.integers(0, len(stream)))
    decoder = FrameDecoder(max_frame_length=4096)
    got: list[RemotingCommand] = []
    try:
        got += decoder.feed(stream[:cut])
        got += decoder.feed(stream[cut:])
    except ProtocolError as e:
        got += e.decoded
    assert got[: len(cmds)] == [wire_normal(c) for c in cmds][: len(got)]
    with contextlib.suppress(ProtocolError):
        decode_frame(garbage)


@given(st.binary(min_size=8, max_size=300))
def test_header_bytes_never_crash_the_decoder(header: bytes) -> None:
    for stype in (0, 1):
        data = frame(header, b"", stype)
        with contextlib.suppress(ProtocolError):
            decode_frame(data)


def test_codec_imports_nothing_from_twisted() -> None:
    # The package and every module in it, listed from its path: a new module is checked
    # even before __init__ imports it.
    import pkgutil
    import subprocess

    import rmqtwist.codec

    names = ["rmqtwist.codec", "rmqtwist.command", "rmqtwist.codes", "rmqtwist.errors"] + [
        "rmqtwist.codec." + info.name for info in pkgutil.iter_modules(rmqtwist.codec.__path__)
    ]
    assert "rmqtwist.codec._frame" in names
    code = (
        "import importlib, sys; "
        f"[importlib.import_module(n) for n in {names!r}]; "
        "print(any(m == 'twisted' or m.startswith('twisted.') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


@given(commands(), st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
def test_encode_frame_overrides_equal_a_replaced_command(
    command: RemotingCommand, opaque: int, flag: int
) -> None:
    # What a connection writes for a request (its own opaque and flag, the client's
    # serialize type) is the frame of the command with those fields replaced.
    for stype in (JSON, ROCKETMQ):
        replaced = command.replace(opaque=opaque, flag=flag, serialize_type=stype)
        try:
            expected = encode_frame(replaced)
        except EncodeError:
            with pytest.raises(EncodeError):
                encode_frame(command, stype, opaque=opaque, flag=flag)
            continue
        assert encode_frame(command, stype, opaque=opaque, flag=flag) == expected


@given(commands(ROCKETMQ), st.booleans())
def test_binary_frame_packed_at_once_is_prefix_header_and_body(
    command: RemotingCommand, without_ext: bool
) -> None:
    # A ROCKETMQ command without ext_fields is packed in one go, remark and all: the
    # frame must be the prefix words, the header as encode_header writes it, the body.
    if without_ext:
        command = command.replace(ext_fields=None)
    header = encode_header(command)
    prefix = struct.pack(">ii", 4 + len(header) + len(command.body), (1 << 24) | len(header))
    assert encode_frame(command) == prefix + header + command.body


@pytest.mark.parametrize(
    "fragment",
    [
        '"remark":"\\ud800"',
        '"remark":"x\\uDFFFy"',
        '"extFields":{"k":"\\udbff"}',
        '"extFields":{"\\ud800":"v"}',
        '"extFields":{"k":{"nested":"\\ud800"}}',
        '"language":"JAVA\\ud800"',  # repeats the key: the later value is read
    ],
)
def test_a_lone_surrogate_in_a_json_header_is_malformed(fragment: str) -> None:
    header = '{"code":10,"flag":0,"language":"JAVA","opaque":1,"version":401,' + fragment + "}"
    raw = header.encode("ascii")
    frame = struct.pack(">ii", 4 + len(raw), len(raw)) + raw
    with pytest.raises(MalformedFrame, match="lone UTF-16 surrogate"):
        FrameDecoder().feed(frame)


def test_a_surrogate_pair_and_an_escaped_backslash_are_fine() -> None:
    for fragment, remark in (
        ('"remark":"\\ud83d\\ude00"', "\U0001f600"),
        ('"remark":"\\\\ud800"', "\\ud800"),
    ):
        header = '{"code":10,"flag":0,"language":"JAVA","opaque":1,"version":401,' + fragment + "}"
        raw = header.encode("ascii")
        frame = struct.pack(">ii", 4 + len(raw), len(raw)) + raw
        (command,) = FrameDecoder().feed(frame)
        assert command.remark == remark
