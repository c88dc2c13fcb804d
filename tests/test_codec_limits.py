"""The decoder's header limits: the header length checked from the length words before
anything is buffered or parsed, and the number of ext_fields while parsing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmqtwist import RemotingCommand, SerializeType
from rmqtwist.codec import (
    DEFAULT_MAX_EXT_FIELDS,
    DEFAULT_MAX_FRAME_LENGTH,
    DEFAULT_MAX_HEADER_LENGTH,
    FrameDecoder,
    encode_frame,
)
from rmqtwist.errors import HeaderTooLarge, MalformedFrame


def frame_with_fields(count: int, serialize_type: SerializeType) -> bytes:
    ext = {f"k{i}": "v" for i in range(count)}
    return encode_frame(RemotingCommand(code=10, ext_fields=ext), serialize_type)


def test_defaults_are_far_above_real_traffic_and_below_the_frame_limit() -> None:
    # Java 4.9.8's largest header in the transcripts: 454 bytes, 13 ext_fields.
    assert 100 * 454 < DEFAULT_MAX_HEADER_LENGTH <= DEFAULT_MAX_FRAME_LENGTH // 16
    assert DEFAULT_MAX_EXT_FIELDS > 50 * 13


def test_a_long_header_is_refused_from_its_length_words_alone() -> None:
    decoder = FrameDecoder(max_header_length=1000)
    prefix = struct.pack(">ii", 4 + 5000, (1 << 24) | 5000)
    with pytest.raises(
        HeaderTooLarge, match="header of 5000 bytes exceeds the header limit of 1000"
    ):
        decoder.feed(prefix)  # nothing of the header itself needed
    assert decoder.buffered == 0


def test_the_header_length_is_checked_when_the_prefix_arrives_in_pieces() -> None:
    decoder = FrameDecoder(max_header_length=1000)
    prefix = struct.pack(">ii", 4 + 5000, (1 << 24) | 5000)
    assert decoder.feed(prefix[:5]) == []
    with pytest.raises(HeaderTooLarge) as caught:
        decoder.feed(prefix[5:] + b"\0" * 100)
    assert (caught.value.size, caught.value.limit) == (5000, 1000)


def test_a_header_at_the_limit_is_decoded() -> None:
    frame = encode_frame(RemotingCommand(code=10, remark="r" * 100), SerializeType.ROCKETMQ)
    header_length = struct.unpack_from(">i", frame, 4)[0] & 0xFFFFFF
    assert FrameDecoder(max_header_length=header_length).feed(frame)[0].remark == "r" * 100
    with pytest.raises(HeaderTooLarge):
        FrameDecoder(max_header_length=header_length - 1).feed(frame)


@pytest.mark.parametrize("serialize_type", [SerializeType.ROCKETMQ, SerializeType.JSON])
def test_ext_fields_over_the_cap_are_refused(serialize_type: SerializeType) -> None:
    assert (
        len(
            FrameDecoder(max_ext_fields=20)
            .feed(frame_with_fields(20, serialize_type))[0]
            .ext_fields
            or {}
        )
        == 20
    )
    with pytest.raises(HeaderTooLarge, match="ext_fields") as caught:
        FrameDecoder(max_ext_fields=20).feed(frame_with_fields(21, serialize_type))
    assert caught.value.limit == 20
    assert isinstance(caught.value, MalformedFrame)


def test_none_turns_the_limits_off() -> None:
    frame = frame_with_fields(2000, SerializeType.ROCKETMQ)
    decoder = FrameDecoder(max_header_length=None, max_ext_fields=None)
    assert len(decoder.feed(frame)[0].ext_fields or {}) == 2000
    with pytest.raises(HeaderTooLarge):
        FrameDecoder().feed(frame)


def test_the_frames_before_a_too_large_header_are_kept() -> None:
    good = encode_frame(RemotingCommand(code=1))
    bad = struct.pack(">ii", 4 + 5000, (1 << 24) | 5000)
    with pytest.raises(HeaderTooLarge) as caught:
        FrameDecoder(max_header_length=1000).feed(good + bad)
    assert [c.code for c in caught.value.decoded] == [1]


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_header_length"):
        FrameDecoder(max_header_length=-1)
    with pytest.raises(ValueError, match="max_ext_fields"):
        FrameDecoder(max_ext_fields=-1)


def test_peer_values_in_codec_errors_are_clipped() -> None:
    header = ('{"code":10,"extFields":' + '"' + "x" * 100_000 + '"}').encode()
    frame = struct.pack(">ii", 4 + len(header), len(header)) + header
    with pytest.raises(MalformedFrame) as caught:
        FrameDecoder().feed(frame)
    assert len(str(caught.value)) < 500
    assert "[100002 chars]" in str(caught.value)


def test_max_commands_leaves_the_rest_as_bytes_for_a_later_feed() -> None:
    frames = [encode_frame(RemotingCommand(code=i, opaque=i)) for i in range(10)]
    data = b"".join(frames)
    decoder = FrameDecoder()
    assert decoder.feed(data[:3], 0) == [] and decoder.buffered == 3
    first = decoder.feed(data[3:], 4)
    assert [c.code for c in first] == [0, 1, 2, 3]
    assert decoder.buffered == len(b"".join(frames[4:]))
    assert [c.code for c in decoder.feed(b"", 4)] == [4, 5, 6, 7]
    assert [c.code for c in decoder.feed(b"")] == [8, 9]
    assert decoder.buffered == 0


@given(
    count=st.integers(0, 80),
    limit=st.integers(0, 60),
    serialize_type=st.sampled_from([SerializeType.ROCKETMQ, SerializeType.JSON]),
    split=st.integers(1, 64),
)
def test_the_ext_field_cap_holds_for_any_count_and_any_split(
    count: int, limit: int, serialize_type: SerializeType, split: int
) -> None:
    frame = frame_with_fields(count, serialize_type)
    decoder = FrameDecoder(max_ext_fields=limit)
    chunks = [frame[i : i + split] for i in range(0, len(frame), split)]
    if count > limit:
        with pytest.raises(HeaderTooLarge):
            for chunk in chunks:
                decoder.feed(chunk)
    else:
        decoded = [c for chunk in chunks for c in decoder.feed(chunk)]
        assert len(decoded[0].ext_fields or {}) == count


@given(header_length=st.integers(0, (1 << 24) - 1), limit=st.integers(0, 1 << 20))
def test_the_header_limit_is_decided_from_the_length_words(header_length: int, limit: int) -> None:
    prefix = struct.pack(">ii", 4 + header_length + 10, (1 << 24) | header_length)
    decoder = FrameDecoder(max_frame_length=1 << 30, max_header_length=limit)
    if header_length > limit:
        with pytest.raises(HeaderTooLarge):
            decoder.feed(prefix)
    else:
        assert decoder.feed(prefix) == []
