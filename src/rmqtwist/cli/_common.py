"""What every command shares: exit statuses, one-line errors, stdout that may close,
Ctrl-C, the connection options (TLS, ACL), and running a command's coroutine on the
reactor."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from zope.interface import implementer

from rmqtwist.acl import AclClientHook, Credentials
from rmqtwist.client import ClientConfig, RemotingClient, parse_address
from rmqtwist.codes import ResponseCode, code_name
from rmqtwist.errors import (
    ConnectionLostError,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    RemotingError,
    WrongProtocol,
)
from rmqtwist.interfaces import IChannel, IChannelEventListener

#: The program name shown in usage and error lines.
PROG: Final = "python -m rmqtwist"

EXIT_OK: Final = 0
#: The command failed: nothing answered, a send failed on every try, no route, ...
EXIT_FAILED: Final = 1
#: The command line is wrong (argparse's own status).
EXIT_USAGE: Final = 2
#: An answer came that is not a success (``call``: another response code; ``produce``: a
#: message stored with a status other than SEND_OK, such as FLUSH_DISK_TIMEOUT).
EXIT_NOT_SUCCESS: Final = 3
#: ``route``: every name server said the topic does not exist.
EXIT_NO_TOPIC: Final = 4
#: Interrupted by Ctrl-C (SIGINT): 128 + 2, as shells report it.
EXIT_INTERRUPTED: Final = 130
#: Standard output was closed by its reader (``| head -1``): 128 + SIGPIPE, as a tool
#: that SIGPIPE killed would report.
EXIT_PIPE_CLOSED: Final = 141

#: Seconds a command may take to wind down (commit offsets, unregister) after Ctrl-C.
GRACE: Final = 5.0

EXIT_STATUS_TEXT: Final = f"""\
exit status:
  {EXIT_OK}    success
  {EXIT_FAILED}    the command failed (no answer, connection refused or lost, no route,
       a send failed on every try); one line on stderr says why
  {EXIT_USAGE}    bad command line
  {EXIT_NOT_SUCCESS}    an answer that is not a success (call: another response code;
       produce: stored with a status other than SEND_OK)
  {EXIT_NO_TOPIC}    route: the topic does not exist
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_PIPE_CLOSED}  standard output was closed by its reader (e.g. | head -1)"""


class CommandError(Exception):
    """A failure to report as one line on stderr, with the exit status to give."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class StdoutClosed(Exception):
    """Standard output's reader went away (EPIPE): stop quietly."""


def out(line: str) -> None:
    """Print one line to stdout and flush, so a pipeline sees each result at once."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed() from None


def out_bytes(data: bytes) -> None:
    """Write ``data`` to stdout as it is, and flush."""
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise StdoutClosed() from None


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered does not fail again (and print a traceback) on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout is not a real file
        pass


def err(line: str) -> None:
    """Print one line to stderr (a closed stderr is ignored: nobody would see it)."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        print(line, file=sys.stderr, flush=True)


# -- argument types ------------------------------------------------------------------


def address_arg(text: str) -> str:
    """``host:port``, checked."""
    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def name_servers_arg(text: str) -> str:
    """One or more name server addresses, ``h1:9876;h2:9876`` (Java's separator) or
    comma-separated; each checked. Given back ``;``-joined."""
    addresses = [a.strip() for a in re.split(r"[;,]", text) if a.strip()]
    if not addresses:
        raise argparse.ArgumentTypeError("expected host:port (several: h1:9876;h2:9876)")
    for address in addresses:
        address_arg(address)
    return ";".join(addresses)


def seconds_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return seconds


def positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
    return value


