"""RPC hooks: ACL signing on the client, checking on the server, and refusing requests.

- ``SigningHook`` (client) adds ``AccessKey`` and ``Signature`` to every request it sends,
  signed as RocketMQ's ``AclClientRPCHook`` signs: HMAC-SHA1 over the ext_fields values
  (sorted by key) and the body, in base64.
- ``CheckingHook`` (server) recomputes the signature and refuses, with NO_PERMISSION,
  a request that has no access key, an unknown one or a wrong signature.
- ``ReadOnlyHook`` (client) refuses to send SEND_MESSAGE at all.

Run from a checkout:  PYTHONPATH=src python docs/examples/acl_hooks.py
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from zope.interface import implementer

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, code_name
from rmqtwist.errors import RPCHookAbort
from rmqtwist.interfaces import IRPCHook
from rmqtwist.processors import EchoProcessor
from rmqtwist.protocol import Dispatcher, RemotingProtocol
from rmqtwist.server import RemotingServer, RemotingServerFactory


def acl_signature(ext_fields: Mapping[str, str], body: bytes, secret_key: str) -> str:
    """The ``Signature`` of a request with ``ext_fields`` and ``body``."""
    values = "".join(value for key, value in sorted(ext_fields.items()) if key != "Signature")
    content = values.encode("utf-8") + body
    digest = hmac.new(secret_key.encode("utf-8"), content, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@implementer(IRPCHook)
class SigningHook:
    """Client side: signs every request it sends."""

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key

    def before_request(self, remote_address: str, request: RemotingCommand) -> RemotingCommand:
        ext_fields = {**(request.ext_fields or {}), "AccessKey": self.access_key}
        ext_fields["Signature"] = acl_signature(ext_fields, request.body, self.secret_key)
        return request.replace(ext_fields=ext_fields)  # commands are immutable: a copy

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        return None  # keep the response as it is


@implementer(IRPCHook)
class CheckingHook:
    """Server side: refuses requests that are not signed with a known key."""

    def __init__(self, secret_keys: Mapping[str, str]) -> None:
        self.secret_keys = secret_keys

    def before_request(self, remote_address: str, request: RemotingCommand) -> None:
        access_key = request.ext("AccessKey")
        if access_key is None:
            raise RPCHookAbort(ResponseCode.NO_PERMISSION, "no AccessKey in the request")
        secret_key = self.secret_keys.get(access_key)
        if secret_key is None:
            raise RPCHookAbort(ResponseCode.NO_PERMISSION, f"no account for {access_key}")
        expected = acl_signature(request.ext_fields or {}, request.body, secret_key)
        if not hmac.compare_digest(expected, request.ext("Signature") or ""):
            raise RPCHookAbort(
                ResponseCode.NO_PERMISSION, f"check signature failed for {access_key}"
            )
        return None  # process the request as it is

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        return None


@implementer(IRPCHook)
class ReadOnlyHook:
    """Client side: refuses to send SEND_MESSAGE; the call fails without a round trip."""

    def before_request(self, remote_address: str, request: RemotingCommand) -> None:
        if request.code == RequestCode.SEND_MESSAGE:
            raise RPCHookAbort(ResponseCode.NO_PERMISSION, "this client is read-only")
        return None

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        return None


async def connect(reactor: Any, port: int, *hooks: Any) -> RemotingProtocol:
    client = RemotingProtocol()
    client.dispatcher = Dispatcher()
    for hook in hooks:
        client.dispatcher.register_rpc_hook(hook)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=3)
    return await connectProtocol(endpoint, client)


async def main(reactor: Any) -> None:
    print("check vector:", acl_signature({}, b"RocketMQ", "12345678"))

    factory = RemotingServerFactory()
    factory.register_default_processor(EchoProcessor())
    factory.register_rpc_hook(CheckingHook({"rocketmq2": "12345678"}))
    server = RemotingServer(factory, ["tcp:0:interface=127.0.0.1"])
    server.startService()
    try:
        [listening] = await server.when_listening()
        port = listening.getHost().port
        clients = {
            "signed": await connect(reactor, port, SigningHook("rocketmq2", "12345678")),
            "wrong key": await connect(reactor, port, SigningHook("rocketmq2", "87654321")),
            "unknown": await connect(reactor, port, SigningHook("someone", "12345678")),
            "unsigned": await connect(reactor, port),
        }
        request = RemotingCommand.request(
            RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "TopicTest"}, b"body"
        )
        for name, client in clients.items():
            response = await client.invoke(request)
            print(
                f"{name:<10} {code_name(response.code, response=True)}"
                f" remark={response.remark!r} echoed={sorted(response.ext_fields or {})}"
            )

        read_only = await connect(reactor, port, ReadOnlyHook())
        try:
            await read_only.invoke(RemotingCommand.request(RequestCode.SEND_MESSAGE))
        except RPCHookAbort as refused:
            print(f"read-only  {type(refused).__name__}: {refused}")
        print(f"requests the server received: {factory.dispatcher.requests_received}")
    finally:
        await server.stopService()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
