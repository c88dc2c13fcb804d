"""The command line of ``twist rmq-remoting`` (see :mod:`rmqtwist.tap`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn

from twisted.python import usage

from rmqtwist._version import __version__
from rmqtwist.broker.topics import topic_problem
from rmqtwist.codec import (
    DEFAULT_MAX_EXT_FIELDS,
    DEFAULT_MAX_FRAME_LENGTH,
    DEFAULT_MAX_HEADER_LENGTH,
)
from rmqtwist.codes import RequestCode, SerializeType
from rmqtwist.interfaces import (
    IProcessorPlugin,
    IRPCHookPlugin,
)
from rmqtwist.processors import echo_plugin
from rmqtwist.server import (
    DEFAULT_FIRST_FRAME_TIMEOUT,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_UNSENT_BYTES,
)
from rmqtwist.tap._plugins import (
    DEFAULT_PORT,
    DEFAULT_PROCESSORS,
    ProcessorChoice,
    _as_hook_plugin,
    _as_processor_plugin,
    _exit_with_usage_error,
    _number,
    _plugin_list,
    _resolve,
    parse_code,
)
from rmqtwist.tls import ClientAuth, TLSMode


class Options(usage.Options):
    """The options of ``twist rmq-remoting``."""

    synopsis = "[options]"
    longdesc = (
        "Run the rmqtwist dev broker: an Apache RocketMQ name server and broker on one "
        "port, which unmodified RocketMQ clients produce to and consume from (give them "
        "this address as the name server). It keeps messages in memory unless --data-dir "
        "is given, and listens on 127.0.0.1 only unless --all-interfaces is given. With "
        "--processor, it is a plain remoting server instead: only the processors given "
        "answer ('--processor echo' answers every request with its own ext_fields and "
        "body) and other codes get REQUEST_CODE_NOT_SUPPORTED (3). --help-processors and "
        "--help-hooks list the plugins found. When its output is not a terminal, twist "
        "writes JSON log lines: 'twist --log-format=text rmq-remoting' keeps them plain "
        "text."
    )

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        # --help shows the opt_* docstrings: fold their line breaks and indentation
        self.docs = {name: " ".join(doc.split()) if doc else doc for name, doc in self.docs.items()}
        self["port"] = None
        self["listen"] = []
        self["idle-timeout"] = 120.0
        self["max-connections"] = 1000
        self["max-frame-length"] = DEFAULT_MAX_FRAME_LENGTH
        self["max-header-length"] = DEFAULT_MAX_HEADER_LENGTH
        self["max-ext-fields"] = DEFAULT_MAX_EXT_FIELDS
        self["frame-timeout"] = DEFAULT_FRAME_TIMEOUT
        self["first-frame-timeout"] = DEFAULT_FIRST_FRAME_TIMEOUT
        self["max-unsent-bytes"] = DEFAULT_MAX_UNSENT_BYTES
        self["max-buffered-bytes"] = DEFAULT_MAX_BUFFERED_BYTES
        self["max-connections-per-address"] = 0
        self["processors"] = []
        self["hooks"] = []
        self["serialize-type"] = SerializeType.JSON
        self["shutdown-timeout"] = 30.0
        self["all-interfaces"] = False
        self["advertise"] = None
        self["auto-create-topic"] = True
        self["data-dir"] = None
        self["flush"] = "async"
        self["flush-interval"] = 0.5
        self["max-store-bytes"] = 512 * 1024 * 1024
        self["broker-name"] = "broker-a"
        self["cluster-name"] = "DefaultCluster"
        self["transaction-timeout"] = 6.0
        self["transaction-check-interval"] = 60.0
        self["broker-options-given"] = []
        self["topics"] = []
        self["name-server"] = []
        self["name-server-credentials"] = None
        self["tls-mode"] = None
        self["tls-cert"] = None
        self["tls-key"] = None
        self["tls-ca"] = None
        self["tls-client-auth"] = ClientAuth.NONE
        self["proxy-protocol"] = False
        self["acl-file"] = None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse ``options``; under twist/twistd a usage error exits (see the module doc)."""
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            if self.parent is None:  # parsed on its own: the caller deals with it
                raise
            _exit_with_usage_error(e)

    def opt_port(self, port: str) -> None:
        """TCP port to listen on, on 127.0.0.1 (all interfaces with --all-interfaces)
        [default: 10911, unless --listen is given]."""
        self["port"] = _number("port", port, int, 0, 65535)

    def opt_all_interfaces(self) -> None:
        """Listen on --port on every interface, not only 127.0.0.1: anyone who can reach
        this machine can then produce and consume."""
        self["all-interfaces"] = True

    def _broker_option(self, name: str) -> None:
        self["broker-options-given"].append(name)

    def opt_advertise(self, address: str) -> None:
        """host:port to name in topic routes and message ids [default: the address each
        client connected to]."""
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError(f"--advertise must be host:port, not {address!r}")
        self["advertise"] = address.strip()
        self._broker_option("advertise")

    def opt_topic(self, spec: str) -> None:
        """NAME[:QUEUES]: create topic NAME with QUEUES queues (default 4) at start, if it
        does not exist (repeatable). Clients that never fall back to TBW102 for a new
        topic, such as the Node.js ali-ons producer, need their topics to exist."""
        name, _, count = spec.strip().partition(":")
        problem = topic_problem(name)
        if problem is not None:
            raise usage.UsageError(f"--topic {spec}: {problem}")
        queues = _number("topic", count, int, 1, 1024) if count else 4
        self["topics"].append((name, queues))
        self._broker_option("topic")

    def opt_no_auto_create_topic(self) -> None:
        """Refuse sends to topics that were not created first (UPDATE_AND_CREATE_TOPIC)
        [default: a topic is created on its first send or subscription]."""
        self["auto-create-topic"] = False
        self._broker_option("no-auto-create-topic")

    def opt_data_dir(self, path: str) -> None:
        """Keep messages, consumer offsets and topics on disk in this directory (created
        if missing) [default: in memory only]."""
        if not path.strip():
            raise usage.UsageError("--data-dir needs a directory")
        self["data-dir"] = path
        self._broker_option("data-dir")

    def opt_flush(self, mode: str) -> None:
        """With --data-dir: 'sync' answers a send only once it is fsynced (nothing
        acknowledged is lost, even on power failure); 'async' fsyncs every
        --flush-interval (a crash of the process loses nothing written; a power failure
        may lose the last interval) [default: async]."""
        mode = mode.strip().lower()
        if mode not in ("sync", "async"):
            raise usage.UsageError(f"--flush must be sync or async, not {mode!r}")
        self["flush"] = mode
        self._broker_option("flush")

    def opt_flush_interval(self, seconds: str) -> None:
        """With --flush async: seconds between fsyncs [default: 0.5]."""
        self["flush-interval"] = _number("flush-interval", seconds, float, 0.001)
        self._broker_option("flush-interval")

    def opt_max_store_bytes(self, size: str) -> None:
        """In memory: the most bytes of messages kept; past it the oldest messages of the
        largest queues are dropped [default: 536870912 (512 MiB)]."""
        self["max-store-bytes"] = _number("max-store-bytes", size, int, 1024)
        self._broker_option("max-store-bytes")

    def opt_broker_name(self, name: str) -> None:
        """The broker's name in routes [default: broker-a]."""
        if not name.strip():
            raise usage.UsageError("--broker-name must not be empty")
        self["broker-name"] = name.strip()
        self._broker_option("broker-name")

    def opt_cluster_name(self, name: str) -> None:
        """The cluster's name in routes [default: DefaultCluster]."""
        if not name.strip():
            raise usage.UsageError("--cluster-name must not be empty")
        self["cluster-name"] = name.strip()
        self._broker_option("cluster-name")

    def opt_name_server(self, addresses: str) -> None:
        """HOST:PORT[;HOST:PORT]: register this broker with these name servers (another
        rmqtwist dev broker or Apache's), at start and every 30 s, and unregister on
        stop (repeatable). Brokers sharing a name server need distinct --broker-name
        [default: none: this broker is in its own routes only]."""
        for address in addresses.split(";"):
            address = address.strip()
            if not address:
                continue
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise usage.UsageError(
                    f"--name-server takes host:port[;host:port], not {addresses!r}"
                )
            self["name-server"].append(address)
        if not self["name-server"]:
            raise usage.UsageError("--name-server needs a host:port")
        self._broker_option("name-server")

    def opt_name_server_credentials(self, path: str) -> None:
        """FILE: sign the registrations with an admin account's ACL keys, read from FILE
        (Apache's tools.yml form: accessKey, secretKey), for a name server that checks an
        ACL (another dev broker with --acl-file) [default: unsigned]."""
        if not path:
            raise usage.UsageError("--name-server-credentials needs a file")
        self["name-server-credentials"] = path
        self._broker_option("name-server-credentials")

    def opt_version(self) -> NoReturn:
        """Print rmqtwist's version and exit."""
        print(f"rmqtwist {__version__.public()}")
        sys.exit(0)

    def opt_transaction_timeout(self, seconds: str) -> None:
        """Ask a producer about a transaction half message unresolved this long
        [default: 6]."""
        self["transaction-timeout"] = _number("transaction-timeout", seconds, float, 0)
        self._broker_option("transaction-timeout")

    def opt_transaction_check_interval(self, seconds: str) -> None:
        """How often unresolved half messages are looked at [default: 60]."""
        self["transaction-check-interval"] = _number(
            "transaction-check-interval", seconds, float, 0.01
        )
        self._broker_option("transaction-check-interval")

    opt_p = opt_port

    def opt_tls_mode(self, mode: str) -> None:
        """disabled, permissive (TLS and plaintext on one port, told apart by the first
        byte) or enforcing (TLS only: a plaintext connection is closed before any
        request is read) [default: enforcing with --tls-cert, else disabled]."""
        try:
            self["tls-mode"] = TLSMode(mode.strip().lower())
        except ValueError:
            raise usage.UsageError(
                f"--tls-mode must be disabled, permissive or enforcing, not {mode!r}"
            ) from None

    def opt_tls_cert(self, path: str) -> None:
        """PEM file of the server's certificate chain (and its key, unless --tls-key),
        for every --port/--listen endpoint."""
        self["tls-cert"] = path

    def opt_tls_key(self, path: str) -> None:
        """PEM file of the server certificate's private key [default: in --tls-cert]."""
        self["tls-key"] = path

    def opt_tls_ca(self, path: str) -> None:
        """PEM file of the CAs that sign client certificates (with --tls-client-auth)."""
        self["tls-ca"] = path

    def opt_tls_client_auth(self, mode: str) -> None:
        """none, optional (a client certificate, if sent, must verify against --tls-ca)
        or require (a client without one is refused) [default: none]."""
        try:
            self["tls-client-auth"] = ClientAuth(mode.strip().lower())
        except ValueError:
            raise usage.UsageError(
                f"--tls-client-auth must be none, optional or require, not {mode!r}"
            ) from None

    def opt_proxy_protocol(self) -> None:
        """Every connection starts with a PROXY protocol v1 or v2 header from a load
        balancer (others are closed), and the client address in it is the one used for
        limits, ACL white lists, hooks and logs. Only for ports just the load balancer
        can reach."""
        self["proxy-protocol"] = True

    def opt_acl_file(self, path: str) -> None:
        """Check every request against this ACL file in Apache's plain_acl.yml format
        (re-read when it changes); refused requests get NO_PERMISSION (16)."""
        if not path.strip():
            raise usage.UsageError("--acl-file needs a file")
        self["acl-file"] = path
        self._broker_option("acl-file")

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted endpoint (repeatable): tcp:10911, tcp:0:interface=127.0.0.1,
        tcp6:10911, unix:/run/rmq.sock, ssl:10912:privateKey=key.pem:certKey=cert.pem."""
        if not endpoint.strip():
            raise usage.UsageError("--listen needs an endpoint such as tcp:10911")
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_idle_timeout(self, seconds: str) -> None:
        """Close a connection after this many seconds with nothing read or written (0:
        never) [default: 120]."""
        self["idle-timeout"] = _number("idle-timeout", seconds, float, 0)

    def opt_max_connections(self, count: str) -> None:
        """Refuse new connections while this many are open [default: 1000]."""
        self["max-connections"] = _number("max-connections", count, int, 1)

    def opt_max_frame_length(self, size: str) -> None:
        """Largest frame accepted in bytes, length prefix included [default: 16777216]."""
        self["max-frame-length"] = _number("max-frame-length", size, int, 8)

    def opt_max_header_length(self, size: str) -> None:
        """Largest frame header accepted in bytes, refused from the frame's length words
        before it is read (Java clients send under 1 KiB; 0: no limit but the frame's)
        [default: 262144]."""
        self["max-header-length"] = _number("max-header-length", size, int, 0, (1 << 24) - 1)

    def opt_max_ext_fields(self, count: str) -> None:
        """Most ext_fields entries accepted in one header (Java sends under 20; 0: no
        limit) [default: 1024]."""
        self["max-ext-fields"] = _number("max-ext-fields", count, int, 0)

    def opt_frame_timeout(self, seconds: str) -> None:
        """Close a connection whose frame has not arrived whole this many seconds after
        its first byte did (0: never) [default: 10]."""
        self["frame-timeout"] = _number("frame-timeout", seconds, float, 0)

    def opt_first_frame_timeout(self, seconds: str) -> None:
        """Close a connection that has not sent one whole frame this many seconds after
        connecting (0: never) [default: 10]."""
        self["first-frame-timeout"] = _number("first-frame-timeout", seconds, float, 0)

    def opt_max_unsent_bytes(self, size: str) -> None:
        """Close a connection once this many bytes were written to it while its write
        buffer was full (a peer that sends requests but does not read the answers)
        (0: never) [default: 33554432 (32 MiB)]."""
        self["max-unsent-bytes"] = _number("max-unsent-bytes", size, int, 0)

    def opt_max_buffered_bytes(self, size: str) -> None:
        """Bytes of unfinished frames all connections may hold together; past it the
        connections holding the most are closed (0: no budget)
        [default: 268435456 (256 MiB)]."""
        self["max-buffered-bytes"] = _number("max-buffered-bytes", size, int, 0)

    def opt_max_connections_per_address(self, count: str) -> None:
        """Refuse new connections from a host while this many from it are open (0: no
        such limit) [default: 0]."""
        self["max-connections-per-address"] = _number("max-connections-per-address", count, int, 0)

    def opt_processor(self, spec: str) -> None:
        """[CODE=]NAME: answer requests with processor NAME (repeatable). NAME is a
        processor plugin (see --help-processors) or a dotted path pkg.module:factory; CODE
        a request code number or name. Without CODE, the plugin's own codes, or the
        default processor. Any --processor turns the broker off: '--processor echo' is
        the echo server (with stats answering GET_BROKER_RUNTIME_INFO (28) unless another
        processor does). [default: none: the dev broker runs]"""
        code_text, separator, name = spec.partition("=")
        if not separator:
            code_text, name = "", spec
        code = None
        if separator:
            try:
                code = parse_code(code_text)
            except ValueError as e:
                raise usage.UsageError(f"--processor {spec}: {e}") from None
        name = name.strip()
        plugin = _resolve("processor", name, IProcessorPlugin, _as_processor_plugin(name))
        self["processors"].append(ProcessorChoice(spec, plugin, code))

    def opt_hook(self, name: str) -> None:
        """Run the RPC hook NAME around every request (repeatable, in order): an RPC hook
        plugin (see --help-hooks) or a dotted path pkg.module:factory."""
        name = name.strip()
        self["hooks"].append(_resolve("hook", name, IRPCHookPlugin, _as_hook_plugin(name)))

    def opt_serialize_type(self, name: str) -> None:
        """Header format of the requests the server sends: json or rocketmq [default:
        json]. Responses always use their request's format."""
        try:
            self["serialize-type"] = SerializeType[name.strip().upper()]
        except KeyError:
            raise usage.UsageError(
                f"--serialize-type must be json or rocketmq, not {name!r}"
            ) from None

    def opt_shutdown_timeout(self, seconds: str) -> None:
        """On stop, wait up to this many seconds for requests in flight before closing
        the connections [default: 30]."""
        self["shutdown-timeout"] = _number("shutdown-timeout", seconds, float, 0)

    def opt_help_processors(self) -> NoReturn:
        """List the processor plugins found, and exit."""
        print("Processor plugins (--processor NAME):\n" + _plugin_list(IProcessorPlugin))
        sys.exit(0)

    def opt_help_hooks(self) -> NoReturn:
        """List the RPC hook plugins found, and exit."""
        print("RPC hook plugins (--hook NAME):\n" + _plugin_list(IRPCHookPlugin))
        sys.exit(0)

    def postOptions(self) -> None:
        if self["port"] is not None or not self["listen"]:
            port = DEFAULT_PORT if self["port"] is None else self["port"]
            interface = "" if self["all-interfaces"] else ":interface=127.0.0.1"
            self["listen"].insert(0, f"tcp:{port}{interface}")
        elif self["all-interfaces"]:
            raise usage.UsageError("--all-interfaces applies to --port, not to --listen")
        _check_processors(self["processors"])
        _check_tls(self)
        if self["name-server-credentials"] is not None and not self["name-server"]:
            raise usage.UsageError("--name-server-credentials needs --name-server")
        if self["processors"] and self["broker-options-given"]:
            given = ", ".join(f"--{name}" for name in self["broker-options-given"])
            raise usage.UsageError(
                f"{given} configure the broker, which does not run with --processor"
            )
        if self["data-dir"] is None:
            for name in ("flush", "flush-interval"):
                if name in self["broker-options-given"]:
                    raise usage.UsageError(f"--{name} needs --data-dir")
        elif "max-store-bytes" in self["broker-options-given"]:
            raise usage.UsageError("--max-store-bytes applies only without --data-dir")

    @property
    def broker_mode(self) -> bool:
        """True when no --processor was given: the dev broker runs."""
        return not self["processors"]

    @property
    def processor_choices(self) -> list[ProcessorChoice]:
        """The processors to register in plain-server mode (empty: the broker runs).

        ``--processor echo`` as the default processor with nothing for code 28 also gets
        the stats processor for code 28, as the echo server always had."""
        choices = list(self["processors"])
        echo_default = any(c.plugin is echo_plugin and not c.codes for c in choices)
        stats_code = int(RequestCode.GET_BROKER_RUNTIME_INFO)
        if echo_default and not any(stats_code in c.codes for c in choices):
            choices.append(DEFAULT_PROCESSORS[1])
        return choices


def _check_tls(options: Options) -> None:
    """Fill in the TLS mode and refuse TLS options that do not go together."""
    mode = options["tls-mode"]
    if mode is None:
        mode = options["tls-mode"] = (
            TLSMode.ENFORCING if options["tls-cert"] is not None else TLSMode.DISABLED
        )
    if mode is TLSMode.DISABLED:
        for name in ("tls-cert", "tls-key", "tls-ca"):
            if options[name] is not None:
                raise usage.UsageError(f"--{name} is given but --tls-mode is disabled")
        if options["tls-client-auth"] is not ClientAuth.NONE:
            raise usage.UsageError("--tls-client-auth is given but --tls-mode is disabled")
        return
    if options["tls-cert"] is None:
        raise usage.UsageError(f"--tls-mode {mode.value} needs --tls-cert")
    if options["tls-client-auth"] is not ClientAuth.NONE and options["tls-ca"] is None:
        raise usage.UsageError(
            f"--tls-client-auth {options['tls-client-auth'].value} needs --tls-ca"
        )
    if options["tls-ca"] is not None and options["tls-client-auth"] is ClientAuth.NONE:
        raise usage.UsageError("--tls-ca applies with --tls-client-auth optional or require")


def _check_processors(choices: Iterable[ProcessorChoice]) -> None:
    """Refuse two processors for one code, or two default processors."""
    owner: dict[int | None, str] = {}
    for choice in choices:
        for code in choice.codes or (None,):
            if code in owner:
                what = "the default processor" if code is None else f"code {code}"
                raise usage.UsageError(
                    f"--processor {choice.spec}: {what} already goes to --processor {owner[code]}"
                )
            owner[code] = choice.spec
