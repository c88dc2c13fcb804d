"""Message properties: the names (:class:`Property`), the ``k\\x01v\\x02k\\x01v`` string
that carries them, and :func:`tag_hash`, the tag code a consume queue filters on."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final


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
