"""Drive rmqtwist's own Producer and consumers against a name server + broker: the interop
tests' third driver, with the command line and JSON lines of the other two (cpp_client.py,
node/ons_broker_client.js), so broker_cases.py runs with rmqtwist on either side::

    python rmqtwist_client.py [--batch N] produce --namesrv 127.0.0.1:PORT --topic T
        [--group G] < msgs.jsonl
    python rmqtwist_client.py [--consumer push|pull] consume --namesrv 127.0.0.1:PORT
        --group G --topic T [--count N] [--expression '*'] [--from last|first|timestamp]
        [--linger-ms 0] [--fail-prefix P] [--fail-mode retry|throw] [--rebalance-ms MS]
        [--stdin-stop] [--timeout-ms 30000] [--verbose]

``produce`` reads one JSON object per stdin line::

    {"body": "utf-8 text"} or {"bodyBase64": "..."},
    "tags": "TagA", "keys": ["k1", "k2"] (or "k1 k2"), "properties": {"k": "v"},
    "delayLevel": 2, "queueId": 1   (queueId: the writable queue queueId % queue count)

and sends them one at a time with :meth:`rmqtwist.producer.Producer.send`, printing one
line per send result: ``{"kind":"sent","index","topic","msgId","offsetMsgId","queueId",
"queueOffset","status","brokerName"}``; ``msgId`` is the UNIQ_KEY (as Java's and the C++
client's results show it). The first failed send, or ``--timeout-ms`` passing, ends the
run (status 1). With ``--batch N``, each N lines in a row go as one
:meth:`~rmqtwist.producer.Producer.send_batch` (SEND_BATCH_MESSAGE; no ``queueId`` or
``delayLevel`` then), still printed one line per message: the batch's UNIQ_KEYs and offset
msgIds split, ``queueOffset`` the first one's plus the message's place in the batch.

``consume`` runs a :class:`rmqtwist.consumer.PushConsumer` (``--consumer push``, the
default) or a :class:`rmqtwist.consumer.PullConsumer` (``--consumer pull``: subscribed,
auto-committing, its batches handed out one message at a time) and prints
``{"kind":"started",...}``, ``{"kind":"rebalance","topic","queueIds"}`` whenever the
queues it holds change, then one line per delivery::

    {"kind":"message","action":"ok"|"retry"|"throw","topic","tags","keys","properties",
     "body","bodyBase64","queueId","queueOffset","reconsumeTimes","msgId","uniqKey",
     "offsetMsgId","bornTimestamp","storeTimestamp","bornHost","storeHost",
     "commitLogOffset","sysFlag","flag","storeSize","receivedAt"}

and ``{"kind":"closed","consumed":n,"deliveries":m}`` after the consumer's shutdown (which
commits its offsets). ``properties`` is every property of the message as the wire carries
it (TAGS, KEYS and DELAY included); ``msgId`` is the offset msgId (store host + commit-log
offset, as ali-ons shows it), ``uniqKey`` the UNIQ_KEY property (None without one);
``body`` is the inflated body as text (None when it is not UTF-8). ``--fail-prefix``: the
first delivery of each body starting with P fails, by returning ``ConsumeResult.RETRY``
(``--fail-mode retry``) or by raising (``throw``); the pull consumer has no retry, so it
refuses ``--fail-prefix``.

Stop conditions of ``consume``: ``--count`` "ok" deliveries reached (then ``--linger-ms``
more), ``--timeout-ms`` passed (status 1 if a ``--count`` was not reached, 0 for
``--count 0``), or with ``--stdin-stop`` the end of stdin. A watchdog ends the process with
status 3 if anything (the shutdown included) runs past the timeout plus ``--grace-ms``.
Errors are one line on stderr; the library's warnings go to stderr too (its info lines
with ``--verbose``). Exit status: 0 ok, 1 failed, 2 bad usage or input, 3 watchdog.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, NoReturn

PROG = "rmqtwist_client"
FROM_WHERE = {"last": "LAST", "first": "FIRST", "timestamp": "TIMESTAMP"}


class Usage(Exception):
    """A bad command line or input line: status 2."""


class Failed(Exception):
    """The run failed: status 1, the message as the one stderr line."""


class Output:
    """JSON lines on stdout, one complete line per write."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, **fields: Any) -> None:
        text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def error(message: object) -> None:
    sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
    sys.stderr.flush()


