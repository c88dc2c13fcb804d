"""What the benchmarks share: the server process (started on a free 127.0.0.1 port, always
stopped), forked load processes, CPU pinning, CPU and RSS readings from /proc, the
machine's description, and tables.

Nothing here imports Twisted's reactor: a forked load process installs its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = [
    "Column",
    "LoadProcess",
    "LoadWindow",
    "ServerProcess",
    "busy_seconds",
    "cpu_seconds",
    "cpu_speeds",
    "die_with_parent",
    "exit_on_sigterm",
    "free_port",
    "machine_info",
    "percentile",
    "print_profile",
    "print_stacks",
    "print_table",
    "python_speed",
    "rss_kib",
    "settled_rss",
    "sleep_until",
    "split_cpus",
]


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


#: ``python -c PROFILED_TWIST STATS_FILE ...`` runs twist under cProfile (``python -m
#: cProfile`` would write nothing: after a graceful stop twist kills itself with the
#: signal it got), writing the stats from a reactor shutdown trigger.
PROFILED_TWIST = """
import cProfile, runpy, sys
from twisted.internet import reactor
path = sys.argv.pop(1)
profile = cProfile.Profile()
def dump():
    profile.disable()
    profile.dump_stats(path)
reactor.addSystemEventTrigger("after", "shutdown", dump)
profile.enable()
runpy.run_module("twisted", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies, however."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG


def split_cpus(pin: str) -> tuple[list[int] | None, list[int] | None]:
    """(server CPUs, load CPUs): ``split`` gives the server the first CPU and the load the
    others; ``same`` puts both on the first; ``none`` lets the OS choose."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "split" and len(cpus) >= 2:
        return cpus[:1], cpus[1:]
    if pin == "same":
        return cpus[:1], cpus[:1]
    return None, None


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so that ``finally`` blocks stop the processes."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


class ServerProcess:
    """A server under test: ``argv(port)`` run on a free port, in its own session (so that
    Ctrl-C reaches the benchmark, which stops it), pinned to ``cpus``, sent SIGTERM if the
    benchmark dies, and killed if it does not stop within 15 s. A context manager."""

    def __init__(
        self,
        argv: Callable[[int], Sequence[str]],
        log_dir: Path,
        cpus: list[int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.log_dir = log_dir
        self.cpus = cpus
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.pid: int | None = None  # the process that serves (past any wrapper)
        self.log_path = log_dir / "server.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> None:
        argv: Sequence[str] = ()
        for _attempt in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            argv = list(self.argv(self.port))
            self.log_path = self.log_dir / f"server-{self.port}.log"
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=self._preexec,
                    env=self.env,
                )
            if self._wait_listening(timeout):
                self.pid = innermost(self.proc.pid)
                return
            self.stop()
        raise RuntimeError(
            f"the server did not start listening: {' '.join(argv)}\n"
            f"its log ({self.log_path}):\n{tail(self.log_path)}"
        )

    def _preexec(self) -> None:
        die_with_parent(signal.SIGTERM)  # twist then stops gracefully
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def _wait_listening(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the whole process group (a wrapper may not pass it on), then
        SIGKILL if it is still there after ``timeout``. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait(5)


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)  # started with start_new_session: pgid == pid


def innermost(pid: int) -> int:
    """The process a command ends up running: follows only children (a shell, a shim)."""
    for _ in range(5):
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            break
        if len(children) != 1:
            break
        pid = int(children[0])
    return pid


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LoadProcess:
    """``target(pipe, *args)`` in a forked process pinned to ``cpus``, killed when the
    benchmark dies or :meth:`stop` is called. It talks with the benchmark over ``pipe``:
    by convention it sends ``("ready", info)``, gets ``("go", ...)``, and ends with
    ``("result", value)`` or ``("error", text)``."""

    def __init__(
        self, target: Callable[..., None], args: tuple[Any, ...], cpus: list[int] | None
    ) -> None:
        context = multiprocessing.get_context("fork")
        self.pipe, child_end = context.Pipe()
        self.proc = context.Process(
            target=_load_main, args=(target, child_end, cpus, os.getpid(), args), daemon=True
        )
        self.proc.start()
        child_end.close()

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def send(self, message: Any) -> None:
        self.pipe.send(message)

    def expect(self, kind: str, timeout: float) -> Any:
        """The payload of the next message, which must be ``(kind, payload)``."""
        if not self.pipe.poll(timeout):
            raise RuntimeError(f"load process {self.proc.pid}: nothing within {timeout:g} s")
        try:
            got, payload = self.pipe.recv()
        except EOFError:
            raise RuntimeError(
                f"load process {self.proc.pid} died (exit code {self.proc.exitcode})"
            ) from None
        if got == "error":
            raise RuntimeError(f"load process: {payload}")
        if got != kind:
            raise RuntimeError(f"load process sent {got!r}, expected {kind!r}")
        return payload

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.pipe.close()


def _load_main(
    target: Callable[..., None],
    pipe: Connection,
    cpus: list[int] | None,
    parent: int,
    args: tuple[Any, ...],
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark handles Ctrl-C
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return  # it died already
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        target(pipe, *args)
    except BaseException as e:
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(e).__name__}: {e}"))


class LoadWindow:
    """A load process's measured window: what it completed in it, its wall time and the
    process's CPU time (``time.process_time``: user + system, all threads), optionally
    under cProfile (``profile``: the stats file written when the window closes)."""

    def __init__(self, profile: str | None = None) -> None:
        self.completed = 0
        self.counting = False
        self.closed = False
        self.wall_ns = 0
        self.cpu_ns = 0
        self.profile_path = profile
        self._profile: Any = None

    def open(self) -> None:
        if self.counting or self.closed:
            return
        if self.profile_path:
            import cProfile

            self._profile = cProfile.Profile()
            self._profile.enable()
        self.counting = True
        self.wall_ns = -time.perf_counter_ns()
        self.cpu_ns = -time.process_time_ns()

    def close(self) -> None:
        if not self.counting:
            self.closed = True
            return
        self.cpu_ns += time.process_time_ns()
        self.wall_ns += time.perf_counter_ns()
        self.counting = False
        self.closed = True
        if self._profile is not None:
            self._profile.disable()
            self._profile.dump_stats(self.profile_path)
            self._profile = None

    def count(self, n: int = 1) -> None:
        if self.counting:
            self.completed += n

    def result(self) -> dict[str, Any]:
        """``completed``, ``window_s`` and ``cpu_s``, what the benchmark divides."""
        return {
            "completed": self.completed,
            "window_s": self.wall_ns / 1e9,
            "cpu_s": self.cpu_ns / 1e9,
        }


def sleep_until(deadline_ns: int) -> None:
    """Sleep until ``time.monotonic_ns()`` reaches ``deadline_ns``."""
    left = (deadline_ns - time.monotonic_ns()) / 1e9
    if left > 0:
        time.sleep(left)


# ---------------------------------------------------------------------------
# Readings
# ---------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of ``pid`` (all its threads) so far, or None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time all CPUs of the machine have spent busy since boot (``/proc/stat``: all but
    idle and iowait), to tell how much of a window went to other processes."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def settled_rss(pid: int, settle: float) -> int:
    """VmRSS once it stops changing (after ``settle`` seconds, then up to 5 s more)."""
    time.sleep(settle)
    last = rss_kib(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_kib(pid)
        if now == last:
            break
        last = now
    return last


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty list."""
    index = math.ceil(q * len(sorted_values) - 1e-9) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, index))]


