"""The machinery of typed custom headers: :class:`CommandHeader`, field declaration
helpers, value parsing and formatting, the cached per-class plan. See :mod:`rmqtwist.headers`."""

from __future__ import annotations

import dataclasses
import inspect
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Self, TypeAlias, cast

from rmqtwist.codes import ResponseCode
from rmqtwist.command import RemotingCommand, ext_value
from rmqtwist.errors import EncodeError, HeaderError

__all__ = [
    "CommandHeader",
    "HeaderField",
    "Int32",
    "Int64",
    "IntRange",
    "JavaInt",
    "JavaLong",
    "header_fields",
    "wire",
]


# --- declaration helpers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntRange:
    """An ``Annotated`` marker giving the Java integer type of an ``int`` field."""

    java_type: str
    min: int
    max: int


#: Java ``int``/``Integer``: -2**31 .. 2**31-1.
Int32: Final = IntRange("int", -(2**31), 2**31 - 1)
#: Java ``long``/``Long``: -2**63 .. 2**63-1.
Int64: Final = IntRange("long", -(2**63), 2**63 - 1)

#: An ``int`` field that is a Java ``Integer`` on the wire.
JavaInt: TypeAlias = Annotated[int, Int32]
#: An ``int`` field that is a Java ``Long`` on the wire.
JavaLong: TypeAlias = Annotated[int, Int64]

_WIRE_KEY: Final = "rmqtwist.wire"
_REQUIRED_KEY: Final = "rmqtwist.required"


def wire(name: str | None = None, *, required: bool | None = None) -> dict[str, Any]:
    """``dataclasses.field`` metadata: the Java wire name and/or wire-optionality.

    ``field(metadata=wire("a"))`` names the field ``a`` on the wire;
    ``field(default=False, metadata=wire(required=False))`` lets a non-None field be
    absent on the wire, reading as its default.
    """
    meta: dict[str, Any] = {}
    if name is not None:
        meta[_WIRE_KEY] = name
    if required is not None:
        meta[_REQUIRED_KEY] = required
    return meta


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# --- value conversion -----------------------------------------------------------------


class _BadValue(ValueError):
    """Internal: a value does not parse; the caller adds the header and field names."""


def _show(value: object, limit: int = 64) -> str:
    """``repr(value)``, cut short for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_parser(rng: IntRange) -> Callable[[str], int]:
    lo, hi, java_type = rng.min, rng.max, rng.java_type

    def parse(text: str) -> int:
        # Integer.parseInt/Long.parseLong: optional sign, then ASCII digits only. Python's
        # int() would also take " 5", "1_000" and non-ASCII digits; isascii() and
        # isdigit() together rule all of those out. The length check bounds int()'s work.
        digits = text[1:] if text[:1] in ("-", "+") else text
        if digits.isdigit() and digits.isascii():
            if len(digits) <= 19 or len(digits.lstrip("0")) <= 19:
                value = int(text)
                if lo <= value <= hi:
                    return value
            raise _BadValue(f"{_show(text)} is out of range for a Java {java_type}")
        raise _BadValue(f"{_show(text)} is not a Java {java_type}")

    return parse


_BOOLS: Final[Mapping[str, bool]] = {"true": True, "false": False, "1": True, "0": False}


def _parse_bool(text: str) -> bool:
    # "1"/"0" come from the C++ client. Java's Boolean.parseBoolean reads "1" as false.
    value = _BOOLS.get(text)
    if value is None:
        value = _BOOLS.get(text.lower())
        if value is None:
            raise _BadValue(f"{_show(text)} is not a boolean (true/false, 1/0)")
    return value


def _int_formatter(rng: IntRange) -> Callable[[Any], str]:
    lo, hi, java_type = rng.min, rng.max, rng.java_type

    def fmt(value: Any) -> str:
        if type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _BadValue(f"{value!r} is not an int")
            value = int(value)  # an IntEnum, say
        if lo <= value <= hi:
            return str(value)
        raise _BadValue(f"{value!r} is out of range for a Java {java_type}")

    return fmt


def _format_bool(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise _BadValue(f"{value!r} is not a bool")


def _format_str(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # a StrEnum or other str subclass: its text
    raise _BadValue(f"{value!r} is not a str")


# --- the per-class plan -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderField:
    """How one dataclass field of a header maps to one ext_fields entry."""

    #: Python attribute name.
    name: str
    #: Java (wire) name, the ext_fields key.
    wire: str
    #: ``str``, ``int`` or ``bool``.
    type: type
    #: For ``int`` fields, the Java range; else None.
    int_range: IntRange | None
    #: True when the type is ``X | None``.
    nullable: bool
    #: True when an absent key is a :class:`HeaderError`.
    required: bool
    #: Text -> value; None for ``str`` (no conversion).
    parse: Callable[[str], Any] | None = field(repr=False, compare=False)
    #: Value -> text.
    format: Callable[[Any], str] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class _Codec:
    """A header class's plan, laid out for the hot loops."""

    fields: tuple[HeaderField, ...]
    #: (name, wire, required, parse) per field.
    decode: tuple[tuple[str, str, bool, Callable[[str], Any] | None], ...]
    #: self -> tuple of all field values, in plan order.
    values: Callable[[Any], tuple[Any, ...]]
    #: (wire, required, format) per field, in plan order.
    encode: tuple[tuple[str, bool, Callable[[Any], str]], ...]
    #: ext -> header for the usual case (see :func:`_fast_decoder`), or None.
    fast: Callable[[Mapping[str, Any]], Any] | None


