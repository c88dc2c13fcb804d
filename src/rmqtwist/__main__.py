"""``python -m rmqtwist``: small command-line tools.

``python -m rmqtwist echo [--port 10911] [--host 0.0.0.0]`` runs an echo server: every
request is answered SUCCESS with its own ext_fields and body and remark ``ok``, in the
request's serialize type; oneway requests get no answer. It is the smallest peer to test
clients against: a bare :class:`~rmqtwist.framing.LengthPrefixed`, with none of the
server's processors, hooks or limits (for those, run ``twist rmq-remoting``).

``python -m rmqtwist call ADDRESS CODE [--ext KEY=VALUE ...] [--body TEXT | --body-file F]
[--oneway] [--serialize-type json|rocketmq] [--timeout S] [--json]`` sends one request
with a :class:`~rmqtwist.client.RemotingClient` and prints the response. CODE is a number
or a RequestCode name (``GET_BROKER_RUNTIME_INFO``, any case). Exit status: 0 for a
SUCCESS response (or a oneway request written), 3 for a response with another code
(printed all the same), 1 when the call fails (no response: refused, timed out, ...), 2
for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from typing import Any, NoReturn

from twisted.internet.error import CannotListenError
from twisted.logger import globalLogBeginner, textFileLogObserver

from rmqtwist.client import ClientConfig, RemotingClient, parse_address
from rmqtwist.codec import DEFAULT_MAX_FRAME_LENGTH
from rmqtwist.codes import LanguageCode, ResponseCode, SerializeType, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.framing import LengthPrefixed, LengthPrefixedFactory, format_address
from rmqtwist.tap import parse_code

#: The prefix of the one line a failed call prints to stderr.
CALL_ERROR = "python -m rmqtwist call: error:"
#: Exit status of ``call`` when a response came with a code other than SUCCESS.
EXIT_NOT_SUCCESS = 3


class EchoProtocol(LengthPrefixed):
    """Answers every request with SUCCESS, echoing its ext_fields and body."""

    def command_received(self, command: RemotingCommand) -> None:
        if command.is_response or command.is_oneway:
            return
        self.send_command(
            RemotingCommand.response_to(
                command,
                ResponseCode.SUCCESS,
                remark="ok",
                ext_fields=command.ext_fields,
                body=command.body,
            )
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rmqtwist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo", help="run an echo server")
    echo.add_argument("--port", type=int, default=10911, help="TCP port (default 10911)")
    echo.add_argument("--host", default="0.0.0.0", help="interface (default all)")
    echo.add_argument(
        "--max-frame-length",
        type=int,
        default=DEFAULT_MAX_FRAME_LENGTH,
        help="largest frame accepted, length prefix included (default 16 MiB)",
    )
    _add_call_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "call":
        return _call(args)
    return _echo(args)


def _echo(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    if not 0 <= args.port <= 65535:
        print(f"python -m rmqtwist: error: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    factory = LengthPrefixedFactory(max_frame_length=args.max_frame_length)
    factory.protocol = EchoProtocol
    try:
        port = reactor.listenTCP(args.port, factory, interface=args.host)
    except CannotListenError as e:
        print(f"python -m rmqtwist: error: {e}", file=sys.stderr)
        return 1
    print(f"rmqtwist echo server listening on {format_address(port.getHost())}", flush=True)
    reactor.run()
    return 0


# -- python -m rmqtwist call -----------------------------------------------------------


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _code(text: str) -> int:
    try:
        return parse_code(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ext(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _body_file(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror or e}") from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return seconds


def _add_call_parser(commands: Any) -> None:
    call = commands.add_parser(
        "call",
        help="send one request and print the response",
        description="Send one request with the remoting client and print the response. "
        "Exit status: 0 SUCCESS (or oneway written), 3 another response code, 1 the call "
        "failed, 2 bad usage.",
    )
    call.add_argument("address", metavar="ADDRESS", type=_address, help="host:port or [v6]:port")
    call.add_argument(
        "code",
        metavar="CODE",
        type=_code,
        help="request code: a number or a RequestCode name (e.g. GET_BROKER_RUNTIME_INFO)",
    )
    call.add_argument(
        "--ext",
        metavar="KEY=VALUE",
        type=_ext,
        action="append",
        default=[],
        help="an ext_fields entry (repeatable)",
    )
    body = call.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="the body, as UTF-8 text")
    body.add_argument(
        "--body-file", metavar="FILE", type=_body_file, help="the body, read from FILE (- stdin)"
    )
    call.add_argument(
        "--oneway", action="store_true", help="send with the oneway flag; expect no response"
    )
    call.add_argument(
        "--serialize-type",
        type=str.lower,
        choices=["json", "rocketmq"],
        default="json",
        help="header format of the request (default json)",
    )
    call.add_argument(
        "--timeout",
        metavar="S",
        type=_seconds,
        default=3.0,
        help="seconds for connecting, sending and the response (default 3)",
    )
    call.add_argument("--json", action="store_true", help="print the response as one JSON object")


def _body_text(body: bytes) -> tuple[str, str]:
    """``body`` as text if it is UTF-8 without control characters but tab, CR and LF;
    else as hex. Returns (text, "utf-8" or "hex")."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body.hex(), "hex"
    if any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in text):
        return body.hex(), "hex"
    return text, "utf-8"


