"""Benchmark of the dev broker: send and pull throughput, send latency, memory per message.

Run: python bench/broker.py [--json FILE]   (about 90 s)

Each store setting gets its own ``twist rmq-remoting`` process (in memory, or
``--data-dir`` in a temporary directory with ``--flush sync`` or ``async``) on a free
127.0.0.1 port, pinned to the first CPU. The load comes from forked processes on the
other CPU, each running rmqtwist's own RemotingClient (one connection) on Twisted's epoll
reactor. They send what Apache's Java producer sends (SEND_MESSAGE_V2 with a tag, a key,
UNIQ_KEY and WAIT properties, round-robin over the topic's queues) and pull as a push
consumer does (a heartbeat with a ``*`` subscription, then one PULL_MESSAGE of 32 per
queue at a time, every queue at once). The broker's CPU time (``/proc/PID/stat``) and the
load processes' are divided by the messages of the measured window. Every answer is
checked (SUCCESS, a msgId; pulled records that add up to the offsets); anything else is
an error and makes the exit status 1. bench/README.md says what each row means.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import math
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _harness import (
    PROFILED_TWIST,
    Column,
    LoadProcess,
    LoadWindow,
    ServerProcess,
    busy_seconds,
    cpu_seconds,
    exit_on_sigterm,
    machine_info,
    percentile,
    print_profile,
    print_stacks,
    print_table,
    python_speed,
    settled_rss,
    sleep_until,
    split_cpus,
)

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, SerializeType, __version__
from rmqtwist.codes import LanguageCode
from rmqtwist.headers import (
    CreateTopicRequestHeader,
    PullMessageRequestHeader,
    SendMessageRequestHeaderV2,
    SendMessageResponseHeader,
)
from rmqtwist.message import (
    Message,
    Property,
    UniqueIdGenerator,
    decode_properties,
    decode_records,
    encode_properties,
)

TARGET_SEND = 25_000  # msgs/s, 64 in flight, 128 B, in memory
TARGET_SEND_SYNC = 10_000  # msgs/s, --flush sync
TARGET_PULL = 150_000  # msgs/s consumed
TARGET_P50_US = 150  # 1 in flight
TARGET_BEYOND_BODY = 250  # bytes of broker RSS per stored message beyond its body

ROWS = ("send", "send-1k", "latency", "echo", "disk-sync", "disk-async", "memory", "pull")
#: The rows of the public APIs (not run by default): Producer.send against the same sends
#: made as raw RemotingClient calls; PushConsumer and PullConsumer against raw pulls.
API_ROWS = ("producer", "push", "lite")
TARGET_PRODUCER_RATIO = 1.5  # producer load CPU per message <= 1.5x a raw send's
GROUP = "bench_group"
TAG = "TagA"
PULL_BATCH = 32
PULL_SYS_FLAG = 0x1 | 0x2  # commit offset, suspend: what a push consumer sends
_SIZE = struct.Struct(">i")


# ---------------------------------------------------------------------------
# The load processes
# ---------------------------------------------------------------------------


@dataclass
class Spec:
    """What one load process does against ``address``."""

    address: str
    mode: str  # "send" or "pull"
    topic: str
    queues: int
    in_flight: int = 64
    body_size: int = 128
    warm: int = 2_000  # sends before "ready" (send mode)
    count: int = 0  # send mode: exactly this many after "go" (0: until the window ends)
    serialize_type: int = SerializeType.JSON
    proc: int = 0  # this process's number, of ``procs``
    procs: int = 1  # (pull: process p pulls queues p, p + procs, ...)
    echo: bool = False  # the server is the echo server: no msgId in answers
    decode: bool = False  # pull: decode every record, as a consumer must


class Load:
    """A load generator: one RemotingClient on the epoll reactor, keeping ``in_flight``
    sends outstanding (or one pull per queue), counting what is answered in the window."""

    def __init__(self, spec: Spec) -> None:
        from twisted.internet import epollreactor

        epollreactor.install()  # type: ignore[no-untyped-call]  # a forked child: the parent never installed a reactor
        from twisted.internet import reactor

        from rmqtwist.client import ClientConfig, RemotingClient

        self.reactor: Any = reactor
        self.spec = spec
        stype = SerializeType(spec.serialize_type)
        self.client = RemotingClient(reactor, ClientConfig(serialize_type=stype))
        self.errors: Counter[str] = Counter()
        self.latencies = array.array("q")
        self.sent = self.answered = 0
        self.completed = 0  # messages answered (sends) or received (pulls) in the window
        self.counting = self.sending = False
        self.limit: int | None = None
        self.cpu_ns = self.window_ns = 0
        self.result: dict[str, Any] = {}
        self.body = (bytes(range(256)) * (spec.body_size // 256 + 1))[: spec.body_size]
        self.ids = UniqueIdGenerator()
        self.index = 0
        self._done: Any = None

    def run(self, pipe: Connection) -> None:
        from twisted.internet.defer import ensureDeferred

        def main() -> None:
            d = ensureDeferred(self._main(pipe))
            d.addErrback(lambda f: self.errors.update([f"load: {f.getErrorMessage()}"]))
            d.addBoth(lambda _: self.reactor.stop())

        self.reactor.callWhenRunning(main)
        self.reactor.run(installSignalHandlers=False)
        self.result["errors"] = dict(self.errors)
        pipe.send(("result", self.result))

    async def call(self, request: RemotingCommand) -> RemotingCommand:
        response: RemotingCommand = await self.client.invoke(self.spec.address, request, 30.0)
        if response.code != ResponseCode.SUCCESS:
            raise RuntimeError(
                f"request {request.code} answered {response.code}: {response.remark}"
            )
        return response

    async def runtime_info(self) -> dict[str, str]:
        response = await self.call(RemotingCommand.request(RequestCode.GET_BROKER_RUNTIME_INFO))
        return dict(response.ext_fields or {})

    async def _main(self, pipe: Connection) -> None:
        from twisted.internet.defer import Deferred

        spec = self.spec
        header = CreateTopicRequestHeader(
            topic=spec.topic, read_queue_nums=spec.queues, write_queue_nums=spec.queues
        )
        await self.call(header.to_request(RequestCode.UPDATE_AND_CREATE_TOPIC))
        if spec.mode == "send":
            self._prepare_sends()
            await self._sends(Deferred(), spec.warm)  # not counted
        else:
            await self.call(self._heartbeat())
        pipe.send(("ready", await self.runtime_info()))
        _, start_ns, end_ns = pipe.recv()  # blocking: nothing else is going on
        done: Deferred[None] = Deferred()
        if spec.count:
            self._window_opens()
        else:
            now = time.monotonic_ns()
            self.reactor.callLater(max(start_ns - now, 0) / 1e9, self._window_opens)
            self.reactor.callLater(max(end_ns - now, 0) / 1e9, self._window_closes)
        if spec.mode == "send":
            await self._sends(done, spec.count or None)
        else:
            self._done = done
            self.sending = True
            for queue_id in range(spec.proc, spec.queues, spec.procs):
                self._pull(queue_id, 0)
            await done
        self.result.update(
            completed=self.completed,
            window_s=self.window_ns / 1e9,
            cpu_s=self.cpu_ns / 1e9,
            latencies=self.latencies.tobytes(),
            after=await self.runtime_info(),
        )

    def _window_opens(self) -> None:
        self.counting = True
        self.window_ns = -time.perf_counter_ns()
        self.cpu_ns = -time.process_time_ns()

    def _window_closes(self) -> None:
        self.cpu_ns += time.process_time_ns()
        self.window_ns += time.perf_counter_ns()
        self.counting = self.sending = False
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.sending and self.sent == self.answered and not self._done.called:
            self._done.callback(None)

    def _failed(self, failure: Any) -> None:
        self.answered += 1
        self.errors[f"{type(failure.value).__name__}: {failure.getErrorMessage()}"] += 1
        self.sending = False  # stop at the first failure: the row is void anyway
        self._maybe_done()

    # -- sending --

    def _prepare_sends(self) -> None:
        """Build the properties and header with the message helpers, as a producer would,
        and keep them as templates: per message only the queue, the born time, the key and
        UNIQ_KEY change, so that the load generator's own cost stays small."""
        spec = self.spec
        message = Message(
            spec.topic,
            self.body,
            tags=TAG,
            keys=("KEY_HERE",),
            properties={Property.UNIQ_KEY: "UNIQ_HERE", Property.WAIT: "true"},
        )
        properties = encode_properties(message.wire_properties())
        self.properties = properties.replace("KEY_HERE", "{key}").replace("UNIQ_HERE", "{uniq}")
        header = SendMessageRequestHeaderV2(
            a=GROUP, b=spec.topic, e=0, g=0, i=properties, j=0, m=False, n="broker-a"
        )
        self.ext_fields = header.to_ext_fields()
        # A request from the templates is the one the helpers make.
        sample = SendMessageRequestHeaderV2.from_command(self._request())
        uniq = decode_properties(sample.i or "")[Property.UNIQ_KEY]
        expected = Message(
            spec.topic,
            self.body,
            tags=TAG,
            keys=(f"key{spec.proc}-{0:09d}",),
            properties={Property.UNIQ_KEY: uniq, Property.WAIT: "true"},
        )
        assert sample.i == encode_properties(expected.wire_properties()), sample.i
        self.index = 0

    def _request(self) -> RemotingCommand:
        n = self.index
        self.index = n + 1
        ext = self.ext_fields.copy()
        ext["e"] = str(n % self.spec.queues)
        ext["g"] = str(int(time.time() * 1000))
        key = f"key{self.spec.proc}-{n:09d}"
        ext["i"] = self.properties.format(key=key, uniq=self.ids.next_id())
        return RemotingCommand.request(
            RequestCode.SEND_MESSAGE_V2, ext, self.body, language=LanguageCode.JAVA
        )

    def _sends(self, done: Any, limit: int | None) -> Any:
        """Send ``limit`` messages (None: until the window closes), ``in_flight`` at a
        time; ``done`` fires once every one is answered."""
        self._done = done
        self.limit = limit
        self.sent = self.answered = 0
        self.sending = True
        for _ in range(self.spec.in_flight if limit is None else min(self.spec.in_flight, limit)):
            self._send()
        return done

    def _send(self) -> None:
        request = self._request()
        self.sent += 1
        d = self.client.invoke(self.spec.address, request, 30.0)
        d.addCallbacks(self._sent, self._failed, (time.perf_counter_ns(),))

    def _sent(self, response: RemotingCommand, sent_at: int) -> None:
        self.answered += 1
        if response.code != ResponseCode.SUCCESS or not (
            self.spec.echo or "msgId" in (response.ext_fields or ())
        ):
            self.errors[f"send answered {response.code}: {response.remark}"] += 1
        elif self.counting:
            self.latencies.append(time.perf_counter_ns() - sent_at)
            self.completed += 1
        limit = self.limit
        if self.sending and (limit is None or self.sent < limit):
            self._send()
        elif limit is not None and self.answered == self.sent:
            if self.counting:
                self._window_closes()
            self.sending = False
            self._maybe_done()
        else:
            self._maybe_done()

    # -- pulling --

    def _heartbeat(self) -> RemotingCommand:
        """HEART_BEAT as Apache's push consumer sends it: its group subscribes to ``*``."""
        subscription = {
            "classFilterMode": False,
            "codeSet": [],
            "expressionType": "TAG",
            "subString": "*",
            "subVersion": 1,
            "tagsSet": [],
            "topic": self.spec.topic,
        }
        consumer = {
            "consumeFromWhere": "CONSUME_FROM_FIRST_OFFSET",
            "consumeType": "CONSUME_PASSIVELY",
            "groupName": GROUP,
            "messageModel": "CLUSTERING",
            "subscriptionDataSet": [subscription],
            "unitMode": False,
        }
        body = {
            "clientID": f"127.0.0.1@bench{self.spec.proc}",
            "consumerDataSet": [consumer],
            "producerDataSet": [{"groupName": "CLIENT_INNER_PRODUCER"}],
        }
        return RemotingCommand.request(
            RequestCode.HEART_BEAT, body=json.dumps(body).encode(), language=LanguageCode.JAVA
        )

    def _pull(self, queue_id: int, offset: int) -> None:
        header = PullMessageRequestHeader(
            consumer_group=GROUP,
            topic=self.spec.topic,
            queue_id=queue_id,
            queue_offset=offset,
            max_msg_nums=PULL_BATCH,
            sys_flag=PULL_SYS_FLAG,
            commit_offset=offset,
            suspend_timeout_millis=15_000,
            sub_version=1,
            expression_type="TAG",
        )
        request = header.to_request(RequestCode.PULL_MESSAGE, language=LanguageCode.JAVA)
        self.sent += 1
        d = self.client.invoke(self.spec.address, request, 30.0)
        d.addCallbacks(self._pulled, self._failed, (queue_id, offset))

    def _pulled(self, response: RemotingCommand, queue_id: int, offset: int) -> None:
        self.answered += 1
        ext = response.ext_fields or {}
        if response.code != ResponseCode.SUCCESS:
            self.errors[f"pull answered {response.code}: {response.remark}"] += 1
            self.sending = False
            self._maybe_done()
            return
        next_offset, high = int(ext["nextBeginOffset"]), int(ext["maxOffset"])
        body = response.body
        if self.spec.decode:
            count = len(decode_records(body))
        else:  # walk the records' length fields
            count = pos = 0
            while pos < len(body):
                pos += _SIZE.unpack_from(body, pos)[0]
                count += 1
            if pos != len(body):
                self.errors["pull body: the records' lengths do not add up"] += 1
        if count != next_offset - offset:
            self.errors[f"pull from {offset}: {count} records, next offset {next_offset}"] += 1
        if self.counting:
            self.completed += count
        if self.sending:  # at the end of the backlog, start over (a new pass)
            self._pull(queue_id, 0 if next_offset >= high else next_offset)
        else:
            self._maybe_done()