def key_value_arg(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def unique_pairs(
    parser: argparse.ArgumentParser, option: str, pairs: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """``pairs`` as a dict; a key given twice is a usage error (exits 2)."""
    result: dict[str, str] = {}
    for key, value in pairs:
        if key in result:
            parser.error(
                f"argument {option}: {key!r} is given twice ({key}={result[key]}, {key}={value})"
            )
        result[key] = value
    return result


# -- connecting: TLS and ACL ---------------------------------------------------------

#: The environment variable the ACL secret key is read from (never a command-line option:
#: it would show in ``ps`` and in the shell's history).
SECRET_KEY_ENV: Final = "RMQTWIST_SECRET_KEY"
#: The environment variable an ACL security token (STS) is read from, if any.
SECURITY_TOKEN_ENV: Final = "RMQTWIST_SECURITY_TOKEN"


def readable_file_arg(path: str) -> str:
    """The path of a file that can be opened for reading."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror or e}") from None
    return path


class _RefuseSecret(argparse.Action):
    """``--secret-key``: refused without echoing its value (and taken before argparse
    would read it as an abbreviation of ``--secret-key-file``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"argument {option_string}: the secret key is not taken on the command line "
            f"(it would show in ps and the shell's history): set {SECRET_KEY_ENV} in the "
            "environment or give --secret-key-file FILE"
        )


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every client command shares: TLS and ACL credentials (read by
    :func:`check_connection`)."""
    tls = parser.add_argument_group("TLS", "for a server with --tls-mode enforcing (or permissive)")
    tls.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS; the server's certificate is checked against the system's "
        "CAs, or those of --tls-ca",
    )
    trust = tls.add_mutually_exclusive_group()
    trust.add_argument(
        "--tls-ca",
        metavar="FILE",
        type=readable_file_arg,
        help="PEM file of the CAs that sign the server's certificate (implies --tls)",
    )
    trust.add_argument(
        "--tls-insecure",
        action="store_true",
        help="do not check the server's certificate nor its host name (implies --tls); "
        "anyone on the way can pretend to be the server: for self-signed dev setups only",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        type=readable_file_arg,
        help="PEM file of a client certificate (and its key, unless --tls-key), for a "
        "server that asks for one (mutual TLS; implies --tls)",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        type=readable_file_arg,
        help="PEM file of the client certificate's private key (needs --tls-cert)",
    )
    acl = parser.add_argument_group(
        "ACL",
        f"for a server with --acl-file. The secret key is read from {SECRET_KEY_ENV}\n"
        f"or --secret-key-file, never from the command line; a security token, if any,\n"
        f"from {SECURITY_TOKEN_ENV}.",
    )
    acl.add_argument("--access-key", metavar="AK", help="sign every request as access key AK")
    acl.add_argument(
        "--secret-key-file",
        metavar="FILE",
        type=readable_file_arg,
        help=f"read AK's secret key from FILE's first line (else from ${SECRET_KEY_ENV})",
    )
    acl.add_argument(
        "--secret-key", nargs="?", action=_RefuseSecret, default=None, help=argparse.SUPPRESS
    )


@dataclasses.dataclass(frozen=True)
class Connection:
    """How a command connects: TLS options and ACL credentials, from the command line."""

    tls: bool = False
    tls_ca: str | None = None
    tls_verify: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    credentials: Credentials | None = None

    def config(self, **options: Any) -> ClientConfig:
        """A client configuration with these TLS options and ``options``."""
        return ClientConfig(
            tls=self.tls,
            tls_ca=self.tls_ca,
            tls_verify=self.tls_verify,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            **options,
        )

    def client(self, reactor: Any, **options: Any) -> RemotingClient:
        """A new client (configured with ``options``) that connects as told and signs
        every request with the credentials, if any."""
        client = RemotingClient(reactor, self.config(**options))
        if self.credentials is not None:
            client.register_rpc_hook(AclClientHook(self.credentials))
        return client


def _secret_key(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    path: str | None = args.secret_key_file
    if path is None:
        return os.environ.get(SECRET_KEY_ENV) or None
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
        parser.error(f"argument --secret-key-file: cannot read {path}: {reason}")
    if not secret:
        parser.error(f"argument --secret-key-file: the first line of {path} is empty")
    return secret


def check_connection(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the connection options (a usage error, status 2, for what cannot be used)
    and set ``args.connection`` to the :class:`Connection` they describe."""
    if args.tls_key is not None and args.tls_cert is None:
        parser.error("argument --tls-key: needs --tls-cert")
    tls = bool(args.tls or args.tls_insecure or args.tls_ca or args.tls_cert)
    credentials = None
    if args.access_key is not None:
        if not args.access_key:
            parser.error("argument --access-key: empty")
        secret = _secret_key(parser, args)
        if secret is None:
            parser.error(
                f"argument --access-key: no secret key: set {SECRET_KEY_ENV} in the "
                "environment or give --secret-key-file FILE (it is never taken on the "
                "command line)"
            )
        token = os.environ.get(SECURITY_TOKEN_ENV) or None
        credentials = Credentials(args.access_key, secret, token)
    elif args.secret_key_file is not None:
        parser.error("argument --secret-key-file: needs --access-key")
    connection = Connection(
        tls=tls,
        tls_ca=args.tls_ca,
        tls_verify=not args.tls_insecure,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        credentials=credentials,
    )
    if tls:  # the files are read now, so that one that cannot be used is a usage error
        from rmqtwist.tls import client_tls_endpoint_factory

        try:
            client_tls_endpoint_factory(connection.config(), lambda *a: None)  # type: ignore[arg-type]
        except ValueError as e:
            parser.error(f"TLS: {e}")
    args.connection = connection


# -- why a connection was dropped ----------------------------------------------------


@implementer(IChannelEventListener)
class DropReasons:
    """A channel-event listener that remembers the frame error that made us drop a
    connection (the peer sent HTTP, a frame over our limit, ...), by peer address.

    The client fails the calls on such a connection with a plain ConnectionLostError
    ("... lost ...: Connection was aborted locally"); :func:`describe` adds the reason
    from here.
    """

    def __init__(self) -> None:
        self.errors: dict[str, ProtocolError] = {}

    def on_connect(self, remote_address: str, channel: IChannel) -> None:
        pass

    def on_exception(self, remote_address: str, channel: IChannel, error: Exception) -> None:
        if isinstance(error, ProtocolError):
            self.errors[remote_address] = error

    def on_idle(self, remote_address: str, channel: IChannel) -> None:
        pass

    def on_close(self, remote_address: str, channel: IChannel) -> None:
        pass

    @classmethod
    def on(cls, client: RemotingClient) -> DropReasons:
        """A new listener, registered on ``client``'s dispatcher."""
        reasons = cls()
        client.dispatcher.register_listener(reasons)
        return reasons

    def explain(self, text: str) -> str | None:
        """Why we dropped a connection whose peer's address is in ``text``, or None."""
        for address, error in self.errors.items():
            if address and address in text:
                return explain_protocol_error(address, error)
        return None


def explain_protocol_error(address: str, error: ProtocolError) -> str:
    """One clause saying why we dropped the connection to ``address``."""
    if isinstance(error, WrongProtocol):
        return (
            f"{address} speaks {error.protocol}, not the RocketMQ remoting protocol "
            f"(its first bytes: {error.first_bytes!r})"
        )
    if isinstance(error, FrameTooLarge):
        return (
            f"{address} sent a frame of {error.size} bytes, over our limit of {error.limit} bytes"
        )
    if isinstance(error, MalformedFrame):
        return f"{address} sent a malformed frame ({error})"
    return f"{address} sent bytes that are not a remoting frame ({error})"


#: What Twisted says of a connection we aborted (as the client does on a frame error).
_ABORTED: Final = "Connection was aborted locally using ITCPTransport.abortConnection."


#: ``code 16 remark``, as route errors quote a name server's answer.
_RESPONSE_CODE: Final = re.compile(r"\bcode (\d+)\b:? ?")

_NO_PERMISSION_HINT: Final = (
    "the server checks an ACL: give --access-key with its secret key, and check that "
    "the account may do this"
)


def _name_code(match: re.Match[str]) -> str:
    code = int(match[1])
    name = code_name(code, response=True)
    return f"{name} ({code}): " if name != str(code) else match[0]


def describe(error: BaseException, reasons: DropReasons | None = None) -> str:
    """``Type: message``, one line, with why a dropped connection was dropped when we
    know (see :class:`DropReasons`)."""
    text = _RESPONSE_CODE.sub(_name_code, " ".join(str(error).split())) or repr(error)
    line = f"{type(error).__name__}: {text}"
    if f"{ResponseCode.NO_PERMISSION.name} ({int(ResponseCode.NO_PERMISSION)})" in line:
        line += f" ({_NO_PERMISSION_HINT})"
    if reasons is not None and (
        isinstance(error, ConnectionLostError) or "lost" in text or "aborted" in text
    ):
        why = reasons.explain(text)
        if why is not None:
            because = f"we dropped it because {why}"
            if _ABORTED in line:
                line = line.replace(_ABORTED, because)
            else:
                line += f" ({because})"
    return line


# -- running a command ---------------------------------------------------------------


class Interrupt:
    """Ctrl-C as the running command sees it: :attr:`requested` turns true at the first
    SIGINT and the callbacks given to :meth:`on` run (in the reactor thread); a command
    that registered none is cancelled."""

    def __init__(self) -> None:
        self.requested = False
        self._callbacks: list[Callable[[], None]] = []

    def on(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at the first Ctrl-C instead of cancelling the command."""
        self._callbacks.append(callback)
        if self.requested:
            callback()

    def wait(self) -> Deferred[None]:
        """A Deferred that fires at the first Ctrl-C."""
        fired: Deferred[None] = Deferred()
        self.on(lambda: None if fired.called else fired.callback(None))
        return fired


Body = Callable[[Any, Interrupt], Coroutine[Any, Any, int]]


def run(command: str, body: Body) -> int:
    """Run ``body(reactor, interrupt)`` on the reactor to the end; its exit status, or
    130 for Ctrl-C, 141 for a closed stdout, 1 with one line on stderr for an error.

    The reactor runs without its own signal handlers: the first SIGINT asks the command
    to wind down (at most :data:`GRACE` seconds), a second one stops at once.
    """
    from twisted.internet import reactor as default_reactor

    reactor: Any = default_reactor
    prog = f"{PROG} {command}"
    interrupt = Interrupt()
    outcome: dict[str, Any] = {}
    task: list[Deferred[int]] = []

    def finished(result: object) -> None:
        outcome["result"] = result
        stop()

    def start() -> None:
        running = ensureDeferred(body(reactor, interrupt))
        task.append(running)
        running.addBoth(finished)

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    def interrupted() -> None:
        if interrupt.requested:  # the second Ctrl-C: stop now
            stop()
            return
        interrupt.requested = True
        reactor.callLater(GRACE, stop)
        callbacks, interrupt._callbacks = interrupt._callbacks, []
        for callback in callbacks:
            callback()
        if not callbacks and task and not task[0].called:
            task[0].cancel()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(interrupted)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        reactor.callWhenRunning(start)
        reactor.run(installSignalHandlers=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    return _status(prog, outcome.get("result"), interrupt.requested)


def _status(prog: str, result: object, interrupted: bool) -> int:
    from twisted.python.failure import Failure

    if isinstance(result, Failure):
        error: BaseException = result.value  # type: ignore[assignment]
        if isinstance(error, StdoutClosed):
            silence_stdout()
            return EXIT_PIPE_CLOSED
        if interrupted:
            err(f"{prog}: interrupted")
            return EXIT_INTERRUPTED
        if isinstance(error, CancelledError):  # pragma: no cover - only Ctrl-C cancels
            err(f"{prog}: cancelled")
            return EXIT_FAILED
        if isinstance(error, CommandError):
            err(f"{prog}: error: {error}")
            return error.status
        if isinstance(error, RemotingError):
            err(f"{prog}: error: {describe(error)}")
            return EXIT_FAILED
        if os.environ.get("RMQTWIST_DEBUG"):
            traceback.print_exception(error)
        err(f"{prog}: error: {describe(error)} (unexpected; RMQTWIST_DEBUG=1 shows a traceback)")
        return EXIT_FAILED
    if interrupted:
        err(f"{prog}: interrupted")
        return EXIT_INTERRUPTED
    if result is None:  # the grace period ran out, or a second Ctrl-C
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK
