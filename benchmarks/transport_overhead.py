"""Transport overhead: a gRPC round's bytes on the wire and its seconds beside simulation.

Run from the repository root (about 2.5 minutes on 2 cores with the defaults)::

    .venv/bin/python benchmarks/transport_overhead.py --perf \\
        --json benchmarks/results/transport_overhead.json

**The workload.** ``--clients`` (10) clients, a model of ``--params`` (1,000,000) float32
parameters, FedAvg (every client every round, example-weighted), ``--rounds`` (5) rounds, no
evaluation. Training is left out so that a round costs what moving the model costs: the
script's ``DeltaTrainer`` (the ``Trainer`` protocol) returns the parameters plus a fixed delta
per client (``default_rng(1000 + i)`` normal * 0.01 for client *i*, drawn once, before the
rounds) and reports *i* + 1 examples. Client *i*'s only data is *i* + 1 rows holding *i*, which
is how the one trainer of the simulation tells its clients apart.

**The sessions**, all of them in every repeat, in this order:

- ``simulation``: ``run_rounds(InProcessFleet(...), fedavg(), ...)`` in this process: the
  baseline.
- ``grpc_mtls``: this process runs ``GrpcFleet`` + ``start_server`` with mutual TLS (a
  federation from ``create_federation`` in a temporary folder) and ``run_rounds`` after
  ``fleet.wait_for_clients``. The clients are ``--clients`` separate processes (this script
  with ``_client``), each calling ``run_client``: each client has its own interpreter and GIL,
  as deployed clients do, and on 2 cores they compete with the server for the CPU, which is
  the honest cost of running 11 parties on one machine (client threads in the server's process
  would share its GIL instead).
- ``grpc_insecure``: the same without TLS (``tls=None``), to show what TLS costs.
- ``grpc_mtls_proxy`` and ``grpc_insecure_proxy``: the same two with the clients dialing a
  counting TCP proxy (this script with ``_proxy``, a process of its own with two forwarding
  threads per connection) that forwards to the server and counts every byte in each
  direction: TLS records, HTTP/2 frames, gRPC and protobuf framing, heartbeats and long polls
  included. Its counters are read after the joins and after every round (``on_round``).
  ``grpc_mtls_proxy`` waits ``--idle`` seconds between the joins and round 1 to measure idle
  traffic; the other sessions wait 1 second, so that every client's first long poll is in.

**Bytes.** Raw bytes per round = 4 x params x clients in each direction (the model down to
every client, the update up from every client). A round's wire bytes are those between two
consecutive counter readings. Steady state is rounds 2 to R; round 1, the joins (per client,
the bytes of its connection's first ``EARLY_S`` seconds: TLS handshake, HTTP/2 preface and
settings, Join, the first Pull), idle traffic and the end of the session are reported apart.

**Time.** Each round's ``seconds`` from ``run_rounds`` (round start to the new model). Per
session, the median of the steady rounds; the ratio gRPC / simulation and the added seconds
are taken within a repeat, then summarised over the repeats (median and range). The timing
figures come from the sessions without the proxy. CPU seconds per round: this process's (the
server: all its threads) and the clients' (each client's ``time.process_time()`` from its
join to its exit, summed).

**Checks.** Every gRPC session must end with the simulation's final model (to 1e-6), every
client must have answered every round, and the wire bytes must be at least the raw bytes.

**The codec alone.** One message of the model's size through ``_wire`` in this process, no
network: encode + ``SerializeToString`` of every chunk (what a sender does), ``FromString`` of
every chunk + ``decode`` + the vector (what a receiver does), beside one ``bytes`` copy of
the vector; median and range of 21, once in a fresh process (this script with ``_codec``) and
once in this process after the sessions: the first touch of fresh memory makes most of the
difference, and glibc's malloc keeps big blocks for reuse only once it has seen some freed.

**Where the CPU goes** (``--perf``, needs Linux ``perf``). After the repeats, one more
``grpc_mtls`` session of ``PROFILED_ROUNDS`` rounds runs under ``perf record --call-graph
dwarf`` (server and clients; not part of the timings, since perf slows what it watches), and
each sample is charged to the first frame from the leaf outside the kernel, libc and the
loader: gRPC core, protobuf, numpy, the Python functions that copy bytes, the GIL, or the
interpreter.

Progress goes to stderr, Markdown tables to stdout, everything to the JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import mmap
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _meta import cpu_model, git_state, log, spread
from google import protobuf

from fedloom.client import ClientContext
from fedloom.data import ArrayData, ClientData, from_arrays
from fedloom.messages import Config, EvalResult, FitResult, Instruction, Reply
from fedloom.params import ParamSpec, Vector
from fedloom.server import run_rounds
from fedloom.simulation import InProcessFleet
from fedloom.strategy import fedavg
from fedloom.transport._certs import Credentials, create_federation
from fedloom.transport._client import ClientOptions, run_client
from fedloom.transport._fleet import GrpcFleet
from fedloom.transport._proto import fedloom_pb2 as pb
from fedloom.transport._service import ServerOptions, start_server
from fedloom.transport._wire import CHUNK_BYTES, decode, encode_instruction, encode_reply

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "transport_overhead.json"
SESSIONS = ("simulation", "grpc_mtls", "grpc_insecure", "grpc_mtls_proxy", "grpc_insecure_proxy")
GRPC_SESSIONS = SESSIONS[1:]
PROXIED = ("grpc_mtls_proxy", "grpc_insecure_proxy")
MAX_CONNECTIONS = 256
EARLY_S = 2.0  # a connection's first seconds: its handshake and join (heartbeats start at 3 s)
DELTA_SCALE = 0.01
PROFILED_ROUNDS = 20


# ----------------------------------------------------------------------------- workload


class DeltaTrainer:
    """A trainer that does no training: ``fit`` returns the parameters plus client i's delta.

    Client i is known by its data (rows holding i); its delta is drawn once, when the trainer
    is built, so that ``fit`` costs one vector addition.
    """

    def __init__(self, params: int, clients: Iterable[int]) -> None:
        self._spec = ParamSpec(("w",), ((params,),), ("float32",))
        self._deltas = {
            i: (np.random.default_rng(1000 + i).standard_normal(params, np.float32) * DELTA_SCALE)
            for i in clients
        }

    @property
    def spec(self) -> ParamSpec:
        return self._spec

    def init_parameters(self, seed: int) -> Vector:
        return np.random.default_rng(seed).standard_normal(self._spec.shapes[0][0], np.float32)

    def fit(self, parameters: Vector, data: ArrayData, config: Config, seed: int) -> FitResult:
        index = int(data.x[0, 0])
        return FitResult(parameters + self._deltas[index], len(data))

    def evaluate(self, parameters: Vector, data: ArrayData) -> EvalResult:
        return EvalResult(0.0, 0.0, len(data))


def client_arrays(index: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((index + 1, 1), index, np.float32), np.zeros(index + 1, np.int64)


def client_data(index: int) -> ClientData:
    x, y = client_arrays(index)
    return ClientData(ArrayData(x, y), ArrayData(np.zeros((0, 1), np.float32), y[:0]))


# ----------------------------------------------------------------------------- the proxy


def _counters(path: Path) -> tuple[mmap.mmap, memoryview]:
    """Shared uint64 counters: [connections, then per connection up, down, up early, down
    early]; each is written by one thread of the proxy only."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 8 * (1 + 4 * MAX_CONNECTIONS))
    finally:
        os.close(fd)
    return mm, memoryview(mm).cast("Q")


