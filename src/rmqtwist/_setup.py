"""What the producer and both consumers do first with their common arguments."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from rmqtwist.acl import AclClientHook, Credentials
from rmqtwist.client import RemotingClient
from rmqtwist.routing import split_addresses

__all__ = ["ClientSetup", "client_setup"]


class ClientSetup(NamedTuple):
    name_servers: list[str]
    reactor: Any
    client: RemotingClient
    own_client: bool


def client_setup(
    role: str,
    name_servers: str | Iterable[str],
    reactor: Any,
    client: RemotingClient | None,
    credentials: Credentials | None,
) -> ClientSetup:
    """The name servers as a list (ValueError naming ``role``, e.g. "a producer", when
    there are none), the reactor (default: the global one), the client (``client``, or
    a new one that is then the caller's own to close), signing every request when
    ``credentials`` are given (on a shared client too)."""
    addresses = split_addresses(name_servers)
    if not addresses:
        raise ValueError(f"{role} needs at least one name server address")
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    own = client is None
    if client is None:
        client = RemotingClient(reactor)
    if credentials is not None:  # sign every request for a broker with ACL
        client.register_rpc_hook(AclClientHook(credentials))
    return ClientSetup(addresses, reactor, client, own)