_CODECS: dict[type, _Codec] = {}


def _codec(cls: type) -> _Codec:
    codec = _CODECS.get(cls)
    if codec is None:
        plan = _build_plan(cls)
        codec = _CODECS[cls] = _Codec(
            fields=plan,
            decode=tuple((f.name, f.wire, f.required, f.parse) for f in plan),
            values=_values_getter([f.name for f in plan]),
            encode=tuple((f.wire, f.required, f.format) for f in plan),
            fast=_fast_decoder(cls, plan),
        )
    return codec


#: Decimal texts of the small ints headers carry most (queue ids, counts, flags, -1).
_SMALL_INTS: Final[Mapping[str, int]] = {str(i): i for i in range(-1, 1024)}


def _slot_setters(cls: type, names: list[str]) -> list[Callable[[Any, Any], None]] | None:
    """The slot descriptors' setters of ``names``, when ``cls`` is a slotted dataclass
    whose ``__init__`` is the generated one and that has no ``__post_init__``: building
    an instance slot by slot then gives what ``cls(**values)`` gives, in half the time.
    None otherwise."""
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    if code is None or code.co_filename != "<string>" or hasattr(cls, "__post_init__"):
        return None  # a hand-written __init__, or one that checks: call it
    setters = []
    for name in names:
        slot = inspect.getattr_static(cls, name, None)
        if type(slot) is not types.MemberDescriptorType:
            return None
        setters.append(slot.__set__)
    return setters


def _fast_decoder(
    cls: type, plan: tuple[HeaderField, ...]
) -> Callable[[Mapping[str, Any]], Any] | None:
    """``ext -> header`` as straight-line code made once per class, for the usual case:
    every value present is a str that parses, and absent ones are optional. It raises
    where :meth:`CommandHeader.from_ext_fields`'s general loop must decide (and give
    the error, or coerce raw JSON values). None when ``cls`` cannot be built slot by
    slot (see :func:`_slot_setters`)."""
    setters = _slot_setters(cls, [f.name for f in plan])
    if setters is None:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    names: dict[str, Any] = {"new": object.__new__, "cls": cls, "small": _SMALL_INTS}
    names["bools"] = _BOOLS
    lines = ["def decode(ext):", "    get = ext.get", "    obj = new(cls)"]
    for i, f in enumerate(plan):
        names[f"set{i}"] = setters[i]
        lines += [f"    raw = get({f.wire!r})", "    if raw is None:"]
        default = defaults[f.name]
        if f.required or default is dataclasses.MISSING:
            lines.append("        raise LookupError")
        else:
            names[f"default{i}"] = default
            lines.append(f"        set{i}(obj, default{i})")
        if f.type is str:
            lines += ["    elif raw.__class__ is str:", f"        set{i}(obj, raw)"]
            lines += ["    else:", "        raise TypeError"]
        elif f.type is bool:
            lines += ["    else:", f"        set{i}(obj, bools[raw])"]
        elif f.int_range is not None and f.int_range.min <= -1 and f.int_range.max >= 1023:
            names[f"parse{i}"] = f.parse
            lines += ["    else:", "        value = small.get(raw)", "        if value is None:"]
            lines += [f"            value = parse{i}(raw)", f"        set{i}(obj, value)"]
        else:
            names[f"parse{i}"] = f.parse
            lines += ["    else:", f"        set{i}(obj, parse{i}(raw))"]
    lines.append("    return obj")
    exec("\n".join(lines), names)  # the code is made here, from the field plan
    decode: Callable[[Mapping[str, Any]], Any] = names["decode"]
    return decode