def _pump(src: socket.socket, dst: socket.socket, c: memoryview, at: int, t0: float) -> None:
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    while True:
        try:
            n = src.recv_into(buf)
        except OSError:
            n = 0
        if n == 0:
            break
        c[at] += n  # counted when received, before it is forwarded
        if time.monotonic() - t0 < EARLY_S:
            c[at + 2] += n
        try:
            dst.sendall(view[:n])
        except OSError:
            break
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def proxy_main(target_port: int, counters_path: Path) -> None:
    """Forward 127.0.0.1:<printed port> to 127.0.0.1:target_port, counting bytes."""
    _mm, c = _counters(counters_path)
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        client, _ = listener.accept()
        t0 = time.monotonic()
        server = socket.create_connection(("127.0.0.1", target_port))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slot = c[0]
        if slot >= MAX_CONNECTIONS:
            raise SystemExit("too many connections for the proxy's counters")
        c[0] = slot + 1
        base = 1 + 4 * slot
        for src, dst, at in ((client, server, base), (server, client, base + 1)):
            threading.Thread(target=_pump, args=(src, dst, c, at, t0), daemon=True).start()


def _read_counters(c: memoryview) -> dict[str, Any]:
    n = c[0]
    rows = [c[1 + 4 * i : 5 + 4 * i].tolist() for i in range(n)]
    return {
        "connections": n,
        "up": sum(r[0] for r in rows),
        "down": sum(r[1] for r in rows),
        "join_up": [r[2] for r in rows],
        "join_down": [r[3] for r in rows],
    }


