"""Secure aggregation's per-round cost: SecAgg and SecAgg+ beside plain FedAvg, and beside Flower.

Run from the repository root (about 7.5 minutes on 2 cores with the defaults, 4 of them Flower's;
under a minute with ``--skip-flower --clients 10 50 --repeats 1``)::

    .venv/bin/python benchmarks/secagg_cost.py --json benchmarks/results/secagg_cost.json

**The grid.** N clients (``--clients``, 10 50 100) each hold an update of D parameters
(``--dims``, 100,000 and 1,000,000). Training is left out: the trainer's ``fit`` returns the
model plus a fixed delta per client (``default_rng([0, D])`` normal * 0.01, well inside the
encoding's clip of 1) and 50 examples, so a round costs what the protocol costs. One round is
``drive(mechanism.run(ctx), fleet, None)`` over the real :class:`~fedloom.InProcessFleet` and
the real client handlers, for three mechanisms: plain FedAvg (``PlainRound`` with
``WeightedMean``, the baseline), SecAgg (``SecAggRound(SecAggSettings())``: every client masks
with every other) and SecAgg+ (``degree=secagg_plus_degree(N)``). A fleet wrapper times every
``next()`` on the fleet's reply iterator: that is client time (a client's handlers, summed over
its phases); server time is the round's wall time less all client time. It also adds up the
bytes of every reply (payload values and vector) and of every instruction per client. Each
round's aggregate is checked against the mean of the deltas (within ``error_bound``); the
script stops if one is off. The plain aggregation alone (``WeightedMean.aggregate`` over the N
updates) is timed too. A dropout variant at the largest N and the smallest D drops 10% of the
clients after they shared their keys (they send no masked input), so the server rebuilds their
mask keys and regenerates their pairwise masks with every surviving neighbour.

**Flower** (``--flower-clients``, 10 50). The shared harness
``/work/shared/bench/flower/run.sh secagg N 5 1`` runs Flower
1.42's legacy FedAvg with ``SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2)``,
``run.sh secagg N 5 0`` the same without it, on the simulation workload (digits, MLP 64-128-10
= 9,610 parameters, 1 local epoch, central evaluation, 5 rounds, Ray with 2 CPUs, 1 per
client). fedloom runs
that workload with SecAgg+ of degree 2 (each client masks with its two ring neighbours, as
Flower's 3 shares do: itself and one on each side), a secret rebuilt from 2 shares, modulus
2^32, clip 8, 2^22 quantization levels and a weight bound of 1,000 (Flower's defaults), and
plainly. Flower's process start and first round (Ray's warm-up) are reported apart.

Every repeat runs every configuration, modes interleaved (their order turns from one repeat to
the next); ratios are taken within a repeat and the tables give the median with the range in
brackets. Markdown on stdout, everything in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _meta import cpu_model, flower_versions, git_state, log, spread

import fedloom
from fedloom.compression import FixedPoint
from fedloom.data import ArrayData
from fedloom.messages import ClientUpdate, Config, EvalResult, FitResult, Instruction, Reply
from fedloom.params import ParamSpec, Vector
from fedloom.secagg import PHASES, SecAggRound, SecAggSettings, secagg_plus_degree
from fedloom.secagg._protocol import MASKED, RELEASED_BYTES, SEALED_BYTES
from fedloom.server._loop import drive
from fedloom.simulation import InProcessFleet
from fedloom.strategy import Chain, PlainRound, RoundContext, WeightedMean

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_HARNESS = "/work/shared/bench/flower/run.sh"
DEFAULT_JSON = HERE / "results" / "secagg_cost.json"

EXAMPLES = 50  # every client's num_examples
DELTA_SCALE = 0.01
DROP_FRACTION = 0.1
TARGET_CLIENTS = 100
TARGET_SERVER_RATIO = 3.0

MODES = ("plain", "secagg", "secagg+")
FLOWER_SHARES, FLOWER_THRESHOLD = 3, 2  # what run.sh passes to SecAggPlusWorkflow
MATCHED_DEGREE = FLOWER_SHARES - 1  # neighbours per client, the client itself not counted

Run = dict[str, Any]


class DeltaTrainer:
    """A trainer whose ``fit`` returns the model plus client i's fixed delta (row i of
    ``deltas``) and ``EXAMPLES`` examples. Client i's data is one row holding i."""

    def __init__(self, deltas: np.ndarray) -> None:
        self.deltas = deltas
        dim = deltas.shape[1]
        self._spec = ParamSpec(("w",), ((dim,),), ("float32",))

    @property
    def spec(self) -> ParamSpec:
        return self._spec

    def init_parameters(self, seed: int) -> Vector:
        return np.zeros(self.deltas.shape[1], dtype=np.float32)

    def fit(self, parameters: Vector, data: ArrayData, config: Config, seed: int) -> FitResult:
        index = int(data.x[0, 0])
        return FitResult(parameters + self.deltas[index], EXAMPLES)

    def evaluate(self, parameters: Vector, data: ArrayData) -> EvalResult:
        return EvalResult(0.0, 0.0, len(data))


