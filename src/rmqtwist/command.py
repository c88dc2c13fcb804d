"""``RemotingCommand``: the one value every frame of the protocol carries."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from rmqtwist.codes import (
    DEFAULT_VERSION,
    FLAG_ONEWAY,
    FLAG_RESPONSE,
    LanguageCode,
    SerializeType,
    code_name,
)

__all__ = ["RemotingCommand", "ext_value"]

_EMPTY_EXT: Mapping[str, str] = MappingProxyType({})


def ext_value(value: object) -> str:
    """Spell ``value`` as Java would in ext_fields: ``true``/``false``, decimal ints, text.

    >>> ext_value(True), ext_value(42), ext_value("T")
    ('true', '42', 'T')
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    raise TypeError(
        f"ext_fields values must be str, int or bool, not {type(value).__name__} ({value!r})"
    )


def _freeze_ext(ext: Mapping[str, Any]) -> Mapping[str, str]:
    frozen: dict[str, str] = {}
    for key, value in ext.items():
        if not isinstance(key, str):
            raise TypeError(f"ext_fields keys must be str, not {type(key).__name__} ({key!r})")
        frozen[key] = ext_value(value)
    return MappingProxyType(frozen)


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class RemotingCommand:
    """One request or response of the remoting protocol, immutable.

    ``code`` is a request code in a request and a response code in a response (see
    :mod:`rmqtwist.codes`; any int is kept, known or not). ``ext_fields`` is a read-only
    mapping of strings, or None; a plain dict (values str, int or bool) given to the
    constructor is copied and frozen. ``serialize_type`` is how this command's header is
    (or will be) written on the wire. Use :meth:`request`, :meth:`response_to` and
    :meth:`replace` rather than the bare constructor.
    """

    code: int
    language: int = LanguageCode.PYTHON
    version: int = DEFAULT_VERSION
    opaque: int = 0
    flag: int = 0
    remark: str | None = None
    ext_fields: Mapping[str, str] | None = None
    body: bytes = b""
    serialize_type: SerializeType = SerializeType.JSON

    def __post_init__(self) -> None:
        ext = self.ext_fields
        if ext is not None and type(ext) is not MappingProxyType:
            object.__setattr__(self, "ext_fields", _freeze_ext(ext))
        if type(self.body) is not bytes:
            object.__setattr__(self, "body", bytes(self.body))

    @classmethod
    def request(
        cls,
        code: int,
        ext_fields: Mapping[str, Any] | None = None,
        body: bytes = b"",
        *,
        remark: str | None = None,
        opaque: int = 0,
        oneway: bool = False,
        language: int = LanguageCode.PYTHON,
        version: int = DEFAULT_VERSION,
        serialize_type: SerializeType = SerializeType.JSON,
    ) -> RemotingCommand:
        """A request with ``code``. The connection that sends it assigns the opaque."""
        return cls(
            code=code,
            language=language,
            version=version,
            opaque=opaque,
            flag=FLAG_ONEWAY if oneway else 0,
            remark=remark,
            ext_fields=ext_fields,
            body=body,
            serialize_type=serialize_type,
        )

    @classmethod
    def response_to(
        cls,
        request: RemotingCommand,
        code: int,
        remark: str | None = None,
        ext_fields: Mapping[str, Any] | None = None,
        body: bytes = b"",
        *,
        language: int = LanguageCode.PYTHON,
        version: int = DEFAULT_VERSION,
    ) -> RemotingCommand:
        """The response to ``request``: same opaque and serialize type, response bit set."""
        if (
            cls is RemotingCommand
            and (ext_fields is None or type(ext_fields) is MappingProxyType)
            and type(body) is bytes
        ):
            # already what __post_init__ would make of them: skip the dataclass __init__
            return _from_wire(
                code,
                language,
                version,
                request.opaque,
                FLAG_RESPONSE,
                remark,
                ext_fields,
                body,
                request.serialize_type,
            )
        return cls(
            code=code,
            language=language,
            version=version,
            opaque=request.opaque,
            flag=FLAG_RESPONSE,
            remark=remark,
            ext_fields=ext_fields,
            body=body,
            serialize_type=request.serialize_type,
        )

    @property
    def is_response(self) -> bool:
        """True when flag bit 0 is set."""
        return bool(self.flag & FLAG_RESPONSE)

    @property
    def is_oneway(self) -> bool:
        """True when flag bit 1 is set: the peer must not answer."""
        return bool(self.flag & FLAG_ONEWAY)

    def as_oneway(self) -> RemotingCommand:
        """A copy with the oneway bit set."""
        return self.replace(flag=self.flag | FLAG_ONEWAY)

    def replace(self, **changes: Any) -> RemotingCommand:
        """A copy with ``changes`` applied (field names as keywords)."""
        return dataclasses.replace(self, **changes)

    def ext(self, key: str, default: str | None = None) -> str | None:
        """``ext_fields[key]``, or ``default`` when absent (ext_fields None counts as empty)."""
        return (self.ext_fields or _EMPTY_EXT).get(key, default)

    def __hash__(self) -> int:
        ext = self.ext_fields
        return hash(
            (
                self.code,
                self.language,
                self.version,
                self.opaque,
                self.flag,
                self.remark,
                None if ext is None else frozenset(ext.items()),
                self.body,
                self.serialize_type,
            )
        )

    def __repr__(self) -> str:
        kind = "response" if self.is_response else "request"
        name = code_name(self.code, self.is_response)
        language: object = self.language
        if isinstance(language, LanguageCode):
            language = language.name
        body = self.body if len(self.body) <= 32 else self.body[:32] + b"..."
        ext = None if self.ext_fields is None else dict(self.ext_fields)
        return (
            f"<RemotingCommand {kind} code={self.code}({name}) opaque={self.opaque} "
            f"flag={self.flag} language={language} version={self.version} "
            f"remark={self.remark!r} ext_fields={ext!r} body[{len(self.body)}]={body!r} "
            f"serialize_type={SerializeType(self.serialize_type).name}>"
        )


_WireConstructor = Callable[
    [int, int, int, int, int, "str | None", "Mapping[str, str] | None", bytes, SerializeType],
    "RemotingCommand",
]


def _make_wire_constructor() -> _WireConstructor:
    # The codec builds every decoded command through this: it fills the slots directly,
    # skipping the frozen-dataclass __init__ (twice as fast). The codec hands it only
    # values that are already what __post_init__ would make of them.
    new = object.__new__
    (
        set_code,
        set_language,
        set_version,
        set_opaque,
        set_flag,
        set_remark,
        set_ext,
        set_body,
        set_stype,
    ) = (getattr(RemotingCommand, f.name).__set__ for f in dataclasses.fields(RemotingCommand))

    def from_wire(
        code: int,
        language: int,
        version: int,
        opaque: int,
        flag: int,
        remark: str | None,
        ext_fields: Mapping[str, str] | None,
        body: bytes,
        serialize_type: SerializeType,
    ) -> RemotingCommand:
        command: RemotingCommand = new(RemotingCommand)
        set_code(command, code)
        set_language(command, language)
        set_version(command, version)
        set_opaque(command, opaque)
        set_flag(command, flag)
        set_remark(command, remark)
        set_ext(command, ext_fields)
        set_body(command, body)
        set_stype(command, serialize_type)
        return command

    return from_wire


_from_wire = _make_wire_constructor()