# ----------------------------------------------------------------------------- a client


def client_main(index: int, address: str, certs: str | None) -> None:
    """One client process: join, answer until the run is over, print what it did as JSON."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    cid = str(index)
    tls = None
    if certs is not None:
        base = Path(certs)
        creds = Credentials(
            base / "clients" / f"{cid}.pem", base / "clients" / f"{cid}.key", base / "ca.pem"
        )
        tls = creds.load()
    joined_cpu = [0.0]

    def make_context(model: dict[str, Any]) -> ClientContext:
        trainer = DeltaTrainer(int(model["params"]), [index])
        joined_cpu[0] = time.process_time()
        return ClientContext(cid, client_data(index), trainer)

    options = ClientOptions(address, tls, client_id=cid, give_up=30.0)
    answered = run_client(options, make_context)
    cpu = time.process_time() - joined_cpu[0]
    print(json.dumps({"client": cid, "answered": answered, "cpu_after_join_s": cpu}), flush=True)


# ----------------------------------------------------------------------------- sessions


def simulation_session(params: int, clients: int, rounds: int, init: Vector) -> dict[str, Any]:
    ds = from_arrays([client_arrays(i) for i in range(clients)])
    fleet = InProcessFleet(ds, DeltaTrainer(params, range(clients)))
    cpu = time.process_time()
    started = time.perf_counter()
    result = run_rounds(fleet, fedavg(), init, rounds=rounds)
    return {
        "round_s": result.history.column("seconds"),
        "rounds_wall_s": time.perf_counter() - started,
        "server_cpu_s": time.process_time() - cpu,
        "final": result.parameters,
    }


def _spawn(cmd: list[str], log_file: Path) -> subprocess.Popen[str]:
    with log_file.open("ab") as err:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)


def grpc_session(
    name: str,
    args: argparse.Namespace,
    init: Vector,
    federation: Path,
    work: Path,
    perf_data: Path | None = None,
) -> dict[str, Any]:
    tls = "insecure" not in name
    proxied = name in PROXIED
    run_id = uuid.uuid4().hex
    fleet = GrpcFleet(run_id)
    server_tls = (
        Credentials(federation / "server.pem", federation / "server.key", federation / "ca.pem")
        if tls
        else None
    )
    options = ServerOptions(
        "127.0.0.1:0", server_tls.load() if server_tls else None, {"params": args.params}
    )
    server, port = start_server(fleet, options)
    log_file = work / f"{name}.log"
    me = [sys.executable, str(Path(__file__).resolve())]
    proxy: subprocess.Popen[str] | None = None
    counters: memoryview | None = None
    procs: list[subprocess.Popen[str]] = []
    out: dict[str, Any] = {}
    try:
        if proxied:
            path = work / f"{name}-{run_id}.counters"
            path.write_bytes(bytes(8 * (1 + 4 * MAX_CONNECTIONS)))
            _mm, counters = _counters(path)
            proxy = _spawn([*me, "_proxy", str(port), str(path)], log_file)
            assert proxy.stdout is not None
            port = int(proxy.stdout.readline())
        address = f"127.0.0.1:{port}"
        started = time.perf_counter()
        for i in range(args.clients):
            cmd = [*me, "_client", str(i), address]
            procs.append(_spawn(cmd + ([str(federation)] if tls else []), log_file))
        if not fleet.wait_for_clients(args.clients, 120):
            raise RuntimeError(
                f"{name}: only {len(fleet.clients())} clients joined; see {log_file}"
            )
        out["join_wall_s"] = time.perf_counter() - started
        # the idle window: for idle traffic; elsewhere, a second for every first long poll to land
        idle = args.idle if name == "grpc_mtls_proxy" else 1.0
        snaps: list[dict[str, Any]] = []
        if counters is not None:
            snaps.append(_read_counters(counters))
        time.sleep(idle)
        if counters is not None:
            snaps.append(_read_counters(counters))

        def on_round(_record: Any) -> None:
            if counters is not None:
                snaps.append(_read_counters(counters))

        perf = None
        if perf_data is not None:
            pids = ",".join(str(pid) for pid in [os.getpid(), *(p.pid for p in procs)])
            cmd = ["perf", "record", "-F", "499", "--call-graph", "dwarf,16384", "-q"]
            perf = subprocess.Popen([*cmd, "-o", str(perf_data), "-p", pids])
            time.sleep(1.0)  # perf attaches
            out["perf_server_pid"] = os.getpid()
        cpu = time.process_time()
        started = time.perf_counter()
        result = run_rounds(
            fleet, fedavg(), init, rounds=args.rounds, round_timeout=120.0, on_round=on_round
        )
        out["rounds_wall_s"] = time.perf_counter() - started
        out["server_cpu_s"] = time.process_time() - cpu
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        fleet.finish()
        reports = []
        for p in procs:
            stdout, _ = p.communicate(timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"{name}: a client exited with {p.returncode}; see {log_file}")
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
        if counters is not None:
            snaps.append(_read_counters(counters))
            out["bytes"] = _bytes(snaps, idle)
        out["clients"] = reports
        out["clients_cpu_s"] = sum(r["cpu_after_join_s"] for r in reports)
        out["round_s"] = result.history.column("seconds")
        out["final"] = result.parameters
        return out
    finally:
        fleet.finish()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        server.stop(grace=0.5).wait()


def _bytes(snaps: list[dict[str, Any]], idle: float) -> dict[str, Any]:
    """Byte counts from the counter readings: joined, after idle, after each round, at the end."""
    joined, after_idle, *rounds, end = snaps

    def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
        return {"down": b["down"] - a["down"], "up": b["up"] - a["up"]}

    per_round = [diff(a, b) for a, b in zip([after_idle, *rounds[:-1]], rounds, strict=True)]
    clients = len(end["join_up"])
    return {
        "connections": end["connections"],
        "join_per_connection": {"up": end["join_up"], "down": end["join_down"]},
        "until_joined": {"up": joined["up"], "down": joined["down"]},
        "idle_s": idle,
        "idle": diff(joined, after_idle),
        "idle_per_client_per_s": {
            k: v / idle / max(clients, 1) for k, v in diff(joined, after_idle).items()
        },
        "rounds": per_round,
        "after_last_round": diff(rounds[-1], end),
    }


# ----------------------------------------------------------------------------- the codec alone


def _timed(call: Callable[[], object], repeats: int = 21) -> dict[str, float]:
    """Median and range: the minimum would hide the fresh-memory page faults that a new 4 MB
    buffer costs now and then (often, in a process that also does other work)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return spread(times)