def make_dataset(n: int) -> fedloom.FederatedDataset:
    """N clients, client i holding one row ``[i]`` (its trainer's index)."""
    clients = [(np.array([[float(i)]]), np.array([0])) for i in range(n)]
    return fedloom.from_arrays(clients, num_classes=2)


def mechanism(mode: str, n: int) -> PlainRound | SecAggRound:
    if mode == "plain":
        return PlainRound()
    degree = secagg_plus_degree(n) if mode == "secagg+" else None
    return SecAggRound(SecAggSettings(degree=degree))


class MeteredFleet:
    """The in-process fleet, with its clients timed and their messages weighed; drops the
    clients named for a phase (they get no instruction and send no reply)."""

    def __init__(self, inner: InProcessFleet, drops: Mapping[str, frozenset[str]]) -> None:
        self.inner = inner
        self.drops = drops
        self.client_s: dict[str, float] = defaultdict(float)
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.phase_client_s: dict[str, float] = defaultdict(float)
        self.phase_calls: list[tuple[str, float]] = []  # (phase, perf_counter at the call)
        self.other_s = 0.0  # the fleet's own bookkeeping, outside any client

    def clients(self) -> Sequence[str]:
        return self.inner.clients()

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        called = time.perf_counter()
        phase = next(iter(instructions.values())).phase
        self.phase_calls.append((phase, called))
        dropped = self.drops.get(phase, frozenset())
        kept = {c: ins for c, ins in instructions.items() if c not in dropped}
        for c, ins in kept.items():
            self.received[c] += _instruction_bytes(ins)
        replies = self.inner.exchange(kept, timeout)
        while True:
            start = time.perf_counter()
            try:
                reply = next(replies)
            except StopIteration:
                self.phase_client_s[phase] += time.perf_counter() - start
                return
            spent = time.perf_counter() - start
            self.client_s[reply.client_id] += spent
            self.phase_client_s[phase] += spent
            self.sent[reply.client_id] += _reply_bytes(reply)
            yield reply

    def close(self) -> None:
        self.inner.close()


def _instruction_bytes(ins: Instruction) -> int:
    vector = ins.parameters.nbytes if ins.parameters is not None else 0
    return vector + sum(len(v) for v in ins.payload.values())


def _reply_bytes(reply: Reply) -> int:
    vector = reply.vector.nbytes if reply.vector is not None else 0
    return vector + sum(len(v) for v in reply.payload.values())


class Workloads:
    """The deltas (one matrix per D, rows for the largest N) and the expected means, made once."""

    def __init__(self, clients: Sequence[int], dims: Sequence[int]) -> None:
        self.deltas = {}
        for dim in dims:
            rng = np.random.default_rng([0, dim])
            self.deltas[dim] = rng.standard_normal((max(clients), dim), dtype=np.float32)
            self.deltas[dim] *= np.float32(DELTA_SCALE)
        self.datasets = {n: make_dataset(n) for n in clients}
        self._expected: dict[tuple[int, int, tuple[int, ...]], np.ndarray] = {}

    def expected(self, dim: int, survivors: Sequence[int]) -> np.ndarray:
        key = (len(survivors), dim, tuple(survivors))
        if key not in self._expected:
            rows = self.deltas[dim][list(survivors)]
            self._expected[key] = rows.mean(axis=0, dtype=np.float64)
        return self._expected[key]