def finish(status: int) -> NoReturn:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(status)


def start_watchdog(seconds: float) -> None:
    """End the process with status 3 after ``seconds``, whatever the reactor is doing."""

    def expire() -> None:
        error(f"watchdog: still running after {seconds:.1f} s, killing the process")
        finish(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def start_logging(verbose: bool) -> None:
    """The library's log lines (warnings and up; info too with ``verbose``) to stderr."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.info if verbose else LogLevel.warn
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


# ---------------------------------------------------------------------------
# produce
# ---------------------------------------------------------------------------


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


def input_keys(spec: Mapping[str, Any]) -> list[str]:
    keys = spec.get("keys")
    if keys is None:
        return []
    if isinstance(keys, str):
        return keys.split(" ")
    if isinstance(keys, list) and all(isinstance(key, str) for key in keys):
        return keys
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


def build_message(topic: str, spec: Mapping[str, Any]) -> Any:
    """An :class:`rmqtwist.message.Message` from one stdin line."""
    from rmqtwist.message import Message

    properties = spec.get("properties") or {}
    if not isinstance(properties, dict):
        raise Usage("properties must be an object")
    try:
        return Message(
            topic,
            input_body(spec),
            tags=None if spec.get("tags") is None else str(spec["tags"]),
            keys=input_keys(spec),
            properties={str(name): str(value) for name, value in properties.items()},
            delay_level=int(spec.get("delayLevel") or 0),
        )
    except (TypeError, ValueError) as e:
        raise Usage(f"cannot make a message of {json.dumps(spec)[:200]}: {e}") from e


def selector(queue_id: int) -> Any:
    """A queue selector picking the writable queue ``queue_id % count``."""
    return lambda queues, _message: queues[queue_id % len(queues)]


async def produce(reactor: Any, args: argparse.Namespace, out: Output) -> int:
    from rmqtwist.producer import Producer

    deadline = time.monotonic() + args.timeout_ms / 1000
    specs = list(read_specs(sys.stdin))
    messages = [build_message(args.topic, spec) for spec in specs]
    producer = Producer(
        args.group, args.namesrv, reactor=reactor, send_timeout=args.send_timeout_ms / 1000
    )
    await producer.start()
    sent = 0
    try:
        if args.batch:
            await produce_batches(producer, args, specs, messages, out, deadline)
            sent = len(specs)
        for index, (spec, message) in enumerate(zip(specs, messages, strict=True)):
            if args.batch:
                break
            if time.monotonic() > deadline:
                raise Failed(
                    f"timed out after {args.timeout_ms} ms with {sent} of {len(specs)} "
                    "messages sent"
                )
            queue_id = spec.get("queueId")
            try:
                if queue_id is None:
                    result = await producer.send(message)
                else:
                    result = await producer.send(message, selector=selector(int(queue_id)))
            except Exception as e:
                raise Failed(f"send of message {index} failed: {type(e).__name__}: {e}") from e
            out.line(
                kind="sent",
                index=index,
                topic=args.topic,
                msgId=result.msg_id,
                offsetMsgId=result.offset_msg_id,
                queueId=result.queue.queue_id,
                queueOffset=result.queue_offset,
                status=result.status.name,
                brokerName=result.queue.broker_name,
            )
            sent += 1
    finally:
        await producer.shutdown()
    out.line(kind="closed", sent=sent)
    return 0


async def produce_batches(
    producer: Any,
    args: argparse.Namespace,
    specs: Sequence[Mapping[str, Any]],
    messages: Sequence[Any],
    out: Output,
    deadline: float,
) -> None:
    """``messages`` in batches of ``args.batch``, one output line per message."""
    for start in range(0, len(messages), args.batch):
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {args.timeout_ms} ms with {start} messages sent")
        chunk = messages[start : start + args.batch]
        if any(spec.get("queueId") is not None for spec in specs[start : start + args.batch]):
            raise Usage("--batch sends cannot choose a queue (queueId)")
        try:
            result = await producer.send_batch(chunk)
        except Exception as e:
            raise Failed(f"batch from message {start} failed: {type(e).__name__}: {e}") from e
        ids = result.msg_id.split(",")
        offset_ids = result.offset_msg_id.split(",")
        if len(ids) != len(chunk) or len(offset_ids) != len(chunk):
            raise Failed(
                f"a batch of {len(chunk)} gave the ids {result.msg_id!r} / {result.offset_msg_id!r}"
            )
        for place, (uniq, offset_id) in enumerate(zip(ids, offset_ids, strict=True)):
            out.line(
                kind="sent",
                index=start + place,
                topic=args.topic,
                msgId=uniq,
                offsetMsgId=offset_id,
                queueId=result.queue.queue_id,
                queueOffset=result.queue_offset + place,
                status=result.status.name,
                brokerName=result.queue.broker_name,
            )


# ---------------------------------------------------------------------------
# consume
# ---------------------------------------------------------------------------


def body_fields(body: bytes) -> dict[str, Any]:
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"body": text, "bodyBase64": base64.b64encode(body).decode("ascii")}


def describe(message: Any) -> tuple[bytes, dict[str, Any]]:
    """A delivered :class:`rmqtwist.message.MessageExt` as the output line's fields."""
    received_at = int(time.time() * 1000)
    body = message.decoded_body()
    properties = message.wire_properties()
    record = {
        "topic": message.topic,
        "tags": message.tags,
        "keys": list(message.keys),
        "properties": properties,
        **body_fields(body),
        "queueId": message.queue_id,
        "queueOffset": message.queue_offset,
        "reconsumeTimes": message.reconsume_times,
        "msgId": message.offset_msg_id,
        "uniqKey": properties.get("UNIQ_KEY"),
        "offsetMsgId": message.offset_msg_id,
        "bornTimestamp": message.born_timestamp,
        "storeTimestamp": message.store_timestamp,
        "bornHost": message.born_host,
        "storeHost": message.store_host,
        "commitLogOffset": message.physical_offset,
        "sysFlag": message.sys_flag,
        "flag": message.flag,
        "storeSize": message.store_size,
        "receivedAt": received_at,
    }
    return body, record


class Consumption:
    """The consume run's state: what was delivered, and when to stop."""

    def __init__(self, reactor: Any, args: argparse.Namespace, out: Output) -> None:
        from twisted.internet.defer import Deferred

        self.reactor = reactor
        self.args = args
        self.out = out
        self.consumed = 0
        self.deliveries = 0
        self.failed_bodies: set[bytes] = set()
        self.stop: Deferred[str] = Deferred()
        self.polling_done = False  # the pull loop's end

    def stop_now(self, why: str) -> None:
        if not self.stop.called:
            self.stop.callback(why)

    def on_message(self, message: Any) -> Any:
        """The listener: prints the delivery; fails it on purpose once for --fail-prefix
        (False: retry it, as ``ConsumeResult.RETRY`` would)."""
        body, record = describe(message)
        prefix = self.args.fail_prefix
        fail = (
            prefix is not None
            and body.startswith(prefix.encode("utf-8"))
            and body not in self.failed_bodies
        )
        self.deliveries += 1
        if fail:
            self.failed_bodies.add(body)
            self.out.line(kind="message", action=self.args.fail_mode, **record)
            if self.args.fail_mode == "throw":
                raise RuntimeError(f"failing the first delivery of {record['msgId']} on purpose")
            return False
        self.consumed += 1
        self.out.line(kind="message", action="ok", **record)
        if self.args.count and self.consumed >= self.args.count:
            self.stop_now("count")
        return True


def watch_stdin(reactor: Any, on_end: Any) -> None:
    """Call ``on_end()`` in the reactor thread when stdin reaches its end."""

    def read() -> None:
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(65536):
                pass
        reactor.callFromThread(on_end)

    threading.Thread(target=read, name="stdin", daemon=True).start()


def sleep(reactor: Any, seconds: float) -> Any:
    from twisted.internet import task

    return task.deferLater(reactor, max(0.0, seconds), lambda: None)


class QueueReporter:
    """Prints a ``rebalance`` line per topic whenever the consumer's queues change."""

    def __init__(self, out: Output, queues: Any) -> None:
        self.out = out
        self.queues = queues  # () -> iterable of MessageQueue
        self.held: dict[str, list[int]] = {}

    def __call__(self) -> None:
        now: dict[str, list[int]] = {}
        for queue in self.queues():
            now.setdefault(queue.topic, []).append(queue.queue_id)
        for topic in sorted(set(self.held) | set(now)):
            ids = sorted(now.get(topic, []))
            if ids != self.held.get(topic, []):
                self.out.line(kind="rebalance", topic=topic, queueIds=ids)
                self.held[topic] = ids


async def consume(reactor: Any, args: argparse.Namespace, out: Output) -> int:
    from twisted.internet import task
    from twisted.internet.defer import DeferredList

    from rmqtwist.consumer import ConsumeFrom

    started_at = time.monotonic()
    deadline = started_at + args.timeout_ms / 1000
    state = Consumption(reactor, args, out)
    consume_from = ConsumeFrom[FROM_WHERE[args.from_where]]
    if args.consumer == "push":
        from rmqtwist.consumer import PushConsumer

        options: dict[str, Any] = {}
        if args.rebalance_ms is not None:
            options["rebalance_interval"] = args.rebalance_ms / 1000
        consumer: Any = PushConsumer(
            args.group,
            args.namesrv,
            state.on_message,
            reactor=reactor,
            consume_from=consume_from,
            **options,
        )
        reporter = QueueReporter(out, lambda: consumer.assigned_queues)
    else:
        from rmqtwist.consumer import PullConsumer

        if args.fail_prefix is not None:
            raise Usage("the pull consumer has no retry: --fail-prefix needs --consumer push")
        options = {}
        if args.rebalance_ms is not None:
            options["rebalance_interval"] = args.rebalance_ms / 1000
        consumer = PullConsumer(
            args.group, args.namesrv, reactor=reactor, consume_from=consume_from, **options
        )
        reporter = QueueReporter(out, lambda: consumer.assignment())
    consumer.subscribe(args.topic, args.expression)
    if args.stdin_stop:
        watch_stdin(reactor, lambda: state.stop_now("stdin"))
    timer = reactor.callLater(max(0.0, deadline - time.monotonic()), state.stop_now, "timeout")
    try:
        await consumer.start()
    except Exception as e:
        raise Failed(f"consumer start failed: {type(e).__name__}: {e}") from e
    out.line(
        kind="started", group=args.group, topic=args.topic, clientId=consumer.client_id,
        pid=os.getpid(), consumer=args.consumer,
    )  # fmt: skip
    watcher = task.LoopingCall(reporter)
    watcher.clock = reactor
    watcher.start(0.1)
    if args.consumer == "pull":
        polling = task.cooperate(poll_loop(consumer, state)).whenDone()
    why = await state.stop
    if why == "count" and args.linger_ms:
        await sleep(reactor, min(args.linger_ms / 1000, deadline - time.monotonic()))
    if timer.active():
        timer.cancel()
    if args.consumer == "pull":
        state.polling_done = True
        await DeferredList([polling], consumeErrors=True)
    watcher.stop()
    try:
        await consumer.shutdown()  # commits the offsets of what was consumed
    except Exception as e:
        raise Failed(f"consumer shutdown failed: {type(e).__name__}: {e}") from e
    out.line(kind="closed", consumed=state.consumed, deliveries=state.deliveries)
    if args.count and state.consumed < args.count:
        raise Failed(
            f"{why} after {time.monotonic() - started_at:.1f} s with {state.consumed} of "
            f"{args.count} messages consumed"
        )
    return 0


def poll_loop(consumer: Any, state: Consumption) -> Iterator[Any]:
    """The pull consumer's loop (a cooperative task): poll, hand each message to the
    listener, until the run stops."""
    while not state.polling_done and not state.stop.called:
        batch: list[Any] = []
        d = consumer.poll(timeout=0.5)
        d.addCallback(batch.extend)
        yield d
        for message in batch:  # all of them: poll() counts them as consumed for commit()
            state.on_message(message)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with usage errors raised (one line, status 2) instead of printed."""

    def error(self, message: str) -> NoReturn:
        raise Usage(message)


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parser() -> Parser:
    top = Parser(prog=PROG, description=__doc__.splitlines()[0])
    top.add_argument(
        "--consumer", choices=["push", "pull"], default="push", help="which consumer to run"
    )
    top.add_argument(
        "--batch", type=non_negative, default=0, help="produce: N messages per send_batch"
    )
    modes = top.add_subparsers(dest="mode", required=True, parser_class=Parser)
    common = Parser(add_help=False)
    common.add_argument("--namesrv", required=True, help="name server address HOST:PORT")
    common.add_argument("--topic", required=True)
    common.add_argument("--timeout-ms", type=non_negative, default=30000, help="the whole run")
    common.add_argument("--grace-ms", type=non_negative, default=15000, help="for shutdown")
    common.add_argument("--verbose", action="store_true", help="the library's info lines too")

    send = modes.add_parser("produce", parents=[common], help="send stdin's JSON lines")
    send.add_argument("--group", default="rmqtwist_py_producer", help="producer group")
    send.add_argument("--send-timeout-ms", type=non_negative, default=3000)

    take = modes.add_parser("consume", parents=[common], help="consume, print messages")
    take.add_argument("--group", required=True, help="consumer group")
    take.add_argument("--expression", default="*", help="subscription: * or TagA || TagB")
    take.add_argument("--count", type=non_negative, default=0, help="ok deliveries to wait for")
    take.add_argument("--linger-ms", type=non_negative, default=0, help="after --count")
    take.add_argument("--fail-prefix", help="fail the first delivery of bodies with this prefix")
    take.add_argument("--fail-mode", choices=["retry", "throw"], default="retry")
    take.add_argument(
        "--from", dest="from_where", choices=sorted(FROM_WHERE), default="last",
        help="where a new group starts",
    )  # fmt: skip
    take.add_argument("--rebalance-ms", type=non_negative, help="the rebalance interval")
    take.add_argument("--stdin-stop", action="store_true", help="stop when stdin ends")
    return top


def main(argv: Sequence[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except Usage as e:
        error(e)
        return 2
    start_watchdog((args.timeout_ms + args.grace_ms) / 1000)
    start_logging(args.verbose)
    out = Output(sys.stdout)
    status: list[int] = []

    async def run(reactor: Any) -> None:
        try:
            if args.mode == "produce":
                status.append(await produce(reactor, args, out))
            else:
                status.append(await consume(reactor, args, out))
        except Usage as e:
            error(e)
            status.append(2)
        except Failed as e:
            error(e)
            status.append(1)
        except Exception as e:
            error(f"{type(e).__name__}: {e}")
            status.append(1)

    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    with contextlib.suppress(SystemExit):
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    return status[0] if status else 1


if __name__ == "__main__":
    finish(main(sys.argv[1:]))
