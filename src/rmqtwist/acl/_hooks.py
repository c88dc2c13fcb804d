"""RPC hooks that sign (client) and check (server) requests, and an ACL file that reloads."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from rmqtwist.acl._config import AclConfig, AclConfigError, parse_acl
from rmqtwist.acl._sign import Credentials, sign
from rmqtwist.acl._verify import AclDenied, check_request
from rmqtwist.codes import ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import RPCHookAbort
from rmqtwist.interfaces import IRPCHook

__all__ = ["AclClientHook", "AclFile", "AclServerHook", "load_acl_file", "load_credentials"]

_log = Logger()


@implementer(IRPCHook)
class AclClientHook:
    """Signs every request a client sends, as Apache's ``AclClientRPCHook`` does:
    ``AclClientHook(access_key, secret_key)`` or ``AclClientHook(credentials)``."""

    def __init__(
        self,
        access_key: str | Credentials,
        secret_key: str | None = None,
        security_token: str | None = None,
    ) -> None:
        if isinstance(access_key, Credentials):
            credentials = access_key
        elif secret_key is None:
            raise TypeError("AclClientHook needs a secret key (or a Credentials)")
        else:
            credentials = Credentials(access_key, secret_key, security_token)
        self.access_key = credentials.access_key
        self._secret_key = credentials.secret_key
        self._security_token = credentials.security_token

    def before_request(self, remote_address: str, request: RemotingCommand) -> RemotingCommand:
        if request.is_response:
            return request
        return sign(request, self.access_key, self._secret_key, self._security_token)

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        return None

    def __repr__(self) -> str:
        return f"AclClientHook(access_key={self.access_key!r})"


@implementer(IRPCHook)
class AclServerHook:
    """Refuses, with NO_PERMISSION and a remark saying why, every request the ACL does
    not allow. ``config`` is an :class:`AclConfig` or an :class:`AclFile` (reloaded)."""

    def __init__(self, config: AclConfig | AclFile) -> None:
        self._config = config

    @property
    def config(self) -> AclConfig:
        config = self._config
        return config.config if isinstance(config, AclFile) else config

    def before_request(self, remote_address: str, request: RemotingCommand) -> None:
        try:
            check_request(self.config, remote_address, request)
        except AclDenied as denied:
            raise RPCHookAbort(ResponseCode.NO_PERMISSION, f"ACL: {denied}") from None

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        return None


def load_acl_file(path: str) -> AclConfig:
    """Read and parse an Apache ``plain_acl.yml``; :class:`AclConfigError` naming the
    file for one that cannot be read or used."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data: Any = yaml.safe_load(handle)
    except OSError as error:
        raise AclConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise AclConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        return parse_acl(data)
    except AclConfigError as error:
        raise AclConfigError(f"{path}: {error}") from None


def load_credentials(path: str) -> Credentials:
    """The :class:`Credentials` in a YAML file of Apache's ``tools.yml`` form (the file
    ``mqadmin`` signs with)::

        accessKey: RocketMQ
        secretKey: 12345678
        securityToken: ...   # optional

    :class:`AclConfigError` naming the file and the field (never the secret) for one
    that cannot be read or used."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data: Any = yaml.safe_load(handle)
    except OSError as error:
        raise AclConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except yaml.YAMLError:
        # The YAML error quotes the line, which may hold the secret.
        raise AclConfigError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise AclConfigError(f"{path}: must hold accessKey and secretKey")
    values: dict[str, str | None] = {}
    for field in ("accessKey", "secretKey", "securityToken"):
        value = data.get(field)
        if value is not None and not isinstance(value, (str, int)):
            raise AclConfigError(f"{path}: {field} must be text")
        values[field] = None if value is None else str(value)
    access_key, secret_key = values["accessKey"], values["secretKey"]
    if not access_key or not secret_key:
        raise AclConfigError(f"{path}: needs both accessKey and secretKey")
    return Credentials(access_key, secret_key, values["securityToken"] or None)


class AclFile:
    """An ACL file, read at once (errors raise) and read again every ``interval`` seconds
    when its modification time or size changed, as Apache's broker watches its file. A
    change that does not parse is logged and the previous configuration kept."""

    def __init__(self, path: str, reactor: Any = None, interval: float = 2.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.path = path
        self.interval = interval
        self._stamp = self._stat()
        self.config = load_acl_file(path)
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def start(self) -> None:
        """Start watching the file."""
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        """Stop watching the file."""
        if self._loop.running:
            self._loop.stop()

    def check(self) -> bool:
        """Reload the file if it changed; True when a new configuration was taken."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_acl_file(self.path)
        except AclConfigError as error:
            _log.error("ACL file not reloaded, the previous one stays: {error}", error=str(error))
            return False
        self.config = config
        _log.info(
            "ACL file {path} reloaded: {count} accounts", path=self.path, count=len(config.accounts)
        )
        return True
