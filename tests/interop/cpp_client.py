"""Drive the C++ RocketMQ client against a name server + broker: the interop tests' driver.

The client is Apache's rocketmq-client-cpp (1.2.x) as bundled in the PyPI package
``rocketmq`` 0.4.4 (``librocketmq.so`` behind a ctypes wrapper). It can crash, hang in
shutdown or abort the process, so tests run this script only as a subprocess, with the
test environment's Python, and never import ``rocketmq`` themselves::

    python cpp_client.py produce --namesrv 127.0.0.1:PORT --topic T [--group G] < msgs.jsonl
    python cpp_client.py consume --namesrv 127.0.0.1:PORT --group G --topic T --count N

``produce`` reads one JSON object per stdin line::

    {"body": "utf-8 text"} or {"bodyBase64": "..."},
    "tags": "TagA", "keys": ["k1", "k2"] (or "k1 k2"), "properties": {"k": "v"},
    "delayLevel": 2, "queueId": 1   (queueId: send to that queue with the client's
                                     orderly send, queue = queueId % queue count)

and prints one line per send: ``{"kind":"sent","index","topic","msgId","queueId",
"queueOffset","status"}``. The C API's send result has no queue id: ``queueId`` is the
queue chosen by ``queueId`` in the input, else null. ``msgId`` is the client's UNIQ_KEY.
The first failed send, or ``--timeout-ms`` passing, ends the run (status 1).

``consume`` prints ``{"kind":"started",...}``, then one line per delivery::

    {"kind":"message","action":"ok"|"retry","topic","tags","keys","properties","body",
     "bodyBase64","queueId","queueOffset","reconsumeTimes","msgId","bornTimestamp",
     "storeTimestamp","commitLogOffset","storeSize","delayTimeLevel","receivedAt"}

and ``{"kind":"closed","consumed":n,"deliveries":m}`` after shutting the consumer down
(which commits its offsets). ``consumed`` counts the "ok" deliveries; ``receivedAt`` is
the wall clock in ms when the callback was called; ``msgId`` is the UNIQ_KEY if the
message has one, else the offset msgId, whose IPv4 address this client writes in
little-endian byte order (``0100007F...`` for 127.0.0.1). What the C API
cannot give: born/store hosts, flag, sys flag and the offset msgId; the property names
(only the names in :data:`KNOWN_PROPERTIES` and those given with ``--property`` are read,
and an empty value cannot be told from a missing one, so only non-empty ones are
printed); a body past its first NUL byte (``GetMessageBody`` returns a C string). The
consumer cannot be told where to start: the C API has no ConsumeFromWhere setter, so a new
group uses the client's CONSUME_FROM_LAST_OFFSET. ``--fail-mode`` is ``retry`` only (the
callback returns RECONSUME_LATER; the package's own ``subscribe`` turns a Python exception
into CONSUME_SUCCESS, so it is not used). There is no transaction producer in 0.4.4.

Stop conditions of ``consume``: ``--count`` "ok" deliveries reached (then ``--linger-ms``
more), ``--timeout-ms`` passed (status 1 if a ``--count`` was not reached, 0 for
``--count 0``), or with ``--stdin-stop`` the end of stdin. A watchdog ends the process
with status 3 if anything (including the client's shutdown) runs past the timeout plus
``--grace-ms``. Errors are one line on stderr; status 1 for a failed run, 2 for bad usage.
The client's own log goes to ``LOG_DIR/logs/rocketmq-cpp/`` (``--log-dir``, default a
temporary directory removed at exit): it writes under ``$HOME``, which is set to LOG_DIR.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, NoReturn

PROG = "cpp_client"
#: With these set, ``produce`` signs its requests (ACL 1.0) with this access/secret key.
ACCESS_KEY_ENV = "RMQTWIST_CPP_ACCESS_KEY"
SECRET_KEY_ENV = "RMQTWIST_CPP_SECRET_KEY"

#: Properties read from every delivered message (the C API cannot list a message's own).
KNOWN_PROPERTIES = (
    "TAGS",
    "KEYS",
    "UNIQ_KEY",
    "WAIT",
    "DELAY",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "ORIGIN_MESSAGE_ID",
    "RECONSUME_TIME",
    "MAX_RECONSUME_TIMES",
    "TRAN_MSG",
    "PGROUP",
    "CLUSTER",
    "MSG_REGION",
    "TRACE_ON",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "CONSUME_START_TIME",
)

#: rocketmq-client-cpp's SendStatus, named as the Java client names them.
SEND_STATUS = {
    0: "SEND_OK",
    1: "FLUSH_DISK_TIMEOUT",
    2: "FLUSH_SLAVE_TIMEOUT",
    3: "SLAVE_NOT_AVAILABLE",
}

CONSUME_SUCCESS = 0  # the C API's E_CONSUME_SUCCESS
RECONSUME_LATER = 1  # E_RECONSUME_LATER


class Usage(Exception):
    """A bad command line or input line: status 2."""


class Failed(Exception):
    """The run failed: status 1, the message as the one stderr line."""


class Output:
    """JSON lines on stdout, one complete line per write whatever thread writes."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, **fields: Any) -> None:
        text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


