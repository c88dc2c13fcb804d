"""The JSON header, written byte-compatible with what Java's fastjson writes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from rmqtwist._logsafe import clip as _clip
from rmqtwist.codec._layout import (
    _INT32_MAX,
    _INT32_MIN,
    _JSON,
    _LANGUAGE_BY_NAME,
    _LANGUAGE_BY_VALUE,
    _LANGUAGE_NAME,
    _check_int,
)
from rmqtwist.codes import LanguageCode
from rmqtwist.command import RemotingCommand, _from_wire
from rmqtwist.errors import EncodeError, HeaderTooLarge, MalformedFrame

# fastjson 1.2.69 escapes, in a double-quoted string (a value or a map key alike): the C0
# controls (\b \t \n \f \r short, the rest \u00XX, \u000B included), '"' and '\\',
# U+007F..U+009F, U+2028 and U+2029, with upper-case hex; nothing else ('/' included).
_ESCAPES: dict[int, str] = {c: f"\\u{c:04X}" for c in range(0x20)}
_ESCAPES.update({c: f"\\u{c:04X}" for c in range(0x7F, 0xA0)})
_ESCAPES.update(
    {
        0x08: "\\b",
        0x09: "\\t",
        0x0A: "\\n",
        0x0C: "\\f",
        0x0D: "\\r",
        0x22: '\\"',
        0x5C: "\\\\",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
    }
)
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\\x7f-\x9f\u2028\u2029]').search


def _quote(text: str) -> str:
    if _NEEDS_ESCAPE(text) is None:
        return '"' + text + '"'
    return '"' + text.translate(_ESCAPES) + '"'


def _json_ext(ext: Mapping[str, str]) -> str:
    """The members of the extFields object. Keys and values seldom need escaping (a send's
    properties do: \x01 and \x02): one check over all of them, then no quoting."""
    if ext and _NEEDS_ESCAPE("".join(ext)) is None:
        if _NEEDS_ESCAPE("".join(ext.values())) is None:
            return '"' + '","'.join([k + '":"' + v for k, v in ext.items()]) + '"'
        return ",".join(['"' + k + '":' + _quote(v) for k, v in ext.items()])
    return ",".join([_quote(k) + ":" + _quote(v) for k, v in ext.items()])


def _encode_json_header(command: RemotingCommand, opaque: int, flag: int) -> bytes:
    code = command.code
    version = command.version
    if not (_INT32_MIN <= code <= _INT32_MAX):
        _check_int("code", code, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    if not (_INT32_MIN <= opaque <= _INT32_MAX):
        _check_int("opaque", opaque, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    if not (_INT32_MIN <= flag <= _INT32_MAX):
        _check_int("flag", flag, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    if not (_INT32_MIN <= version <= _INT32_MAX):
        _check_int("version", version, _INT32_MIN, _INT32_MAX, "int32 of a JSON header")
    language = _LANGUAGE_NAME.get(command.language)
    if language is None:
        language = str(int(command.language))
    parts = ['{"code":', str(code)]
    ext = command.ext_fields
    if ext is not None:
        parts.append(',"extFields":{')
        parts.append(_json_ext(ext))
        parts.append("}")
    parts += (',"flag":', str(flag), ',"language":', language, ',"opaque":', str(opaque))
    remark = command.remark
    if remark is not None:
        parts += (',"remark":', _quote(remark))
    parts += (',"serializeTypeCurrentRPC":"JSON","version":', str(version), "}")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as e:
        raise EncodeError(f"header text is not encodable as UTF-8: {e}") from None


# Non-integer numbers become Decimals, so that an ext value 1e21 reads as Java's
# BigDecimal spells it ("1E+21") and nested numbers stay numbers.
_json_decode = json.JSONDecoder(parse_float=Decimal, parse_constant=str).decode


def _slow_int_field(header: Mapping[str, Any], key: str, default: int | None) -> int:
    value = header.get(key)
    if value is None:
        if default is None:
            raise MalformedFrame(f"JSON header has no {_clip(repr(key))}")
        return default
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,10}", value):
        value = int(value)  # fastjson accepts a quoted number for an int field
    if type(value) is int:
        if _INT32_MIN <= value <= _INT32_MAX:
            return value
        raise MalformedFrame(
            f"JSON header field {_clip(repr(key))} is out of int32 range: {_clip(str(value))}"
        )
    raise MalformedFrame(
        f"JSON header field {_clip(repr(key))} is not an integer: {_clip(repr(value))}"
    )


def _ext_text(value: object) -> str:
    # What Java's Map<String, String> ends up holding when fastjson meets a non-string.
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_nested_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_quote(k) + ":" + _nested_json(v) for k, v in value.items()) + "}"
    return str(value)


def _nested_json(value: object) -> str:
    return _quote(value) if isinstance(value, str) else _ext_text(value)


#: A \\u escape of a UTF-16 surrogate (paired ones decode to one character; lone ones
#: decode to a code point no UTF-8 encoder writes).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_no_lone_surrogate(header: dict[str, Any]) -> None:
    """Refuse a header holding a lone surrogate (``"\\ud800"``): it could never be
    written back, as the binary header already refuses it."""
    try:
        # default=str: the Decimals that non-integer numbers decode to (their text is ASCII).
        json.dumps(header, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end]
        raise MalformedFrame(
            f"JSON header holds a lone UTF-16 surrogate ({bad!a}), which is not text"
        ) from None


def _decode_json_header(
    text: str, body: bytes, max_ext_fields: int | None = None
) -> RemotingCommand:
    try:
        try:
            header = _json_decode(text)
        except ValueError as e:
            raise MalformedFrame(f"JSON header is not valid JSON: {e}") from None
        except ArithmeticError:
            # decimal.InvalidOperation: a number whose exponent is past what Decimal holds
            # (1e868888888888888000000), found by the fuzzer.
            raise MalformedFrame("JSON header holds a number out of any range") from None
        if type(header) is not dict:
            raise MalformedFrame(f"JSON header is not an object: {text[:64]!r}")
        if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None:
            _check_no_lone_surrogate(header)
        return _command_from_json(header, body, max_ext_fields)
    except RecursionError:
        # Python's json parser, its encoder and _ext_text recurse once per level: a peer's
        # [[[[... would otherwise escape the decoder as a RecursionError.
        raise MalformedFrame("JSON header is nested too deeply") from None


def _command_from_json(
    header: dict[str, Any], body: bytes, max_ext_fields: int | None
) -> RemotingCommand:
    get = header.get
    code = get("code")
    opaque = get("opaque", 0)
    flag = get("flag", 0)
    version = get("version", 0)
    # One test for the common case; the slow path gives the precise error or coerces.
    if not (
        type(code) is int
        and type(opaque) is int
        and type(flag) is int
        and type(version) is int
        and _INT32_MIN <= code <= _INT32_MAX
        and _INT32_MIN <= opaque <= _INT32_MAX
        and _INT32_MIN <= flag <= _INT32_MAX
        and _INT32_MIN <= version <= _INT32_MAX
    ):
        code = _slow_int_field(header, "code", None)
        opaque = _slow_int_field(header, "opaque", 0)
        flag = _slow_int_field(header, "flag", 0)
        version = _slow_int_field(header, "version", 0)
    language_value = get("language")
    language: int
    if type(language_value) is str:
        found = _LANGUAGE_BY_NAME.get(language_value)
        if found is None:
            raise MalformedFrame(
                f"JSON header has an unknown language {_clip(repr(language_value))}"
            )
        language = found
    elif language_value is None:
        language = LanguageCode.JAVA
    elif type(language_value) is int:
        language = _LANGUAGE_BY_VALUE.get(language_value, language_value)
    else:
        raise MalformedFrame(
            f"JSON header field 'language' is invalid: {_clip(repr(language_value))}"
        )
    remark = get("remark")
    if remark is not None and type(remark) is not str:
        raise MalformedFrame(f"JSON header field 'remark' is not a string: {_clip(repr(remark))}")
    ext = get("extFields")
    if ext is not None:
        if type(ext) is not dict:
            raise MalformedFrame(
                f"JSON header field 'extFields' is not an object: {_clip(repr(ext))}"
            )
        if max_ext_fields is not None and len(ext) > max_ext_fields:
            raise HeaderTooLarge(
                f"JSON header holds {len(ext)} ext_fields, over the limit of {max_ext_fields}",
                len(ext),
                max_ext_fields,
            )
        for value in ext.values():
            if type(value) is not str:
                ext = {key: _ext_text(value) for key, value in ext.items() if value is not None}
                break
        ext = MappingProxyType(ext)
    return _from_wire(code, language, version, opaque, flag, remark, ext, body, _JSON)
