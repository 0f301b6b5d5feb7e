"""One fedloom run of the benchmark workload, in its own process; prints one ``RESULT {json}`` line.

Started by ``simulation_throughput.py``; it can also be run by hand::

    .venv/bin/python benchmarks/_fedloom_child.py CLIENTS [ROUNDS]

Times are read from ``CLOCK_BOOTTIME``, the clock the kernel stamps a process's start time with
(``/proc/self/stat`` field 22; see ``_clock.py``).

- ``startup_to_round1_s``: process start to the start of round 1, i.e. the moment
  ``run_rounds`` begins its first round. ``run_rounds`` logs each round's end on the
  ``fedloom.server`` logger; a handler stamps that moment, and round 1's start is that stamp
  minus round 1's ``seconds`` from the history (both taken around the same loop body, so the
  gap is microseconds). Everything before it counts: interpreter start, imports, loading and
  splitting the data, building the model and trainer.
- ``peak_rss_mib``: ``VmHWM`` of ``/proc/self/status`` once the run is over.
- ``round_s``: ``result.history.column("seconds")``: each round's wall time, from the start of
  the round through aggregation and the central evaluation of the new model.
"""

from __future__ import annotations

import json
import logging
import sys

from _clock import boottime, process_start_boottime


def peak_rss_kib() -> int:
    """This process's high-water RSS since its ``exec`` (``VmHWM``; ``ru_maxrss`` would also
    count the parent's pages, which the forked child held until it ran ``exec``)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


class _RoundEnds(logging.Handler):
    """Stamps the end of each round from ``run_rounds``'s per-round log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ends: list[float] = []
        self.torch_threads: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("round "):
            self.ends.append(boottime())
            torch = sys.modules.get("torch")
            if torch is not None and self.torch_threads is None:
                self.torch_threads = int(torch.get_num_threads())


def main(argv: list[str]) -> None:
    started = process_start_boottime()
    clients = int(argv[0])
    rounds = int(argv[1]) if len(argv) > 1 else 5

    t_import = boottime()
    import fedloom

    t_imported = boottime()
    ends = _RoundEnds()
    server_log = logging.getLogger("fedloom.server")
    server_log.addHandler(ends)
    server_log.setLevel(logging.INFO)
    server_log.propagate = False

    config = fedloom.SimulationConfig(
        dataset="digits",
        model="mlp",
        clients=clients,
        partition="iid",
        rounds=rounds,
        local_epochs=1,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        seed=0,
    )
    t_call = boottime()
    result = fedloom.simulate(config)
    t_returned = boottime()

    round_s = [float(s) for s in result.history.column("seconds")]
    if len(ends.ends) != len(round_s):
        raise SystemExit("fedloom.server no longer logs one line per round; fix the child")
    round1_start = ends.ends[0] - round_s[0]
    torch_version = getattr(sys.modules.get("torch"), "__version__", None)
    out = {
        "system": "fedloom",
        "clients": clients,
        "rounds": rounds,
        "startup_to_round1_s": round1_start - started,
        "startup_breakdown_s": {
            "interpreter_start": t_import - started,
            "import_fedloom": t_imported - t_import,
            "simulate_call_to_round1": round1_start - t_call,
        },
        "round_s": round_s,
        "round_end_since_start_s": [e - started for e in ends.ends],
        "simulate_return_since_start_s": t_returned - started,
        "test_acc": [float(a) for a in result.history.column("accuracy")],
        "torch_threads_during_rounds": ends.torch_threads,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "fedloom": fedloom.__version__,
        "torch": torch_version,
    }
    print("RESULT", json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
