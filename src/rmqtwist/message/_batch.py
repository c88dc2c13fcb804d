"""The body of SEND_BATCH_MESSAGE: :func:`encode_batch` and :func:`decode_batch`."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import Final

from rmqtwist.errors import MalformedMessage
from rmqtwist.message._model import Message
from rmqtwist.message._properties import decode_properties, encode_properties

_INT16 = struct.Struct(">h")
_INT16_MAX = (1 << 15) - 1
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