def run_round(work: Workloads, mode: str, n: int, dim: int, dropped: Sequence[int] = ()) -> Run:
    """One timed round; ``dropped`` clients leave after sharing (plain: they never reply)."""
    trainer = DeltaTrainer(work.deltas[dim][:n])
    gone = frozenset(str(i) for i in dropped)
    drops = {("fit" if mode == "plain" else MASKED): gone}
    fleet = MeteredFleet(InProcessFleet(work.datasets[n], trainer), drops)
    mech = mechanism(mode, n)
    ids = [str(i) for i in range(n)]
    params = trainer.init_parameters(0)
    aggregator = WeightedMean() if mode == "plain" else Chain((FixedPoint(),))
    state = aggregator.init(params.shape[0])
    ctx = RoundContext(1, ids, params, {"seed": 0}, aggregator, state, n)
    gc.collect()
    start = time.perf_counter()
    outcome = drive(mech.run(ctx), fleet, None)
    end = time.perf_counter()
    fleet.close()

    survivors = [i for i in range(n) if i not in set(dropped)]
    expected = work.expected(dim, survivors)
    error = float(np.abs(outcome.aggregate.vector - expected).max())
    bound = 1e-6
    if isinstance(mech, SecAggRound):
        bound += FixedPoint().error_bound_of_mean(len(survivors), EXAMPLES * len(survivors))
    if outcome.aggregate.count != len(survivors) or not error <= bound:
        raise SystemExit(
            f"{mode} N={n} D={dim}: aggregate of {outcome.aggregate.count} clients is off by "
            f"{error:.3g} (bound {bound:.3g}); the benchmark would time a wrong round"
        )

    round_s = end - start
    client_total = sum(fleet.client_s.values())
    # server time per phase: from this phase's exchange call to the next one (or the round's
    # end) less the clients' time in it; the first entry is building the first instructions.
    marks = [*fleet.phase_calls, ("end", end)]
    server_phase = {"setup": marks[0][1] - start}
    for (phase, t0), (_, t1) in itertools.pairwise(marks):
        server_phase[phase] = (t1 - t0) - fleet.phase_client_s[phase]
    plain_bytes = 4 * dim
    degree = getattr(getattr(mech, "settings", None), "degree", None)
    return {
        "mode": mode,
        "clients": n,
        "dim": dim,
        "dropped": len(dropped),
        "degree": (n - 1 if mode == "secagg" else degree) if mode != "plain" else None,
        "round_s": round_s,
        "client_s_total": client_total,
        "client_s_per_client": client_total / n,
        "client_s_max": max(fleet.client_s.values()),
        "server_s": round_s - client_total,
        "server_phase_s": server_phase,
        "client_phase_s_per_client": {p: s / n for p, s in fleet.phase_client_s.items()},
        "sent_bytes_per_client": sum(fleet.sent.values()) / n,
        "sent_bytes_max": max(fleet.sent.values()),
        "received_bytes_per_client": sum(fleet.received.values()) / n,
        "sent_over_plain_update": sum(fleet.sent.values()) / n / plain_bytes,
        "received_over_plain_model": sum(fleet.received.values()) / n / plain_bytes,
        "max_abs_error": error,
        "error_bound": bound,
    }


def time_aggregation(work: Workloads, n: int, dim: int, calls: int = 3) -> float:
    """``WeightedMean.aggregate`` alone over the N updates (rows of the delta matrix, read from
    memory; in a round each update is fresh from its client): the median of ``calls`` calls,
    as a first touch of new memory now and then stalls on this VM."""
    updates = [ClientUpdate(str(i), work.deltas[dim][i], float(EXAMPLES)) for i in range(n)]
    times = []
    for _ in range(calls):
        gc.collect()
        start = time.perf_counter()
        WeightedMean().aggregate(iter(updates), dim, None)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def secagg_sent_bytes(n: int, dim: int) -> float:
    """Bytes one SecAgg client sends in a round nobody leaves, from the message layouts: two
    public keys; per other client an encrypted share pair (12-byte nonce, two 70-byte shares,
    16-byte tag: ``SEALED_BYTES``) and the 32-byte commitment to its self-mask seed; the masked
    input, 4 bytes per value plus the weight; per other client a released 66-byte share value
    (``RELEASED_BYTES``)."""
    keys = 64
    shares = (n - 1) * SEALED_BYTES + 32
    masked = 4 * (dim + 1)
    unmask = (n - 1) * RELEASED_BYTES
    return keys + shares + masked + unmask


# ----------------------------------------------------------------------------- Flower, matched