def python_speed() -> float:
    """Nanoseconds per iteration of a plain Python loop (best of 5): how fast this
    machine runs Python right now, to compare runs made at different times."""
    best = math.inf
    for _ in range(5):
        started = time.perf_counter_ns()
        total = 0
        for i in range(200_000):
            total += i
        best = min(best, (time.perf_counter_ns() - started) / 200_000)
    return round(best, 1)


def cpu_speeds() -> dict[int, float]:
    """:func:`python_speed` on each CPU this process may use, pinned to it in turn (the
    CPUs of a VM need not be equally fast)."""
    cpus = sorted(os.sched_getaffinity(0))
    speeds: dict[int, float] = {}
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, [cpu])
            speeds[cpu] = python_speed()
    finally:
        os.sched_setaffinity(0, cpus)
    return speeds


def machine_info(version: str) -> dict[str, Any]:
    """The machine, the software and the commit a run was made on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    import twisted

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "twisted": twisted.__version__,
        "rmqtwist": version,
        "commit": commit,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "python_loop_ns": python_speed(),
        "python_loop_ns_per_cpu": cpu_speeds(),
    }


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


class Column:
    """One column of :func:`print_table`: a title, a width, and how a value is shown
    (a format spec; None values show as ``-``)."""

    def __init__(self, key: str, title: str, width: int, spec: str = ",.0f") -> None:
        self.key = key
        self.title = title
        self.width = width
        self.spec = spec

    def cell(self, row: dict[str, Any]) -> str:
        value = row.get(self.key)
        if value is None:
            text = "-"
        elif isinstance(value, str):
            text = value
        else:
            text = format(value, self.spec)
        return text.ljust(self.width) if self.spec == "<" else text.rjust(self.width)


def print_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> None:
    """Rows as a fixed-width text table (a ``<`` spec left-aligns a text column)."""
    print(
        "  ".join(
            c.title.ljust(c.width) if c.spec == "<" else c.title.rjust(c.width) for c in columns
        ).rstrip()
    )
    print("  ".join("-" * c.width for c in columns))
    for row in rows:
        print("  ".join(c.cell(row) for c in columns).rstrip())
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------

_FRAME = re.compile(r"^(.*) \((?:.*/)?([^/()]+?)(?::\d+)?\)$")


def print_stacks(path: Path, title: str, process: str | None = None, top: int = 40) -> None:
    """Where the samples of py-spy's ``--format raw`` file ``path`` went (only the stacks
    whose process frame holds ``process``, if given): each function's share of the busy
    samples with its callees (inclusive) and without (self), as ``function (file)``."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError), path.open() as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if process is not None and process not in stack:
                continue
            frames = [
                _FRAME.sub(r"\1 (\2)", f) for f in stack.split(";") if not f.startswith("process ")
            ]
            if not frames or not count.isdigit():
                continue
            n = int(count)
            total += n
            for frame in set(frames):
                inclusive[frame] += n
            own[frames[-1]] += n
    print(f"\n{title}: {total} busy samples (py-spy, {path})")
    if not total:
        return
    # Frames in (nearly) every sample are the reactor's loop and its callers: left out.
    inclusive = Counter({f: n for f, n in inclusive.items() if n < 0.98 * total})
    for name, counter in (("inclusive", inclusive), ("self", own)):
        print(f"  -- {name}")
        for frame, n in counter.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {frame}")
    sys.stdout.flush()


def print_profile(path: Path, title: str, top: int = 25) -> None:
    """The top functions of cProfile stats file ``path``, by own time and with callees."""
    import io
    import pstats

    print(f"\n{title} (cProfile, {path})")
    try:
        stream = io.StringIO()
        stats = pstats.Stats(str(path), stream=stream)
    except (OSError, TypeError) as e:
        print(f"  no profile: {e}")
        return
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        stats.sort_stats(order).print_stats(top)
    print(stream.getvalue())
    sys.stdout.flush()