def one_line(text: object) -> str:
    """``text`` on one line (stderr lines are read one per error)."""
    return " ".join(str(text).split())


def error(message: object) -> None:
    sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
    sys.stderr.flush()


def warn(message: object) -> None:
    sys.stderr.write(f"{PROG}: warning: {one_line(message)}\n")
    sys.stderr.flush()


def finish(status: int) -> NoReturn:
    """Leave now: the wrapper's ``__del__`` would shut the client down (again) and destroy
    it while the interpreter exits, which is where librocketmq tends to crash."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(status)


def start_watchdog(seconds: float) -> None:
    """End the process with status 3 after ``seconds``, whatever the client is doing."""

    def expire() -> None:
        error(f"watchdog: still running after {seconds:.1f} s, killing the process")
        finish(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def text_or_none(raw: bytes | None) -> str | None:
    """A C string from the API as text; None for NULL."""
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")


def body_fields(body: bytes) -> dict[str, Any]:
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"body": text, "bodyBase64": base64.b64encode(body).decode("ascii")}


def input_body(spec: Mapping[str, Any]) -> bytes:
    if "bodyBase64" in spec:
        try:
            return base64.b64decode(str(spec["bodyBase64"]), validate=True)
        except (binascii.Error, ValueError) as e:
            raise Usage(f"bad bodyBase64: {e}") from e
    body = spec.get("body", "")
    if not isinstance(body, str):
        raise Usage("body must be a string (use bodyBase64 for bytes)")
    return body.encode("utf-8")


def input_keys(spec: Mapping[str, Any]) -> str | None:
    keys = spec.get("keys")
    if keys is None:
        return None
    if isinstance(keys, str):
        return keys
    if isinstance(keys, list) and all(isinstance(key, str) for key in keys):
        return " ".join(keys)
    raise Usage("keys must be a string or a list of strings")


def read_specs(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            spec = json.loads(line)
        except ValueError as e:
            raise Usage(f"stdin line {number} is not JSON: {e}") from e
        if not isinstance(spec, dict):
            raise Usage(f"stdin line {number} is not a JSON object")
        yield spec


# ---------------------------------------------------------------------------
# produce
# ---------------------------------------------------------------------------


def build_message(topic: str, spec: Mapping[str, Any]) -> Any:
    """A ``rocketmq.client.Message`` from one stdin line."""
    from rocketmq.client import Message
    from rocketmq.ffi import dll

    message = Message(topic)
    body = input_body(spec)
    # SetByteMessageBody takes a length: bodies may hold NUL bytes
    status = dll.SetByteMessageBody(message, body, len(body))
    if status != 0:
        raise Failed(f"SetByteMessageBody failed with status {status}")
    if spec.get("tags") is not None:
        message.set_tags(str(spec["tags"]))
    keys = input_keys(spec)
    if keys is not None:
        message.set_keys(keys)
    properties = spec.get("properties") or {}
    if not isinstance(properties, dict):
        raise Usage("properties must be an object")
    for name, value in properties.items():
        message.set_property(str(name), str(value))
    if spec.get("delayLevel"):
        message.set_delay_time_level(int(spec["delayLevel"]))
    return message


def send(producer: Any, message: Any, queue_id: int | None) -> tuple[Any, int | None]:
    """Send ``message``: to any queue (the client's round robin) when ``queue_id`` is None,
    else with the orderly send to queue ``queue_id % queue count``. Returns the send
    result and the queue chosen (None: not known, the C API does not give it)."""
    if queue_id is None:
        return producer.send_sync(message), None
    chosen: list[int] = []

    def select(count: int, _message: object, _arg: object) -> int:
        chosen.append(queue_id % count)
        return chosen[-1]

    result = producer.send_orderly(message, queue_id, queue_selector=select)
    return result, chosen[-1] if chosen else None


def produce(args: argparse.Namespace, out: Output) -> int:
    from rocketmq.client import Producer

    deadline = time.monotonic() + args.timeout_ms / 1000
    specs = list(read_specs(sys.stdin))
    producer = Producer(args.group, timeout=args.send_timeout_ms)
    producer.set_namesrv_addr(args.namesrv)
    access_key = os.environ.get(ACCESS_KEY_ENV)
    if access_key:  # ACL: the client signs every request (kept off the command line)
        producer.set_session_credentials(access_key, os.environ.get(SECRET_KEY_ENV, ""), "")
    producer.start()
    sent = 0
    try:
        for index, spec in enumerate(specs):
            if time.monotonic() > deadline:
                raise Failed(
                    f"timed out after {args.timeout_ms} ms with {sent} of {len(specs)} "
                    "messages sent"
                )
            message = build_message(args.topic, spec)
            queue_id = None if spec.get("queueId") is None else int(spec["queueId"])
            try:
                result, chosen = send(producer, message, queue_id)
            except Exception as e:
                raise Failed(f"send of message {index} failed: {type(e).__name__}: {e}") from e
            out.line(
                kind="sent",
                index=index,
                topic=args.topic,
                msgId=result.msg_id,
                queueId=chosen,
                queueOffset=int(result.offset),
                status=SEND_STATUS.get(int(result.status), str(int(result.status))),
            )
            sent += 1
    finally:
        with contextlib.suppress(Exception):
            producer.shutdown()
    out.line(kind="closed", sent=sent)
    return 0


# ---------------------------------------------------------------------------
# consume
# ---------------------------------------------------------------------------


class Consumption:
    """What the message callback (on the client's threads) shares with the main thread."""

    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args = args
        self.out = out
        self.lock = threading.Lock()
        self.consumed = 0
        self.deliveries = 0
        self.failed_bodies: set[bytes] = set()
        self.errors: list[str] = []
        self.reached = threading.Event()
        self.property_names = tuple(dict.fromkeys((*KNOWN_PROPERTIES, *args.property)))

    def describe(self, handle: int) -> tuple[bytes, dict[str, Any]]:
        from rocketmq.ffi import dll

        received_at = int(time.time() * 1000)
        body = dll.GetMessageBody(handle) or b""
        properties = {}
        for name in self.property_names:
            value = dll.GetMessageProperty(handle, name.encode("utf-8"))
            if value:  # b"" for a missing property as for an empty one
                properties[name] = value.decode("utf-8", "replace")
        tags = text_or_none(dll.GetMessageTags(handle)) or None
        keys = text_or_none(dll.GetMessageKeys(handle)) or ""
        record = {
            "topic": text_or_none(dll.GetMessageTopic(handle)),
            "tags": tags,
            "keys": keys.split(" ") if keys else [],
            "properties": properties,
            **body_fields(body),
            "queueId": int(dll.GetMessageQueueId(handle)),
            "queueOffset": int(dll.GetMessageQueueOffset(handle)),
            "reconsumeTimes": int(dll.GetMessageReconsumeTimes(handle)),
            "msgId": text_or_none(dll.GetMessageId(handle)),
            "bornTimestamp": int(dll.GetMessageBornTimestamp(handle)),
            "storeTimestamp": int(dll.GetMessageStoreTimestamp(handle)),
            "commitLogOffset": int(dll.GetMessageCommitLogOffset(handle)),
            "storeSize": int(dll.GetMessageStoreSize(handle)),
            "delayTimeLevel": int(dll.GetMessageDelayTimeLevel(handle)),
            "receivedAt": received_at,
        }
        return body, record

    def on_message(self, _consumer: int, handle: int) -> int:
        """The C callback: never raises (ctypes would print it and answer 0 = success)."""
        try:
            body, record = self.describe(handle)
            prefix = self.args.fail_prefix
            with self.lock:
                fail = (
                    prefix is not None
                    and body.startswith(prefix.encode("utf-8"))
                    and body not in self.failed_bodies
                )
                if fail:
                    self.failed_bodies.add(body)
                else:
                    self.consumed += 1
                self.deliveries += 1
                self.out.line(kind="message", action="retry" if fail else "ok", **record)
                if self.args.count and self.consumed >= self.args.count:
                    self.reached.set()
            return RECONSUME_LATER if fail else CONSUME_SUCCESS
        except BaseException as e:  # a callback must answer whatever happens
            message = f"message callback failed: {type(e).__name__}: {e}"
            with self.lock:
                self.errors.append(message)
            warn(message)
            return RECONSUME_LATER


def stdin_closed() -> threading.Event:
    """An event set when stdin reaches its end (read in a daemon thread)."""
    closed = threading.Event()

    def read() -> None:
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(65536):
                pass
        closed.set()

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return closed


def wait_for(events: Sequence[threading.Event], deadline: float) -> None:
    while time.monotonic() < deadline and not any(event.is_set() for event in events):
        time.sleep(0.02)


def consume(args: argparse.Namespace, out: Output) -> int:
    from rocketmq.client import PushConsumer
    from rocketmq.exceptions import ffi_check
    from rocketmq.ffi import MSG_CALLBACK_FUNC, dll

    if args.fail_mode != "retry":
        raise Usage("the C++ client's callback can only fail by RECONSUME_LATER: --fail-mode retry")
    if args.from_where != "last":
        raise Usage(
            "the C API has no ConsumeFromWhere setter: a new group always starts as "
            "CONSUME_FROM_LAST_OFFSET (--from last)"
        )
    started_at = time.monotonic()
    deadline = started_at + args.timeout_ms / 1000
    state = Consumption(args, out)
    consumer = PushConsumer(args.group)
    consumer.set_namesrv_addr(args.namesrv)
    consumer.set_thread_count(args.threads)
    consumer.set_message_batch_max_size(1)
    callback: Callable[[int, int], int] = MSG_CALLBACK_FUNC(state.on_message)
    ffi_check(dll.Subscribe(consumer._handle, args.topic.encode(), args.expression.encode()))
    ffi_check(dll.RegisterMessageCallback(consumer._handle, callback))
    stop_events = [state.reached]
    if args.stdin_stop:
        stop_events.append(stdin_closed())
    try:
        consumer.start()
    except Exception as e:
        raise Failed(f"consumer start failed: {type(e).__name__}: {e}") from e
    out.line(kind="started", group=args.group, topic=args.topic, pid=os.getpid())
    wait_for(stop_events, deadline)
    if state.reached.is_set() and args.linger_ms:
        time.sleep(min(args.linger_ms / 1000, max(0.0, deadline - time.monotonic())))
    try:
        consumer.shutdown()  # persists the offsets of what was consumed
    except Exception as e:
        raise Failed(f"consumer shutdown failed: {type(e).__name__}: {e}") from e
    with state.lock:
        consumed, deliveries, errors = state.consumed, state.deliveries, list(state.errors)
    out.line(kind="closed", consumed=consumed, deliveries=deliveries)
    del callback  # kept alive until the consumer is shut down
    if errors:
        raise Failed(errors[0])
    if args.count and consumed < args.count:
        why = "stdin closed" if time.monotonic() < deadline else "timed out"
        raise Failed(
            f"{why} after {time.monotonic() - started_at:.1f} s with {consumed} of "
            f"{args.count} messages consumed"
        )
    return 0


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with usage errors raised (one line, status 2) instead of printed."""

    def error(self, message: str) -> NoReturn:
        raise Usage(message)


def positive_ms(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parser() -> Parser:
    top = Parser(prog=PROG, description=__doc__.splitlines()[0])
    modes = top.add_subparsers(dest="mode", required=True, parser_class=Parser)
    common = Parser(add_help=False)
    common.add_argument("--namesrv", required=True, help="name server address HOST:PORT")
    common.add_argument("--topic", required=True)
    common.add_argument("--timeout-ms", type=positive_ms, default=30000, help="the whole run")
    common.add_argument("--grace-ms", type=positive_ms, default=15000, help="for shutdown")
    common.add_argument("--log-dir", help="the client's log goes to LOG_DIR/logs/rocketmq-cpp/")

    send = modes.add_parser("produce", parents=[common], help="send stdin's JSON lines")
    send.add_argument("--group", default="rmqtwist_cpp_producer", help="producer group")
    send.add_argument("--send-timeout-ms", type=positive_ms, default=3000)

    pull = modes.add_parser("consume", parents=[common], help="push-consume, print messages")
    pull.add_argument("--group", required=True, help="consumer group")
    pull.add_argument("--expression", default="*", help="subscription: * or TagA || TagB")
    pull.add_argument("--count", type=positive_ms, default=0, help="ok deliveries to wait for")
    pull.add_argument("--linger-ms", type=positive_ms, default=0, help="after --count is reached")
    pull.add_argument("--fail-prefix", help="fail the first delivery of bodies with this prefix")
    pull.add_argument("--fail-mode", choices=["retry", "throw"], default="retry")
    pull.add_argument(
        "--from",
        dest="from_where",
        choices=["last", "first", "timestamp"],
        default="last",
        help="only last: the C API cannot set it",
    )
    pull.add_argument("--threads", type=int, default=1, help="consume threads (1 keeps order)")
    pull.add_argument(
        "--property",
        action="append",
        default=[],
        help="also read this property of each message (repeatable)",
    )
    pull.add_argument("--stdin-stop", action="store_true", help="stop when stdin ends")
    return top


def main(argv: Sequence[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except Usage as e:
        error(e)
        return 2
    start_watchdog((args.timeout_ms + args.grace_ms) / 1000)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="rmqtwist-cpp-client-")
    os.makedirs(log_dir, exist_ok=True)
    os.environ["HOME"] = os.path.abspath(log_dir)  # before librocketmq is loaded
    out = Output(sys.stdout)
    try:
        try:
            import rocketmq.client  # noqa: F401 (loads librocketmq.so)
        except Exception as e:
            raise Failed(f"cannot import rocketmq (pip install rocketmq==0.4.4): {e}") from e
        return produce(args, out) if args.mode == "produce" else consume(args, out)
    except Usage as e:
        error(e)
        return 2
    except Failed as e:
        error(e)
        return 1
    except Exception as e:
        error(f"{type(e).__name__}: {e}")
        return 1
    finally:
        if not args.log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    finish(main(sys.argv[1:]))
