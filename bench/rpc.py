"""Load generator for the remoting server: requests/s, latency, oneway intake, memory.

Run: python bench/rpc.py --suite [--json FILE]

The server runs in its own process (by default ``python -m twisted rmq-remoting``, i.e.
``twist``, with the echo and stats processors, on a free 127.0.0.1 port; ``--server-cmd``
overrides it, ``--connect HOST:PORT`` uses a running one). The clients run in
``--client-procs`` other processes on raw non-blocking sockets: request frames are encoded
once and only their opaque is patched in; of a response only the length prefix, code,
flag and opaque are read. Every response must match an outstanding opaque and be a
SUCCESS response, and every request must be answered; anything else counts as an error.

Modes (one per run, or all of the issue's scenarios with --suite):

- request/response (default): --connections N, --in-flight C spread over them; req/s and
  p50/p99/p999 latency (sent -> answered, by opaque) over --duration after --warmup;
- --oneway: oneway requests as fast as the server takes them, counted as RECEIVED by the
  server (its ``requestsReceived`` counter, read with GET_BROKER_RUNTIME_INFO (28)
  before and after), then checked: every oneway request sent must have been received;
- --idle-connections N: the server's RSS growth (VmRSS in /proc/PID/status) per idle
  connection, after connecting and again after one request on each.

With --client rmqtwist the load generator is rmqtwist's own client instead: one process
running Twisted's epoll reactor with one RemotingClient (request/response or oneway, as
above, over its one pooled connection), and each row also gives the CPU time per request
of the client process and of the server over the same window (--suite: 64 in flight, 1
in flight and oneway, in both header formats). That ratio is reported, not judged: the
issue's "client CPU <= server CPU" target is withdrawn (parity at 1 in flight is accepted).

Prints a table (target vs measured where the issue sets one) and one JSON line with the
same numbers and the machine's description (also written to --json FILE).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import multiprocessing
import os
import re
import resource
import select
import selectors
import shlex
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from twisted.python.failure import Failure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _harness import (
    PROFILED_TWIST,
    ServerProcess,
    cpu_seconds,
    die_with_parent,
    machine_info,
    percentile,
    python_speed,
    settled_rss,
    sleep_until,
)

from rmqtwist import RemotingCommand, RequestCode, SerializeType, __version__
from rmqtwist.codec import FrameDecoder, encode_frame

#: Any code but 28 goes to the echo processor, the server's default processor.
BENCH_CODE = int(RequestCode.SEND_MESSAGE)
STATS_CODE = int(RequestCode.GET_BROKER_RUNTIME_INFO)
#: Opaques count up from here: ten decimal digits up to 2**31 - 1, so that every JSON
#: request frame has the same length and the opaque can be patched in place.
OPAQUE_BASE = 1_000_000_000
_INT32_MAX = (1 << 31) - 1
RECV_SIZE = 256 * 1024
ONEWAY_BATCH = 256  # oneway frames encoded per send() call
DEFAULT_SERVER_CMD = (
    "{python} -m twisted rmq-remoting --listen tcp:{port}:interface=127.0.0.1 "
    "--processor echo --processor 28=stats --max-connections {max_connections}"
)

#: The reference server of the suite's "floor" row (see floor_server).
FLOOR_SERVER_CMD = (
    "{python} " + shlex.quote(str(Path(__file__).resolve())) + " --floor-server {port}"
)

TARGET_RPS = 35_000  # req/s at 64 in flight
TARGET_P50_US = 150  # p50 at 1 in flight
TARGET_ONEWAY = 100_000  # oneway requests/s received
TARGET_KIB_PER_CONN = 16  # server RSS per idle connection, at 5,000 connections

_PREFIX = struct.Struct(">ii")
# A ROCKETMQ response from its length prefix on: total, type word, code, language,
# version, opaque, flag.
_BINARY_HEAD = struct.Struct(">iihBhii")
# The header our server (and Java's fastjson) writes: keys in alphabetical order.
_JSON_HEAD = re.compile(
    rb'\{"code":(-?\d+),(?:"extFields":\{[^{}]*\},)?"flag":(-?\d+),"language":[^,]*,'
    rb'"opaque":(-?\d+)[,}]'
)


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


class RequestTemplate:
    """One request frame encoded once; :meth:`build` patches opaques into copies of it."""

    def __init__(
        self, serialize_type: SerializeType, body_size: int, ext_fields: int, oneway: bool
    ) -> None:
        body = (bytes(range(256)) * (body_size // 256 + 1))[:body_size]
        ext = {f"key{i}": f"value{i:03d}" for i in range(ext_fields)} or None
        command = RemotingCommand.request(
            BENCH_CODE,
            ext,
            body,
            opaque=OPAQUE_BASE,
            oneway=oneway,
            serialize_type=serialize_type,
        )
        frame = encode_frame(command)
        self.binary = serialize_type == SerializeType.ROCKETMQ
        if self.binary:
            offset, width = 8 + 5, 4  # after code int16, language uint8, version int16
            assert frame[offset : offset + width] == OPAQUE_BASE.to_bytes(4, "big")
        else:
            marker = b'"opaque":%d' % OPAQUE_BASE
            offset, width = frame.index(marker) + len(marker) - 10, 10
        self.head = frame[:offset]
        self.tail = frame[offset + width :]
        self.size = len(frame)

    def build(self, first: int, count: int) -> bytes:
        """``count`` frames with opaques ``first``, ``first + 1``, ... back to back."""
        head, tail = self.head, self.tail
        if self.binary:
            return b"".join(
                [head + o.to_bytes(4, "big") + tail for o in range(first, first + count)]
            )
        return b"".join([head + b"%d" % o + tail for o in range(first, first + count)])


def parse_response(buf: Any, pos: int, total: int, type_word: int) -> tuple[int, int, int]:
    """``(code, flag, opaque)`` of the response frame at ``pos`` (``total`` bytes after
    the prefix); raises ValueError if it cannot be read."""
    if type_word >> 24 == 1:
        if total < 4 + 17:
            raise ValueError(f"ROCKETMQ frame of {total} bytes is too short")
        _, _, code, _, _, opaque, flag = _BINARY_HEAD.unpack_from(buf, pos)
        return code, flag, opaque
    header_end = pos + 8 + (type_word & 0xFFFFFF)
    match = _JSON_HEAD.match(buf, pos + 8, header_end)
    if match is not None:
        return int(match[1]), int(match[2]), int(match[3])
    header = json.loads(bytes(buf[pos + 8 : header_end]))  # another key order: slow path
    return int(header["code"]), int(header.get("flag", 0)), int(header.get("opaque", 0))


# ---------------------------------------------------------------------------
# Client processes
# ---------------------------------------------------------------------------


@dataclass
class ClientSpec:
    """What one client process does: its connections and their windows, and how."""

    host: str
    port: int
    mode: str  # "rr" or "oneway"
    windows: list[int]  # requests in flight per connection (rr); one entry per connection
    serialize_type: int
    body_size: int
    ext_fields: int
    drain_timeout: float
    cpus: list[int] | None = None  # CPU affinity, None: the OS decides
    client: str = "raw"  # "raw": ClientRun; "rmqtwist": TwistedClientRun
    profile: str | None = None  # rmqtwist: cProfile the measured window into this file


_IN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP  # errors show up as reads
_OUT = select.EPOLLOUT


class _Conn:
    __slots__ = ("buf", "fd", "out", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out: Any = b""
        self.pending: dict[int, int] = {}  # opaque -> perf_counter_ns when sent


class ClientRun:
    """The loop of one client process (see :func:`_client_main`)."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.errors: Counter[str] = Counter()
        self.latencies = array.array("q")
        self.completed = 0  # SUCCESS responses received inside the window
        self.received = 0  # all SUCCESS responses, warmup and drain included
        self.sent = 0  # requests whose frame was handed to the kernel whole
        self.sent_in_window = 0
        self.cpu_ns = 0
        self.next_opaque = OPAQUE_BASE
        self.conns: list[_Conn] = []
        # epoll itself rather than selectors: less work per wake-up in the client
        self.epoll = select.epoll()
        self.by_fd: dict[int, _Conn] = {}

    # -- set-up --

    def connect(self) -> None:
        for _ in self.spec.windows:
            sock = socket.create_connection((self.spec.host, self.spec.port), timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns.append(conn)
            self.by_fd[conn.fd] = conn

    def close(self) -> None:
        for conn in self.conns:
            conn.sock.close()
        self.epoll.close()

    def _live(self, conn: _Conn) -> bool:
        return conn.fd in self.by_fd

    # -- writing --

    def _write(self, conn: _Conn, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._drop(conn, f"connection error ({e.strerror})")
            return
        if n < len(data):
            conn.out = bytearray(data[n:])
            self.epoll.modify(conn.fd, _IN | _OUT)

    def _flush(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError as e:
            self._drop(conn, f"connection error ({e.strerror})")
            return
        del conn.out[:n]
        if not conn.out:
            conn.out = b""
            self.epoll.modify(conn.fd, _IN)

    def _take_opaques(self, count: int) -> int:
        """The first of ``count`` fresh opaques (all ten digits long)."""
        first = self.next_opaque
        if first + count > _INT32_MAX:
            first = OPAQUE_BASE  # after 1.1 billion requests: the old ones are answered
        self.next_opaque = first + count
        return first

    def _send_requests(self, conn: _Conn, count: int) -> None:
        first = self._take_opaques(count)
        frames = self.template.build(first, count)
        now = time.perf_counter_ns()
        pending = conn.pending
        for opaque in range(first, first + count):
            pending[opaque] = now  # registered before the write
        self.sent += count
        self._write(conn, frames)

    # -- reading --

    def _drop(self, conn: _Conn, why: str) -> None:
        self.errors[why] += 1
        if conn.pending:
            self.errors["no response (lost)"] += len(conn.pending)
            conn.pending.clear()
        if self.by_fd.pop(conn.fd, None) is not None:
            self.epoll.unregister(conn.fd)
        conn.sock.close()

    def _read(self, conn: _Conn, window_start: int, window_end: int) -> int:
        """Read what ``conn`` has; the number of requests answered (SUCCESS or not)."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return 0
        except OSError as e:
            self._drop(conn, f"connection error ({e.strerror})")
            return 0
        now = time.perf_counter_ns()
        if not data:
            self._drop(conn, "connection closed by the server")
            return 0
        buf = conn.buf
        if buf:
            buf += data
            data = buf  # type: ignore[assignment]  # read alike from here on
        size = len(data)
        pos = 0
        answered = 0
        pending = conn.pending
        errors = self.errors
        in_window = window_start <= now < window_end
        record = self.latencies.append
        unpack = _PREFIX.unpack_from
        stype = self.spec.serialize_type
        body_size = self.spec.body_size
        while size - pos >= 8:
            total, type_word = unpack(data, pos)
            end = pos + 4 + total
            if total < 4 or end > size:
                if total < 4:
                    self._drop(conn, "malformed frame")
                    return answered
                break
            try:
                code, flag, opaque = parse_response(data, pos, total, type_word)
            except (ValueError, KeyError, TypeError):
                errors["unreadable response"] += 1
                pos = end
                continue
            pos = end
            sent_at = pending.pop(opaque, None)
            if sent_at is None:
                errors["response with an unknown opaque"] += 1
                continue
            answered += 1
            if not flag & 1:
                errors["response flag bit not set"] += 1
            elif code != 0:
                errors[f"response code {code}"] += 1
            elif type_word >> 24 != stype:
                errors["response not in the request's serialize type"] += 1
            elif total - 4 - (type_word & 0xFFFFFF) != body_size:
                errors["echoed body of the wrong size"] += 1
            else:
                self.received += 1
                if in_window:
                    self.completed += 1
                    record(now - sent_at)
        if data is buf:
            del buf[:pos]
        elif pos < size:
            buf += data[pos:]
        return answered

    # -- the two loops --

    def run(self, pipe: Connection) -> dict[str, Any]:
        spec = self.spec
        self.template = RequestTemplate(
            SerializeType(spec.serialize_type),
            spec.body_size,
            spec.ext_fields,
            spec.mode == "oneway",
        )
        self.connect()
        pipe.send(("ready", len(self.conns)))
        _, window_start_mono, window_end_mono = pipe.recv()
        # perf_counter and monotonic are both CLOCK_MONOTONIC on Linux; convert anyway.
        offset = time.perf_counter_ns() - time.monotonic_ns()
        window_start = window_start_mono + offset
        window_end = window_end_mono + offset
        if spec.mode == "oneway":
            self._oneway(window_start, window_end)
        else:
            self._request_response(window_start, window_end)
        self._drain()
        result = {
            "completed": self.completed,
            "received": self.received,
            "sent": self.sent,
            "sent_in_window": self.sent_in_window,
            "cpu_s": self.cpu_ns / 1e9,
            "errors": dict(self.errors),
            "latencies": self.latencies.tobytes(),
            "connections": len(self.conns),
        }
        self.close()
        return result

    def _cpu_mark(self, now: int, window_start: int, marked: bool) -> bool:
        if not marked and now >= window_start:
            self.cpu_ns = -time.process_time_ns()
            return True
        return marked

    def _request_response(self, window_start: int, window_end: int) -> None:
        poll = self.epoll.poll
        by_fd = self.by_fd
        for new, window in zip(self.conns, self.spec.windows, strict=True):
            self.epoll.register(new.fd, _IN)
            if window:
                self._send_requests(new, window)
        marked = False
        perf = time.perf_counter_ns
        while True:
            now = perf()
            marked = self._cpu_mark(now, window_start, marked)
            if now >= window_end:
                break
            for fd, mask in poll(min((window_end - now) / 1e9, 0.1)):
                conn = by_fd.get(fd)
                if conn is None:
                    continue
                if mask & _OUT:
                    self._flush(conn)
                if mask & _IN:
                    answered = self._read(conn, window_start, window_end)
                    if answered and conn.fd in by_fd:
                        self._send_requests(conn, answered)
        self.cpu_ns += time.process_time_ns()

    def _oneway(self, window_start: int, window_end: int) -> None:
        by_fd = self.by_fd
        poll = self.epoll.poll
        for new in self.conns:
            self.epoll.register(new.fd, _IN | _OUT)
        frame_size = self.template.size
        build = self.template.build
        marked = False
        perf = time.perf_counter_ns
        sent_bytes = 0
        window_bytes = 0
        while True:
            now = perf()
            if not marked and now >= window_start:
                marked = self._cpu_mark(now, window_start, marked)
                window_bytes = -sent_bytes
            if now >= window_end:
                break
            for fd, mask in poll(min((window_end - now) / 1e9, 0.1)):
                conn = by_fd.get(fd)
                if conn is None:
                    continue
                if mask & _IN:
                    self._read(conn, window_start, window_end)  # nothing should come
                    self.errors["response to a oneway request"] += self.errors.pop(
                        "response with an unknown opaque", 0
                    )
                    if conn.fd not in by_fd:
                        continue
                if mask & _OUT:
                    if not conn.out:
                        first = self._take_opaques(ONEWAY_BATCH)
                        conn.out = memoryview(build(first, ONEWAY_BATCH))
                    try:
                        n = conn.sock.send(conn.out)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        self._drop(conn, f"connection error ({e.strerror})")
                        continue
                    conn.out = conn.out[n:]
                    sent_bytes += n
        self.cpu_ns += time.process_time_ns()
        if marked:
            window_bytes += sent_bytes
        self.sent_in_window = window_bytes // frame_size
        # Finish the frames begun (a cut frame would garble the stream), then stop writing.
        deadline = time.monotonic() + self.spec.drain_timeout
        for conn in self.conns:
            while conn.out and self._live(conn) and time.monotonic() < deadline:
                try:
                    n = conn.sock.send(conn.out)
                except BlockingIOError:
                    _wait_writable(conn.sock, deadline)
                    continue
                except OSError as e:
                    self._drop(conn, f"connection error ({e.strerror})")
                    break
                conn.out = conn.out[n:]
                sent_bytes += n
            if conn.out and self._live(conn):
                self.errors["could not finish writing"] += 1
            conn.out = b""
            if self._live(conn):
                self.epoll.modify(conn.fd, _IN)
        # One request/response per connection: its answer proves that the server has
        # read and processed every oneway request sent before it.
        self.template = RequestTemplate(
            SerializeType(self.spec.serialize_type), self.spec.body_size, 0, False
        )
        for conn in self.conns:
            if self._live(conn):
                self._send_requests(conn, 1)
        self.sent = sent_bytes // frame_size  # oneway requests only, not the pings

    def _drain(self) -> None:
        """Stop sending; wait for the answers still due, up to the drain timeout."""
        deadline = time.monotonic() + self.spec.drain_timeout
        while any(conn.pending for conn in self.conns):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, mask in self.epoll.poll(min(left, 0.1)):
                conn = self.by_fd.get(fd)
                if conn is None:
                    continue
                if mask & _OUT:
                    self._flush(conn)
                if mask & _IN and conn.fd in self.by_fd:
                    self._read(conn, 0, 0)
        for conn in self.conns:
            if conn.pending:
                self.errors["no response (lost)"] += len(conn.pending)
                conn.pending.clear()


class TwistedClientRun:
    """A client process that is rmqtwist's own client: one :class:`RemotingClient` on
    Twisted's epoll reactor, keeping ``windows[0]`` requests in flight on its pooled
    connection (or writing oneway requests as fast as the connection takes them).

    What it reports matches :class:`ClientRun`, but the window is the reactor's: the
    CPU time and the requests counted are both taken between the same two timed calls,
    so their ratio is the client's CPU per request. The harness's own work (a clock read,
    a check of each response, the next call) is charged to the client too; it is small
    next to a call (see bench/README.md).
    """

    def __init__(self, spec: ClientSpec) -> None:
        from twisted.internet import epollreactor

        epollreactor.install()  # a forked child: the parent never installed one
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.spec = spec
        self.errors: Counter[str] = Counter()
        self.latencies = array.array("q")
        self.completed = 0  # SUCCESS responses (or oneway requests written) in the window
        self.finished = 0  # calls that fired, either way
        self.bad = 0  # of those: failed, or a response that is not the echo expected
        self.sent = 0  # calls made after "go" (oneway: those written)
        self.sent_in_window = 0
        self.sending = False
        self.counting = False
        self.cpu_ns = 0
        self.window_ns = 0
        self.waiting: Any = None  # oneway: the one call waiting for a writable connection
        self.result: dict[str, Any] | None = None
        self.failure: str | None = None
        self.profile: Any = None

    def run(self, pipe: Connection) -> dict[str, Any]:
        self.reactor.callWhenRunning(self._start, pipe)
        self.reactor.run(installSignalHandlers=False)
        if self.result is None:
            raise RuntimeError(self.failure or "the reactor stopped early")
        return self.result

    def _fail(self, why: str) -> None:
        self.failure = why
        if self.reactor.running:
            self.reactor.stop()

    def _start(self, pipe: Connection) -> None:
        from rmqtwist.client import ClientConfig, RemotingClient

        spec = self.spec
        self.stype = SerializeType(spec.serialize_type)
        self.body_size = spec.body_size
        self.client = RemotingClient(self.reactor, ClientConfig(serialize_type=self.stype))
        self.address = f"{spec.host}:{spec.port}"
        body = (bytes(range(256)) * (spec.body_size // 256 + 1))[: spec.body_size]
        ext = {f"key{i}": f"value{i:03d}" for i in range(spec.ext_fields)} or None
        # The request's own serialize type stays JSON: ClientConfig.serialize_type decides.
        self.request = RemotingCommand.request(BENCH_CODE, ext, body)
        self.timeout = max(spec.drain_timeout, 1.0)
        # One call first, to open the pooled connection before the clock starts.
        opened = self.client.invoke(self.address, self.request, 15.0)
        opened.addCallbacks(self._opened, self._not_opened, callbackArgs=(pipe,))

    def _not_opened(self, failure: Failure) -> None:
        self._fail(f"cannot reach {self.address}: {failure.getErrorMessage()}")

    def _opened(self, _: RemotingCommand, pipe: Connection) -> None:
        try:
            pipe.send(("ready", 1))
            _, window_start, window_end = pipe.recv()  # blocking: nothing else is going on
        except (OSError, EOFError) as e:
            self._fail(f"lost the benchmark's pipe: {e!r}")
            return
        now = time.monotonic_ns()
        later = self.reactor.callLater
        later(max(window_start - now, 0) / 1e9, self._window_opens)
        later(max(window_end - now, 0) / 1e9, self._window_closes)
        self.sending = True
        if self.spec.mode == "oneway":
            self._pump()
        else:
            for _ in range(self.spec.windows[0]):
                self._send()

    def _window_opens(self) -> None:
        if self.spec.profile:
            import cProfile

            self.profile = cProfile.Profile()
            self.profile.enable()
        self.counting = True
        self.window_ns = -time.perf_counter_ns()
        self.cpu_ns = -time.process_time_ns()

    def _window_closes(self) -> None:
        self.cpu_ns += time.process_time_ns()
        self.window_ns += time.perf_counter_ns()
        self.counting = False
        self.sending = False
        if self.profile is not None:
            self.profile.disable()
            self.profile.dump_stats(self.spec.profile)
        self.sent_in_window = self.completed
        self._drain(self.reactor.seconds() + self.spec.drain_timeout)

    # -- request/response --

    # The load generator's own work per call (a clock read each way, three checks of
    # the response, two counters) is kept small: it is charged to the client's CPU.

    @property
    def outstanding(self) -> int:
        """Calls made and not fired yet (oneway calls count as sent once written)."""
        return 0 if self.spec.mode == "oneway" else self.sent - self.finished

    def _send(self) -> None:
        self.sent += 1
        self.client.invoke(self.address, self.request, self.timeout).addCallbacks(
            self._answered, self._call_failed, (time.perf_counter_ns(),)
        )

    def _answered(self, response: RemotingCommand, sent_at: int) -> None:
        self.finished += 1
        if (
            response.code
            or response.serialize_type != self.stype
            or len(response.body) != self.body_size
        ):
            self._count_bad(response)
        elif self.counting:
            self.latencies.append(time.perf_counter_ns() - sent_at)
            self.completed += 1
        if self.sending:
            self._send()

    def _count_bad(self, response: RemotingCommand) -> None:
        self.bad += 1
        if response.code != 0:
            self.errors[f"response code {response.code}"] += 1
        elif response.serialize_type != self.stype:
            self.errors["response not in the request's serialize type"] += 1
        else:
            self.errors["echoed body of the wrong size"] += 1

    def _call_failed(self, failure: Failure) -> None:
        self.finished += 1
        self.bad += 1
        self._count_failure(failure)
        if self.sending:  # not at once: a call that fails synchronously would recurse
            self.reactor.callLater(0.001, self._send)

    # -- oneway --

    def _pump(self) -> None:
        """Write oneway requests until the connection is unwritable (the call then waits
        for it to drain) or a batch is done (then let the reactor write it out)."""
        invoke_oneway = self.client.invoke_oneway
        address, request, timeout = self.address, self.request, self.timeout
        written = 0
        delay = 0.0
        while self.sending and written < ONEWAY_BATCH:
            call = invoke_oneway(address, request, timeout)
            # Peeking at .result of a fired Deferred is cheaper than a callback per call.
            if not call.called:
                self.waiting = call
                call.addCallbacks(self._oneway_written, self._oneway_failed)
                break
            if isinstance(call.result, Failure):
                call.addErrback(self._count_failure)
                delay = 0.001  # not at once: it may fail the same way again
                break
            written += 1
        self.sent += written
        if self.counting:
            self.completed += written
        if self.waiting is None and self.sending:
            self.reactor.callLater(delay, self._pump)

    def _oneway_written(self, _: None) -> None:
        self.waiting = None
        self.sent += 1
        if self.counting:
            self.completed += 1
        if self.sending:
            self._pump()

    def _oneway_failed(self, failure: Failure) -> None:
        self.waiting = None
        self._count_failure(failure)
        if self.sending:
            self.reactor.callLater(0.001, self._pump)

    def _count_failure(self, failure: Failure) -> None:
        why = re.sub(r"\(opaque \d+\)", "(opaque N)", failure.getErrorMessage())
        self.errors[f"{type(failure.value).__name__}: {why}"] += 1

    # -- the end --

    def _drain(self, deadline: float) -> None:
        """Wait for the calls still due (up to the drain timeout); then, after oneway
        requests, one request/response: its answer proves that the server has read every
        oneway request written before it."""
        busy = self.outstanding or self.waiting is not None
        if busy and self.reactor.seconds() < deadline:
            self.reactor.callLater(0.001, self._drain, deadline)
            return
        if self.outstanding:
            self.errors["no response (lost)"] += self.outstanding
        if self.waiting is not None:
            self.errors["oneway request never written"] += 1
        if self.spec.mode == "oneway":
            ping = self.client.invoke(self.address, self.request, self.spec.drain_timeout)
            ping.addErrback(self._ping_failed).addBoth(lambda _: self._finish())
        else:
            self._finish()

    def _ping_failed(self, failure: Failure) -> None:
        self.errors[f"final request failed: {failure.getErrorMessage()}"] += 1

    def _finish(self) -> None:
        stats = self.client.pool_stats().as_dict()
        self.result = {
            "completed": self.completed,
            "received": self.finished - self.bad,
            "sent": self.sent,
            "sent_in_window": self.sent_in_window,
            "cpu_s": self.cpu_ns / 1e9,
            "window_s": self.window_ns / 1e9,
            "errors": dict(self.errors),
            "latencies": self.latencies.tobytes(),
            "connections": stats["created"],
            "pool": stats,
        }
        self.client.close(1.0).addBoth(lambda _: self.reactor.stop())


def _wait_writable(sock: socket.socket, deadline: float) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    poller.poll(max(deadline - time.monotonic(), 0) * 1000)


def _client_main(pipe: Connection, spec: ClientSpec, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return  # it died already
    try:
        if spec.cpus:
            os.sched_setaffinity(0, spec.cpus)
        if spec.client == "rmqtwist":
            result = TwistedClientRun(spec).run(pipe)
        else:
            result = ClientRun(spec).run(pipe)
    except BaseException as e:
        pipe.send(("error", f"{type(e).__name__}: {e}"))
    else:
        pipe.send(("result", result))


# ---------------------------------------------------------------------------
# The server process
# ---------------------------------------------------------------------------


def server_process(
    template: str, max_connections: int, log_dir: Path, cpus: list[int] | None
) -> ServerProcess:
    """The server under test, from a command template ({python}, {port}, {max_connections})."""

    def argv(port: int) -> list[str]:
        return shlex.split(
            template.format(
                python=shlex.quote(sys.executable), port=port, max_connections=max_connections
            )
        )

    return ServerProcess(argv, log_dir, cpus)


class StatsClient:
    """A blocking connection that reads the server's counters (request code 28)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=15)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder()
        self.opaque = 0

    def request(self, code: int, body: bytes = b"") -> RemotingCommand:
        self.opaque += 1
        self.sock.sendall(
            encode_frame(RemotingCommand.request(code, body=body, opaque=self.opaque))
        )
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("the server closed the stats connection")
            for command in self.decoder.feed(data):
                if command.opaque == self.opaque:
                    return command

    def stats(self) -> tuple[dict[str, str] | None, float]:
        """The server's counters (None if it does not answer 28 with them), and the
        monotonic time halfway through the round trip (when the server read them)."""
        sent = time.monotonic()
        response = self.request(STATS_CODE)
        at = (sent + time.monotonic()) / 2
        ext = dict(response.ext_fields or {})
        return (ext if response.code == 0 and "requestsReceived" in ext else None), at

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------
# The floor: the least a Python server can do per request
# ---------------------------------------------------------------------------

_JSON_CODE = re.compile(rb'^\{"code":-?\d+')
_JSON_FLAG = re.compile(rb'"flag":(\d+)')


def _floor_answer(frame: bytearray, type_word: int) -> bytes | None:
    """The request ``frame`` turned into its SUCCESS response (None for a oneway one):
    no decoding, the code and flag rewritten in place."""
    if type_word >> 24 == 1:
        (flag,) = struct.unpack_from(">i", frame, 17)
        if flag & 2:
            return None
        struct.pack_into(">h", frame, 8, 0)
        struct.pack_into(">i", frame, 17, flag | 1)
        return bytes(frame)
    header_end = 8 + (type_word & 0xFFFFFF)
    header = bytes(frame[8:header_end])
    match = _JSON_FLAG.search(header)
    flag = int(match[1]) if match else 0
    if flag & 2:
        return None
    header = _JSON_FLAG.sub(b'"flag":%d' % (flag | 1), _JSON_CODE.sub(b'{"code":0', header), 1)
    body = frame[header_end:]
    return _PREFIX.pack(4 + len(header) + len(body), len(header)) + header + bytes(body)


def floor_server(port: int) -> None:
    """Answer every request SUCCESS with its own body on 127.0.0.1:``port``, with epoll
    and no decoding: what any Python server costs, before rmqtwist does anything."""
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, bytearray]] = {}
    while True:
        for fd, _ in epoll.poll():
            if fd == listener.fileno():
                with contextlib.suppress(BlockingIOError):
                    sock, _ = listener.accept()
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.setblocking(False)
                    conns[sock.fileno()] = (sock, bytearray())
                    epoll.register(sock.fileno(), select.EPOLLIN)
                continue
            sock, buf = conns[fd]
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                epoll.unregister(fd)
                del conns[fd]
                sock.close()
                continue
            buf += data
            answers = []
            pos = 0
            while len(buf) - pos >= 8:
                total, type_word = _PREFIX.unpack_from(buf, pos)
                end = pos + 4 + total
                if end > len(buf):
                    break
                answer = _floor_answer(buf[pos:end], type_word)
                if answer is not None:
                    answers.append(answer)
                pos = end
            del buf[:pos]
            if answers:
                out = b"".join(answers)
                try:
                    sent = sock.send(out)
                except BlockingIOError:
                    sent = 0
                if sent < len(out):  # rare: the client is not reading; wait for it
                    sock.setblocking(True)
                    sock.sendall(out[sent:])
                    sock.setblocking(False)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    serialize_type: str
    connections: int
    in_flight: int | None
    body_size: int
    duration_s: float = 0.0
    requests_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    samples: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    client_procs: int = 0
    #: The load generator: "raw" (lean epoll clients) or "rmqtwist" (RemotingClient).
    client: str = "raw"
    #: CPU time per request over the measured window, in microseconds, of the client
    #: process(es) and of the server, and client / server.
    client_us_per_req: float | None = None
    server_us_per_req: float | None = None
    cpu_ratio: float | None = None
    python_loop_ns: float | None = None  # the machine's speed just before this row ran
    target: str = ""
    measured: str = ""
    verdict: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _mean_of_placements(runs: list[tuple[Result, list[int]]]) -> Result:
    """One row from the same load run with the CPUs one way and then swapped: rates, CPU
    shares and CPU per request are the means of the runs, latency percentiles come from
    all their samples, errors and counts add up; ``extra["placements"]`` keeps each."""
    results = [r for r, _ in runs]
    first = results[0]
    combined = Result(
        scenario=first.scenario,
        serialize_type=first.serialize_type,
        connections=first.connections,
        in_flight=first.in_flight,
        body_size=first.body_size,
        duration_s=round(sum(r.duration_s for r in results), 3),
        client_procs=first.client_procs,
        client=first.client,
    )

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if len(known) == len(values) else None

    combined.requests_per_s = mean([r.requests_per_s for r in results])
    combined.server_cpu_pct = mean([r.server_cpu_pct for r in results])
    combined.client_cpu_pct = mean([r.client_cpu_pct for r in results])
    combined.python_loop_ns = mean([r.python_loop_ns for r in results])
    combined.client_us_per_req = mean([r.client_us_per_req for r in results])
    combined.server_us_per_req = mean([r.server_us_per_req for r in results])
    if combined.client_us_per_req is not None and combined.server_us_per_req:
        combined.cpu_ratio = combined.client_us_per_req / combined.server_us_per_req
    for what in ("server_cpu_pct", "client_cpu_pct", "python_loop_ns"):
        value = getattr(combined, what)
        if value is not None:
            setattr(combined, what, round(value, 1))
    latencies = sorted(lat for _, run in runs for lat in run)
    combined.samples = len(latencies)
    if latencies:
        combined.p50_us = percentile(latencies, 0.50) / 1000
        combined.p99_us = percentile(latencies, 0.99) / 1000
        combined.p999_us = percentile(latencies, 0.999) / 1000
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    combined.errors = dict(errors)
    for key in ("sent_total", "received_total", "sent_per_s"):
        if all(key in r.extra for r in results):
            combined.extra[key] = sum(r.extra[key] for r in results)
    if "sent_per_s" in combined.extra:
        combined.extra["sent_per_s"] = round(combined.extra["sent_per_s"] / len(results))
    combined.extra["placements"] = [
        {
            "server_cpus": r.extra.get("server_cpus"),
            "client_cpus": r.extra.get("client_cpus"),
            "requests_per_s": None if r.requests_per_s is None else round(r.requests_per_s),
            "client_us_per_req": _rounded(r.client_us_per_req),
            "server_us_per_req": _rounded(r.server_us_per_req),
            "cpu_ratio": _rounded(r.cpu_ratio),
        }
        for r in results
    ]
    if "pool" in results[-1].extra:
        combined.extra["pool"] = results[-1].extra["pool"]
    return combined


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Bench:
    """Runs scenarios against one server address (its own server or --connect)."""

    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        self.server: ServerProcess | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.server_pid: int | None = args.server_pid
        cpus = sorted(os.sched_getaffinity(0))
        self.server_cpus: list[int] | None = None
        self.client_cpus: list[int] | None = None
        if args.pin == "split" and len(cpus) >= 2:
            self.server_cpus, self.client_cpus = cpus[:1], cpus[1:]
        elif args.pin == "same":
            self.server_cpus = self.client_cpus = cpus[:1]

    # -- the server --

    def start_server(self, max_connections: int = 1000, template: str | None = None) -> None:
        """Start the server (or ``template``'s); with --connect, just use that one."""
        self.stop_server()
        if self.args.connect and template is None:
            host, _, port = self.args.connect.rpartition(":")
            self.address = (host or "127.0.0.1", int(port))
            return
        if template is None:
            template = self.args.server_cmd or DEFAULT_SERVER_CMD
        elif self.args.connect:
            self.server_pid = None  # the --server-pid is not this server's
        if self.args.server_profile and template == DEFAULT_SERVER_CMD:
            stats_file = shlex.quote(str(Path(self.args.server_profile)))
            template = template.replace(
                "-m twisted", f"-c {shlex.quote(PROFILED_TWIST)} {stats_file}"
            )
        self.server = server_process(template, max_connections, self.log_dir, self.server_cpus)
        self.server.start()
        self.address = ("127.0.0.1", self.server.port)
        self.server_pid = self.server.pid

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- request/response and oneway --

    def load(
        self,
        name: str,
        *,
        connections: int,
        in_flight: int,
        oneway: bool,
        serialize_type: SerializeType,
        target: tuple[str, float] | None = None,
        client: str = "raw",
    ) -> Result:
        """One load row. With the rmqtwist client and ``--pin split`` it runs twice, the
        second time with the two CPUs swapped, and reports the mean of the two: the CPUs
        of a VM need not be equally fast (see :func:`cpu_speeds`), and a comparison of
        the client's CPU with the server's must not depend on which one got the faster.
        ``--repeat N`` makes that N pairs of runs, the placements alternating."""
        swap = (
            client == "rmqtwist"
            and self.server is not None  # a server of ours: its affinity is ours to set
            and self.args.pin == "split"
            and self.server_cpus is not None
            and self.client_cpus is not None
            and self.server_cpus != self.client_cpus
        )

        def once() -> tuple[Result, list[int]]:
            return self._load_once(
                name,
                connections=connections,
                in_flight=in_flight,
                oneway=oneway,
                serialize_type=serialize_type,
                client=client,
            )

        if not swap:
            result, _ = once()
        else:
            runs = []
            for _ in range(2 * self.args.repeat):  # as pinned, then swapped, ...
                runs.append(once())
                self.swap_cpus()  # an even number of times: it ends as it began
            result = _mean_of_placements(runs)
        if target is not None:
            _judge(result, *target)
        return result

    def swap_cpus(self) -> None:
        """Exchange the server's CPUs and the clients' (the running server's threads too)."""
        self.server_cpus, self.client_cpus = self.client_cpus, self.server_cpus
        if self.server_pid is not None and self.server_cpus is not None:
            for task in Path(f"/proc/{self.server_pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that just ended
                    os.sched_setaffinity(int(task.name), self.server_cpus)

    def _load_once(
        self,
        name: str,
        *,
        connections: int,
        in_flight: int,
        oneway: bool,
        serialize_type: SerializeType,
        client: str = "raw",
    ) -> tuple[Result, list[int]]:
        args = self.args
        if client == "rmqtwist":  # one RemotingClient: one process, one pooled connection
            connections, procs, windows = 1, 1, [in_flight]
        else:
            procs = max(1, min(args.client_procs, connections))
            windows = spread(in_flight, connections) if not oneway else [0] * connections
        per_proc = [windows[i::procs] for i in range(procs)]
        ctx = multiprocessing.get_context("fork")
        workers = []
        errors: Counter[str] = Counter()
        stats = StatsClient(self.address)

        def read_stats() -> tuple[dict[str, str] | None, float]:
            try:
                return stats.stats()
            except (OSError, RuntimeError) as e:  # the server is gone: the clients say more
                errors[f"stats request failed ({e})"] += 1
                return None, time.monotonic()

        try:
            for windows_of_proc in per_proc:
                spec = ClientSpec(
                    host=self.address[0],
                    port=self.address[1],
                    mode="oneway" if oneway else "rr",
                    windows=windows_of_proc,
                    serialize_type=int(serialize_type),
                    body_size=args.body_size,
                    ext_fields=args.ext_fields,
                    drain_timeout=args.drain_timeout,
                    cpus=self.client_cpus,
                    client=client,
                    profile=args.client_profile,
                )
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(
                    target=_client_main, args=(child_end, spec, os.getpid()), daemon=True
                )
                proc.start()
                child_end.close()
                workers.append((proc, parent_end))
            for proc, pipe in workers:
                message = _receive(pipe, proc, 30)
                if message[0] != "ready":
                    raise RuntimeError(f"client process failed: {message[1]}")
            speed = python_speed()
            before, _ = read_stats()
            start = time.monotonic_ns()
            window_start = start + int(args.warmup * 1e9)
            window_end = window_start + int(args.duration * 1e9)
            for _, pipe in workers:
                pipe.send(("go", window_start, window_end))
            sleep_until(window_start)
            cpu0 = cpu_seconds(self.server_pid)
            cpu0_at = time.monotonic()
            at_start, t_start = read_stats() if oneway else (None, 0.0)
            sleep_until(window_end)
            at_end, t_end = read_stats() if oneway else (None, 0.0)
            cpu1 = cpu_seconds(self.server_pid)
            server_window = time.monotonic() - cpu0_at
            results = []
            for proc, pipe in workers:
                message = _receive(pipe, proc, args.drain_timeout + 30)
                if message[0] != "result":
                    raise RuntimeError(f"client process failed: {message[1]}")
                results.append(message[1])
                proc.join(5)
            after, _ = read_stats() if not errors else (None, 0.0)
        finally:
            stats.close()
            for proc, _ in workers:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)

        latencies: list[int] = []
        for r in results:
            errors.update(r["errors"])
            chunk = array.array("q")
            chunk.frombytes(r["latencies"])
            latencies.extend(chunk)
        latencies.sort()
        duration = args.duration
        result = Result(
            scenario=name,
            serialize_type=serialize_type.name.lower(),
            connections=connections,
            in_flight=None if oneway else in_flight,
            body_size=args.body_size,
            duration_s=duration,
            client_procs=procs,
            client=client,
            python_loop_ns=speed,
        )
        client_cpu = sum(r["cpu_s"] for r in results)
        # The rmqtwist client measures its own window (between two timed calls of its
        # reactor); the raw clients' windows are the planned one.
        client_window = max((r.get("window_s") or duration) for r in results)
        result.client_cpu_pct = round(100 * client_cpu / client_window, 1)
        server_cpu: float | None = None
        if cpu0 is not None and cpu1 is not None:
            server_cpu = cpu1 - cpu0
            result.server_cpu_pct = round(100 * server_cpu / server_window, 1)
        if oneway:
            sent = sum(r["sent"] for r in results)
            result.extra["sent_per_s"] = round(sum(r["sent_in_window"] for r in results) / duration)
            result.extra["sent_total"] = sent
            if at_start is not None and at_end is not None:
                # requestsReceived counts each stats request itself before answering it.
                received = int(at_end["requestsReceived"]) - int(at_start["requestsReceived"]) - 1
                window = t_end - t_start
                result.duration_s = round(window, 3)
                result.requests_per_s = received / window
                sent_in_window = sum(r["sent_in_window"] for r in results)
                if sent_in_window:
                    result.client_us_per_req = 1e6 * client_cpu / sent_in_window
                if server_cpu is not None and received > 0:
                    # requests in the server's CPU window, at the rate of the stats window
                    rate = received / window
                    result.server_us_per_req = 1e6 * server_cpu / (rate * server_window)
            elif not errors:
                result.extra["note"] = "the server does not report requestsReceived (code 28)"
            if before and after:
                # before .. after: 3 stats requests after `before`, one ping per connection
                total = (
                    int(after["requestsReceived"])
                    - int(before["requestsReceived"])
                    - 3
                    - connections
                )
                result.extra["received_total"] = total
                if total != sent:
                    errors[f"oneway sent {sent} but the server received {total}"] += abs(
                        sent - total
                    )
        else:
            if before and after:
                # Every request sent was received, and only those (+1: `after` itself).
                sent = sum(r["sent"] for r in results)
                total = int(after["requestsReceived"]) - int(before["requestsReceived"]) - 1
                result.extra["received_total"] = total
                result.extra["sent_total"] = sent
                if total != sent:
                    errors[f"sent {sent} requests but the server received {total}"] += abs(
                        sent - total
                    )
            completed = sum(r["completed"] for r in results)
            result.requests_per_s = completed / client_window
            if completed:
                result.client_us_per_req = 1e6 * client_cpu / completed
                if server_cpu is not None:
                    # requests in the server's window, at the rate the client measured
                    result.server_us_per_req = (
                        1e6 * server_cpu / (result.requests_per_s * server_window)
                    )
            result.samples = len(latencies)
            if latencies:
                result.p50_us = percentile(latencies, 0.50) / 1000
                result.p99_us = percentile(latencies, 0.99) / 1000
                result.p999_us = percentile(latencies, 0.999) / 1000
        if result.client_us_per_req is not None and result.server_us_per_req:
            result.cpu_ratio = result.client_us_per_req / result.server_us_per_req
        if client == "rmqtwist":
            result.extra["pool"] = results[0].get("pool")
        result.extra["server_cpus"] = self.server_cpus
        result.extra["client_cpus"] = self.client_cpus
        result.errors = dict(errors)
        return result, latencies

    # -- memory --

    def memory(self, count: int) -> list[Result]:
        """RSS growth of the server per idle connection: connected, then used once."""
        args = self.args
        self.start_server(max_connections=count + 100)
        pid = self.server_pid
        if pid is None:
            raise RuntimeError("the memory test needs the server's PID (--server-pid)")
        stats = StatsClient(self.address)
        socks: list[socket.socket] = []
        errors: Counter[str] = Counter()
        try:
            stats.request(BENCH_CODE, b"warm-up")  # the echo path, allocated once
            stats.stats()
            base = int((stats.stats()[0] or {}).get("connections", "1"))
            rss0 = settled_rss(pid, args.settle)
            started = time.monotonic()
            socks, on_server = _open_many(self.address, count, stats, base, errors)
            connect_s = time.monotonic() - started
            if on_server is not None and on_server != base + count:
                errors[f"the server has {on_server - base} of the {count} connections"] += 1
            rss1 = settled_rss(pid, args.settle)
            _one_request_each(socks, SerializeType.JSON, args.body_size, errors)
            rss2 = settled_rss(pid, args.settle)
        finally:
            for sock in socks:
                sock.close()
            stats.close()
            self.stop_server()
        rows = []
        for name, rss in (("idle conns, connected", rss1), ("idle conns, 1 req each", rss2)):
            result = Result(
                scenario=name,
                serialize_type="json",
                connections=count,
                in_flight=None,
                body_size=args.body_size,
                errors=dict(errors),
            )
            per_conn = (rss - rss0) / max(len(socks), 1)
            result.extra = {
                "rss_before_kib": rss0,
                "rss_after_kib": rss,
                "kib_per_connection": round(per_conn, 2),
                "connect_s": round(connect_s, 2),
            }
            _judge(result, "kib", TARGET_KIB_PER_CONN)
            rows.append(result)
        return rows


def _receive(pipe: Connection, proc: multiprocessing.process.BaseProcess, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise RuntimeError(f"client process {proc.pid} did not answer within {timeout:g} s")
    try:
        return pipe.recv()
    except EOFError:
        raise RuntimeError(f"client process {proc.pid} died (exit code {proc.exitcode})") from None


def _open_many(
    address: tuple[str, int], count: int, stats: StatsClient, base: int, errors: Counter[str]
) -> tuple[list[socket.socket], int | None]:
    """``count`` connections, and the server's count of open connections after them.

    Opened in batches smaller than the server's accept backlog (Twisted's default is
    50), each accepted by the server before the next: past the backlog, Linux drops the
    handshake's last ACK and the client believes in a connection the server never saw.
    """
    socks: list[socket.socket] = []
    batch = 40
    on_server: int | None = base
    with selectors.DefaultSelector() as sel:
        while len(socks) < count:
            connecting = []
            for _ in range(min(batch, count - len(socks))):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(address)
                sel.register(sock, selectors.EVENT_WRITE)
                connecting.append(sock)
            waiting = set(connecting)
            deadline = time.monotonic() + 10
            while waiting and time.monotonic() < deadline:
                for key, _ in sel.select(0.5):
                    fileobj = key.fileobj
                    assert isinstance(fileobj, socket.socket)
                    sock = fileobj
                    sel.unregister(sock)
                    waiting.discard(sock)
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        errors[f"connect: {os.strerror(error)}"] += 1
                        sock.close()
                    else:
                        socks.append(sock)
            for sock in waiting:
                errors["connect timed out"] += 1
                sel.unregister(sock)
                sock.close()
            if len(connecting) == len(waiting):
                break  # nothing connects any more
            on_server = _wait_connections(stats, base + len(socks))
            if on_server is None:
                time.sleep(0.01)  # no counter to wait on: just pace
    return socks, on_server


def _wait_connections(stats: StatsClient, expected: int, timeout: float = 5) -> int | None:
    """The server's count of open connections once it reaches ``expected`` (or the
    timeout); None if the server does not report it."""
    deadline = time.monotonic() + timeout
    while True:
        table, _ = stats.stats()
        if table is None:
            return None
        seen = int(table["connections"])
        if seen >= expected or time.monotonic() >= deadline:
            return seen
        time.sleep(0.002)


def _one_request_each(
    socks: list[socket.socket], stype: SerializeType, body_size: int, errors: Counter[str]
) -> None:
    template = RequestTemplate(stype, body_size, 0, False)
    expected: dict[socket.socket, int] = {}
    buffers: dict[socket.socket, bytearray] = {}
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            opaque = OPAQUE_BASE + i
            sock.send(template.build(opaque, 1))
            expected[sock] = opaque
            buffers[sock] = bytearray()
            sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while expected and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                fileobj = key.fileobj
                assert isinstance(fileobj, socket.socket)
                sock = fileobj
                data = sock.recv(RECV_SIZE)
                buf = buffers[sock]
                buf += data
                if not data:
                    errors["connection closed by the server"] += 1
                elif len(buf) < 8 or len(buf) < 4 + _PREFIX.unpack_from(buf)[0]:
                    continue
                else:
                    total, type_word = _PREFIX.unpack_from(buf)
                    code, flag, opaque = parse_response(buf, 0, total, type_word)
                    if opaque != expected[sock] or code != 0 or not flag & 1:
                        errors["bad response"] += 1
                sel.unregister(sock)
                del expected[sock]
        errors["no response (lost)"] += len(expected)
        if not errors["no response (lost)"]:
            del errors["no response (lost)"]


def _judge(result: Result, kind: str, target: float) -> None:
    """Fill target / measured / verdict. ``kind``: rps, p50, oneway or kib. (The client's
    CPU per request against the server's has no target any more: it is only shown.)"""
    ok: bool | None
    if kind in ("rps", "oneway"):
        value = result.requests_per_s
        result.target = f">= {target:,.0f}/s"
        result.measured = "n/a" if value is None else f"{value:,.0f}/s"
        ok = None if value is None else value >= target
    elif kind == "p50":
        value = result.p50_us
        result.target = f"p50 < {target:g} us"
        result.measured = "n/a" if value is None else f"{value:,.0f} us"
        ok = None if value is None else value < target
    else:
        value = result.extra["kib_per_connection"]
        result.target = f"<= {target:g} KiB/conn"
        result.measured = f"{value:.1f} KiB/conn"
        ok = value <= target
    if ok is None:
        result.verdict = "n/a"
    elif result.error_count:
        result.verdict = "ERRORS"
    else:
        result.verdict = "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[Result]) -> None:
    columns = [
        ("scenario", 24, "<"),
        ("client", 8, "<"),
        ("type", 9, "<"),
        ("conns", 6, ">"),
        ("in-fl", 6, ">"),
        ("body", 5, ">"),
        ("req/s", 9, ">"),
        ("p50 us", 8, ">"),
        ("p99 us", 8, ">"),
        ("p999 us", 8, ">"),
        ("errors", 7, ">"),
        ("srv cpu", 8, ">"),
        ("cli cpu", 8, ">"),
        ("loop ns", 8, ">"),
        ("target", 18, ">"),
        ("measured", 17, ">"),
        ("", 7, ">"),
    ]
    header = " ".join(f"{name:{align}{width}}" for name, width, align in columns)
    print(header)
    print("-" * len(header))
    for r in results:
        cells = [
            r.scenario,
            r.client if r.in_flight is not None or "oneway" in r.scenario else "-",
            r.serialize_type,
            str(r.connections),
            "-" if r.in_flight is None else str(r.in_flight),
            str(r.body_size),
            _fmt(r.requests_per_s),
            _fmt(r.p50_us),
            _fmt(r.p99_us),
            _fmt(r.p999_us),
            str(r.error_count),
            "-" if r.server_cpu_pct is None else f"{r.server_cpu_pct:.0f}%",
            "-" if r.client_cpu_pct is None else f"{r.client_cpu_pct:.0f}%",
            _fmt(r.python_loop_ns, ".1f"),
            r.target,
            r.measured,
            r.verdict,
        ]
        print(
            " ".join(
                f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, columns, strict=True)
            )
        )
    for r in results:
        for what, count in r.errors.items():
            print(f"  {r.scenario} ({r.serialize_type}): {count} x {what}")
        notes = []
        if r.extra.get("sent_per_s") is not None:
            notes.append(
                f"client sent {r.extra['sent_per_s']:,}/s; server received "
                f"{r.extra.get('received_total', '?')} of {r.extra['sent_total']} sent"
            )
        if "kib_per_connection" in r.extra:
            e = r.extra
            notes.append(
                f"server VmRSS {e['rss_before_kib']:,} -> {e['rss_after_kib']:,} KiB "
                f"({e['connect_s']} s to connect)"
            )
        server_bound = r.server_cpu_pct is not None and r.server_cpu_pct >= 90
        client_bound = bool(r.client_procs) and (r.client_cpu_pct or 0) / r.client_procs >= 90
        if server_bound:
            notes.append("server-bound (its one core is busy)")
        if client_bound:
            notes.append(
                "client-bound: add --client-procs"
                if r.client == "raw"
                else "client-bound (the client's one core is busy)"
            )
        saturating = r.in_flight is None or r.in_flight >= 8
        both_pct = (r.server_cpu_pct or 0) + (r.client_cpu_pct or 0)
        if (
            saturating
            and r.connections < 1000
            and r.server_cpu_pct is not None
            and not (server_bound or client_bound)
        ):
            if r.client == "rmqtwist" and r.in_flight and 85 <= both_pct <= 115:
                notes.append(
                    "one connection in lock-step: the client and the server take turns "
                    "with each batch of requests (together about one CPU); compare the "
                    "CPU per request"
                )
            else:
                notes.append(
                    "neither side had a whole CPU: the machine was busy elsewhere (a noisy "
                    "host?), so this row reads low; rerun"
                )
        if "note" in r.extra:
            notes.append(r.extra["note"])
        if notes:
            print(f"  {r.scenario} ({r.serialize_type}): " + "; ".join(notes))
    print_cpu_table([r for r in results if r.client_us_per_req is not None])


def print_cpu_table(results: list[Result]) -> None:
    """CPU time per request of the client side and of the server side, same window."""
    if not results:
        return
    columns = [
        ("scenario", 24, "<"),
        ("client", 8, "<"),
        ("type", 9, "<"),
        ("in-fl", 6, ">"),
        ("req/s", 9, ">"),
        ("p50 us", 8, ">"),
        ("p99 us", 8, ">"),
        ("cli us/req", 11, ">"),
        ("srv us/req", 11, ">"),
        ("cli/srv", 8, ">"),
        ("cli cpu", 8, ">"),
        ("srv cpu", 8, ">"),
        ("each placement", 16, ">"),
    ]
    header = " ".join(f"{name:{align}{width}}" for name, width, align in columns)
    print("\nCPU time per request (client process(es) and server, same measured window):")
    print(header)
    print("-" * len(header))
    if any("placements" in r.extra for r in results):
        placements = next(r.extra["placements"] for r in results if "placements" in r.extra)
        runs = "two runs" if len(placements) == 2 else f"{len(placements)} runs"
        print(
            f"  (each row: the mean of {runs}, server on CPU "
            f"{placements[0]['server_cpus']} and client on CPU {placements[0]['client_cpus']}"
            ", then swapped, and so on; 'each placement' gives each run's cli/srv)"
        )
    for r in results:
        cells = [
            r.scenario,
            r.client,
            r.serialize_type,
            "-" if r.in_flight is None else str(r.in_flight),
            _fmt(r.requests_per_s),
            _fmt(r.p50_us),
            _fmt(r.p99_us),
            _fmt(r.client_us_per_req, ",.1f"),
            _fmt(r.server_us_per_req, ",.1f"),
            _fmt(r.cpu_ratio, ".2f"),
            "-" if r.client_cpu_pct is None else f"{r.client_cpu_pct:.0f}%",
            "-" if r.server_cpu_pct is None else f"{r.server_cpu_pct:.0f}%",
            " / ".join(_fmt(p["cpu_ratio"], ".2f") for p in r.extra.get("placements", [])),
        ]
        print(
            " ".join(
                f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, columns, strict=True)
            )
        )


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --suite, --oneway or --idle-connections: one request/response run.",
    )
    add = parser.add_argument
    add("--suite", action="store_true", help="run the issue's standard scenarios")
    add(
        "--connections",
        type=int,
        help="client connections (default 4; with --client rmqtwist always 1: the pool "
        "keeps one connection per address)",
    )
    add("--in-flight", type=int, default=64, help="outstanding requests in all (default 64)")
    add("--body-size", type=int, default=128, help="request body bytes (default 128)")
    add("--ext-fields", type=int, default=0, help="ext_fields entries per request (default 0)")
    add("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    add("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    add("--oneway", action="store_true", help="send oneway requests; count those received")
    add(
        "--client",
        choices=("raw", "rmqtwist"),
        default="raw",
        help="load generator: raw (default): lean epoll clients on raw sockets; rmqtwist: "
        "one process running rmqtwist's RemotingClient on the epoll reactor, with its CPU "
        "per request next to the server's (with --suite: the client suite)",
    )
    add(
        "--client-profile",
        metavar="FILE",
        help="with --client rmqtwist (not --suite): cProfile the client process over the "
        "measured window, write its stats to FILE and print the top functions (slows "
        "the client down: its CPU numbers then mean nothing)",
    )
    add(
        "--serialize-type",
        choices=("json", "rocketmq"),
        default="json",
        help="request header format (default json; --suite runs both)",
    )
    add(
        "--idle-connections",
        type=int,
        metavar="N",
        help="memory test: server RSS growth per idle connection with N connections "
        "(5000 in --suite)",
    )
    add("--settle", type=float, default=1.0, help="memory test: seconds before reading RSS")
    add(
        "--client-procs",
        type=int,
        default=1,
        help="client processes (default 1: the server has one of the 2 cores)",
    )
    add(
        "--pin",
        choices=("split", "none", "same"),
        default="split",
        help="CPU affinity: split (default): the server on the first CPU, the clients on "
        "the others; none: the OS decides (run to run, p50 at 1 in flight then varies "
        "with whether both land on one CPU); same: all on the first CPU (its two CPU per "
        "request columns come out about equal even when one side does a few us more: see "
        "bench/README.md)",
    )
    add(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="with --client rmqtwist and --pin split: run each row N times each way round "
        "(default 1: once with the server on the first CPU, once swapped) and report the "
        "mean; at 1 in flight one pair's cli/srv moves by about 0.05",
    )
    add("--drain-timeout", type=float, default=10.0, help="seconds to wait for late answers")
    add("--json", metavar="FILE", help="also write the results as JSON to FILE")
    add(
        "--server-cmd",
        metavar="CMD",
        help="command that runs the server; {port}, {python} and {max_connections} are "
        f"filled in (default: {DEFAULT_SERVER_CMD!r})",
    )
    add("--connect", metavar="HOST:PORT", help="use this running server instead")
    add(
        "--floor-server",
        type=int,
        metavar="PORT",
        help="only run the reference server on 127.0.0.1:PORT (a bare Python epoll echo "
        "server, what the suite's 'floor' row measures), until killed",
    )
    add("--server-pid", type=int, help="with --connect: the server's PID (CPU and RSS)")
    add(
        "--server-profile",
        metavar="FILE",
        help="run the default server under cProfile, write its stats to FILE and print "
        "the top functions (slows the server down)",
    )
    return parser


def run(args: argparse.Namespace, log_dir: Path) -> list[Result]:
    bench = Bench(args, log_dir)
    results: list[Result] = []
    stype = SerializeType[args.serialize_type.upper()]
    try:
        if args.suite and args.client == "rmqtwist":
            bench.start_server()
            for name, in_flight, oneway in (
                ("64 in flight", 64, False),
                ("1 in flight", 1, False),
                ("oneway, received", 0, True),
            ):
                for t in (SerializeType.JSON, SerializeType.ROCKETMQ):
                    results.append(
                        bench.load(
                            name,
                            connections=1,
                            in_flight=in_flight,
                            oneway=oneway,
                            serialize_type=t,
                            target=None,  # cli/srv is shown, not judged
                            client="rmqtwist",
                        )
                    )
        elif args.suite:
            # (scenario, connections, in flight, oneway, target), each in both formats
            scenarios = (
                ("64 in flight", args.connections, 64, False, ("rps", TARGET_RPS)),
                ("1 in flight", 1, 1, False, ("p50", TARGET_P50_US)),
                ("oneway, received", args.connections, 0, True, ("oneway", TARGET_ONEWAY)),
            )
            bench.start_server()
            for name, connections, in_flight, oneway, target in scenarios:
                for t in (SerializeType.JSON, SerializeType.ROCKETMQ):
                    results.append(
                        bench.load(
                            name,
                            connections=connections,
                            in_flight=in_flight,
                            oneway=oneway,
                            serialize_type=t,
                            target=target,
                        )
                    )
            bench.start_server(template=FLOOR_SERVER_CMD)
            floor = bench.load(
                "1 in flight, floor",
                connections=1,
                in_flight=1,
                oneway=False,
                serialize_type=SerializeType.JSON,
            )
            floor.extra["note"] = "reference: a bare Python epoll echo server, not rmqtwist"
            results.append(floor)
            results.extend(bench.memory(args.idle_connections or 5000))
        elif args.idle_connections:
            results.extend(bench.memory(args.idle_connections))
        else:
            bench.start_server()
            oneway = args.oneway
            target = None
            if oneway:
                target = ("oneway", TARGET_ONEWAY)
            elif args.in_flight == 64:
                target = ("rps", TARGET_RPS)
            elif args.in_flight == 1:
                target = ("p50", TARGET_P50_US)
            if args.body_size != 128:
                target = None  # the targets are for 128-byte bodies
            if args.client == "rmqtwist":
                target = None  # cli/srv is shown, not judged (the target was withdrawn)
            results.append(
                bench.load(
                    "oneway, received" if oneway else f"{args.in_flight} in flight",
                    connections=args.connections,
                    in_flight=args.in_flight,
                    oneway=oneway,
                    serialize_type=stype,
                    target=target,
                    client=args.client,
                )
            )
    finally:
        bench.stop_server()
    return results


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.client == "rmqtwist":
        if args.connections not in (None, 1):
            parser.error("--client rmqtwist uses one connection (one per address)")
        if args.client_procs != 1:
            parser.error("--client rmqtwist runs one client process")
        if args.idle_connections and not args.suite:
            parser.error("--idle-connections measures the server only: use --client raw")
    elif args.client_profile:
        parser.error("--client-profile needs --client rmqtwist")
    if args.client_profile and args.suite:
        parser.error("--client-profile profiles one run: not with --suite")
    if args.connections is None:
        args.connections = 1 if args.client == "rmqtwist" else 4
    if args.connections < 1 or args.client_procs < 1 or args.repeat < 1:
        parser.error("--connections, --client-procs and --repeat must be at least 1")
    if args.repeat > 1 and (args.client != "rmqtwist" or args.pin != "split" or args.connect):
        parser.error(
            "--repeat repeats the swapped placements: --client rmqtwist --pin split, "
            "with the benchmark's own server (not --connect)"
        )
    if not args.oneway and not args.suite and not args.in_flight >= 1:
        parser.error("--in-flight must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.body_size < 0 or args.ext_fields < 0:
        parser.error("--duration must be positive; --warmup, --body-size, --ext-fields >= 0")
    if args.connect and args.server_cmd:
        parser.error("give --connect or --server-cmd, not both")
    if args.connect and not re.fullmatch(r"[^\s:]*:\d+|\[[0-9a-fA-F:]+\]:\d+", args.connect):
        parser.error("--connect takes HOST:PORT")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: the server gets stopped


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    if args.floor_server is not None:
        with contextlib.suppress(KeyboardInterrupt):
            floor_server(args.floor_server)
        return 0
    _check(args, parser)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the memory test opens thousands of sockets (the server inherits it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, _terminate)
    machine = machine_info(__version__.public())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rmqtwist-bench-") as tmp:
        try:
            results = run(args, Path(tmp))
        except KeyboardInterrupt:
            print("interrupted; the server was stopped", file=sys.stderr)
            return 130
        except RuntimeError as e:
            print(f"bench/rpc.py: error: {e}", file=sys.stderr)
            return 1
    elapsed = time.monotonic() - started
    machine["python_loop_ns_after"] = python_speed()
    print(
        f"rmqtwist {machine['rmqtwist']} ({machine['commit']}) remoting benchmark, "
        f"{machine['python']}, Twisted {machine['twisted']}, {machine['cpus']} x "
        f"{machine['cpu']} (Python loop {machine['python_loop_ns']} ns/iteration before, "
        f"{machine['python_loop_ns_after']} after; per CPU: "
        + ", ".join(f"{cpu}: {ns}" for cpu, ns in machine["python_loop_ns_per_cpu"].items())
        + f"); loads: {args.duration:g} s measured "
        f"after {args.warmup:g} s warm-up, {args.client_procs} {args.client} client "
        f"process(es), CPUs pinned: {args.pin}; {elapsed:.0f} s in all"
    )
    print_table(results)
    document = {
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",) and v is not None},
        "elapsed_s": round(elapsed, 1),
        "results": [_as_json(r) for r in results],
    }
    line = json.dumps(document)
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    if args.server_profile and not args.server_cmd and not args.connect:
        _print_profile(Path(args.server_profile), "server")
    if args.client_profile:
        _print_profile(Path(args.client_profile), "client")
    return 1 if any(r.error_count for r in results) else 0


def _as_json(result: Result) -> dict[str, Any]:
    data = dict(vars(result))
    for key in ("requests_per_s", "p50_us", "p99_us", "p999_us"):
        if data[key] is not None:
            data[key] = round(data[key], 1)
    for key in ("client_us_per_req", "server_us_per_req", "cpu_ratio"):
        if data[key] is not None:
            data[key] = round(data[key], 3)
    return data


def _print_profile(path: Path, whose: str) -> None:
    import pstats

    if not path.exists():
        print(f"no profile written to {path}", file=sys.stderr)
        return
    print(f"\n{whose} profile ({path}), top 25 by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)
    print(f"{whose} profile ({path}), top 25 by cumulative time:")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    sys.exit(main())
