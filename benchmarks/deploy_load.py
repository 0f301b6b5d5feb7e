"""How many connected clients one ``fedloom server`` holds: a bounded load test on 127.0.0.1.

    .venv/bin/python benchmarks/deploy_load.py --clients 1000 --per-round 100 --rounds 4 \\
        --processes 4 --json benchmarks/results/deploy_load.json

A real ``fedloom server`` process (mutual TLS, logistic regression on digits, ``--min-clients``
set to the cohort so that rounds start once a cohort can be drawn) and ``--processes`` client
processes (``_load_clients.py``), each running its share of the clients as ``run_client``
loops on threads, each client with its own certificate and TLS channel. Every 0.2 s it samples
the server process: resident memory (``VmRSS``) and threads (``Threads`` of
``/proc/PID/status``), and the connected clients (established TCP connections to its port, from
``/proc/net/tcp``). At the end: the server's history (clients and seconds per round), memory
per connected client (the RSS once every client is connected, less the RSS before any, over
the clients), and what each client process reported. Everything has a deadline: the run is
killed after ``--limit`` seconds.

With ``--stallers K``, once every client is connected, K more authenticated clients
(``_stall_clients.py``) join and answer each instruction with ``--stall-streams`` replies that
never send a byte: the slow-sender attack. Give ``--min-clients`` the honest count, and a
``--round-timeout`` the rounds can wait out (the stallers never answer)::

    .venv/bin/python benchmarks/deploy_load.py --clients 250 --stallers 250 --per-round 500 \
        --min-clients 250 --rounds 3 --round-timeout 45 --processes 2 \
        --json benchmarks/results/deploy_stall.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_PORT = re.compile(r"serving run \w+ on port (\d+)")


def _status(pid: int) -> tuple[int, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


def _connections(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (``/proc/net/tcp``)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--limit", type=float, default=480.0)
    p.add_argument("--stallers", type=int, default=0)
    p.add_argument("--stall-streams", type=int, default=2)
    p.add_argument("--min-clients", type=int, help="accepted updates a round needs (per-round)")
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--json", type=Path, default=HERE / "results" / "deploy_load.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fedloom-load-"))
    fedloom = [sys.executable, "-m", "fedloom"]
    ids = ",".join([f"c{i}" for i in range(args.clients)]
                   + [f"s{i}" for i in range(args.stallers)])  # fmt: skip
    t0 = time.monotonic()
    subprocess.run([*fedloom, "certs", "--out", "certs", "--server-host", "127.0.0.1",
                    "--clients", ids], cwd=work, check=True, capture_output=True)  # fmt: skip
    certs_s = time.monotonic() - t0
    err = (work / "server.err").open("wb")
    server = subprocess.Popen(
        [*fedloom, "server", "--certs", "certs", "--address", "127.0.0.1:0", "--model", "logreg",
         "--dataset", "digits", "--clients", str(args.clients + args.stallers), "--min-clients",
         str(args.min_clients or args.per_round), "--clients-per-round", str(args.per_round),
         "--rounds", str(args.rounds), "--wait-for-clients", "300", "--out", "run",
         "--round-timeout", str(args.round_timeout)],
        cwd=work, stdout=(work / "server.out").open("wb"), stderr=err,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    port = None
    deadline = time.monotonic() + 60
    while port is None and server.poll() is None and time.monotonic() < deadline:
        match = _PORT.search((work / "server.err").read_text(errors="replace"))
        port = match.group(1) if match else None
        time.sleep(0.1)
    if port is None:
        server.kill()
        print((work / "server.err").read_text(), file=sys.stderr)
        return 1
    idle_rss, idle_threads = _status(server.pid)
    share = -(-args.clients // args.processes)
    loaders = []
    for k in range(args.processes):
        first, count = k * share, min(share, args.clients - k * share)
        out = (work / f"load{k}.out").open("wb")
        loaders.append(subprocess.Popen(
            [sys.executable, str(HERE / "_load_clients.py"), port, str(work / "certs"),
             str(first), str(count), str(args.clients)],
            cwd=work, stdout=out, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    all_joined_at = None
    while server.poll() is None and time.monotonic() - started < args.limit:
        try:
            rss, threads = _status(server.pid)
        except (OSError, KeyError):  # gone, or a zombie with no memory left to report
            break
        joined = _connections(int(port))
        now = time.monotonic() - started
        samples.append({"t": now, "rss_kib": rss, "threads": threads, "joined": joined})
        if all_joined_at is None and joined >= args.clients:
            all_joined_at = now
            if args.stallers:
                stallers = subprocess.Popen(
                    [sys.executable, str(HERE / "_stall_clients.py"), port, str(work / "certs"),
                     str(args.stallers), str(args.stall_streams), str(args.limit)],
                    cwd=work, stdout=(work / "stall.out").open("wb"), stderr=subprocess.STDOUT,
                )  # fmt: skip
                loaders.append(stallers)
        time.sleep(0.2)
    timed_out = server.poll() is None
    for proc in (server, *loaders):
        if proc is not server and not timed_out:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)  # clients hear the run is over (stallers once their replies end)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    history_file = work / "run" / "history.json"
    history = json.loads(history_file.read_text()) if history_file.exists() else None
    reports = []
    stalled = None
    if args.stallers and (work / "stall.out").exists():
        text = (work / "stall.out").read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("RESULT ")), None)
        stalled = json.loads(line[7:])["ends"] if line else {"tail": text[-2000:]}
    for k in range(args.processes):
        text = (work / f"load{k}.out").read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("RESULT ")), None)
        reports.append(json.loads(line[7:]) if line else {"tail": text[-2000:]})
    joined_samples = [s for s in samples if s["joined"] >= args.clients]
    peak = max((s["rss_kib"] for s in samples), default=0)
    full_rss = joined_samples[0]["rss_kib"] if joined_samples else None
    result = {
        "clients": args.clients,
        "per_round": args.per_round,
        "processes": args.processes,
        "stallers": args.stallers,
        "stall_streams": args.stall_streams,
        "stalled_replies_ended": stalled,
        "certs_s": certs_s,
        "idle": {"rss_mib": idle_rss / 1024, "threads": idle_threads},
        "all_joined_after_s": all_joined_at,
        "rss_all_joined_mib": full_rss / 1024 if full_rss else None,
        "kib_per_joined_client": (full_rss - idle_rss) / args.clients if full_rss else None,
        "peak_rss_mib": peak / 1024,
        "max_threads": max((s["threads"] for s in samples), default=0),
        "max_joined": max((s["joined"] for s in samples), default=0),
        "timed_out": timed_out,
        "server_exit": server.returncode,
        "history": [
            {k: r.get(k) for k in ("round", "clients", "seconds", "accuracy")}
            for r in (history or {}).get("rounds", [])
        ],
        "client_errors": sum(len(r.get("errors", {})) for r in reports),
        "client_error_examples": [
            e for r in reports for e in list(r.get("errors", {}).values())[:2]
        ],
        "server_err_tail": (work / "server.err").read_text(errors="replace")[-3000:],
        "samples": samples,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "server_err_tail")},
                     indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
