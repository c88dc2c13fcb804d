"""``makeService`` of ``twist rmq-remoting`` (see :mod:`rmqtwist.tap`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.service import BrokerService
from rmqtwist.broker.store import DiskStore, IMessageStore, MemoryStore
from rmqtwist.server import (
    RemotingServer,
    RemotingServerFactory,
)
from rmqtwist.tap._options import Options
from rmqtwist.tap._plugins import _exit_with_usage_error, _program
from rmqtwist.tls import TLSMode, listen_endpoint, server_tls_options

if TYPE_CHECKING:
    from rmqtwist.acl import Credentials


class _CommandLineServer(RemotingServer):
    """Under twist/twistd: an endpoint that cannot be listened on ends the process with a
    one-line message and status 1 (instead of a traceback, or a server listening nowhere)."""

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._exit_if_not_listening()

    def startService(self) -> None:
        super().startService()
        self._exit_if_not_listening()

    def _exit_if_not_listening(self) -> None:
        errors = self.listen_errors
        if errors:
            endpoint, failure = errors[0]
            message = " ".join(failure.getErrorMessage().split())
            print(
                f"{_program()} rmq-remoting: error: cannot listen on {endpoint}: {message}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)


def makeService(options: Options) -> RemotingServer | BrokerService:
    """The :class:`~rmqtwist.server.RemotingServer` that ``options`` describe (not started).

    Raises UsageError for an endpoint Twisted cannot parse or a processor/hook factory that
    makes something else (under twist/twistd: one line on stderr, exit status 2).
    """
    under_twist = options.parent is not None
    server_class = _CommandLineServer if under_twist else RemotingServer
    try:
        if options.broker_mode:
            return _make_broker(options, server_class)
        return _make_service(options, server_class)
    except usage.UsageError as e:
        if not under_twist:
            raise
        _exit_with_usage_error(e)


def broker_config(options: Options) -> BrokerConfig:
    """The :class:`~rmqtwist.broker.config.BrokerConfig` that ``options`` describe."""
    return BrokerConfig(
        broker_name=options["broker-name"],
        cluster_name=options["cluster-name"],
        advertise=options["advertise"],
        auto_create_topic=options["auto-create-topic"],
        transaction_timeout=options["transaction-timeout"],
        transaction_check_interval=options["transaction-check-interval"],
        topics=tuple(options["topics"]),
        name_server=";".join(options["name-server"]) or None,
        name_server_credentials=_name_server_credentials(options),
    )


def _make_store(options: Options) -> IMessageStore:
    if options["data-dir"] is None:
        return MemoryStore(max_bytes=options["max-store-bytes"])
    from twisted.internet import reactor

    return DiskStore(
        options["data-dir"],
        flush=options["flush"],
        flush_interval=options["flush-interval"],
        reactor=reactor,
    )


def _make_broker(options: Options, server_class: type[RemotingServer]) -> BrokerService:
    hooks = []
    for plugin in options["hooks"]:
        try:
            hooks.append(plugin.make_hook())
        except TypeError as e:
            raise usage.UsageError(f"--hook {plugin.name}: {e}") from None
    try:
        config = broker_config(options)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    service = BrokerService(
        config,
        _make_store(options),
        listen=(),
        server_class=server_class,
        shutdown_timeout=options["shutdown-timeout"],
        idle_timeout=options["idle-timeout"] or None,
        serialize_type=options["serialize-type"],
        acl_file=_acl_file(options),
        **_limits(options),
    )
    for hook in hooks:
        service.factory.register_rpc_hook(hook)
    _listen_all(service.server, options)
    return service


def _name_server_credentials(options: Options) -> Credentials | None:
    path: str | None = options["name-server-credentials"]
    if path is None:
        return None
    from rmqtwist.acl import AclConfigError, load_credentials

    try:
        return load_credentials(path)
    except AclConfigError as e:
        raise usage.UsageError(f"--name-server-credentials {e}") from None


def _acl_file(options: Options) -> str | None:
    path: str | None = options["acl-file"]
    if path is not None:
        from rmqtwist.acl import AclConfigError, load_acl_file

        try:
            load_acl_file(path)
        except AclConfigError as e:
            raise usage.UsageError(f"--acl-file {e}") from None
    return path


def _limits(options: Options) -> dict[str, Any]:
    """The server factory's limits from the options (0 turns the optional ones off)."""
    return {
        "max_connections": options["max-connections"],
        "max_frame_length": options["max-frame-length"],
        "max_header_length": options["max-header-length"] or None,
        "max_ext_fields": options["max-ext-fields"] or None,
        "frame_timeout": options["frame-timeout"] or None,
        "first_frame_timeout": options["first-frame-timeout"] or None,
        "max_unsent_bytes": options["max-unsent-bytes"] or None,
        "max_buffered_bytes": options["max-buffered-bytes"] or None,
        "max_connections_per_address": options["max-connections-per-address"] or None,
    }


def _listen_all(server: RemotingServer, options: Options) -> None:
    """Listen on every --listen endpoint, behind PROXY headers and TLS when asked."""
    tls_options = None
    if options["tls-mode"] is not TLSMode.DISABLED:
        try:
            tls_options = server_tls_options(
                options["tls-cert"],
                options["tls-key"],
                ca=options["tls-ca"],
                client_auth=options["tls-client-auth"],
            )
        except ValueError as e:
            raise usage.UsageError(f"--tls-cert: {e}") from None
    for endpoint in options["listen"]:
        try:
            server.listen(
                listen_endpoint(
                    server.reactor,
                    endpoint,
                    proxy_protocol=options["proxy-protocol"],
                    tls_mode=options["tls-mode"],
                    tls_options=tls_options,
                    clock=server.clock,
                    first_byte_timeout=options["first-frame-timeout"] or None,
                )
            )
        except Exception as e:  # serverFromString: unknown type, bad arguments, no such file
            raise usage.UsageError(f"--listen {endpoint}: {type(e).__name__}: {e}") from None


def _make_service(options: Options, server_class: type[RemotingServer]) -> RemotingServer:
    idle_timeout = options["idle-timeout"] or None
    factory = RemotingServerFactory(
        idle_timeout=idle_timeout,
        serialize_type=options["serialize-type"],
        **_limits(options),
    )
    for choice in options.processor_choices:
        try:
            processor = choice.plugin.make_processor()
        except TypeError as e:  # the factory made something that is not a processor
            raise usage.UsageError(f"--processor {choice.spec}: {e}") from None
        if choice.codes:
            for code in choice.codes:
                factory.register_processor(code, processor)
        else:
            factory.register_default_processor(processor)
    for plugin in options["hooks"]:
        try:
            hook = plugin.make_hook()
        except TypeError as e:
            raise usage.UsageError(f"--hook {plugin.name}: {e}") from None
        factory.register_rpc_hook(hook)
    server = server_class(factory, shutdown_timeout=options["shutdown-timeout"])
    _listen_all(server, options)
    return server
