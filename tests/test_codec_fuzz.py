"""Decoder fuzzing (issue 14): frames built to lie, in every way a peer can, must end in a
ProtocolError (or decode validly), never another exception, and quickly.

test_codec.py already feeds random bytes and random headers; these strategies build
frames that are *almost* valid, so that the checks past the first one are reached: lying
lengths at each level, invalid UTF-8 and lone surrogates, deep or huge JSON, huge
ext-field counts, unknown serialize types, each fed whole and in random splits. The
FrameDecoder turns an unexpected exception into a MalformedFrame "undecodable frame:
..." so that a connection never crashes; here that catch-all counts as a failure, since
it means a decoder bug was hidden. The record decoders get the same treatment with
MalformedMessage.
"""

from __future__ import annotations

import contextlib
import json
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmqtwist import RemotingCommand, SerializeType
from rmqtwist.codec import FrameDecoder, decode_frame, encode_frame
from rmqtwist.errors import MalformedFrame, MalformedMessage, ProtocolError
from rmqtwist.message import Message, decode_batch, decode_records, encode_batch
from rmqtwist.message._record import encode_record

from .strategies import commands

#: Seconds any one example may take to decode: far above the real cost (milliseconds
#: for a 256 KiB header), far below a reactor stall worth the name.
BOUND = 2.0
#: The decoder's limits in these tests: small, so that the limit checks are reached often.
MAX_FRAME = 64 * 1024
MAX_HEADER = 32 * 1024
MAX_FIELDS = 64

INT32 = st.integers(-(1 << 31), (1 << 31) - 1)
JSON_KEYS = ["code", "language", "version", "opaque", "flag", "remark", "extFields"]


def prefix(total: int, type_word: int) -> bytes:
    return struct.pack(">iI", total, type_word & 0xFFFFFFFF)


def wrap(header: bytes, body: bytes = b"", stype: int = 0) -> bytes:
    """An honest frame around ``header`` (the lies are inside it)."""
    return prefix(4 + len(header) + len(body), (stype << 24) | len(header)) + header + body


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

# JSON values of any shape, with the header's own keys often among the object keys.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(JSON_KEYS) | st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=20,
)


@st.composite
def json_headers(draw: st.DrawFn) -> bytes:
    """JSON header bytes: a wrong-typed header, a deep or huge one, a lone surrogate
    escape, invalid UTF-8, or a valid header cut or spliced with junk."""
    kind = draw(st.integers(0, 7))
    if kind == 0:  # any JSON value where the header object should be, or wrong-typed fields
        header = draw(json_values | st.dictionaries(st.sampled_from(JSON_KEYS), json_values))
        text = json.dumps(header, allow_nan=True)
    elif kind == 1:  # nested deeper than Python's json or our _ext_text can recurse
        depth = draw(st.integers(1, 20_000))
        if draw(st.booleans()):
            inner = "[" * depth + "]" * depth
        else:
            inner = '{"a":' * depth + "1" + "}" * depth
        where = draw(st.sampled_from(["top", "field", "ext"]))
        if where == "top":
            text = inner
        elif where == "field":
            text = '{"code":1,"remark":' + inner + "}"
        else:
            text = '{"code":1,"extFields":{"k":' + inner + "}}"
    elif kind == 2:  # huge: many ext_fields, long strings, long numbers
        count = draw(st.integers(0, 3000))
        ext = ",".join(f'"k{i}":{i}' for i in range(count))
        digits = "9" * draw(st.integers(1, 6000))
        text = '{"code":' + draw(st.sampled_from(["1", digits])) + ',"extFields":{' + ext + "}}"
    elif kind == 3:  # a lone surrogate, escaped, anywhere a string goes
        escape = "\\u" + draw(st.sampled_from(["d800", "DBFF", "dc00", "DFFF", "d83d"]))
        text = (
            draw(
                st.sampled_from(
                    [
                        '{"code":1,"remark":"%s"}',
                        '{"code":1,"extFields":{"%s":"v"}}',
                        '{"code":1,"extFields":{"k":"x%s"}}',
                        '{"code":1,"extFields":{"k":["%s"]}}',
                        '{"code":1,"language":"%s"}',
                        '{"code":1,"%s":1}',
                    ]
                )
            )
            % escape
        )
    else:
        command = draw(commands(SerializeType.JSON))
        raw = encode_frame(command)[8:]
        if kind == 4:  # invalid UTF-8 or a UTF-8-encoded surrogate spliced in
            junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]))
            at = draw(st.integers(0, len(raw)))
            return raw[:at] + junk + raw[at:]
        if kind == 5:  # cut short
            return raw[: draw(st.integers(0, len(raw)))]
        if kind == 6:  # a byte changed
            at = draw(st.integers(0, max(0, len(raw) - 1)))
            return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
        return raw + draw(st.binary(min_size=1, max_size=20))  # junk after the object
    return text.encode("utf-8", "surrogatepass")