def codec(params: int) -> dict[str, Any]:
    vector = np.random.default_rng(0).standard_normal(params, np.float32)
    ins = Instruction(1, "fit", vector, {"seed": 0})
    wire = [c.SerializeToString() for c in encode_instruction("r", "m", ins)]
    reply = Reply("0", 1, "fit", vector, 1)
    reply_wire = [c.SerializeToString() for c in encode_reply("r", "m", reply)]

    def send_instruction() -> object:
        return [c.SerializeToString() for c in encode_instruction("r", "m", ins)]

    def receive_instruction() -> object:
        return decode((pb.Chunk.FromString(b) for b in wire), 1 << 31).instruction().parameters

    def send_reply() -> object:
        return [c.SerializeToString() for c in encode_reply("r", "m", reply)]

    def receive_reply() -> object:
        return decode((pb.Chunk.FromString(b) for b in reply_wire), 1 << 31).reply("0").vector

    return {
        "message_bytes": sum(len(b) for b in wire),
        "chunks": len(wire),
        "chunk_bytes": CHUNK_BYTES,
        "seconds": {
            "encode + serialize an instruction": _timed(send_instruction),
            "parse + decode an instruction": _timed(receive_instruction),
            "encode + serialize a reply": _timed(send_reply),
            "parse + decode a reply": _timed(receive_reply),
            "one copy of the vector (bytes(...))": _timed(lambda: bytes(vector.data)),
        },
    }


