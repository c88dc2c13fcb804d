"""``twist rmq-remoting`` options: parsing only (as twisted.web's tap tests), plus what
makeService builds from them. Nothing listens here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode, SerializeType
from rmqtwist.broker.config import BrokerConfig
from rmqtwist.broker.service import BrokerService
from rmqtwist.broker.store import DiskStore, MemoryStore
from rmqtwist.interfaces import IRequestContext, IRequestProcessor, IRPCHook
from rmqtwist.processors import (
    EchoProcessor,
    LoggingHook,
    ProcessorPlugin,
    RuntimeStatsProcessor,
    echo_plugin,
    log_plugin,
    stats_plugin,
)
from rmqtwist.server import RemotingServer
from rmqtwist.tap import (
    DEFAULT_PROCESSORS,
    Options,
    ProcessorChoice,
    broker_config,
    makeService,
    parse_code,
)

# ---------------------------------------------------------------------------
# Things for dotted paths to point at
# ---------------------------------------------------------------------------


@implementer(IRequestProcessor)
class Custom:
    """A processor class: its dotted path is a factory of processors."""

    blocking = False

    def process_request(self, context: IRequestContext, request: RemotingCommand) -> Any:
        return RemotingCommand.response_to(request, ResponseCode.SUCCESS, "custom")

    def reject_request(self) -> bool:
        return False


def make_processor() -> Custom:
    return Custom()


INSTANCE = Custom()
PLUGIN = ProcessorPlugin("custom", "a test plugin for code 77", Custom, (77,))
NOT_A_PROCESSOR = 42


def not_really() -> str:
    return "not a processor"


@implementer(IRPCHook)
class Hook:
    def before_request(self, remote_address: str, request: RemotingCommand) -> None:
        return None

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        return None


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def usage_error(*argv: str) -> str:
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def test_defaults() -> None:
    options = parse()
    assert options["listen"] == ["tcp:10911:interface=127.0.0.1"]
    assert options["port"] is None
    assert options["idle-timeout"] == 120.0
    assert options["max-connections"] == 1000
    assert options["shutdown-timeout"] == 30.0
    assert options["serialize-type"] is SerializeType.JSON
    assert options["processors"] == [] and options["hooks"] == []
    assert options.broker_mode
    assert options.processor_choices == []
    config = broker_config(options)
    assert config == BrokerConfig()
    assert options["data-dir"] is None


def test_echo_alone_is_the_echo_server_with_stats() -> None:
    options = parse("--processor", "echo")
    assert not options.broker_mode
    assert options.processor_choices == list(DEFAULT_PROCESSORS)
    echo, stats = options.processor_choices
    assert (echo.plugin, echo.codes) == (echo_plugin, ())
    assert (stats.plugin, stats.codes) == (stats_plugin, (28,))
    # another processor for 28: no stats added
    mine = parse("--processor", "echo", "--processor", "28=echo").processor_choices
    assert [c.codes for c in mine] == [(), (28,)]


def test_help_states_the_defaults() -> None:
    text = " ".join(str(Options()).split())  # undo the wrapping
    assert "[default: none: the dev broker runs]" in text
    assert "--processor echo" in text
    assert "127.0.0.1" in text
    assert "[default: 10911" in text
    assert "twist --log-format=text rmq-remoting" in text


def test_port() -> None:
    assert parse("--port", "1234")["listen"] == ["tcp:1234:interface=127.0.0.1"]
    assert parse("-p", "0")["listen"] == ["tcp:0:interface=127.0.0.1"]
    assert parse("-p", "0", "--all-interfaces")["listen"] == ["tcp:0"]
    assert parse("--all-interfaces")["listen"] == ["tcp:10911"]


def test_listen_is_repeatable_and_replaces_the_default_port() -> None:
    options = parse("--listen", "tcp:0:interface=127.0.0.1", "-l", "unix:/tmp/rmq.sock")
    assert options["listen"] == ["tcp:0:interface=127.0.0.1", "unix:/tmp/rmq.sock"]
    both = parse("--listen", "tcp6:9876", "--port", "10911")
    assert both["listen"] == ["tcp:10911:interface=127.0.0.1", "tcp6:9876"]


def test_broker_options() -> None:
    options = parse(
        "--advertise",
        "mq.example:9876",
        "--no-auto-create-topic",
        "--broker-name",
        "b1",
        "--cluster-name",
        "C",
        "--transaction-timeout",
        "2",
        "--transaction-check-interval",
        "0.5",
    )
    config = broker_config(options)
    assert config.advertise == "mq.example:9876"
    assert not config.auto_create_topic
    assert (config.broker_name, config.cluster_name) == ("b1", "C")
    assert (config.transaction_timeout, config.transaction_check_interval) == (2.0, 0.5)
    disk = parse("--data-dir", "/tmp/x", "--flush", "SYNC", "--flush-interval", "0.1")
    assert (disk["data-dir"], disk["flush"], disk["flush-interval"]) == ("/tmp/x", "sync", 0.1)
    assert parse("--max-store-bytes", "4096")["max-store-bytes"] == 4096
    topics = broker_config(parse("--topic", "Orders", "--topic", "Logs:8")).topics
    assert topics == (("Orders", 4), ("Logs", 8))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--advertise", "nohost"), "--advertise must be host:port, not 'nohost'"),
        (("--advertise", "h:99999"), "--advertise must be host:port"),
        (("--flush", "sometimes"), "--flush must be sync or async, not 'sometimes'"),
        (("--flush", "sync"), "--flush needs --data-dir"),
        (("--flush-interval", "1"), "--flush-interval needs --data-dir"),
        (("--data-dir", ""), "--data-dir needs a directory"),
        (("--max-store-bytes", "10"), "--max-store-bytes must be at least 1024"),
        (("--broker-name", " "), "--broker-name must not be empty"),
        (("--topic", "bad name"), "--topic bad name: the specified topic[bad name] contains"),
        (("--topic", "T:0"), "--topic must be between 1 and 1024, not 0"),
        (("--processor", "echo", "--data-dir", "d"), "--data-dir configure the broker"),
        (("--listen", "tcp:0", "--all-interfaces"), "--all-interfaces applies to --port"),
    ],
)
def test_bad_broker_options(argv: tuple[str, ...], expected: str) -> None:
    assert expected in usage_error(*argv)


@pytest.mark.parametrize(
    ("argv", "key", "value"),
    [
        (("--idle-timeout", "2.5"), "idle-timeout", 2.5),
        (("--idle-timeout", "0"), "idle-timeout", 0.0),
        (("--max-connections", "7"), "max-connections", 7),
        (("--shutdown-timeout", "0"), "shutdown-timeout", 0.0),
        (("--max-frame-length", "1024"), "max-frame-length", 1024),
        (("--serialize-type", "rocketmq"), "serialize-type", SerializeType.ROCKETMQ),
        (("--serialize-type", "JSON"), "serialize-type", SerializeType.JSON),
    ],
)
def test_values(argv: tuple[str, ...], key: str, value: object) -> None:
    assert parse(*argv)[key] == value


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--port", "abc"), "--port must be a number, not 'abc'"),
        (("--port", "65536"), "--port must be between 0 and 65535, not 65536"),
        (("--port", "-1"), "--port must be between 0 and 65535"),
        (("--port", "1.5"), "--port must be a number"),
        (("--idle-timeout", "-1"), "--idle-timeout must be at least 0, not -1"),
        (("--idle-timeout", "nan"), "--idle-timeout must be at least 0"),
        (("--idle-timeout", "soon"), "--idle-timeout must be a number"),
        (("--max-connections", "0"), "--max-connections must be at least 1, not 0"),
        (("--max-frame-length", "4"), "--max-frame-length must be at least 8"),
        (("--shutdown-timeout", "x"), "--shutdown-timeout must be a number, not 'x'"),
        (("--serialize-type", "xml"), "--serialize-type must be json or rocketmq, not 'xml'"),
        (("--listen", ""), "--listen needs an endpoint"),
        (("--port",), "--port requires argument"),
        (("--bogus",), "option --bogus not recognized"),
    ],
)
def test_bad_values(argv: tuple[str, ...], expected: str) -> None:
    assert expected in usage_error(*argv)


def test_processor_by_plugin_name_uses_its_codes() -> None:
    options = parse("--processor", "stats", "--processor", "echo")
    assert [(c.spec, c.plugin, c.codes) for c in options.processor_choices] == [
        ("stats", stats_plugin, (28,)),
        ("echo", echo_plugin, ()),
    ]


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ("105=echo", 105),
        ("GET_ROUTEINFO_BY_TOPIC=echo", 105),
        ("get_broker_runtime_info=stats", 28),
        (" 0 =echo", 0),
        ("200050=echo", 200050),  # POP_MESSAGE: more than 16 bits is fine
    ],
)
def test_processor_with_code(spec: str, code: int) -> None:
    (choice,) = parse("--processor", spec)["processors"]
    assert choice == ProcessorChoice(spec, choice.plugin, code)
    assert choice.codes == (code,)


def test_processor_code_overrides_the_plugins_codes() -> None:
    (choice,) = parse("--processor", "29=stats")["processors"]
    assert (choice.plugin, choice.codes) == (stats_plugin, (29,))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nope", "--processor nope: no processor plugin of that name (known: echo, stats"),
        ("abc=echo", "'abc' is neither a number nor a RequestCode name"),
        ("-1=echo", "request code -1 is out of range"),
        ("2147483648=echo", "out of range"),
        ("28=", "--processor needs a name"),
        ("no_such_module_xyz:factory", "cannot import it: ModuleNotFoundError"),
        ("tests.test_tap:missing", "cannot import it: AttributeError"),
        ("tests.test_tap:NOT_A_PROCESSOR", "42 is not a processor plugin, a processor or a"),
    ],
)
def test_bad_processor(spec: str, expected: str) -> None:
    assert expected in usage_error("--processor", spec)


def test_conflicting_processors() -> None:
    message = usage_error("--processor", "105=echo", "--processor", "GET_ROUTEINFO_BY_TOPIC=stats")
    assert message == (
        "--processor GET_ROUTEINFO_BY_TOPIC=stats: code 105 already goes to --processor 105=echo"
    )
    message = usage_error("--processor", "echo", "--processor", "tests.test_tap:make_processor")
    assert "the default processor already goes to --processor echo" in message
    assert "code 28" in usage_error("--processor", "stats", "--processor", "28=echo")


@pytest.mark.parametrize(
    "path",
    [
        "tests.test_tap:make_processor",
        "tests.test_tap.make_processor",
        "tests.test_tap:Custom",
        "tests.test_tap:INSTANCE",
    ],
)
def test_processor_by_dotted_path(path: str) -> None:
    (choice,) = parse("--processor", path)["processors"]
    assert choice.codes == ()  # a bare factory declares no codes: the default processor
    assert isinstance(choice.plugin.make_processor(), Custom)


def test_processor_plugin_by_dotted_path() -> None:
    (choice,) = parse("--processor", "tests.test_tap:PLUGIN")["processors"]
    assert choice.plugin is PLUGIN and choice.codes == (77,)


def test_hooks() -> None:
    options = parse("--hook", "log", "--hook", "tests.test_tap:Hook")
    first, second = options["hooks"]
    assert first is log_plugin
    assert isinstance(second.make_hook(), Hook)
    assert "--hook nope: no hook plugin of that name (known: log" in usage_error("--hook", "nope")


def test_parse_code() -> None:
    assert parse_code("28") == parse_code("GET_BROKER_RUNTIME_INFO") == 28
    with pytest.raises(ValueError):
        parse_code("")


# ---------------------------------------------------------------------------
# Under twist: one line and exit status 2
# ---------------------------------------------------------------------------


def test_under_twist_a_usage_error_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = Options()
    options.parent = usage.Options()  # as twist's TwistOptions sets it for a subcommand
    with pytest.raises(SystemExit) as info:
        options.parseOptions(["--port", "http"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "rmq-remoting: error: --port must be a number, not 'http' (see --help)" in err


# ---------------------------------------------------------------------------
# makeService
# ---------------------------------------------------------------------------


def test_make_service_default_is_the_broker(tmp_path: Path) -> None:
    service = makeService(parse("--listen", "tcp:0:interface=127.0.0.1", "--hook", "log"))
    assert isinstance(service, BrokerService)
    assert not service.running and service.server.ports == []
    assert isinstance(service.store, MemoryStore)
    dispatcher = service.factory.dispatcher
    assert [type(hook) for hook in dispatcher.hooks] == [LoggingHook]
    for code in (10, 11, 14, 15, 28, 34, 36, 37, 41, 105, 310, 320, 361):
        assert code in dispatcher.processor_codes
    assert dispatcher.processor_for(12345) is None
    disk = makeService(parse("-p", "0", "--data-dir", str(tmp_path), "--flush", "sync"))
    assert isinstance(disk, BrokerService) and isinstance(disk.store, DiskStore)


def test_make_service_echo() -> None:
    server = makeService(
        parse("--listen", "tcp:0:interface=127.0.0.1", "--idle-timeout", "0", "--processor", "echo")
    )
    assert type(server) is RemotingServer
    assert not server.running and server.ports == []
    dispatcher = server.factory.dispatcher
    assert dispatcher.idle_timeout is None
    assert server.shutdown_timeout == 30.0
    assert server.factory.max_connections == 1000
    stats = dispatcher.processor_for(28)
    echo = dispatcher.processor_for(105)
    assert stats is not None and isinstance(stats.processor, RuntimeStatsProcessor)
    assert echo is not None and isinstance(echo.processor, EchoProcessor)
    assert dispatcher.processor_codes == [28]


def test_make_service_with_choices() -> None:
    server = makeService(
        parse(
            "--processor",
            "stats",
            "--processor",
            "11=tests.test_tap:Custom",
            "--processor",
            "tests.test_tap:PLUGIN",
            "--hook",
            "log",
            "--max-connections",
            "3",
            "--shutdown-timeout",
            "2",
            "--serialize-type",
            "rocketmq",
        )
    )
    assert isinstance(server, RemotingServer)
    dispatcher = server.factory.dispatcher
    assert dispatcher.processor_codes == [11, 28, 77]
    assert dispatcher.processor_for(105) is None  # no default: REQUEST_CODE_NOT_SUPPORTED
    assert [type(hook) for hook in dispatcher.hooks] == [LoggingHook]
    assert server.factory.max_connections == 3
    assert server.shutdown_timeout == 2.0
    assert dispatcher.serialize_type is SerializeType.ROCKETMQ


def test_make_service_bad_endpoint_and_bad_factory() -> None:
    with pytest.raises(usage.UsageError, match="--listen nonsense:1: ValueError: Unknown"):
        makeService(parse("--listen", "nonsense:1"))
    with pytest.raises(
        usage.UsageError, match=re.escape("--processor tests.test_tap:not_really: ")
    ):
        makeService(parse("--processor", "tests.test_tap:not_really"))
