"""ACL accounts in Apache's ``plain_acl.yml`` format, and the address patterns it uses.

A file holds ``globalWhiteRemoteAddresses`` (addresses let in with no check at all) and
``accounts``: each with ``accessKey``, ``secretKey``, ``whiteRemoteAddress`` (let in with no
signature check), ``admin``, ``defaultTopicPerm``, ``defaultGroupPerm``, ``topicPerms`` and
``groupPerms`` (``name=PERM`` with PERM one of DENY, PUB, SUB, PUB|SUB). Parsing follows
Apache 4.9's ``PlainPermissionManager``; secrets never appear in a repr or an error.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "Account",
    "AclConfig",
    "AclConfigError",
    "AddressPattern",
    "Permission",
    "parse_acl",
    "parse_permission",
]

# Apache refuses keys and secrets this short or shorter (AclConstants: "longer than 6").
_MIN_KEY_LENGTH: Final = 6


class AclConfigError(ValueError):
    """An ACL configuration that cannot be used; the message names the field."""


class Permission(enum.IntFlag):
    """What an account may do with a topic or group (Java's ``Permission`` bits)."""

    NONE = 0
    DENY = 1
    ANY = 2
    PUB = 4
    SUB = 8

    def allows(self, needed: Permission) -> bool:
        """Whether this owned permission grants ``needed`` (Java's ``checkPermission``)."""
        if self & Permission.DENY:
            return False
        if needed & Permission.ANY:
            return bool(self & (Permission.PUB | Permission.SUB))
        return bool(needed & self)


_PERMISSIONS: Final = {
    "PUB": Permission.PUB,
    "SUB": Permission.SUB,
    "PUB|SUB": Permission.PUB | Permission.SUB,
    "SUB|PUB": Permission.PUB | Permission.SUB,
    "DENY": Permission.DENY,
}


def parse_permission(text: str | None) -> Permission:
    """``"PUB"``, ``"SUB"``, ``"PUB|SUB"``, ``"SUB|PUB"`` or ``"DENY"``; anything else
    (or nothing) is DENY, as Apache reads a default permission."""
    if text is None:
        return Permission.DENY
    return _PERMISSIONS.get(str(text).strip(), Permission.DENY)


def _host(address: str) -> str:
    """The host of ``"1.2.3.4:5"``, ``"[::1]:5"``, or a bare host."""
    address = address.strip()
    if address.startswith("["):
        return address[1 : address.find("]")]
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise AclConfigError(f"{text.strip()!r} is not an IP address") from None


class AddressPattern:
    """A ``whiteRemoteAddress`` pattern, as Apache's ``RemoteAddressStrategyFactory``
    reads it: blank matches nothing; ``*`` (or ``*.*.*.*``) everything;
    ``192.168.0.{1,2}`` or ``a,b,c`` a set; ``192.168.1.*`` or ``192.168.1-5.*`` a range
    in one segment (IPv4 only here); anything else one address."""

    def __init__(self, text: str | None) -> None:
        self.text = (text or "").strip()
        self._all = False
        self._set: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
        self._range: tuple[tuple[str, ...], int, int, int] | None = None
        text = self.text
        if not text:
            return
        if text in ("*", "*.*.*.*", "*:*:*:*:*:*:*:*"):
            self._all = True
        elif text.endswith("}"):
            head, _, tail = text.rpartition("{")
            if not head or head[-1] not in ".:":
                raise AclConfigError(f"bad address set {text!r}")
            self._set = frozenset(_ip(head + item) for item in tail[:-1].split(","))
        elif "," in text:
            self._set = frozenset(_ip(item) for item in text.split(","))
        elif "*" in text or "-" in text:
            self._range = self._parse_range(text)
        else:
            self._set = frozenset({_ip(text)})

    @staticmethod
    def _parse_range(text: str) -> tuple[tuple[str, ...], int, int, int]:
        if ":" in text:
            raise AclConfigError(f"IPv6 address ranges are not supported: {text!r}")
        parts = [p.strip() for p in text.split(".")]
        if len(parts) != 4 or not parts[0].isdigit():
            raise AclConfigError(f"bad address range {text!r}")
        for index in (1, 2, 3):
            part = parts[index]
            if part == "*":
                start, end = 0, 255
            elif "-" in part:
                low, _, high = part.partition("-")
                if not (low.isdigit() and high.isdigit()):
                    raise AclConfigError(f"bad address range {text!r}")
                start, end = int(low), int(high)
                if not 0 <= start <= end <= 255:
                    raise AclConfigError(f"bad address range {text!r}")
            else:
                continue
            if any(p != "*" for p in parts[index + 1 :]):
                raise AclConfigError(f"only '*' may follow a range: {text!r}")
            if not all(p.isdigit() and int(p) <= 255 for p in parts[:index]):
                raise AclConfigError(f"bad address range {text!r}")
            return tuple(parts[:index]), index, start, end
        raise AclConfigError(f"bad address range {text!r}")  # pragma: no cover

    def matches(self, address: str) -> bool:
        """Whether the peer at ``address`` (``host:port`` or a host) matches."""
        if self._all:
            return True
        host = _host(address)
        if self._range is not None:
            head, index, start, end = self._range
            parts = host.split(".")
            if len(parts) != 4 or tuple(parts[:index]) != head:
                return False
            return parts[index].isdigit() and start <= int(parts[index]) <= end
        if not self._set:
            return False
        try:
            return ipaddress.ip_address(host) in self._set
        except ValueError:
            return False

    def __repr__(self) -> str:
        return f"AddressPattern({self.text!r})"


@dataclasses.dataclass(frozen=True)
class Account:
    """One account of the file. ``group_perms`` is keyed by group name."""

    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    white_address: AddressPattern = dataclasses.field(default_factory=lambda: AddressPattern(""))
    admin: bool = False
    default_topic_perm: Permission = Permission.DENY
    default_group_perm: Permission = Permission.DENY
    topic_perms: Mapping[str, Permission] = dataclasses.field(default_factory=dict)
    group_perms: Mapping[str, Permission] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AclConfig:
    """Every account by access key, and the global white list."""

    accounts: Mapping[str, Account]
    global_white: tuple[AddressPattern, ...] = ()


def _resource_perms(owner: str, what: str, items: Any) -> dict[str, Permission]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise AclConfigError(f"{owner}: {what} must be a list of 'name=PERM'")
    perms: dict[str, Permission] = {}
    for item in items:
        name, sep, perm = str(item).partition("=")
        if not sep or not name.strip() or "=" in perm:
            raise AclConfigError(f"{owner}: {what} entry {item!r} is not 'name=PERM'")
        if perm.strip() not in _PERMISSIONS:
            raise AclConfigError(
                f"{owner}: {what} entry {item!r}: the permission must be DENY, PUB, SUB or PUB|SUB"
            )
        perms[name.strip()] = _PERMISSIONS[perm.strip()]
    return perms


def _account(index: int, data: Any) -> Account:
    if not isinstance(data, Mapping):
        raise AclConfigError(f"accounts[{index}] is not a mapping")
    access_key = str(data.get("accessKey") or "")
    secret_key = str(data.get("secretKey") or "")
    owner = f"accounts[{index}] ({access_key or 'no accessKey'})"
    if len(access_key) <= _MIN_KEY_LENGTH or len(secret_key) <= _MIN_KEY_LENGTH:
        raise AclConfigError(
            f"{owner}: accessKey and secretKey must both be longer than {_MIN_KEY_LENGTH} "
            "characters"
        )
    admin = data.get("admin", False)
    if isinstance(admin, str):
        admin = admin.strip().lower() == "true"
    try:
        white = AddressPattern(
            None if data.get("whiteRemoteAddress") is None else str(data["whiteRemoteAddress"])
        )
    except AclConfigError as error:
        raise AclConfigError(f"{owner}: whiteRemoteAddress: {error}") from None
    return Account(
        access_key=access_key,
        secret_key=secret_key,
        white_address=white,
        admin=bool(admin),
        default_topic_perm=parse_permission(data.get("defaultTopicPerm")),
        default_group_perm=parse_permission(data.get("defaultGroupPerm")),
        topic_perms=_resource_perms(owner, "topicPerms", data.get("topicPerms")),
        group_perms=_resource_perms(owner, "groupPerms", data.get("groupPerms")),
    )


def parse_acl(data: Any) -> AclConfig:
    """An :class:`AclConfig` from the parsed content of a ``plain_acl.yml`` file;
    :class:`AclConfigError` naming the field for anything Apache would refuse."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise AclConfigError("the ACL file must hold a mapping (accounts, ...)")
    white_items: Iterable[Any] = data.get("globalWhiteRemoteAddresses") or []
    if not isinstance(white_items, list):
        raise AclConfigError("globalWhiteRemoteAddresses must be a list")
    try:
        white = tuple(AddressPattern(str(item)) for item in white_items if item is not None)
    except AclConfigError as error:
        raise AclConfigError(f"globalWhiteRemoteAddresses: {error}") from None
    raw_accounts = data.get("accounts") or []
    if not isinstance(raw_accounts, list):
        raise AclConfigError("accounts must be a list")
    accounts: dict[str, Account] = {}
    for index, item in enumerate(raw_accounts):
        account = _account(index, item)
        if account.access_key in accounts:
            raise AclConfigError(f"accounts[{index}]: accessKey {account.access_key} repeats")
        accounts[account.access_key] = account
    return AclConfig(accounts, white)
