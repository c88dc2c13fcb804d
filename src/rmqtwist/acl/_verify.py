"""Checking a request against an :class:`~rmqtwist.acl.AclConfig`, as Apache 4.9's
``PlainAccessValidator`` and ``PlainPermissionManager.validate`` do.

In order: a peer on the global white list passes; else the request must carry a known
``AccessKey``; a peer matching that account's ``whiteRemoteAddress`` passes; else the
``Signature`` must match (compared in constant time); then admin-only codes need an admin,
and each topic or group the request touches needs the permission for it (the account's
entry for it, else its default). Groups are checked as their retry topic, as Apache does.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any, Final

from rmqtwist.acl._config import AclConfig, Permission
from rmqtwist.acl._sign import ACCESS_KEY, SIGNATURE, UNIQUE_KEY_QUERY, signature
from rmqtwist.codes import RequestCode
from rmqtwist.command import RemotingCommand

__all__ = [
    "ADMIN_CODES",
    "NAME_SERVER_ADMIN_CODES",
    "AclDenied",
    "check_request",
    "needed_permissions",
]

_RETRY: Final = "%RETRY%"
#: Codes only an admin account may send (Java's ``Permission.ADMIN_CODE``).
ADMIN_CODES: Final = frozenset(
    {
        RequestCode.UPDATE_AND_CREATE_TOPIC,
        RequestCode.UPDATE_BROKER_CONFIG,
        RequestCode.DELETE_TOPIC_IN_BROKER,
        RequestCode.UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
        RequestCode.DELETE_SUBSCRIPTIONGROUP,
    }
)
#: Name-server codes that change routes, which only an admin account may send either.
#: Apache's name server checks no ACL; the dev broker is its own name server, and a
#: plain account registering a broker of its own (or deleting a topic) could send other
#: clients' messages anywhere.
NAME_SERVER_ADMIN_CODES: Final = frozenset(
    {
        RequestCode.REGISTER_BROKER,
        RequestCode.UNREGISTER_BROKER,
        RequestCode.DELETE_TOPIC_IN_NAMESRV,
    }
)
_TRACE_TOPIC: Final = "RMQ_SYS_TRACE_TOPIC"
_SEND_CODES: Final = frozenset(
    {RequestCode.SEND_MESSAGE, RequestCode.SEND_MESSAGE_V2, RequestCode.SEND_BATCH_MESSAGE}
)


class AclDenied(Exception):
    """The request is refused; the message says why (never a secret)."""


def _retry(group: str | None) -> str | None:
    return None if group is None else _RETRY + group


def needed_permissions(request: RemotingCommand) -> dict[str, Permission]:
    """The topics (and groups, as ``%RETRY%group``) ``request`` touches and the permission
    each needs. Apache's list of codes, plus SEND_BATCH_MESSAGE checked as a send (Apache
    4.9 checks no topic for it). Raises :class:`AclDenied` for a body it cannot read."""
    ext: Mapping[str, str] = request.ext_fields or {}
    needed: dict[str, Permission] = {}

    def add(resource: str | None, permission: Permission) -> None:
        if resource is not None:
            needed[resource] = permission

    code = request.code
    if code in (
        RequestCode.SEND_MESSAGE,
        RequestCode.SEND_MESSAGE_V2,
        RequestCode.SEND_BATCH_MESSAGE,
    ):
        v2 = "b" in ext and "topic" not in ext
        topic = ext.get("b" if v2 else "topic")
        group = ext.get("a" if v2 else "producerGroup")
        if topic is not None and topic.startswith(_RETRY):
            add(_retry(group), Permission.SUB)
        else:
            add(topic, Permission.PUB)
    elif code == RequestCode.CONSUMER_SEND_MSG_BACK:
        add(_retry(ext.get("group")), Permission.SUB)
    elif code == RequestCode.PULL_MESSAGE:
        add(ext.get("topic"), Permission.SUB)
        add(_retry(ext.get("consumerGroup")), Permission.SUB)
    elif code == RequestCode.QUERY_MESSAGE:
        add(ext.get("topic"), Permission.SUB)
    elif code == RequestCode.HEART_BEAT:
        for group, topics in _heartbeat_consumers(request.body):
            add(_retry(group), Permission.SUB)
            for topic in topics:
                add(topic, Permission.SUB)
    elif code in (RequestCode.UNREGISTER_CLIENT, RequestCode.GET_CONSUMER_LIST_BY_GROUP):
        add(_retry(ext.get("consumerGroup")), Permission.SUB)
    elif code == RequestCode.UPDATE_CONSUMER_OFFSET:
        add(_retry(ext.get("consumerGroup")), Permission.SUB)
        add(ext.get("topic"), Permission.SUB)
    return needed


def _heartbeat_consumers(body: bytes | None) -> list[tuple[str | None, list[str]]]:
    try:
        data: Any = json.loads((body or b"{}").decode("utf-8"))
        return [
            (
                None if c.get("groupName") is None else str(c["groupName"]),
                [str(s["topic"]) for s in c.get("subscriptionDataSet") or () if "topic" in s],
            )
            for c in data.get("consumerDataSet") or ()
        ]
    except (ValueError, AttributeError, TypeError) as error:
        raise AclDenied(f"unreadable heartbeat body: {type(error).__name__}") from None


def _describe(resource: str) -> str:
    if resource.startswith(_RETRY):
        return f"group {resource[len(_RETRY) :]!r}"
    return f"topic {resource!r}"


def check_request(config: AclConfig, remote_address: str, request: RemotingCommand) -> None:
    """Raise :class:`AclDenied` unless ``config`` lets the peer at ``remote_address``
    make ``request``; see the module doc for the order of the checks."""
    if any(pattern.matches(remote_address) for pattern in config.global_white):
        return
    ext = request.ext_fields or {}
    access_key = ext.get(ACCESS_KEY)
    if access_key is None:
        raise AclDenied("the request is not signed (no AccessKey)")
    account = config.accounts.get(access_key)
    if account is None:
        raise AclDenied(f"no account for AccessKey {access_key[:64]!r}")
    if account.white_address.matches(remote_address):
        return
    expected = signature(ext, request.body, account.secret_key, skip=(SIGNATURE, UNIQUE_KEY_QUERY))
    given = ext.get(SIGNATURE)
    if given is None:
        raise AclDenied(f"the request has no Signature (AccessKey {access_key!r})")
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace")):
        raise AclDenied(f"wrong Signature for AccessKey {access_key!r}")
    if (request.code in ADMIN_CODES or request.code in NAME_SERVER_ADMIN_CODES) and not (
        account.admin
    ):
        raise AclDenied(
            f"request code {request.code} needs an admin account; {access_key!r} is not one"
        )
    needed = needed_permissions(request)
    if needed.get(_TRACE_TOPIC) == Permission.PUB:  # Apache lets trace messages through
        return
    if account.admin and not account.topic_perms and not account.group_perms:
        return
    for resource, permission in needed.items():
        is_group = resource.startswith(_RETRY)
        owned_map = account.group_perms if is_group else account.topic_perms
        name = resource[len(_RETRY) :] if is_group else resource
        owned = owned_map.get(name)
        if owned is None:
            owned = account.default_group_perm if is_group else account.default_topic_perm
            if not owned.allows(permission):
                raise AclDenied(
                    f"AccessKey {access_key!r} has no default {permission.name} permission "
                    f"for {_describe(resource)}"
                )
        elif not owned.allows(permission):
            raise AclDenied(
                f"AccessKey {access_key!r} has no {permission.name} permission for "
                f"{_describe(resource)}"
            )
