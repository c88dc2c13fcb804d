"""``python -m rmqtwist call``: one request, its response printed, an exit status."""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import sys
import time
import unicodedata
from typing import Any

from rmqtwist.cli._common import (
    EXIT_FAILED,
    EXIT_NOT_SUCCESS,
    EXIT_OK,
    EXIT_STATUS_TEXT,
    CommandError,
    DropReasons,
    Interrupt,
    add_connection_options,
    address_arg,
    check_connection,
    describe,
    key_value_arg,
    out,
    seconds_arg,
    unique_pairs,
)
from rmqtwist.cli._common import run as run_command
from rmqtwist.codec import DEFAULT_MAX_FRAME_LENGTH, encode_frame
from rmqtwist.codes import LanguageCode, RequestCode, ResponseCode, SerializeType, code_name
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import ConnectionLostError
from rmqtwist.tap import parse_code

DESCRIPTION = f"""\
Send one request with the remoting client and print the response. CODE is a number or
a RequestCode name (GET_BROKER_RUNTIME_INFO, any case).

{EXIT_STATUS_TEXT}"""


def code_arg(text: str) -> int:
    """A request code by number or name; a mistyped name gets the closest names."""
    try:
        return parse_code(text)
    except ValueError as e:
        message = str(e)
        close = difflib.get_close_matches(
            text.strip().upper(), [code.name for code in RequestCode], n=3, cutoff=0.6
        )
        if close:
            message += f"; did you mean {' or '.join(close)}?"
        raise argparse.ArgumentTypeError(message) from None


def _body_file(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror or e}") from None


def add_parser(commands: Any) -> None:
    call = commands.add_parser(
        "call",
        help="send one request and print the response",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("address", metavar="ADDRESS", type=address_arg, help="host:port or [v6]:port")
    call.add_argument(
        "code",
        metavar="CODE",
        type=code_arg,
        help="request code: a number or a RequestCode name (e.g. GET_BROKER_RUNTIME_INFO)",
    )
    call.add_argument(
        "--ext",
        metavar="KEY=VALUE",
        type=key_value_arg,
        action="append",
        default=[],
        help="an ext_fields entry (repeatable; each KEY once)",
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
        type=seconds_arg,
        default=3.0,
        help="seconds for connecting, sending and the response (default 3)",
    )
    call.add_argument("--json", action="store_true", help="print the response as one JSON object")
    add_connection_options(call)
    call.set_defaults(run=run, check=functools.partial(check, call))


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks across arguments: each --ext key once; the connection options."""
    check_connection(parser, args)
    args.ext = unique_pairs(parser, "--ext", args.ext)


def body_text(body: bytes) -> tuple[str, str]:
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
    body, encoding = body_text(response.body) if response.body else (None, None)
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
        text, encoding = body_text(response.body)
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
            out(json.dumps(oneway))
        else:
            label = _code_label(args.code)
            out(f"oneway request {label} written to {args.address} in {elapsed_ms:.3f} ms")
        return EXIT_OK
    if args.json:
        out(json.dumps(_response_json(response, elapsed_ms)))
    else:
        out(_response_text(response, elapsed_ms))
    return EXIT_OK if response.code == ResponseCode.SUCCESS else EXIT_NOT_SUCCESS


def run(args: argparse.Namespace) -> int:
    """Run ``call`` to the end; the exit status."""
    body = args.body.encode("utf-8") if args.body is not None else args.body_file or b""
    request = RemotingCommand.request(
        args.code,
        dict(args.ext),
        body,
        serialize_type=SerializeType[args.serialize_type.upper()],
    )

    async def call(reactor: Any, interrupt: Interrupt) -> int:
        client = args.connection.client(reactor, connect_timeout=args.timeout)
        reasons = DropReasons.on(client)
        started = time.perf_counter()
        response: RemotingCommand | None = None
        try:
            if args.oneway:
                await client.invoke_oneway(args.address, request, args.timeout)
            else:
                response = await client.invoke(args.address, request, args.timeout)
        except Exception as e:
            message = describe(e, reasons)
            if isinstance(e, ConnectionLostError) and reasons.explain(str(e)) is None:
                size = len(encode_frame(request))
                if size > DEFAULT_MAX_FRAME_LENGTH:
                    message += (
                        f" (the request's frame is {size} bytes: a RocketMQ peer drops a "
                        f"connection whose frame is over {DEFAULT_MAX_FRAME_LENGTH} bytes "
                        "by default)"
                    )
            raise CommandError(message, EXIT_FAILED) from None
        finally:
            await client.close(timeout=0)
        return _report(args, response, (time.perf_counter() - started) * 1000)

    return run_command("call", call)
