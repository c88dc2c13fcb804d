"""JSON bodies as Apache's broker writes them (fastjson: sorted keys, compact), and lenient
reading of the bodies real clients send."""

from __future__ import annotations

import json
from typing import Any

from rmqtwist.errors import BodyError

__all__ = ["dumps", "loads"]

_encode = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON with sorted keys (map keys are always quoted)."""
    return _encode(value).encode("utf-8")


def loads(body: bytes, what: str) -> Any:
    """Parse a request body; :class:`~rmqtwist.errors.BodyError` naming ``what`` if not JSON."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BodyError(f"the {what} body is not valid JSON: {e}") from None