def header_converter(source: type, target: type, names: Mapping[str, str]) -> Callable[[Any], Any]:
    """``header -> target header`` with each ``target`` field ``t`` taken from the
    source's field ``names[t]``: for header forms that carry the same values under other
    names (V1/V2 sends). Built slot by slot when ``target`` allows it (twice as fast as
    calling it)."""
    fields = list(names)
    setters = _slot_setters(target, fields)
    if setters is None:

        def convert_by_call(header: Any) -> Any:
            return target(**{field: getattr(header, names[field]) for field in fields})

        return convert_by_call
    env: dict[str, Any] = {"new": object.__new__, "target": target}
    lines = ["def convert(header):", "    obj = new(target)"]
    for i, field_name in enumerate(fields):
        env[f"set{i}"] = setters[i]
        lines.append(f"    set{i}(obj, header.{names[field_name]})")
    lines.append("    return obj")
    exec("\n".join(lines), env)  # the code is made here, from the field names
    convert: Callable[[Any], Any] = env["convert"]
    return convert


def _values_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """obj -> the tuple of its attributes ``names``, in one C call where possible."""
    if len(names) >= 2:
        return operator.attrgetter(*names)
    if names:
        get_one = operator.attrgetter(names[0])
        return lambda obj: (get_one(obj),)
    return lambda obj: ()


def header_fields(cls: type[CommandHeader]) -> tuple[HeaderField, ...]:
    """The wire plan of header class ``cls``, built on first use and cached."""
    return _codec(cls).fields


def _build_plan(cls: type) -> tuple[HeaderField, ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} must be a dataclass to be a CommandHeader")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError as e:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__qualname__} ({e}); header classes "
            f"and the names their annotations use must be defined at module level"
        ) from e
    plan: list[HeaderField] = []
    seen: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        where = f"{cls.__qualname__}.{f.name}"
        base, int_range, nullable = _analyse(hints[f.name], where)
        wire_name = f.metadata.get(_WIRE_KEY) or _camel(f.name)
        if wire_name in seen:
            raise TypeError(f"{where}: wire name {wire_name!r} already used by {seen[wire_name]}")
        seen[wire_name] = f.name
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{where}: use default=, not default_factory= (values are immutable)")
        required = f.metadata.get(_REQUIRED_KEY, not nullable)
        if required and nullable:
            raise TypeError(f"{where}: an 'X | None' field cannot be required on the wire")
        if not required and not nullable and f.default is dataclasses.MISSING:
            raise TypeError(f"{where}: wire(required=False) needs a default value")
        parse: Callable[[str], Any] | None
        fmt: Callable[[Any], str]
        if base is str:
            parse, fmt = None, _format_str
        elif base is bool:
            parse, fmt = _parse_bool, _format_bool
        else:
            assert int_range is not None
            parse, fmt = _int_parser(int_range), _int_formatter(int_range)
        plan.append(HeaderField(f.name, wire_name, base, int_range, nullable, required, parse, fmt))
    return tuple(plan)