def run_fedloom_matched(n: int, secure: bool, rounds: int) -> Run:
    settings: dict[str, Any] = dict(
        dataset="digits",
        model="mlp",
        clients=n,
        partition="iid",
        rounds=rounds,
        local_epochs=1,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        seed=0,
    )
    if secure:
        settings.update(
            secure_aggregation="secagg+",
            secagg_degree=MATCHED_DEGREE,
            secagg_threshold=FLOWER_THRESHOLD / MATCHED_DEGREE,  # 2 of the 2 neighbours
            secagg_clip=8.0,
            secagg_bits=22,  # 2^22 - 1 levels over [-8, 8]; Flower: 2^22
            secagg_modulus_bits=32,
            secagg_weight_bound=1000,
        )
    gc.collect()
    start = time.perf_counter()
    result = fedloom.simulate(**settings)
    wall = time.perf_counter() - start
    round_s = list(result.history.column("seconds"))
    acc = list(result.history.column("accuracy"))
    return {
        "system": "fedloom",
        "clients": n,
        "secure": secure,
        "round_s": round_s,
        "first_round_s": round_s[0],
        "steady_round_s": statistics.median(round_s[1:]),
        "rounds_total_s": sum(round_s),
        "simulate_wall_s": wall,
        "final_test_acc": acc[-1],
    }


def run_flower(harness: Path, n: int, secure: bool, rounds: int, clock_error: float) -> Run:
    cmd = [str(harness), "secagg", str(n), str(rounds), "1" if secure else "0"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - start
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"Flower run failed ({' '.join(cmd)}): {done.stderr[-2000:]}")
    res = json.loads(line.removeprefix("RESULT "))
    round_s = res["round_s"]
    return {
        "system": "flower",
        "clients": n,
        "secure": secure,
        "round_s": round_s,
        "first_round_s": round_s[0],
        "steady_round_s": statistics.median(round_s[1:]),
        "rounds_total_s": sum(round_s),
        "startup_to_round1_s": res["startup_to_round1_s"] - clock_error,
        "startup_to_round1_reported_s": res["startup_to_round1_s"],
        "harness_wall_s": wall,
        "final_test_acc": res["test_acc"][-1],
    }


# ----------------------------------------------------------------------------- summary


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    if abs(value) >= 0.01:
        return f"{value:.3f}"
    return np.format_float_positional(value, precision=2, unique=False, fractional=False)


def _phase_rows(rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """One Markdown row per secure round: its seconds in each of the four phases."""
    out = []
    for r in rows:
        if r["mode"] == "plain":
            continue
        cells = [_cell(r[key].get(p)) for p in PHASES]
        drop = f" ({r['dropped']} dropped)" if r["dropped"] else ""
        out.append(
            f"| {r['dim']:,} | {r['clients']} | {_mode_name(r)}{drop} | " + " | ".join(cells) + " |"
        )
    return out


def _cell(spread: Mapping[str, float] | None, suffix: str = "") -> str:
    if spread is None:
        return "-"
    low, mid, high = _fmt(spread["min"]), _fmt(spread["median"]), _fmt(spread["max"])
    if low == high:
        return mid + suffix
    return f"{mid}{suffix} ({low}-{high})"


GRID_METRICS = (
    "round_s",
    "client_s_per_client",
    "client_s_max",
    "server_s",
    "sent_bytes_per_client",
    "received_bytes_per_client",
    "sent_over_plain_update",
    "received_over_plain_model",
)


def summarise_grid(rounds: list[Run], aggregation: list[Run]) -> list[dict[str, Any]]:
    """Per (D, N, dropped, mode): medians and ranges, and per-repeat ratios to plain."""
    plain = {
        (r["dim"], r["clients"], r["dropped"], r["repeat"]): r
        for r in rounds
        if r["mode"] == "plain"
    }
    agg = {(a["dim"], a["clients"], a["repeat"]): a["seconds"] for a in aggregation}
    groups: dict[tuple[int, int, int, str], list[Run]] = defaultdict(list)
    for r in rounds:
        groups[(r["dim"], r["clients"], r["dropped"], r["mode"])].append(r)
    rows = []
    for (dim, n, dropped, mode), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1], MODES.index(kv[0][3]))
    ):
        row: dict[str, Any] = {
            "dim": dim,
            "clients": n,
            "dropped": dropped,
            "mode": mode,
            "degree": runs[0]["degree"],
            "repeats": len(runs),
        }
        for key in GRID_METRICS:
            row[key] = spread([r[key] for r in runs])
        phases = sorted({p for r in runs for p in r["server_phase_s"]})
        row["server_phase_s"] = {
            p: spread([r["server_phase_s"].get(p, 0.0) for r in runs]) for p in phases
        }
        row["client_phase_s_per_client"] = {
            p: spread([r["client_phase_s_per_client"].get(p, 0.0) for r in runs])
            for p in sorted({p for r in runs for p in r["client_phase_s_per_client"]})
        }
        base = [plain[(dim, n, dropped, r["repeat"])] for r in runs]
        row["round_over_plain"] = spread(
            [r["round_s"] / b["round_s"] for r, b in zip(runs, base, strict=True)]
        )
        row["server_over_plain_server"] = spread(
            [r["server_s"] / b["server_s"] for r, b in zip(runs, base, strict=True)]
        )
        aggs = [agg.get((dim, n, r["repeat"])) for r in runs]
        if all(a is not None for a in aggs):
            row["aggregation_alone_s"] = spread([a for a in aggs if a is not None])
            row["server_over_aggregation_alone"] = spread(
                [r["server_s"] / a for r, a in zip(runs, aggs, strict=True) if a]
            )
        row["client_over_plain_client"] = spread(
            [
                r["client_s_per_client"] / b["client_s_per_client"]
                for r, b in zip(runs, base, strict=True)
            ]
        )
        rows.append(row)
    return rows