# ----------------------------------------------------------------------------- a CPU profile


def _owner(frames: list[tuple[str, str]]) -> str:
    """What a perf sample's CPU time is charged to: the first frame (from the leaf) outside
    the kernel, libc and the loader; within Python, the C function that copies bytes, or the
    GIL, or the interpreter."""
    for sym, dso in frames:
        if dso.startswith(("[kernel", "libc", "ld-linux", "[unknown", "[vdso", "inlined")):
            continue
        if dso.startswith("cygrpc"):
            return "gRPC core (cygrpc: HTTP/2, TLS, its syscalls)"
        if dso.startswith("_message"):
            return "protobuf (upb)"
        if dso.startswith("_multiarray_umath"):
            return "numpy"
        if dso.startswith("libpython"):
            if sym in COPY_FUNCTIONS:
                return "Python bytes/bytearray copies (_wire)"
            if "gil" in sym or "lock" in sym.lower():
                return "the GIL and locks"
            return "the Python interpreter"
        return dso
    return "unattributed"


COPY_FUNCTIONS = {
    "PyBuffer_ToContiguous",  # bytes(memoryview[...])
    "PyBytes_FromStringAndSize",  # chunk.data, SerializeToString's result
    "bytearray_ass_subscript",  # buffer[filled:end] = chunk.data
    "bytearray___init__",  # bytearray(total): zero-filled
    "stringlib_bytes_join",
}