def _analyse(hint: Any, where: str) -> tuple[type, IntRange | None, bool]:
    """(base type, int range, nullable) of a resolved annotation, or TypeError."""
    nullable = False
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: only 'X | None' unions are supported, not {hint!r}")
        hint, nullable = args[0], True
    int_range: IntRange | None = None
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        ranges = [e for e in extras if isinstance(e, IntRange)]
        if ranges:
            int_range = ranges[-1]
    if hint is int:
        if int_range is None:
            raise TypeError(f"{where}: say which Java type this int is: JavaInt or JavaLong")
    elif hint is str or hint is bool:
        if int_range is not None:
            raise TypeError(f"{where}: an int range marker on a {hint.__name__} field")
    else:
        raise TypeError(f"{where}: unsupported header field type {hint!r}")
    return hint, int_range, nullable


# --- the base class -------------------------------------------------------------------


class CommandHeader:
    """Base of the typed custom headers; subclasses are frozen (slotted) dataclasses."""

    __slots__ = ()

    @classmethod
    def from_ext_fields(cls, ext: Mapping[str, str] | None) -> Self:
        """The header that ``ext`` holds; :class:`HeaderError` naming the Java field if
        a required key is missing or a value does not parse. Keys the header does not
        know are ignored; raw JSON numbers/booleans are read as Java would spell them."""
        codec = _CODECS.get(cls) or _codec(cls)
        if ext is not None and codec.fast is not None:
            try:
                return cast("Self", codec.fast(ext))
            except Exception:
                pass  # missing, malformed or raw JSON values: the loop below decides
        get = (ext or _NO_EXT).get
        kwargs: dict[str, Any] = {}
        wire_name = ""
        try:
            for name, wire_name, required, parse in codec.decode:
                raw = get(wire_name)
                if raw is None:
                    if required:
                        raise HeaderError(cls.__name__, wire_name, "missing required field")
                elif parse is None:
                    kwargs[name] = raw if type(raw) is str else _coerce(raw)
                else:
                    kwargs[name] = parse(raw)
        except _BadValue as e:
            raise HeaderError(cls.__name__, wire_name, str(e)) from None
        except (AttributeError, TypeError):
            if ext is None or type(ext.get(wire_name)) is str:
                raise
            # A value that is not a str (a raw JSON number or boolean from ali-ons or the
            # C++ client that nobody coerced): spell it as Java would and parse that.
            return cls.from_ext_fields(_coerced(cls.__name__, codec.fields, ext))
        return cls(**kwargs)

    @classmethod
    def from_command(cls, command: RemotingCommand) -> Self:
        """The header that ``command``'s ext_fields hold."""
        return cls.from_ext_fields(command.ext_fields)

    def to_ext_fields(self) -> dict[str, str]:
        """This header as Java would put it in extFields: None fields left out."""
        cls = type(self)
        codec = _CODECS.get(cls) or _codec(cls)
        out: dict[str, str] = {}
        for (wire_name, required, fmt), value in zip(codec.encode, codec.values(self), strict=True):
            if value is None:
                if required:
                    raise EncodeError(f"{cls.__name__}.{wire_name}: required field is None")
                continue
            try:
                out[wire_name] = fmt(value)
            except _BadValue as e:
                raise EncodeError(f"{cls.__name__}.{wire_name}: {e}") from None
        return out

    def to_request(self, code: int, body: bytes = b"", **kwargs: Any) -> RemotingCommand:
        """A request with ``code`` carrying this header (``kwargs`` as for
        :meth:`RemotingCommand.request`: ``oneway``, ``language``, ...)."""
        return RemotingCommand.request(code, self.to_ext_fields(), body, **kwargs)

    def to_response(
        self,
        request: RemotingCommand,
        code: int = ResponseCode.SUCCESS,
        remark: str | None = None,
        body: bytes = b"",
        **kwargs: Any,
    ) -> RemotingCommand:
        """The response to ``request`` carrying this header."""
        return RemotingCommand.response_to(
            request, code, remark, self.to_ext_fields(), body, **kwargs
        )


_NO_EXT: Final[Mapping[str, str]] = types.MappingProxyType({})


def _coerce(value: object) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    return ext_value(value)


def _coerced(header: str, plan: tuple[HeaderField, ...], ext: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in plan:
        raw = ext.get(f.wire)
        if raw is None:
            continue
        try:
            out[f.wire] = _coerce(raw)
        except TypeError:
            message = f"{_show(raw)} is not a string, integer or boolean"
            raise HeaderError(header, f.wire, message) from None
    return out