def _enum_name(enum: Any, value: int) -> str | int:
    try:
        return str(enum(value).name)
    except ValueError:
        return value


def _code_label(code: int, response: bool = False) -> str:
    """``NAME (number)``, or just the number for a code without a name."""
    name = code_name(code, response)
    return f"{name} ({code})" if name != str(code) else name


def _response_json(response: RemotingCommand, elapsed_ms: float) -> dict[str, Any]:
    body, encoding = _body_text(response.body) if response.body else (None, None)
    return {
        "code": response.code,
        "code_name": code_name(response.code, response=True),
        "remark": response.remark,
        "ext_fields": dict(sorted((response.ext_fields or {}).items())),
        "body": body,
        "body_encoding": encoding,
        "opaque": response.opaque,
        "flag": response.flag,
        "language": _enum_name(LanguageCode, response.language),
        "version": response.version,
        "serialize_type": SerializeType(response.serialize_type).name.lower(),
        "elapsed_ms": elapsed_ms,
    }


def _response_text(response: RemotingCommand, elapsed_ms: float) -> str:
    lines = [
        f"code: {_code_label(response.code, response=True)}",
        f"remark: {response.remark}" if response.remark is not None else "remark: (none)",
    ]
    ext = sorted((response.ext_fields or {}).items())
    lines.append("ext_fields:" if ext else "ext_fields: (none)")
    lines += [f"  {key}={value}" for key, value in ext]
    if response.body:
        text, encoding = _body_text(response.body)
        lines.append(f"body ({len(response.body)} bytes, {encoding}):")
        lines.append(text.removesuffix("\n"))
    else:
        lines.append("body: (empty)")
    language = _enum_name(LanguageCode, response.language)
    lines.append(
        f"opaque={response.opaque} flag={response.flag} language={language} "
        f"version={response.version} "
        f"serialize_type={SerializeType(response.serialize_type).name.lower()} "
        f"elapsed={elapsed_ms:.3f} ms"
    )
    return "\n".join(lines)


def _report(args: argparse.Namespace, response: RemotingCommand | None, elapsed_ms: float) -> int:
    """Print the outcome of a call that got its response (None: a oneway request was
    written); the exit status."""
    if response is None:
        if args.json:
            oneway = {
                "oneway": True,
                "code": args.code,
                "code_name": code_name(args.code),
                "address": args.address,
                "elapsed_ms": elapsed_ms,
            }
            print(json.dumps(oneway))
        else:
            label = _code_label(args.code)
            print(f"oneway request {label} written to {args.address} in {elapsed_ms:.3f} ms")
        return 0
    if args.json:
        print(json.dumps(_response_json(response, elapsed_ms)))
    else:
        print(_response_text(response, elapsed_ms))
    return 0 if response.code == ResponseCode.SUCCESS else EXIT_NOT_SUCCESS


def _call(args: argparse.Namespace) -> int:
    """Run ``call`` to the end; the exit status."""
    from twisted.internet import task

    body = args.body.encode("utf-8") if args.body is not None else args.body_file or b""
    request = RemotingCommand.request(
        args.code,
        dict(args.ext),
        body,
        serialize_type=SerializeType[args.serialize_type.upper()],
    )

    async def run(reactor: Any) -> NoReturn:
        client = RemotingClient(reactor, ClientConfig(connect_timeout=args.timeout))
        status = 0
        started = time.perf_counter()
        response: RemotingCommand | None = None
        try:
            if args.oneway:
                await client.invoke_oneway(args.address, request, args.timeout)
            else:
                response = await client.invoke(args.address, request, args.timeout)
        except Exception as e:
            print(f"{CALL_ERROR} {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            status = 1
        else:
            status = _report(args, response, (time.perf_counter() - started) * 1000)
        finally:
            await client.close(timeout=0)
        sys.stdout.flush()
        raise SystemExit(status)

    try:
        task.react(run)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # pragma: no cover (react always exits)


if __name__ == "__main__":
    sys.exit(main())
