"""RocketMQ ACL 1.0: signing requests (client) and checking them (server).

- :func:`sign` returns a signed copy of a request; :class:`AclClientHook` signs every
  request a :class:`~rmqtwist.client.RemotingClient` (or a producer or consumer's client)
  sends, as Apache's ``AclClientRPCHook`` does.
- :class:`AclServerHook` checks every request a server gets against an
  :class:`AclConfig` — accounts read from Apache's ``plain_acl.yml`` format by
  :func:`load_acl_file` (or :class:`AclFile`, which reloads it when it changes) — and
  refuses what is not allowed with NO_PERMISSION (16) and a remark saying why.
- :func:`load_credentials` reads a client's keys from a file of Apache's ``tools.yml``
  form.

The signature is the base64 HMAC-SHA1, under the secret key, of the request's ext_fields
values in key order followed by its body (``../protocol.md`` §6). Secrets never appear
in a repr, a log line or an error.
"""

from rmqtwist.acl._config import (
    Account,
    AclConfig,
    AclConfigError,
    AddressPattern,
    Permission,
    parse_acl,
    parse_permission,
)
from rmqtwist.acl._hooks import (
    AclClientHook,
    AclFile,
    AclServerHook,
    load_acl_file,
    load_credentials,
)
from rmqtwist.acl._sign import (
    ACCESS_KEY,
    SECURITY_TOKEN,
    SIGNATURE,
    Credentials,
    sign,
    signature,
)
from rmqtwist.acl._verify import (
    ADMIN_CODES,
    NAME_SERVER_ADMIN_CODES,
    AclDenied,
    check_request,
    needed_permissions,
)

__all__ = [
    "ACCESS_KEY",
    "ADMIN_CODES",
    "NAME_SERVER_ADMIN_CODES",
    "SECURITY_TOKEN",
    "SIGNATURE",
    "Account",
    "AclClientHook",
    "AclConfig",
    "AclConfigError",
    "AclDenied",
    "AclFile",
    "AclServerHook",
    "AddressPattern",
    "Credentials",
    "Permission",
    "check_request",
    "load_acl_file",
    "load_credentials",
    "needed_permissions",
    "parse_acl",
    "parse_permission",
    "sign",
    "signature",
]