def load_main(pipe: Connection, spec: Spec) -> None:
    Load(spec).run(pipe)


# ---------------------------------------------------------------------------
# The loads on the public APIs: Producer, PushConsumer, PullConsumer
# ---------------------------------------------------------------------------


@dataclass
class ApiSpec:
    """What one public-API load process does against ``address`` (name server + broker)."""

    address: str
    mode: str  # "producer", "raw" (the same sends as bare RemotingClient calls), "push", "lite"
    topic: str
    queues: int
    in_flight: int = 64  # producer / raw: sends outstanding
    body_size: int = 128
    warm: int = 2_000  # producer / raw: sends before "ready", not counted
    group: str = "bench_consumer"  # push / lite: a new group, so it reads from the first offset
    backlog: int = 0  # push / lite: messages in the topic (running out of them is an error)
    profile: str | None = None  # cProfile the measured window into this file


class ApiLoad:
    """One load process on the public APIs, on Twisted's epoll reactor.

    ``producer``: :meth:`Producer.send` of a tagged, keyed message, ``in_flight`` at a time
    (each answer starts the next send). ``raw``: the same send as one
    :meth:`RemotingClient.invoke` of SEND_MESSAGE_V2 built per message (its properties
    TAGS, KEYS, UNIQ_KEY and WAIT encoded, the header made, the answer's header read): what
    a program without the producer would have to do, so the producer's own cost is the
    difference. ``push``: a :class:`PushConsumer` of a new group reading the topic's
    backlog from its first offset, its listener counting; ``lite``: a
    :class:`PullConsumer` the same way, polling batches. The window is counted by
    :class:`_harness.LoadWindow`.
    """

    def __init__(self, spec: ApiSpec) -> None:
        from twisted.internet import epollreactor

        epollreactor.install()  # type: ignore[no-untyped-call]  # a forked child: the parent never installed a reactor
        from twisted.internet import reactor

        from rmqtwist.client import RemotingClient

        self.reactor: Any = reactor
        self.spec = spec
        self.client = RemotingClient(reactor)
        self.window = LoadWindow(spec.profile)
        self.errors: Counter[str] = Counter()
        self.body = (bytes(range(256)) * (spec.body_size // 256 + 1))[: spec.body_size]
        self.ids = UniqueIdGenerator()
        self.index = 0
        self.sent = self.answered = self.received = 0
        self.sending = False
        self.producer: Any = None
        self.consumer: Any = None
        self.ran_out = False  # push / lite: the whole backlog was read before the window ended
        self._done: Any = None

    def run(self, pipe: Connection) -> None:
        from twisted.internet.defer import ensureDeferred

        def main() -> None:
            d = ensureDeferred(self._main(pipe))
            d.addErrback(lambda f: self.errors.update([f"load: {f.getErrorMessage()}"]))
            d.addBoth(lambda _: self.reactor.stop())

        self.reactor.callWhenRunning(main)
        self.reactor.run(installSignalHandlers=False)
        result = self.window.result()
        result["errors"] = dict(self.errors)
        result["ran_out"] = self.ran_out
        pipe.send(("result", result))

    async def _main(self, pipe: Connection) -> None:
        from twisted.internet.defer import Deferred

        spec = self.spec
        if spec.mode in ("producer", "raw"):
            header = CreateTopicRequestHeader(
                topic=spec.topic, read_queue_nums=spec.queues, write_queue_nums=spec.queues
            )
            request = header.to_request(RequestCode.UPDATE_AND_CREATE_TOPIC)
            response = await self.client.invoke(spec.address, request, 30.0)
            if response.code != ResponseCode.SUCCESS:
                raise RuntimeError(f"creating {spec.topic} answered {response.code}")
            if spec.mode == "producer":
                from rmqtwist.producer import Producer

                self.producer = Producer(
                    "bench_producer", spec.address, reactor=self.reactor, client=self.client
                )
                await self.producer.start()
            await self._sends(Deferred(), spec.warm)
        pipe.send(("ready", {}))
        _, start_ns, end_ns = pipe.recv()  # blocking: nothing else is going on
        now = time.monotonic_ns()
        self.reactor.callLater(max(start_ns - now, 0) / 1e9, self.window.open)
        self.reactor.callLater(max(end_ns - now, 0) / 1e9, self._window_closes)
        done: Deferred[None] = Deferred()
        if spec.mode in ("producer", "raw"):
            await self._sends(done, None)
            if self.producer is not None:
                await self.producer.shutdown()
        else:
            self._done = done
            await self._consume()
            await done
            await self.consumer.shutdown()
            self.ran_out = self.received >= spec.backlog
        await self.client.close()

    def _window_closes(self) -> None:
        self.window.close()
        self.sending = False
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.sending and self.sent == self.answered and not self._done.called:
            self._done.callback(None)

    # -- sending --

    def _sends(self, done: Any, limit: int | None) -> Any:
        self._done = done
        self.limit = limit
        self.sent = self.answered = 0
        self.sending = True
        for _ in range(self.spec.in_flight if limit is None else min(self.spec.in_flight, limit)):
            self._send()
        return done

    def _send(self) -> None:
        n = self.index
        self.index = n + 1
        self.sent += 1
        if self.producer is not None:
            message = Message(self.spec.topic, self.body, tags=TAG, keys=(f"key-{n:09d}",))
            d = self.producer.send(message)
            d.addCallbacks(self._sent_by_producer, self._failed)
        else:
            d = self.client.invoke(self.spec.address, self._raw_request(n), 30.0)
            d.addCallbacks(self._sent_raw, self._failed)

    def _raw_request(self, n: int) -> RemotingCommand:
        properties = {
            Property.TAGS: TAG,
            Property.KEYS: f"key-{n:09d}",
            Property.UNIQ_KEY: self.ids.next_id(),
            Property.WAIT: "true",
        }
        header = SendMessageRequestHeaderV2(
            a="bench_producer",
            b=self.spec.topic,
            e=n % self.spec.queues,
            g=int(time.time() * 1000),
            i=encode_properties(properties),
            j=0,
            m=False,
        )
        return header.to_request(RequestCode.SEND_MESSAGE_V2, self.body)

    def _sent_by_producer(self, result: Any) -> None:
        if not result.offset_msg_id or result.status.name != "SEND_OK":
            self.errors[f"send gave {result}"] += 1
        self._answered()

    def _sent_raw(self, response: RemotingCommand) -> None:
        if response.code != ResponseCode.SUCCESS:
            self.errors[f"send answered {response.code}: {response.remark}"] += 1
        elif not SendMessageResponseHeader.from_command(response).msg_id:
            self.errors["send answered no msgId"] += 1
        self._answered()

    def _answered(self) -> None:
        self.answered += 1
        self.window.count()
        limit = self.limit
        if self.sending and (limit is None or self.sent < limit):
            self._send()
        else:
            if limit is not None and self.sent >= limit:
                self.sending = False
            self._maybe_done()

    def _failed(self, failure: Any) -> None:
        self.answered += 1
        self.errors[f"{type(failure.value).__name__}: {failure.getErrorMessage()}"] += 1
        self.sending = False  # stop at the first failure: the row is void anyway
        self._maybe_done()

    # -- consuming --

    async def _consume(self) -> None:
        from rmqtwist.consumer import ConsumeFrom

        spec = self.spec
        self.sending = True  # here: consuming
        if spec.mode == "push":
            from rmqtwist.consumer import PushConsumer

            self.consumer = PushConsumer(
                spec.group,
                spec.address,
                self._listener,
                reactor=self.reactor,
                client=self.client,
                consume_from=ConsumeFrom.FIRST,
            )
            self.consumer.subscribe(spec.topic, "*")
            await self.consumer.start()
        else:
            from rmqtwist.consumer import PullConsumer

            self.consumer = PullConsumer(
                spec.group,
                spec.address,
                reactor=self.reactor,
                client=self.client,
                consume_from=ConsumeFrom.FIRST,
            )
            self.consumer.subscribe(spec.topic, "*")
            await self.consumer.start()
            self._poll()

    def _listener(self, message: Any) -> None:
        self._received([message])

    def _received(self, messages: list[Any]) -> None:
        size = self.spec.body_size
        for message in messages:
            if len(message.body) != size:
                self.errors[f"a body of {len(message.body)} B, not {size}"] += 1
        self.received += len(messages)
        self.window.count(len(messages))
        if self.received >= self.spec.backlog:
            self.window.close()
            self.sending = False
            self._maybe_done()

    def _poll(self) -> None:
        if not self.sending:
            self._maybe_done()
            return
        self.sent += 1
        d = self.consumer.poll(timeout=1.0)
        d.addCallbacks(self._polled, self._failed)

    def _polled(self, messages: list[Any]) -> None:
        self.answered += 1
        self._received(messages)
        self._poll()


def api_load_main(pipe: Connection, spec: ApiSpec) -> None:
    ApiLoad(spec).run(pipe)


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; ``figure`` is the number judged against ``target``."""

    name: str
    store: str
    body: int
    in_flight: str
    msgs_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    broker_us: float | None = None  # broker CPU per message
    load_us: float | None = None  # load processes' CPU per message
    broker_cpu: float | None = None  # % of one CPU over the window
    other_cpu: float | None = None  # % of one CPU used by other processes meanwhile
    figure: str = ""
    target: str = ""
    ok: bool | None = None
    errors: dict[str, int] | None = None
    extra: dict[str, Any] | None = None


class Bench:
    """Starts the brokers and runs the rows against them."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.server_cpus, self.load_cpus = split_cpus(args.pin)
        self.rows: list[Row] = []

    def broker(self, *options: str) -> ServerProcess:
        python, profile = sys.executable, self.args.profile

        def argv(port: int) -> list[str]:
            if profile:
                head = [python, "-c", PROFILED_TWIST, f"{profile}.{port}"]
            else:
                head = [python, "-m", "twisted"]
            return [*head, "rmq-remoting", "--port", str(port), *options]

        return ServerProcess(argv, self.tmp, self.server_cpus)

    def specs(
        self, server: ServerProcess, mode: str, topic: str, procs: int, **kw: Any
    ) -> list[Spec]:
        """One spec per load process, the sends in flight (and --messages) shared out."""
        args = self.args
        stype = SerializeType.ROCKETMQ if args.serialize_type == "rocketmq" else SerializeType.JSON
        spec = Spec(server.address, mode, topic, args.queues, serialize_type=stype, **kw)
        return [
            replace(
                spec,
                proc=p,
                procs=procs,
                in_flight=_share(spec.in_flight, procs, p),
                count=_share(spec.count, procs, p),
            )
            for p in range(procs)
        ]

    @contextlib.contextmanager
    def loads(self, specs: list[Spec]) -> Any:
        """The load processes, started; each has said it is ready."""
        with contextlib.ExitStack() as stack:
            loads = [
                stack.enter_context(LoadProcess(load_main, (spec,), self.load_cpus))
                for spec in specs
            ]
            infos = [load.expect("ready", 120) for load in loads]
            yield loads, infos

    def window(self, server: ServerProcess, specs: list[Spec], row: Row) -> Row:
        """Run ``specs`` for --warmup then --duration, measuring the broker's CPU over the
        window in which the load processes count messages."""
        args = self.args
        with self.loads(specs) as (loads, _):
            start = time.monotonic_ns() + int(args.warmup * 1e9)
            end = start + int(args.duration * 1e9)
            for load in loads:
                load.send(("go", start, end))
            sleep_until(start)
            cpu0, busy0 = cpu_seconds(server.pid), busy_seconds()
            spy = self._py_spy(server, row)
            sleep_until(end)
            cpu1, busy1 = cpu_seconds(server.pid), busy_seconds()
            results = [load.expect("result", 120) for load in loads]
        self._fill(row, results, cpu0, cpu1)
        if row.broker_cpu is not None and row.msgs_per_s is not None and row.load_us is not None:
            ours = row.broker_cpu + row.load_us * row.msgs_per_s / 1e4
            row.other_cpu = max(0.0, (busy1 - busy0) / args.duration * 100 - ours)
        if spy is not None:
            spy[0].wait(30)
            print_stacks(spy[1], f"the broker in {row.name} ({row.store})")
        return row

    def _py_spy(
        self, server: ServerProcess, row: Row
    ) -> tuple[subprocess.Popen[bytes], Path] | None:
        """py-spy recording the broker over the measured window (--py-spy DIR)."""
        if not self.args.py_spy:
            return None
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = Path(self.args.py_spy) / f"{row.name}-{row.store}-{row.body}.txt".replace(" ", "-")
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [spy, "record", "--pid", str(server.pid), "--rate", "250"]
        command += ["--duration", str(math.floor(self.args.duration)), "--format", "raw"]
        return subprocess.Popen([*command, "-o", str(out)], stdout=subprocess.DEVNULL), out

    def _fill(self, row: Row, results: list[dict[str, Any]], cpu0: Any, cpu1: Any) -> None:
        completed = sum(r["completed"] for r in results)
        window = max(r["window_s"] for r in results)
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        row.errors = dict(errors) or None
        if completed and window:
            row.msgs_per_s = completed / window
            row.load_us = sum(r["cpu_s"] for r in results) / completed * 1e6
            if cpu0 is not None and cpu1 is not None:
                row.broker_us = (cpu1 - cpu0) / completed * 1e6
                row.broker_cpu = (cpu1 - cpu0) / window * 100
        latencies = sorted(x for r in results for x in array.array("q", r["latencies"]))
        if latencies:
            row.p50_us = percentile(latencies, 0.50) / 1e3
            row.p99_us = percentile(latencies, 0.99) / 1e3

    def judge(self, row: Row, value: float | None, target: float | None, unit: str) -> None:
        """Record ``row``, its figure ``value`` and the verdict against ``target`` (a
        minimum, or a maximum for latency and memory; None: shown for comparison)."""
        at_most = unit.startswith(("us", "B"))
        if value is not None:
            row.figure = f"{value:,.0f} {unit}"
        if target is not None:
            row.target = f"{'<=' if at_most else '>='} {target:,} {unit}"
            if value is not None:
                row.ok = not row.errors and (value <= target if at_most else value >= target)
        self.rows.append(row)
        if not self.args.quiet:
            line = f"  {row.name} ({row.store}, {row.body} B): {row.figure or '-'}"
            line += f" (target {row.target})" if row.target else ""
            line += f" errors: {row.errors}" if row.errors else ""
            print(line, file=sys.stderr, flush=True)

    # -- the rows --

    def run(self) -> None:
        if set(API_ROWS) & self.args.rows:
            self.api_rows()
        chosen, args = self.args.rows, self.args
        procs, in_flight = args.load_procs, args.in_flight
        shown = f"{procs}x{in_flight // procs}" if in_flight % procs == 0 else f"{in_flight}"
        if {"send", "send-1k", "latency"} & chosen:
            with self.broker() as server:
                if "send" in chosen:
                    specs = self.specs(server, "send", "BenchSend", procs, in_flight=in_flight)
                    row = self.window(server, specs, Row("send", "memory", 128, shown))
                    self.judge(row, row.msgs_per_s, TARGET_SEND, "msgs/s")
                if "send-1k" in chosen:
                    kw = {"in_flight": in_flight, "body_size": 1024}
                    specs = self.specs(server, "send", "BenchSend1k", procs, **kw)
                    row = self.window(server, specs, Row("send", "memory", 1024, shown))
                    self.judge(row, row.msgs_per_s, None, "msgs/s")
                if "latency" in chosen:
                    specs = self.specs(server, "send", "BenchLatency", 1, in_flight=1, warm=500)
                    row = self.window(server, specs, Row("latency", "memory", 128, "1"))
                    self.judge(row, row.p50_us, TARGET_P50_US, "us p50")
        if "echo" in chosen:
            with self.broker("--processor", "echo") as server:
                kw = {"in_flight": 1, "warm": 500, "echo": True}
                specs = self.specs(server, "send", "BenchLatency", 1, **kw)
                row = self.window(server, specs, Row("latency", "echo", 128, "1"))
                self.judge(row, row.p50_us, None, "us p50")
        for flush, target in (("sync", TARGET_SEND_SYNC), ("async", None)):
            if f"disk-{flush}" in chosen:
                data = self.tmp / f"data-{flush}"
                with self.broker("--data-dir", str(data), "--flush", flush) as server:
                    specs = self.specs(server, "send", "BenchDisk", procs, in_flight=in_flight)
                    row = self.window(server, specs, Row("send", f"disk {flush}", 128, shown))
                    self.judge(row, row.msgs_per_s, target, "msgs/s")
        if {"memory", "pull"} & chosen:
            with self.broker() as server:
                self.memory(server, procs, shown)
                if "pull" in chosen:
                    pull_procs = min(args.pull_procs, args.queues)
                    kw = {"decode": args.decode}
                    specs = self.specs(server, "pull", "BenchBacklog", pull_procs, **kw)
                    row = Row("pull", "memory", 128, f"{args.queues}x1")
                    row = self.window(server, specs, row)
                    self.judge(row, row.msgs_per_s, TARGET_PULL, "msgs/s")

    # -- the public-API rows --

    def api_window(
        self, server: ServerProcess, spec: ApiSpec, row: Row
    ) -> tuple[Row, dict[str, Any]]:
        """Run one public-API load process for --warmup then --duration (the broker's CPU
        measured over the window it counts in); the row and the load's result."""
        args = self.args
        with LoadProcess(api_load_main, (spec,), self.load_cpus) as load:
            load.expect("ready", 120)
            start = time.monotonic_ns() + int(args.warmup * 1e9)
            end = start + int(args.duration * 1e9)
            load.send(("go", start, end))
            sleep_until(start)
            cpu0, busy0 = cpu_seconds(server.pid), busy_seconds()
            sleep_until(end)
            cpu1, busy1 = cpu_seconds(server.pid), busy_seconds()
            result = load.expect("result", 120)
        result["latencies"] = b""
        self._fill(row, [result], cpu0, cpu1)
        if row.broker_cpu is not None and row.msgs_per_s is not None and row.load_us is not None:
            ours = row.broker_cpu + row.load_us * row.msgs_per_s / 1e4
            row.other_cpu = max(0.0, (busy1 - busy0) / args.duration * 100 - ours)
        if spec.profile:
            print_profile(Path(spec.profile), f"the {spec.mode} load, {spec.body_size} B")
        return row, result

    def _api_spec(
        self, server: ServerProcess, mode: str, topic: str, body: int, **kw: Any
    ) -> ApiSpec:
        profile = None
        if self.args.client_profile and mode in self.args.client_profile_modes:
            directory = Path(self.args.client_profile)
            directory.mkdir(parents=True, exist_ok=True)
            profile = str(directory / f"{mode}-{body}.prof")
        return ApiSpec(
            server.address, mode, topic, self.args.queues, body_size=body, profile=profile, **kw
        )

    def ratio(self, name: str, body: int, ours: Row, raw: Row, target: float | None) -> None:
        """A row comparing the load CPU per message of ``ours`` with ``raw``'s."""
        row = Row(name, "memory", body, ours.in_flight)
        row.errors = ours.errors or raw.errors
        if ours.load_us and raw.load_us:
            value = ours.load_us / raw.load_us
            row.figure = f"{value:.2f}x ({ours.load_us:.1f} / {raw.load_us:.1f} us)"
            row.extra = {"ratio": round(value, 3), "ours_us": ours.load_us, "raw_us": raw.load_us}
            if target is not None:
                row.ok = not row.errors and value <= target
        if target is not None:
            row.target = f"<= {target:g}x"
        self.rows.append(row)
        if not self.args.quiet:
            line = f"  {name} ({body} B): {row.figure or '-'}"
            line += f" (target {row.target})" if row.target else ""
            print(line, file=sys.stderr, flush=True)

    def api_rows(self) -> None:
        """The producer against raw sends, then the two consumers against raw pulls, for
        each of --bodies; one broker for all."""
        chosen, args = self.args.rows, self.args
        shown = str(args.api_in_flight)
        with self.broker() as server:
            for body in args.bodies:
                if "producer" not in chosen:
                    break
                rows: dict[str, Row] = {}
                for mode in ("raw", "producer"):
                    topic = f"BenchApi{mode.capitalize()}{body}"
                    spec = self._api_spec(server, mode, topic, body, in_flight=args.api_in_flight)
                    name = "producer" if mode == "producer" else "raw send"
                    row, _ = self.api_window(server, spec, Row(name, "memory", body, shown))
                    self.judge(row, row.load_us, None, "us/msg load")
                    rows[mode] = row
                self.ratio("prod/raw", body, rows["producer"], rows["raw"], TARGET_PRODUCER_RATIO)
            for body in args.bodies:
                if not {"push", "lite"} & chosen:
                    break
                topic = f"BenchApiBacklog{body}"
                self.fill(server, topic, body)
                specs = self.specs(server, "pull", topic, 1, decode=True)
                raw = self.window(
                    server, specs, Row("raw pull", "memory", body, f"{args.queues}x1")
                )
                self.judge(raw, raw.load_us, None, "us/msg load")
                for mode in ("push", "lite"):
                    if mode not in chosen:
                        continue
                    spec = self._api_spec(
                        server,
                        mode,
                        topic,
                        body,
                        group=f"bench_{mode}_{body}",
                        backlog=args.backlog,
                    )
                    row, result = self.api_window(server, spec, Row(mode, "memory", body, "-"))
                    self.judge(row, row.load_us, None, "us/msg load")
                    if result.get("ran_out"):
                        row.extra = {"backlog_ran_out": True}
                        row.figure += " (read the whole backlog: --backlog)"
                    self.ratio(f"{mode}/raw", body, row, raw, None)

    def fill(self, server: ServerProcess, topic: str, body: int) -> None:
        """Store --backlog messages of ``body`` bytes in ``topic`` (raw sends, 4 processes)."""
        count = self.args.backlog
        kw = {"in_flight": 64, "count": count, "body_size": body, "warm": 100}
        specs = self.specs(server, "send", topic, 4, **kw)
        with self.loads(specs) as (loads, _):
            for load in loads:
                load.send(("go", 0, 0))
            results = [load.expect("result", 60 + count / 1000) for load in loads]
        errors = sum(sum(r["errors"].values()) for r in results)
        if errors:
            raise RuntimeError(f"filling {topic}: {[r['errors'] for r in results]}")

    def memory(self, server: ServerProcess, procs: int, shown: str) -> None:
        """Store --messages messages in a fresh in-memory broker: its RSS and its store's
        own count of bytes, before and after. (It also fills the pull row's backlog.)"""
        assert server.pid is not None
        count = self.args.messages
        kw = {"in_flight": self.args.in_flight, "count": count}
        specs = self.specs(server, "send", "BenchBacklog", procs, **kw)
        with self.loads(specs) as (loads, infos):
            rss0 = settled_rss(server.pid, 0.5)
            cpu0 = cpu_seconds(server.pid)
            for load in loads:
                load.send(("go", 0, 0))
            results = [load.expect("result", 60 + count / 1000) for load in loads]
            cpu1 = cpu_seconds(server.pid)
            rss1 = settled_rss(server.pid, 0.5)
        before = max(infos, key=lambda info: int(info["storedMessages"]))
        after = max((r["after"] for r in results), key=lambda info: int(info["storedMessages"]))
        stored = int(after["storedMessages"]) - int(before["storedMessages"])
        stored_bytes = int(after["storedBytes"]) - int(before["storedBytes"])
        row = Row("memory", "memory", 128, shown)
        self._fill(row, results, cpu0, cpu1)
        if stored != count:
            row.errors = (row.errors or {}) | {f"{stored} messages stored, not {count}": 1}
        rss_per = (rss1 - rss0) * 1024 / count
        row.extra = {
            "messages": count,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "rss_bytes_per_msg": round(rss_per, 1),
            "store_bytes_per_msg": round(stored_bytes / count, 1),
        }
        self.judge(row, rss_per - 128, TARGET_BEYOND_BODY, "B beyond body")
        row.figure += f" (RSS {rss_per:,.0f} B/msg, store {stored_bytes / count:,.0f} B/msg)"


def _share(total: int, parts: int, i: int) -> int:
    """Part ``i`` of ``total`` split over ``parts`` as evenly as possible."""
    return total // parts + (1 if i < total % parts else 0)


# ---------------------------------------------------------------------------
# Output and the command line
# ---------------------------------------------------------------------------

COLUMNS = [
    Column("name", "row", 8, "<"),
    Column("store", "store", 10, "<"),
    Column("body", "body", 5),
    Column("in_flight", "in-fl", 5),
    Column("msgs_per_s", "msgs/s", 8),
    Column("p50_us", "p50 us", 7),
    Column("p99_us", "p99 us", 7),
    Column("broker_us", "brk us/msg", 10, ",.1f"),
    Column("load_us", "load us/msg", 11, ",.1f"),
    Column("broker_cpu", "brk cpu%", 8),
    Column("other_cpu", "other%", 6),
    Column("verdict", "", 4, "<"),
    Column("figure", "measured", 14, "<"),
    Column("target", "target", 0, "<"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark the rmqtwist dev broker (twist rmq-remoting) on loopback."
    )
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"some of {','.join(ROWS)} [default: all]"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before that")
    parser.add_argument("--in-flight", type=int, default=64, help="sends outstanding [64]")
    parser.add_argument(
        "--load-procs",
        type=int,
        default=4,
        help="load processes (one connection each) sharing the sends in flight [4]",
    )
    parser.add_argument(
        "--pull-procs", type=int, default=1, help="load processes sharing the queues [1]"
    )
    parser.add_argument("--queues", type=int, default=8, help="queues per topic [8]")
    parser.add_argument(
        "--messages", type=int, default=200_000, help="messages the memory row stores [200000]"
    )
    parser.add_argument("--serialize-type", choices=("json", "rocketmq"), default="json")
    parser.add_argument(
        "--decode", action="store_true", help="pull: decode every record, as a consumer must"
    )
    parser.add_argument("--pin", choices=("split", "none"), default="split")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="record the broker with py-spy over each measured window into DIR and print "
        "where its time goes",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run each broker under cProfile (about 3x slower: its figures mean nothing) "
        "and write FILE.PORT when it stops",
    )
    parser.add_argument(
        "--bodies", default="128,1024", help="body sizes of the public-API rows [128,1024]"
    )
    parser.add_argument(
        "--api-in-flight", type=int, default=64, help="the producer and raw rows' sends [64]"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=150_000,
        help="messages stored for the push and lite rows to read, per body size [150000]",
    )
    parser.add_argument(
        "--client-profile",
        metavar="DIR",
        help="run cProfile in the public-API load processes over the measured window, "
        "write DIR/MODE-BODY.prof and print their top functions (the figures then mean "
        "nothing)",
    )
    parser.add_argument(
        "--client-profile-modes",
        default="producer,raw,push,lite",
        help="which loads --client-profile profiles [producer,raw,push,lite]",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    args.rows = set(args.rows.split(","))
    if not args.rows <= set(ROWS) | set(API_ROWS):
        parser.error(f"--rows takes some of {','.join(ROWS + API_ROWS)}")
    try:
        args.bodies = [int(size) for size in args.bodies.split(",")]
    except ValueError:
        parser.error("--bodies takes sizes in bytes, comma-separated")
    args.client_profile_modes = set(args.client_profile_modes.split(","))
    if min(args.api_in_flight, args.backlog, *args.bodies) < 1:
        parser.error("--api-in-flight, --backlog and --bodies must be at least 1")
    if min(args.in_flight, args.queues, args.load_procs, args.pull_procs) < 1:
        parser.error("--in-flight, --queues, --load-procs and --pull-procs must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.load_procs > args.in_flight:
        parser.error("--duration > 0, --warmup >= 0, --load-procs <= --in-flight")
    if args.messages < 1_000:
        parser.error("--messages must be at least 1000")
    exit_on_sigterm()
    machine = machine_info(__version__.public())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rmqtwist-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.run()
        except KeyboardInterrupt:
            print("interrupted; the broker was stopped", file=sys.stderr)
            return 130
        except RuntimeError as e:
            print(f"bench/broker.py: error: {e}", file=sys.stderr)
            return 1
    machine["python_loop_ns_after"] = python_speed()
    print(
        f"rmqtwist {machine['rmqtwist']} ({machine['commit']}) dev broker benchmark, "
        f"{machine['python']}, Twisted {machine['twisted']}, {machine['cpus']} x "
        f"{machine['cpu']} (Python loop {machine['python_loop_ns']} ns before, "
        f"{machine['python_loop_ns_after']} after); {args.duration:g} s measured per row "
        f"after {args.warmup:g} s, {args.serialize_type} headers, CPUs pinned: {args.pin}; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    verdicts = {True: "ok", False: "MISS", None: ""}
    print_table(COLUMNS, [asdict(row) | {"verdict": verdicts[row.ok]} for row in bench.rows])
    for row in bench.rows:
        if row.errors:
            print(f"errors in {row.name} ({row.store}): {row.errors}")
    document = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "settings": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
        "rows": [_rounded(asdict(row)) for row in bench.rows],
    }
    print(json.dumps(document))
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(row.errors for row in bench.rows) else 0


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in data.items()}


if __name__ == "__main__":
    sys.exit(main())
