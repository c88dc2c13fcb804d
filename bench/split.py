"""Split each side's CPU per request into rmqtwist's protocol work and the rest.

``rpc.py --client rmqtwist`` gives each process's whole CPU time per request. This runs
it with ``bench/timing`` on ``PYTHONPATH`` (see its ``sitecustomize.py``), which times
``RemotingProtocol.dataReceived`` in the client process and in the server, and splits
each placement's numbers into:

- ``proto``: time inside ``dataReceived``: decoding, matching or dispatching, the
  callbacks (the client's include the load generator's, which starts the next call),
  encoding, and handing the bytes to Twisted's ``transport.write``;
- ``rest``: the process's CPU per request minus that: the reactor's turns, the system
  calls, the kernel's TCP work charged to the process.

Both are per request: the client's over the requests its dispatcher sent, the server's
over those it received, in the same seconds (the client's process lifetime, first
timing line dropped as warm-up).

    python bench/split.py [--serialize-type json|rocketmq ...] [--in-flight N]
                          [--repeat N] [--duration S] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def read_timing(directory: Path) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """(client runs, each a list of lines, in time order; the server's lines)."""
    clients: list[list[dict[str, Any]]] = []
    server: list[dict[str, Any]] = []
    for path in directory.glob("timing-*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        if not lines:
            continue
        if lines[0]["role"] == "server":
            server.extend(lines)
        else:
            clients.append(lines)
    clients.sort(key=lambda lines: lines[0]["t"])
    server.sort(key=lambda line: line["t"])
    return clients, server


def per_request(lines: list[dict[str, Any]], counter: str) -> float | None:
    """Microseconds in dataReceived per request between the first and last line."""
    if len(lines) < 2:
        return None
    first, last = lines[0], lines[-1]
    requests = last[counter] - first[counter]
    return (last["ns"] - first["ns"]) / requests / 1000 if requests > 0 else None


def split_run(args: argparse.Namespace, stype: str) -> list[dict[str, Any]]:
    """One rpc.py row; a dict per placement run."""
    with tempfile.TemporaryDirectory(prefix="rmqtwist-split-") as tmp:
        directory = Path(tmp)
        result_file = directory / "rpc.json"
        env = dict(os.environ)
        env["RMQTWIST_BENCH_TIMING"] = str(directory)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE / "timing"), *filter(None, [env.get("PYTHONPATH")])]
        )
        command = [
            sys.executable,
            str(HERE / "rpc.py"),
            "--client",
            "rmqtwist",
            "--serialize-type",
            stype,
            "--in-flight",
            str(args.in_flight),
            "--duration",
            str(args.duration),
            "--json",
            str(result_file),
        ]
        if args.repeat > 1:
            command += ["--repeat", str(args.repeat)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not result_file.exists():
            raise SystemExit(f"rpc.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
        row = json.loads(result_file.read_text())["results"][0]
        if row["errors"]:
            raise SystemExit(f"rpc.py reported errors: {row['errors']}")
        clients, server = read_timing(directory)
    placements = row["extra"]["placements"]
    if len(clients) != len(placements):
        raise SystemExit(f"{len(clients)} client timing files for {len(placements)} runs")
    runs = []
    for lines, placement in zip(clients, placements, strict=True):
        lines = lines[1:]  # the first EVERY calls include the warm-up
        if not lines:
            raise SystemExit("a client run too short to time: raise --duration")
        start, end = lines[0]["t"], lines[-1]["t"]
        client_proto = per_request(lines, "requests_sent")
        server_proto = per_request(
            [line for line in server if start <= line["t"] <= end], "requests_received"
        )
        if client_proto is None or server_proto is None:
            raise SystemExit("too few timing lines in a run: raise --duration")
        client_total = placement["client_us_per_req"]
        server_total = placement["server_us_per_req"]
        runs.append(
            {
                "serialize_type": stype,
                "client_cpus": placement["client_cpus"],
                "client_us_per_req": client_total,
                "server_us_per_req": server_total,
                "client_proto_us": round(client_proto, 3),
                "server_proto_us": round(server_proto, 3),
                "client_rest_us": round(client_total - client_proto, 3),
                "server_rest_us": round(server_total - server_proto, 3),
            }
        )
    return runs


def print_row(label: str, cpus: str, runs: list[dict[str, Any]]) -> None:
    """One line of the table: the means of ``runs`` (one run, or all of a format's)."""

    def mean(key: str) -> float:
        return statistics.fmean(run[key] for run in runs)

    def ratio(what: str) -> float:
        return mean(f"client_{what}") / mean(f"server_{what}")

    print(
        f"{label:<9} {cpus:>8} {mean('client_us_per_req'):>7.1f} "
        f"{mean('server_us_per_req'):>7.1f} {ratio('us_per_req'):>7.3f} "
        f"{mean('client_proto_us'):>9.2f} {mean('server_proto_us'):>9.2f} "
        f"{ratio('proto_us'):>6.3f} {mean('client_rest_us'):>8.1f} "
        f"{mean('server_rest_us'):>8.1f} {ratio('rest_us'):>6.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--serialize-type",
        action="append",
        choices=["json", "rocketmq"],
        help="header format(s) (default both)",
    )
    parser.add_argument("--in-flight", type=int, default=1, help="calls outstanding (1)")
    parser.add_argument("--repeat", type=int, default=2, help="placement pairs per row (2)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--json", metavar="FILE", help="also write the runs as JSON")
    args = parser.parse_args()
    if args.in_flight < 1 or args.repeat < 1 or args.duration < 3:
        parser.error("--in-flight and --repeat must be >= 1, --duration >= 3")
    header = (
        f"{'type':<9} {'cli cpus':>8} {'cli us':>7} {'srv us':>7} {'cli/srv':>7} "
        f"{'cli proto':>9} {'srv proto':>9} {'ratio':>6} {'cli rest':>8} {'srv rest':>8} "
        f"{'ratio':>6}"
    )
    print(f"CPU per request at {args.in_flight} in flight: whole, in dataReceived, the rest")
    print(header)
    print("-" * len(header))
    everything = []
    for stype in args.serialize_type or ["json", "rocketmq"]:
        runs = split_run(args, stype)
        everything += runs
        for run in runs:
            print_row(stype, str(run["client_cpus"]), [run])
        print_row("mean", "", runs)
    result = json.dumps({"in_flight": args.in_flight, "runs": everything})
    print(result)
    if args.json:
        Path(args.json).write_text(result)


if __name__ == "__main__":
    main()