@st.composite
def binary_headers(draw: st.DrawFn) -> bytes:
    """ROCKETMQ header bytes whose remark, ext_fields and entry lengths lie (past the
    header, negative, short), with text that is not UTF-8, or with many entries."""
    fixed = struct.pack(
        ">hBhii",
        draw(st.integers(-(1 << 15), (1 << 15) - 1)),
        draw(st.integers(0, 255)),
        draw(st.integers(-(1 << 15), (1 << 15) - 1)),
        draw(INT32),
        draw(INT32),
    )
    text = st.binary(max_size=12) | st.sampled_from([b"\xff", b"\xed\xa0\x80", b"ok\xc3"])
    remark = draw(text)
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        key, value = draw(text), draw(text)
        key_len = draw(st.none() | st.integers(-5, 40) | st.just(0x7FFF) | st.just(-0x8000))
        value_len = draw(st.none() | st.integers(-5, 40) | INT32)
        entries.append(
            struct.pack(">h", len(key) if key_len is None else key_len)
            + key
            + struct.pack(">i", len(value) if value_len is None else value_len)
            + value
        )
    many = draw(st.integers(0, 3)) == 0
    if many:  # a huge ext-field count: 6-byte entries, up to about 1,000 times the cap
        count = draw(st.integers(MAX_FIELDS - 2, 5000))
        entries.append(
            b"".join(struct.pack(">h", 1) + b"%c" % (i % 256) + b"\0\0\0\0" for i in range(count))
        )
    ext = b"".join(entries)
    remark_len = draw(st.none() | st.integers(-3, 40) | INT32)
    ext_len = draw(st.none() | st.integers(-3, 60) | INT32)
    header = (
        fixed
        + struct.pack(">i", len(remark) if remark_len is None else remark_len)
        + remark
        + struct.pack(">i", len(ext) if ext_len is None else ext_len)
        + ext
    )
    cut = draw(st.none() | st.integers(0, len(header)))
    return header if cut is None else header[:cut]


@st.composite
def lying_frames(draw: st.DrawFn) -> bytes:
    """A whole stream: valid frames, then one whose prefix lies (total, header length,
    serialize type) around a malformed or valid header, then maybe more."""
    stream = [encode_frame(c) for c in draw(st.lists(commands(), max_size=2))]
    stype = draw(st.sampled_from([0, 1]) | st.integers(2, 255))
    header = draw(json_headers() if stype == 0 else binary_headers())
    body = draw(st.binary(max_size=30))
    honest_total = 4 + len(header) + len(body)
    total = draw(
        st.sampled_from([honest_total, honest_total - 1, honest_total + 1, 0, 3, 4, -1])
        | st.integers(-(1 << 31), (1 << 31) - 1)
    )
    header_len = draw(
        st.sampled_from([len(header), len(header) + 1, honest_total, 0, 0xFFFFFF])
        | st.integers(0, 0xFFFFFF)
    )
    stream.append(prefix(total, (stype << 24) | header_len) + header + body)
    if draw(st.booleans()):
        stream.append(encode_frame(draw(commands())))
    return b"".join(stream)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    cuts = st.lists(st.integers(0, len(data)), max_size=8).map(sorted)
    return cuts.map(lambda c: [data[a:b] for a, b in zip([0, *c], [*c, len(data)], strict=True)])


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------


def feed_all(
    pieces: list[bytes],
    max_frame_length: int = MAX_FRAME,
    max_header_length: int | None = MAX_HEADER,
    max_ext_fields: int | None = MAX_FIELDS,
) -> list[RemotingCommand]:
    """Feed ``pieces`` to a fresh decoder; a ProtocolError ends it, any other exception
    or the decoder's catch-all for one fails the test."""
    decoder = FrameDecoder(max_frame_length, max_header_length, max_ext_fields)
    got: list[RemotingCommand] = []
    try:
        for piece in pieces:
            got += decoder.feed(piece)
    except ProtocolError as e:
        assert not str(e).startswith("undecodable frame"), f"decoder bug hidden: {e}"
        got += e.decoded
    return got


