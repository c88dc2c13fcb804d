"""Request signatures as RocketMQ's ACL 1.0 makes them (``AclClientRPCHook``, ``AclUtils``).

The content signed is the ext_fields' values in key order (``Signature`` left out), then the
body; the signature is its HMAC-SHA1 under the secret key, in base64. Pure: no Twisted.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Final

from rmqtwist.command import RemotingCommand

#: The ext_fields keys the ACL uses.
ACCESS_KEY: Final = "AccessKey"
SECRET_KEY_FIELD: Final = "SecretKey"  # never sent; the name Apache's config files use
SIGNATURE: Final = "Signature"
SECURITY_TOKEN: Final = "SecurityToken"
#: A key the broker leaves out of the content it checks (Java's UNIQUE_MSG_QUERY_FLAG).
UNIQUE_KEY_QUERY: Final = "_UNIQUE_KEY_QUERY"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """An ACL account's keys, as a client signs with them (Java's ``SessionCredentials``);
    the secret never appears in a repr."""

    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    security_token: str | None = dataclasses.field(default=None, repr=False)


def signature(
    ext_fields: Mapping[str, str],
    body: bytes | None,
    secret_key: str,
    *,
    skip: Iterable[str] = (SIGNATURE,),
) -> str:
    """The base64 HMAC-SHA1 under ``secret_key`` of the values of ``ext_fields`` (sorted
    by key, the ``skip`` keys left out) followed by ``body``."""
    left_out = frozenset(skip)
    values = "".join(v for k, v in sorted(ext_fields.items()) if k not in left_out)
    content = values.encode("utf-8") + (body or b"")
    digest = hmac.new(secret_key.encode("utf-8"), content, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(
    request: RemotingCommand,
    access_key: str,
    secret_key: str,
    security_token: str | None = None,
) -> RemotingCommand:
    """A signed copy of ``request``: ``AccessKey`` (and ``SecurityToken``) added to its
    ext_fields, then ``Signature`` over them and the body, as Java's client signs."""
    ext_fields = dict(request.ext_fields or {})
    ext_fields.pop(SIGNATURE, None)
    ext_fields[ACCESS_KEY] = access_key
    if security_token is not None:
        ext_fields[SECURITY_TOKEN] = security_token
    ext_fields[SIGNATURE] = signature(ext_fields, request.body, secret_key)
    return request.replace(ext_fields=ext_fields)
