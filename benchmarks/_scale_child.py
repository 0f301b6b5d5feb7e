"""One fedloom run for ``scale.py``, in its own process; prints one ``RESULT {json}`` line.

    .venv/bin/python benchmarks/_scale_child.py WORKLOAD POPULATION PER_ROUND ROUNDS \
        WORKERS [ENGINE]

WORKLOAD is one of:

- ``cycle``: the Flower harness's population rule for any size: client ``i`` holds IID
  partition ``i mod 100`` of a 100-way split of digits' 1,437 training rows (about 14 rows),
  through :meth:`fedloom.FederatedDataset.from_function`; MLP 64-128-10, 1 epoch, batch 32,
  SGD lr 0.05 momentum 0.9, central evaluation on the 360 held-out rows every round.
- ``shared``: the shared benchmark workload (``load_dataset("digits", num_clients=N)``, IID),
  same model and SGD.
- ``synthetic``: the built-in generator, ``synthetic:1,1`` with the logistic-regression
  model: what ``fedloom simulate --dataset synthetic:1,1 --model logreg`` runs.

PER_ROUND 0 means every client every round; ENGINE is ``local`` (default) or ``ray``. With
WORKERS 1 and the local engine no worker setting is passed, so the child also runs on commits
from before the worker pool (``scale.py --baseline``). Times are those of
``_fedloom_child.py``.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any

from _clock import boottime, process_start_boottime
from _fedloom_child import _RoundEnds, peak_rss_kib


def _cycle(base: Any, i: int) -> Any:
    return base.client(i % base.num_clients)


def main(argv: list[str]) -> None:
    started = process_start_boottime()
    workload, population, per_round, rounds, workers = argv[0], *map(int, argv[1:5])
    engine = argv[5] if len(argv) > 5 else "local"
    import fedloom

    ends = _RoundEnds()
    server_log = logging.getLogger("fedloom.server")
    server_log.addHandler(ends)
    server_log.setLevel(logging.INFO)
    server_log.propagate = False
    sgd: dict[str, Any] = {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9}
    cohort = {"clients_per_round": per_round} if per_round else {}
    settings: dict[str, Any] = {"rounds": rounds, "seed": 0, **cohort}
    if workers > 1 or engine != "local":
        settings.update(workers=workers, engine=engine)
    t_call = boottime()
    if workload == "synthetic":
        result = fedloom.simulate(
            dataset="synthetic:1,1", model="logreg", clients=population, **settings
        )
    elif workload == "shared":
        result = fedloom.simulate(
            dataset="digits", model="mlp", clients=population, partition="iid", **sgd, **settings
        )
    else:
        base = fedloom.load_dataset("digits", num_clients=100, partition="iid", seed=0)
        ds = fedloom.FederatedDataset.from_function(
            population, functools.partial(_cycle, base), test=base.test,
            num_classes=base.num_classes, input_shape=base.input_shape, name="digits-cycle",
        )  # fmt: skip
        result = fedloom.simulate(dataset=ds, model="mlp", **sgd, **settings)
    round_s = [float(s) for s in result.history.column("seconds")]
    round1_start = ends.ends[0] - round_s[0]
    out = {
        "workload": workload,
        "population": population,
        "per_round": per_round,
        "workers": workers,
        "engine": engine,
        "startup_to_round1_s": round1_start - started,
        "simulate_call_to_round1_s": round1_start - t_call,
        "round_s": round_s,
        "clients": [r.clients for r in result.history.rounds],
        "test_acc": [float(a) for a in result.history.column("accuracy")],
        "peak_rss_mib": peak_rss_kib() / 1024,
        "parameters_sha256": __import__("hashlib").sha256(result.parameters.tobytes()).hexdigest(),
    }
    print("RESULT", json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