def decode_one(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(data)


def bounded(function: Callable[..., object], *args: object, **kwargs: object) -> None:
    start = time.perf_counter()
    function(*args, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND, f"took {elapsed:.2f} s"


@given(json_headers(), st.binary(max_size=20), st.data())
def test_malformed_json_headers(header: bytes, body: bytes, data: st.DataObject) -> None:
    frame = wrap(header, body, 0)
    bounded(decode_one, frame)
    bounded(feed_all, [frame], max_frame_length=MAX_FRAME * 32, max_header_length=None)
    bounded(feed_all, data.draw(splits(frame)))


@given(binary_headers(), st.binary(max_size=20), st.data())
def test_malformed_binary_headers(header: bytes, body: bytes, data: st.DataObject) -> None:
    frame = wrap(header, body, 1)
    bounded(decode_one, frame)
    bounded(feed_all, data.draw(splits(frame)))
    bounded(feed_all, [frame], max_ext_fields=None)


@given(lying_frames(), st.data())
def test_lying_frames_in_random_splits(stream: bytes, data: st.DataObject) -> None:
    bounded(feed_all, data.draw(splits(stream)))
    bounded(feed_all, [stream[i : i + 1] for i in range(min(len(stream), 300))])
    bounded(decode_one, stream)


@given(st.lists(commands(), min_size=1, max_size=3), st.integers(2, 255), st.data())
def test_unknown_serialize_types_are_refused(
    cmds: list[RemotingCommand], stype: int, data: st.DataObject
) -> None:
    frames = [encode_frame(c) for c in cmds]
    bad = bytearray(frames[-1])
    bad[4] = stype
    stream = b"".join(frames[:-1]) + bytes(bad)
    decoder = FrameDecoder()
    got: list[RemotingCommand] = []
    with pytest.raises(MalformedFrame, match=f"unknown serialize type {stype}"):
        for piece in data.draw(splits(stream)):
            got += decoder.feed(piece)
    assert len(got) <= len(cmds) - 1


@pytest.mark.parametrize("depth", [10, 500, 990, 1_000, 5_000, 100_000])
@pytest.mark.parametrize(
    "template",
    [
        "{inner}",
        '{{"code":1,"remark":{inner}}}',
        '{{"code":1,"extFields":{{"k":{inner}}}}}',
        '{{"code":1,"extFields":{{"k":{inner},"s":"\\ud83d\\ude00"}}}}',
    ],
)
@pytest.mark.parametrize("kind", ["list", "object"])
def test_deep_json_is_malformed_not_a_recursion_error(depth: int, template: str, kind: str) -> None:
    # Found by this fuzzing: Python's json parser raises RecursionError on deep nesting, as
    # did _ext_text on an ext value a few hundred levels deep.
    inner = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    frame = wrap(template.format(inner=inner).encode(), b"", 0)
    for decode in (decode_frame, lambda d: FrameDecoder(max_header_length=None).feed(d)):
        with (
            pytest.raises(MalformedFrame)
            if depth >= 5_000
            else contextlib.suppress(MalformedFrame) as caught
        ):
            decode(frame)
        if depth >= 5_000:
            assert str(caught.value) == "JSON header is nested too deeply"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "number",
    ["1e868888888888888000000", "-8E99999999999999999999", "0.5e-99999999999999999999", "1e999999"],
)
@pytest.mark.parametrize(
    "template",
    ["{n}", '{{"code":1,"extFields":{{"k":{n}}}}}', '{{"code":1,"version":{n}}}'],
)
def test_json_number_past_decimal_range_is_malformed(number: str, template: str) -> None:
    # Found by the atheris fuzzer in CI: an exponent past what Decimal holds made the JSON
    # parser raise decimal.InvalidOperation, which FrameDecoder could only report as an
    # "undecodable frame". A number Decimal can hold (1e999999) is still read.
    frame = wrap(template.format(n=number).encode(), b"", 0)
    in_range = number == "1e999999"
    for decode in (decode_frame, lambda d: FrameDecoder(max_header_length=None).feed(d)):
        try:
            decode(frame)
        except MalformedFrame as e:
            assert not str(e).startswith("undecodable frame"), e
            if not in_range:
                assert str(e) == "JSON header holds a number out of any range"
        else:
            assert in_range and "extFields" in template


# ---------------------------------------------------------------------------
# Message records and batches
# ---------------------------------------------------------------------------


def one_record(topic: str = "T", body: bytes = b"hello", properties: str = "TAGS\x01A") -> bytes:
    return bytes(
        encode_record(
            topic=topic,
            body=body,
            properties=properties,
            queue_id=0,
            born_timestamp=1,
            born_host="127.0.0.1:1",
            store_timestamp=2,
            store_host="127.0.0.1:2",
        )
    )


def overwrite(draw: st.DrawFn, raw: bytearray, positions: list[int]) -> None:
    """Write a drawn int8, int16 or int32 at one of ``positions`` or anywhere."""
    fmt = draw(st.sampled_from([">b", ">h", ">i"]))
    width = struct.calcsize(fmt)
    if len(raw) < width:
        return
    at = draw(st.sampled_from(positions) | st.integers(0, len(raw) - width))
    at = min(at, len(raw) - width)
    bits = width * 8
    struct.pack_into(fmt, raw, at, draw(st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)))


