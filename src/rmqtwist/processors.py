"""Built-in request processors and RPC hooks, and the plugin objects that name them.

- :class:`EchoProcessor` answers any request SUCCESS, remark ``ok``, with the request's
  own ext_fields and body.
- :class:`RuntimeStatsProcessor` answers ``GET_BROKER_RUNTIME_INFO`` (28) with the
  server's connection and request counters, as ext_fields and as a RocketMQ ``KVTable``
  JSON body (``{"table":{"key":"value",...}}``), as a broker does.
- :class:`LoggingHook` logs every request and response.

:data:`echo_plugin`, :data:`stats_plugin` and :data:`log_plugin` are the :class:`ProcessorPlugin` /
:class:`RPCHookPlugin` objects that ``twist rmq-remoting --processor NAME`` and
``--hook NAME`` find through ``twisted.plugin.getPlugins`` (the plugin module
``twisted/plugins/rmqtwist_plugin.py`` only re-exports them). Define your own the same way
in a ``twisted/plugins`` module of your project.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from rmqtwist._logsafe import clip_repr
from rmqtwist._version import __version__
from rmqtwist.codes import RequestCode, ResponseCode, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.interfaces import (
    IProcessorPlugin,
    IRequestContext,
    IRequestProcessor,
    IRPCHook,
    IRPCHookPlugin,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from rmqtwist.dispatcher import Dispatcher

__all__ = [
    "EchoProcessor",
    "LoggingHook",
    "ProcessorPlugin",
    "RPCHookPlugin",
    "RuntimeStatsProcessor",
    "echo_plugin",
    "kv_table",
    "log_plugin",
    "stats_plugin",
]

_log = Logger()


@implementer(IRequestProcessor)
class EchoProcessor:
    """Answers every request SUCCESS, remark ``ok``, echoing its ext_fields and body.

    A oneway request is only counted: no response is built for it, since none is sent.
    """

    blocking = False

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand | None:
        if request.is_oneway:
            return None
        return RemotingCommand.response_to(
            request,
            ResponseCode.SUCCESS,
            "ok",
            ext_fields=request.ext_fields,
            body=request.body,
        )

    def reject_request(self) -> bool:
        return False


def kv_table(table: Mapping[str, str]) -> bytes:
    """``table`` as the JSON of a RocketMQ ``KVTable``: ``{"table":{"k":"v",...}}``.

    >>> kv_table({"b": "2", "a": "1"})
    b'{"table":{"a":"1","b":"2"}}'
    """
    return json.dumps(
        {"table": dict(table)}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def _runtime(seconds: float) -> str:
    # As BrokerController spells "runtime": "[ 0 days, 1 hours, 2 minutes, 3 seconds ]"
    left = max(int(seconds), 0)
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    return f"[ {days} days, {hours} hours, {minutes} minutes, {secs} seconds ]"


#: Dispatcher counters reported by RuntimeStatsProcessor, by their camelCase key.
_COUNTERS = {
    "connectionsMade": "connections_made",
    "connectionsClosed": "connections_closed",
    "inFlight": "in_flight",
    "requestsReceived": "requests_received",
    "responsesSent": "responses_sent",
    "requestsRejected": "requests_rejected",
    "requestsOverloaded": "requests_overloaded",
    "requestsUnsupported": "requests_unsupported",
    "processorErrors": "processor_errors",
    "requestsSent": "requests_sent",
    "lateResponses": "late_responses",
}


@implementer(IRequestProcessor)
class RuntimeStatsProcessor:
    """Answers ``GET_BROKER_RUNTIME_INFO`` with the server's counters (all values strings).

    The same table goes in the response's ext_fields and, as a ``KVTable`` JSON, in its
    body. The counters are those of ``dispatcher``, by default the dispatcher of the
    connection the request came in on; uptime counts from when the processor was made,
    on ``clock`` (by default the global reactor). The counts are taken while the stats
    request itself is being processed: ``inFlight`` and ``requestsReceived`` include it,
    ``responsesSent`` does not yet.
    """

    blocking = False

    def __init__(
        self, dispatcher: Dispatcher | None = None, *, clock: IReactorTime | None = None
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.dispatcher = dispatcher
        self.clock = clock
        self.started = clock.seconds()

    def stats(self, dispatcher: Dispatcher) -> dict[str, str]:
        """The table: versions, boot time, uptime, connections and request counters."""
        uptime = self.clock.seconds() - self.started
        table = {
            "rmqtwistVersion": __version__.public(),
            "bootTimestamp": str(int(self.started * 1000)),
            "runtime": _runtime(uptime),
            "uptimeSeconds": str(int(uptime)),
            "connections": str(len(dispatcher.connections)),
            "processorCodes": ",".join(str(code) for code in dispatcher.processor_codes),
        }
        for key, attribute in _COUNTERS.items():
            table[key] = str(int(getattr(dispatcher, attribute, 0)))
        return table

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        dispatcher = self.dispatcher or getattr(context.channel, "dispatcher", None)
        if dispatcher is None:
            raise RuntimeError("no dispatcher to read the counters from")
        table = self.stats(dispatcher)
        return RemotingCommand.response_to(
            request, ResponseCode.SUCCESS, ext_fields=table, body=kv_table(table)
        )

    def reject_request(self) -> bool:
        return False


@implementer(IRPCHook)
class LoggingHook:
    """Logs every request and every response (at info level, each clipped to a few
    hundred characters); changes nothing."""

    def before_request(self, remote_address: str, request: RemotingCommand) -> None:
        _log.info(
            "{peer} -> {code}: {request}",
            peer=remote_address,
            code=code_name(request.code),
            request=clip_repr(request),
        )

    def after_response(
        self, remote_address: str, request: RemotingCommand, response: RemotingCommand
    ) -> None:
        _log.info(
            "{peer} <- {code} for {request_code}: {response}",
            peer=remote_address,
            code=code_name(response.code, response=True),
            request_code=code_name(request.code),
            response=clip_repr(response),
        )


@implementer(IPlugin, IProcessorPlugin)
@dataclasses.dataclass(frozen=True)
class ProcessorPlugin:
    """A named processor factory: ``--processor NAME`` finds it with ``getPlugins``.

    ``codes`` are the request codes it answers when selected without ``CODE=``; empty
    means it becomes the default processor.
    """

    name: str
    description: str
    factory: Callable[[], Any]
    codes: tuple[int, ...] = ()

    def make_processor(self) -> IRequestProcessor:
        return IRequestProcessor(self.factory())


@implementer(IPlugin, IRPCHookPlugin)
@dataclasses.dataclass(frozen=True)
class RPCHookPlugin:
    """A named RPC hook factory: ``--hook NAME`` finds it with ``getPlugins``."""

    name: str
    description: str
    factory: Callable[[], Any]

    def make_hook(self) -> IRPCHook:
        return IRPCHook(self.factory())


echo_plugin = ProcessorPlugin(
    "echo",
    "Answer SUCCESS with the request's own ext_fields and body (remark 'ok').",
    EchoProcessor,
)
stats_plugin = ProcessorPlugin(
    "stats",
    "Answer GET_BROKER_RUNTIME_INFO (28) with connection and request counters "
    "(ext_fields and a KVTable JSON body).",
    RuntimeStatsProcessor,
    (int(RequestCode.GET_BROKER_RUNTIME_INFO),),
)
log_plugin = RPCHookPlugin("log", "Log every request and response at info level.", LoggingHook)
