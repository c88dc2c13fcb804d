"""Processor and hook choices for ``twist rmq-remoting`` (see :mod:`rmqtwist.tap`)."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.reflect import namedAny
from zope.interface import Interface

from rmqtwist.codes import RequestCode, code_name
from rmqtwist.interfaces import (
    IProcessorPlugin,
    IRequestProcessor,
    IRPCHook,
    IRPCHookPlugin,
)
from rmqtwist.processors import ProcessorPlugin, RPCHookPlugin, echo_plugin, stats_plugin

#: The port a RocketMQ broker listens on, used when neither --port nor --listen is given.
DEFAULT_PORT = 10911
_INT32_MAX = (1 << 31) - 1
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class ProcessorChoice:
    """One ``--processor [CODE=]NAME``: the plugin, and the code it was given (if any)."""

    spec: str
    plugin: IProcessorPlugin
    code: int | None = None

    @property
    def codes(self) -> tuple[int, ...]:
        """The codes it registers for; empty: it becomes the default processor."""
        if self.code is not None:
            return (self.code,)
        return tuple(int(code) for code in self.plugin.codes)


#: The echo server's processors (``--processor echo``): echo as the default, stats for 28.
DEFAULT_PROCESSORS = (
    ProcessorChoice("echo", echo_plugin),
    ProcessorChoice("stats", stats_plugin),
)


def parse_code(text: str) -> int:
    """A request code from a number (``28``) or a RequestCode name (``GET_BROKER_RUNTIME_INFO``,
    any case). Raises ValueError for anything else."""
    text = text.strip()
    try:
        code = int(text)
    except ValueError:
        try:
            code = int(RequestCode[text.upper()])
        except KeyError:
            raise ValueError(
                f"{text!r} is neither a number nor a RequestCode name "
                "(such as GET_BROKER_RUNTIME_INFO)"
            ) from None
    if not 0 <= code <= _INT32_MAX:
        raise ValueError(f"request code {code} is out of range (0-{_INT32_MAX})")
    return code


def _number(
    option: str, text: str, kind: Callable[[str], _T], low: float, high: float | None = None
) -> _T:
    try:
        value = kind(text)
    except ValueError:
        raise usage.UsageError(f"--{option} must be a number, not {text!r}") from None
    if value != value or value < low or (high is not None and value > high):  # type: ignore[operator]
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise usage.UsageError(f"--{option} must be {bounds}, not {text}")
    return value


def _is_path(name: str) -> bool:
    return ":" in name or "." in name


def _import(path: str) -> object:
    """``pkg.module:attr.attr`` or ``pkg.module.attr``."""
    if ":" in path:
        module_name, _, attributes = path.partition(":")
        obj: object = importlib.import_module(module_name)
        for attribute in attributes.split(".") if attributes else []:
            obj = getattr(obj, attribute)
        return obj
    return namedAny(path)  # type: ignore[no-untyped-call]


def _resolve(
    option: str,
    name: str,
    interface: type[Interface],
    wrap: Callable[[object], Any],
) -> Any:
    """A plugin providing ``interface`` named ``name`` or at the dotted path ``name``."""
    if not name:
        raise usage.UsageError(f"--{option} needs a name")
    if not _is_path(name):
        plugins: list[Any] = list(getPlugins(interface))
        found = {plugin.name: plugin for plugin in plugins}
        if name in found:
            return found[name]
        known = ", ".join(sorted(found)) or "none"
        raise usage.UsageError(
            f"--{option} {name}: no {option} plugin of that name (known: {known}); "
            "give a plugin name or a dotted path such as pkg.module:factory"
        )
    try:
        obj = _import(name)
    except Exception as e:
        raise usage.UsageError(
            f"--{option} {name}: cannot import it: {type(e).__name__}: {e}"
        ) from None
    plugin = wrap(obj)
    if plugin is None:
        raise usage.UsageError(
            f"--{option} {name}: {obj!r} is not a {option} plugin, a {option} or a "
            f"callable that makes one"
        )
    return plugin


def _as_processor_plugin(spec: str) -> Callable[[object], IProcessorPlugin | None]:
    def wrap(obj: object) -> IProcessorPlugin | None:
        plugin = IProcessorPlugin(obj, None)
        if plugin is not None:
            return plugin
        if IRequestProcessor.providedBy(obj):
            return ProcessorPlugin(spec, "", lambda: obj)
        if callable(obj):
            return ProcessorPlugin(spec, "", obj)
        return None

    return wrap


def _as_hook_plugin(spec: str) -> Callable[[object], IRPCHookPlugin | None]:
    def wrap(obj: object) -> IRPCHookPlugin | None:
        plugin = IRPCHookPlugin(obj, None)
        if plugin is not None:
            return plugin
        if IRPCHook.providedBy(obj):
            return RPCHookPlugin(spec, "", lambda: obj)
        if callable(obj):
            return RPCHookPlugin(spec, "", obj)
        return None

    return wrap


def _plugin_list(interface: type[Interface]) -> str:
    found: list[Any] = list(getPlugins(interface))
    plugins = sorted(found, key=lambda plugin: str(plugin.name))
    lines = []
    for plugin in plugins:
        codes = getattr(plugin, "codes", None)
        where = ""
        if codes is not None:
            where = (
                " [" + ", ".join(f"{code_name(c)} ({c})" for c in codes) + "]"
                if codes
                else " [default processor]"
            )
        lines.append(f"  {plugin.name:<12} {plugin.description}{where}")
    return "\n".join(lines) or "  (none found)"


def _program() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "twist"
    return "twist" if name in ("__main__.py", "-c", "") else name


def _exit_with_usage_error(error: Exception) -> NoReturn:
    message = " ".join(str(error).split())
    print(
        f"{_program()} rmq-remoting: error: {message} (see --help)",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(2)