@st.composite
def lying_records(draw: st.DrawFn) -> bytes:
    """Records whose TOTALSIZE, MAGICCODE, SYSFLAG (its host bits move every later field),
    BODYLENGTH, TOPICLENGTH or PROPERTIESLENGTH lie, after valid records or alone."""
    body = draw(st.binary(max_size=40))
    topic = draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=10))
    raw = bytearray(one_record(topic, body))
    # IPv4 hosts: TOTALSIZE 0, MAGICCODE 4, SYSFLAG 36, BODYLENGTH 84, the body at 88.
    topic_at = 88 + len(body)
    props_at = topic_at + 1 + len(topic.encode())
    for _ in range(draw(st.integers(1, 3))):
        overwrite(draw, raw, [0, 4, 36, 84, topic_at, props_at])
    before = one_record() * draw(st.integers(0, 2))
    cut = draw(st.none() | st.integers(0, len(raw)))
    return before + (bytes(raw) if cut is None else bytes(raw[:cut]))


@given(lying_records())
def test_lying_records_raise_only_malformed_message(data: bytes) -> None:
    start = time.perf_counter()
    with contextlib.suppress(MalformedMessage):
        decode_records(data)
    assert time.perf_counter() - start < BOUND


@st.composite
def lying_batches(draw: st.DrawFn) -> bytes:
    """Batch bodies whose TOTALSIZE, BODYLENGTH or PROPERTIESLENGTH (or any other number)
    lie, or cut short."""
    messages = [
        Message(
            "T",
            draw(st.binary(max_size=30)),
            properties={"k": draw(st.text("ab", min_size=1, max_size=5))},
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    raw = bytearray(encode_batch(messages))
    for _ in range(draw(st.integers(1, 3))):
        overwrite(draw, raw, [0, 16])  # the first entry's TOTALSIZE and BODYLENGTH
    cut = draw(st.none() | st.integers(0, len(raw)))
    return bytes(raw) if cut is None else bytes(raw[:cut])


@given(lying_batches())
def test_lying_batches_raise_only_malformed_message(data: bytes) -> None:
    start = time.perf_counter()
    with contextlib.suppress(MalformedMessage):
        decode_batch(data)
    assert time.perf_counter() - start < BOUND


def test_an_escaped_surrogate_pair_beside_a_decimal_number_decodes() -> None:
    # Found by this fuzzing: the lone-surrogate check re-encoded the header with
    # json.dumps, which cannot write the Decimal a non-integer number decodes to, so a
    # valid header (an escaped emoji and a 1.5 anywhere) raised TypeError.
    header = b'{"code":1,"remark":"\\ud83d\\ude00","extFields":{"a":1.5}}'
    command = decode_frame(wrap(header))
    assert (command.remark, dict(command.ext_fields or {})) == ("\U0001f600", {"a": "1.5"})
    with pytest.raises(MalformedFrame, match="lone UTF-16 surrogate"):
        decode_frame(wrap(b'{"code":1,"remark":"\\ud83d","extFields":{"a":1.5}}'))