def summarise_flower(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for n in sorted({r["clients"] for r in runs}):
        pick = {
            (system, secure): sorted(
                (
                    r
                    for r in runs
                    if (r["clients"], r["system"], r["secure"]) == (n, system, secure)
                ),
                key=lambda r: r["repeat"],
            )
            for system in ("fedloom", "flower")
            for secure in (False, True)
        }
        row: dict[str, Any] = {"clients": n}
        for (system, secure), rs in pick.items():
            if not rs:
                continue
            tag = f"{system}_{'secagg+' if secure else 'plain'}"
            row[tag] = {
                key: spread([r[key] for r in rs])
                for key in ("steady_round_s", "first_round_s", "rounds_total_s", "final_test_acc")
            }
            if system == "flower":
                row[tag]["startup_to_round1_s"] = spread([r["startup_to_round1_s"] for r in rs])

        def paired(a: list[Run], b: list[Run], how: str) -> dict[str, float]:
            pairs = list(zip(a, b, strict=True))
            if how == "ratio":
                return spread([x["steady_round_s"] / y["steady_round_s"] for x, y in pairs])
            return spread([x["steady_round_s"] - y["steady_round_s"] for x, y in pairs])

        added: dict[str, list[float]] = {}
        for system in ("fedloom", "flower"):
            secure, plain = pick[(system, True)], pick[(system, False)]
            if secure and plain:
                row[f"{system}_secagg_over_plain"] = paired(secure, plain, "ratio")
                row[f"{system}_secagg_added_s"] = paired(secure, plain, "minus")
                added[system] = [
                    x["steady_round_s"] - y["steady_round_s"]
                    for x, y in zip(secure, plain, strict=True)
                ]
        for secure in (False, True):
            fl, fe = pick[("flower", secure)], pick[("fedloom", secure)]
            if fl and fe:
                row[f"flower_over_fedloom_{'secagg+' if secure else 'plain'}"] = paired(
                    fl, fe, "ratio"
                )
        if len(added) == 2:
            row["flower_over_fedloom_added"] = spread(
                [w / f for w, f in zip(added["flower"], added["fedloom"], strict=True) if f > 0]
            )
        rows.append(row)
    return rows


def targets(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Server time within 3x of the plain round's at 100 clients, per mode and D, judged on
    the median and on the worst repeat."""
    out: dict[str, Any] = {}
    for row in grid:
        if row["clients"] != TARGET_CLIENTS or row["mode"] == "plain" or row["dropped"]:
            continue
        ratio = row["server_over_plain_server"]
        out[f"{row['mode']} D={row['dim']}"] = {
            "target": f"server time <= {TARGET_SERVER_RATIO:g}x plain FedAvg's",
            "median": ratio["median"],
            "worst": ratio["max"],
            "met": ratio["median"] <= TARGET_SERVER_RATIO,
            "met_every_repeat": ratio["max"] <= TARGET_SERVER_RATIO,
        }
    return out


def _mode_name(row: Mapping[str, Any]) -> str:
    if row["mode"] == "plain":
        return "plain FedAvg"
    if row["mode"] == "secagg":
        return "SecAgg"
    return f"SecAgg+ (k={row['degree']})"


def markdown(
    grid: list[dict[str, Any]], flower: list[dict[str, Any]], paper: Mapping[str, float]
) -> str:
    lines: list[str] = []
    full = [r for r in grid if not r["dropped"]]
    lines += [
        "**Time per round** (client: per client, its handlers summed over the phases; server: "
        "the round less all client time)",
        "",
        "| D | N | mode | round s | round / plain | client s | server s | server / plain "
        "server | server / plain aggregation alone |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in full:
        plain = r["mode"] == "plain"
        lines.append(
            f"| {r['dim']:,} | {r['clients']} | {_mode_name(r)} | {_cell(r['round_s'])} | "
            f"{'1x' if plain else _cell(r['round_over_plain'], 'x')} | "
            f"{_cell(r['client_s_per_client'])} | {_cell(r['server_s'])} | "
            f"{'1x' if plain else _cell(r['server_over_plain_server'], 'x')} | "
            f"{_cell(r.get('server_over_aggregation_alone'), 'x')} |"
        )
    lines += [
        "",
        "**Plain aggregation alone** (`WeightedMean.aggregate` over the N updates), s",
        "",
    ]
    lines += ["| D | N | seconds |", "| --- | --- | --- |"]
    for r in full:
        if r["mode"] == "plain" and "aggregation_alone_s" in r:
            lines.append(f"| {r['dim']:,} | {r['clients']} | {_cell(r['aggregation_alone_s'])} |")
    lines += [
        "",
        "**Bytes per client per round** (payload values and vectors; plain: the 4·D-byte update "
        "up, the model down)",
        "",
        "| D | N | mode | sent | sent / plain update | received | received / plain model |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in full:
        lines.append(
            f"| {r['dim']:,} | {r['clients']} | {_mode_name(r)} | "
            f"{r['sent_bytes_per_client']['median']:,.0f} | "
            f"{r['sent_over_plain_update']['median']:.4f}x | "
            f"{r['received_bytes_per_client']['median']:,.0f} | "
            f"{r['received_over_plain_model']['median']:.4f}x |"
        )
    lines += [
        "",
        f"At Bonawitz et al.'s point (2^10 clients, 2^20 values) the same message layout gives "
        f"{paper['ratio']:.3f}x for SecAgg (the paper reports 1.73x over sending its inputs in "
        "the clear; here a masked value is a 32-bit word, as wide as the float32 it hides, so "
        "the excess is the key and share traffic alone).",
        "",
        "**Server seconds by phase** (from the phase's instructions going out to the next "
        "phase's, less client time: handling that phase's replies and building the next "
        "instructions)",
        "",
        "| D | N | mode | after keys | after share | after masked | after unmask |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += _phase_rows(grid, "server_phase_s")
    lines += [
        "",
        "**Client seconds by phase** (per client)",
        "",
        "| D | N | mode | keys (incl. fit) | share | masked | unmask |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += _phase_rows(full, "client_phase_s_per_client")
    dropped = [r for r in grid if r["dropped"]]
    if dropped:
        r0 = dropped[0]
        lines += [
            "",
            f"**Dropout: {r0['dropped']} of {r0['clients']} clients leave after sharing** "
            f"(D = {r0['dim']:,}; plain: they send no update)",
            "",
            "| mode | round s | client s | server s | server / plain server (same dropout) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in dropped:
            plain = r["mode"] == "plain"
            lines.append(
                f"| {_mode_name(r)} | {_cell(r['round_s'])} | {_cell(r['client_s_per_client'])} "
                f"| {_cell(r['server_s'])} | "
                f"{'1x' if plain else _cell(r['server_over_plain_server'], 'x')} |"
            )
    if flower:
        lines += [
            "",
            "**Matched with Flower: digits, MLP 64-128-10 (9,610 parameters), 5 rounds, SecAgg+ "
            "with 2 neighbours and threshold 2**: steady seconds per round (median of rounds "
            "2-5; training and central evaluation included)",
            "",
            "| N | system | plain | SecAgg+ | SecAgg+ / plain | added by SecAgg+, s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in flower:
            for system, name in (("fedloom", "fedloom"), ("flower", "Flower")):
                plain_cell = _cell(r.get(f"{system}_plain", {}).get("steady_round_s"))
                secure_cell = _cell(r.get(f"{system}_secagg+", {}).get("steady_round_s"))
                lines.append(
                    f"| {r['clients']} | {name} | {plain_cell} | {secure_cell} | "
                    f"{_cell(r.get(f'{system}_secagg_over_plain'), 'x')} | "
                    f"{_cell(r.get(f'{system}_secagg_added_s'))} |"
                )
            lines.append(
                f"| {r['clients']} | **Flower / fedloom** | "
                f"{_cell(r.get('flower_over_fedloom_plain'), 'x')} | "
                f"{_cell(r.get('flower_over_fedloom_secagg+'), 'x')} | | "
                f"{_cell(r.get('flower_over_fedloom_added'), 'x')} |"
            )
        lines += [
            "",
            "**Flower's startup** (not in the table above): process start to round 1, and "
            "round 1 (Ray's warm-up); fedloom's round 1 for comparison (in-process, warm)",
            "",
            "| N | Flower start to round 1, s | Flower round 1, s (plain / SecAgg+) | fedloom "
            "round 1, s (plain / SecAgg+) |",
            "| --- | --- | --- | --- |",
        ]
        for r in flower:
            fp, fs = r.get("flower_plain", {}), r.get("flower_secagg+", {})
            lp, ls = r.get("fedloom_plain", {}), r.get("fedloom_secagg+", {})
            lines.append(
                f"| {r['clients']} | {_cell(fs.get('startup_to_round1_s'))} | "
                f"{_cell(fp.get('first_round_s'))} / {_cell(fs.get('first_round_s'))} | "
                f"{_cell(lp.get('first_round_s'))} / {_cell(ls.get('first_round_s'))} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _load() -> dict[str, Any]:
    """The load average, and the other Python jobs of this repository running now (another
    benchmark or a test run would share the 2 cores)."""
    found = subprocess.run(
        ["pgrep", "-af", "benchmarks/|pytest"], capture_output=True, text=True
    ).stdout.splitlines()
    mine = {os.getpid(), os.getppid()}
    others = [ln for ln in found if "python" in ln and int(ln.split()[0]) not in mine]
    return {
        "loadavg": list(os.getloadavg()),
        "other_jobs": len(others),
        "strategies_accuracy_running": any("strategies_accuracy" in ln for ln in others),
        "other_benchmarks": sorted(
            {ln.split("benchmarks/")[1].split()[0] for ln in others if "benchmarks/" in ln}
        ),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-flower", action="store_true")
    p.add_argument("--flower-clients", type=int, nargs="+", default=[10, 50])
    p.add_argument("--flower-rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument(
        "--flower-harness",
        type=Path,
        default=Path(os.environ.get("FLOWER_HARNESS", DEFAULT_HARNESS)),
    )
    args = p.parse_args(argv)
    if args.repeats < 1 or min(args.clients) < 3 or min(args.dims) < 1:
        p.error("--repeats and --dims must be at least 1, --clients at least 3")
    if args.flower_rounds < 2 or min(args.flower_clients) < 3:
        p.error("--flower-rounds must be at least 2 and --flower-clients at least 3")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fedloom": fedloom.__version__,
        "git": git_state(REPO),
        "clients": args.clients,
        "dims": args.dims,
        "repeats": args.repeats,
        "load_at_start": _load(),
    }
    flower = not args.skip_flower
    if flower:
        from _checks import check_split
        from _clock import btime_error_s

        meta["flower"] = flower_versions(args.flower_harness)
        meta["flower_harness"] = str(args.flower_harness)
        meta["btime_error_s"] = btime_error_s()
        split_ok = {str(n): check_split(n) for n in args.flower_clients}
        meta["split_matches_harness"] = split_ok
        if not all(split_ok.values()):
            log(f"fedloom's digits split differs from the harness's: {split_ok}")
            return 1

    log("building the updates ...")
    work = Workloads(args.clients, args.dims)
    warm = Workloads([4], [1000])
    for mode in MODES:  # first calls (imports, caches) outside the timings
        run_round(warm, mode, 4, 1000)
    if flower:
        run_fedloom_matched(3, True, 2)

    drop_n, drop_dim = max(args.clients), min(args.dims)
    dropped = sorted(
        int(i)
        for i in np.random.default_rng(0).choice(
            drop_n, math.ceil(DROP_FRACTION * drop_n), replace=False
        )
    )
    meta["dropout"] = {"clients": drop_n, "dim": drop_dim, "dropped": dropped}

    rounds: list[Run] = []
    aggregation: list[Run] = []
    matched: list[Run] = []
    for repeat in range(args.repeats):
        # the order of the modes turns each repeat: the first round to fill fresh memory after
        # another configuration pays more page faults
        order = MODES[repeat % len(MODES) :] + MODES[: repeat % len(MODES)]
        meta.setdefault("load_per_repeat", []).append(_load())
        for dim in args.dims:
            for n in args.clients:
                aggregation.append(
                    {
                        "dim": dim,
                        "clients": n,
                        "repeat": repeat,
                        "seconds": time_aggregation(work, n, dim),
                    }
                )
                for mode in order:
                    run = {**run_round(work, mode, n, dim), "repeat": repeat}
                    rounds.append(run)
                    log(
                        f"repeat {repeat + 1}: D={dim:,} N={n} {mode}: round "
                        f"{run['round_s']:.3f} s, client {run['client_s_per_client']:.4f} s, "
                        f"server {run['server_s']:.3f} s, sent {run['sent_over_plain_update']:.4f}x"
                    )
        for mode in order:
            run = {**run_round(work, mode, drop_n, drop_dim, dropped), "repeat": repeat}
            rounds.append(run)
            log(
                f"repeat {repeat + 1}: dropout D={drop_dim:,} N={drop_n} {mode}: round "
                f"{run['round_s']:.3f} s, server {run['server_s']:.3f} s"
            )
        if flower:
            for n in args.flower_clients:
                for secure in (False, True):
                    for system in ("fedloom", "flower"):
                        if system == "fedloom":
                            run = run_fedloom_matched(n, secure, args.flower_rounds)
                        else:
                            run = run_flower(
                                args.flower_harness,
                                n,
                                secure,
                                args.flower_rounds,
                                meta["btime_error_s"],
                            )
                        matched.append({**run, "repeat": repeat})
                        log(
                            f"repeat {repeat + 1}: {system} N={n} "
                            f"{'SecAgg+' if secure else 'plain'}: steady "
                            f"{run['steady_round_s']:.3f} s/round, round 1 "
                            f"{run['first_round_s']:.2f} s, acc {run['final_test_acc']:.3f}"
                        )
    meta["load_at_end"] = _load()
    meta["seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()

    grid = summarise_grid(rounds, aggregation)
    matched_summary = summarise_flower(matched) if matched else []
    paper_n, paper_d = 2**10, 2**20
    paper = {
        "clients": paper_n,
        "dim": paper_d,
        "sent_bytes": secagg_sent_bytes(paper_n, paper_d),
        "ratio": secagg_sent_bytes(paper_n, paper_d) / (4 * paper_d),
    }
    model_check = {
        f"N={r['clients']} D={r['dim']}": {
            "measured": r["sent_bytes_per_client"]["median"],
            "model": secagg_sent_bytes(r["clients"], r["dim"]),
        }
        for r in grid
        if r["mode"] == "secagg" and not r["dropped"]
    }
    off = {k: v for k, v in model_check.items() if abs(v["measured"] - v["model"]) > 0.5}
    if off:
        raise SystemExit(f"bytes sent differ from the message layout's: {off}")
    report = {
        "meta": meta,
        "grid": grid,
        "flower_matched": matched_summary,
        "targets": targets(grid),
        "bytes_at_paper_point": paper,
        "bytes_model_check": model_check,
        "rounds": rounds,
        "aggregation_alone": aggregation,
        "matched_runs": matched,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.json)
    print(markdown(grid, matched_summary, paper))
    print()
    print("targets:", json.dumps(report["targets"]))
    loads = [meta["load_at_start"], *meta["load_per_repeat"], meta["load_at_end"]]
    print("load (start, each repeat, end):", json.dumps(loads))
    log(f"wrote {args.json} after {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