def perf_breakdown(perf_data: Path, server_pid: int) -> dict[str, dict[str, Any]]:
    """Shares of the sampled CPU time by owner (see :func:`_owner`), server and clients apart."""
    done = subprocess.run(
        ["perf", "script", "-i", str(perf_data), "-F", "pid,tid,comm,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    )
    counts: dict[str, dict[str, int]] = {"server": {}, "clients": {}}
    for block in done.stdout.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines or lines[0].startswith((" ", "\t")):
            continue
        pid = int(lines[0].split()[1].split("/")[0])
        frames = []
        for line in lines[1:]:
            parts = line.strip().split(" ", 1)
            if len(parts) == 2 and parts[1].endswith(")") and " (" in parts[1]:
                sym, dso = parts[1][:-1].rsplit(" (", 1)
                frames.append((sym, dso.rsplit("/", 1)[-1]))
        side = counts["server" if pid == server_pid else "clients"]
        owner = _owner(frames)
        side[owner] = side.get(owner, 0) + 1
    shares = {
        side: {k: v / max(sum(c.values()), 1) for k, v in sorted(c.items(), key=lambda kv: -kv[1])}
        for side, c in counts.items()
    }
    return {**shares, "samples": {side: sum(c.values()) for side, c in counts.items()}}


# ----------------------------------------------------------------------------- summary


def _wire_summary(b: list[dict[str, Any]], raw: int, clients: int, steady: slice) -> dict[str, Any]:
    wire: dict[str, Any] = {}
    for label, pick in (("steady", steady), ("round1", slice(0, 1))):
        for d in ("down", "up", "both"):
            per = [
                statistics.median(
                    x["down"] + x["up"] if d == "both" else x[d] for x in bb["rounds"][pick]
                )
                for bb in b
            ]
            scale = 2 * raw if d == "both" else raw
            wire[f"{label}_{d}"] = {
                "bytes": spread(per),
                "ratio_to_raw": spread([p / scale for p in per]),
                "extra_bytes_per_client": spread([(p - scale) / clients for p in per]),
            }
    wire["join_per_client"] = {
        d: spread([v for bb in b for v in bb["join_per_connection"][d]]) for d in ("down", "up")
    }
    wire["idle_per_client_per_s"] = {
        d: spread([bb["idle_per_client_per_s"][d] for bb in b]) for d in ("down", "up")
    }
    wire["after_last_round"] = {
        d: spread([bb["after_last_round"][d] for bb in b]) for d in ("down", "up")
    }
    wire["connections"] = sorted({bb["connections"] for bb in b})
    return wire


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    raw = 4 * args.params * args.clients  # per direction per round
    steady = slice(1, None) if args.rounds > 1 else slice(0, None)
    timing: dict[str, Any] = {}
    sim = [statistics.median(r["simulation"]["round_s"][steady]) for r in runs]
    for name in SESSIONS:
        med = [statistics.median(r[name]["round_s"][steady]) for r in runs]
        row: dict[str, Any] = {
            "steady_round_s": spread(med),
            "round1_s": spread([r[name]["round_s"][0] for r in runs]),
            "server_cpu_s_per_round": spread([r[name]["server_cpu_s"] / args.rounds for r in runs]),
        }
        if name != "simulation":
            row["steady_ratio_to_simulation"] = spread(
                [g / b for g, b in zip(med, sim, strict=True)]
            )
            row["steady_added_s"] = spread([g - b for g, b in zip(med, sim, strict=True)])
            row["clients_cpu_s_per_round"] = spread(
                [r[name]["clients_cpu_s"] / args.rounds for r in runs]
            )
            row["join_wall_s"] = spread([r[name]["join_wall_s"] for r in runs])
            row["max_abs_diff_final_vs_simulation"] = max(r[name]["max_abs_diff"] for r in runs)
        timing[name] = row
    return {
        "raw_bytes_per_direction_per_round": raw,
        "timing": timing,
        "wire": {
            name: _wire_summary([r[name]["bytes"] for r in runs], raw, args.clients, steady)
            for name in PROXIED
        },
    }


def _n(x: float) -> str:
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def _cell(d: dict[str, float], fmt: Callable[[float], str] = _n, unit: str = "") -> str:
    if fmt(d["min"]) == fmt(d["max"]):
        return f"{fmt(d['median'])}{unit}"
    return f"{fmt(d['median'])}{unit} ({fmt(d['min'])}-{fmt(d['max'])})"


def _int(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(x: float) -> str:
    return f"{x:.4f}"


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def markdown(
    s: dict[str, Any],
    codec_result: dict[str, Any],
    profile: dict[str, Any] | None,
    args: argparse.Namespace,
) -> str:
    raw = s["raw_bytes_per_direction_per_round"]
    fresh, warm = codec_result["fresh_process"], codec_result["after_sessions"]
    tls, plain = s["wire"]["grpc_mtls_proxy"], s["wire"]["grpc_insecure_proxy"]
    out = [
        f"**Bytes on the wire per round** ({args.params:,} float32 parameters, {args.clients} "
        f"clients; raw = 4 x params x clients = {raw:,} bytes each way; steady: median of rounds "
        "2 on in each repeat, then median (range) over the repeats)",
        "",
        "| round | direction | mTLS: bytes | mTLS: wire / raw | mTLS: extra bytes per client "
        "| no TLS: wire / raw | no TLS: extra bytes per client |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"down": "server -> clients", "up": "clients -> server", "both": "both"}
    for label, title in (("steady", "steady"), ("round1", "round 1")):
        for d in ("down", "up", "both"):
            row, other = tls[f"{label}_{d}"], plain[f"{label}_{d}"]
            out.append(
                f"| {title} | {names[d]} | {_cell(row['bytes'], _int)} "
                f"| {_cell(row['ratio_to_raw'], _ratio)} "
                f"| {_cell(row['extra_bytes_per_client'], _int)} "
                f"| {_cell(other['ratio_to_raw'], _ratio)} "
                f"| {_cell(other['extra_bytes_per_client'], _int)} |"
            )
    out += [
        "",
        "**Bytes outside the rounds** (mTLS)",
        "",
        "| what | server -> client | client -> server |",
        "| --- | --- | --- |",
        f"| join, per client (its connection's first {EARLY_S:.0f} s) "
        f"| {_cell(tls['join_per_client']['down'], _int)} "
        f"| {_cell(tls['join_per_client']['up'], _int)} |",
        f"| idle, per client per second ({args.idle:.0f} s window) "
        f"| {_cell(tls['idle_per_client_per_s']['down'], _int)} "
        f"| {_cell(tls['idle_per_client_per_s']['up'], _int)} |",
        f"| after the last round, all clients | {_cell(tls['after_last_round']['down'], _int)} "
        f"| {_cell(tls['after_last_round']['up'], _int)} |",
        "",
        "**Round seconds** (steady: median of rounds 2 on in each repeat; ratios and added "
        "seconds per repeat; then median (range) over the repeats)",
        "",
        "| session | steady s/round | round 1 s | steady / simulation | added s/round "
        "| server CPU s/round | clients' CPU s/round |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in SESSIONS:
        t = s["timing"][name]
        sim = name == "simulation"
        out.append(
            f"| {name} | {_cell(t['steady_round_s'])} | {_cell(t['round1_s'])} "
            f"| {'1' if sim else _cell(t['steady_ratio_to_simulation'], unit='x')} "
            f"| {'0' if sim else _cell(t['steady_added_s'])} "
            f"| {_cell(t['server_cpu_s_per_round'])} "
            f"| {'(in the server)' if sim else _cell(t['clients_cpu_s_per_round'])} |"
        )
    out += [
        "",
        f"**The codec alone** (one message of {fresh['message_bytes']:,} bytes in "
        f"{fresh['chunks']} chunks, in-process, no network; median (range) of 21, ms)",
        "",
        "| step | in a fresh process | in this process, after the sessions |",
        "| --- | --- | --- |",
        *[
            f"| {k} | {_cell(v, _ms)} | {_cell(warm['seconds'][k], _ms)} |"
            for k, v in fresh["seconds"].items()
        ],
    ]
    if profile is not None:
        owners = list(dict.fromkeys([*profile["server"], *profile["clients"]]))
        out += [
            "",
            f"**Where the CPU goes** (perf at 499 Hz during {PROFILED_ROUNDS} rounds of an extra "
            f"grpc_mtls session: {profile['samples']['server']:,} samples in the server, "
            f"{profile['samples']['clients']:,} in the clients; share of each side's samples)",
            "",
            "| owner | server | clients |",
            "| --- | --- | --- |",
            *[
                f"| {o} | {100 * profile['server'].get(o, 0):.0f}% "
                f"| {100 * profile['clients'].get(o, 0):.0f}% |"
                for o in owners
            ],
        ]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def _other_work() -> list[str]:
    """Other benchmarks and test runs on the machine (they share its 2 cores)."""
    done = subprocess.run(["pgrep", "-af", "benchmarks/|pytest"], capture_output=True, text=True)
    return [ln for ln in done.stdout.splitlines() if "transport_overhead" not in ln]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--idle", type=float, default=8.0, help="idle seconds before round 1")
    p.add_argument(
        "--perf",
        action="store_true",
        help=f"then profile {PROFILED_ROUNDS} rounds of a grpc_mtls session with perf",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = p.parse_args(argv)
    if min(args.params, args.clients, args.rounds, args.repeats) < 1 or args.idle <= 0:
        p.error("--params, --clients, --rounds, --repeats must be at least 1, --idle above 0")
    if args.clients > MAX_CONNECTIONS // 2:
        p.error(f"at most {MAX_CONNECTIONS // 2} clients")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_proxy"]:
        proxy_main(int(argv[1]), Path(argv[2]))
        return 0
    if argv[:1] == ["_codec"]:
        print(json.dumps(codec(int(argv[1]))))
        return 0
    if argv[:1] == ["_client"]:
        client_main(int(argv[1]), argv[2], argv[3] if len(argv) > 3 else None)
        return 0
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
        "git": git_state(REPO),
        "params": args.params,
        "clients": args.clients,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "idle_s": args.idle,
        "chunk_bytes": CHUNK_BYTES,
        "loadavg_before": os.getloadavg(),
        "other_work_before": _other_work(),
    }
    log(f"load {meta['loadavg_before']}, other work: {meta['other_work_before']}")
    init = DeltaTrainer(args.params, []).init_parameters(0)
    runs: list[dict[str, Any]] = []
    profile = None
    with tempfile.TemporaryDirectory(prefix="fedloom-transport-") as tmp:
        work = Path(tmp)
        federation = work / "federation"
        create_federation(
            federation, server_hosts=["127.0.0.1"], clients=[str(i) for i in range(args.clients)]
        )
        for repeat in range(args.repeats):
            run: dict[str, Any] = {}
            for name in SESSIONS:
                started = time.perf_counter()
                if name == "simulation":
                    run[name] = simulation_session(args.params, args.clients, args.rounds, init)
                else:
                    run[name] = grpc_session(name, args, init, federation, work)
                secs = ", ".join(f"{x:.3f}" for x in run[name]["round_s"])
                took = time.perf_counter() - started
                log(f"repeat {repeat + 1}/{args.repeats} {name}: rounds [{secs}] s, {took:.1f} s")
            run["loadavg_after"] = os.getloadavg()  # includes this script's own processes
            run["other_work_after"] = _other_work()
            final = run["simulation"].pop("final")
            for name in GRPC_SESSIONS:
                got = run[name].pop("final")
                run[name]["max_abs_diff"] = float(np.max(np.abs(got - final)))
                answered = [c["answered"] for c in run[name]["clients"]]
                if answered != [args.rounds] * args.clients:
                    raise RuntimeError(f"{name}: clients answered {answered}, not every round")
            runs.append(run)
        if args.perf:  # its own session: perf slows what it watches
            perf_args = argparse.Namespace(**{**vars(args), "rounds": PROFILED_ROUNDS})
            perf_data = work / "perf.data"
            log(f"profiling {PROFILED_ROUNDS} rounds of grpc_mtls with perf")
            profiled = grpc_session("grpc_mtls", perf_args, init, federation, work, perf_data)
            profile = perf_breakdown(perf_data, profiled["perf_server_pid"])
    raw = 4 * args.params * args.clients
    checks = {
        "final_model_matches_simulation": all(
            r[n]["max_abs_diff"] <= 1e-6 for r in runs for n in GRPC_SESSIONS
        ),
        "wire_at_least_raw": all(
            x["down"] >= raw and x["up"] >= raw
            for r in runs
            for n in PROXIED
            for x in r[n]["bytes"]["rounds"]
        ),
    }
    log(f"checks: {checks}")
    fresh = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_codec", str(args.params)],
        capture_output=True,
        text=True,
        check=True,
    )
    codec_result = {"fresh_process": json.loads(fresh.stdout), "after_sessions": codec(args.params)}
    meta["loadavg_after"] = os.getloadavg()
    meta["other_work_after"] = _other_work()
    summary = summarise(runs, args)
    report = {
        "meta": meta,
        "checks": checks,
        "summary": summary,
        "codec": codec_result,
        "cpu_profile": profile,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report, indent=1) + "\n")
    tmp_json.replace(args.json)
    print(markdown(summary, codec_result, profile, args))
    log(f"wrote {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
