"""The message values: :class:`Message`, what a producer sends, and :class:`MessageExt`,
a stored message as a consumer gets it back."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final, TypeVar

from rmqtwist.message._compression import decompress_body
from rmqtwist.message._flags import MAGIC_CODE_V1
from rmqtwist.message._hosts import offset_msg_id
from rmqtwist.message._properties import Property

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
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

    def with_properties(self, extra: Mapping[str, str]) -> Message:
        """A copy whose ``properties`` also hold ``extra`` (which wins on a clash)."""
        return Message(
            self.topic,
            self.body,
            self.tags,
            self.keys,
            {**self.properties, **extra},
            self.flag,
            self.delay_level,
        )

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
