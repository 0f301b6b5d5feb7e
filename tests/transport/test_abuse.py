"""Abuse of a deployment by one of its own (authenticated) clients: the round loop and the real
gRPC service with mutual TLS in this process, honest clients training on digits in threads
beside a hostile one.

The hostile cases about single messages (malformed, oversized, stalled, replayed and misrouted
replies, identities, metrics, revocation files) are in ``test_deploy.py`` and
``test_hostile_inputs.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.client import ClientApp, ClientContext, LinearTrainer
from fedloom.data import load_dataset
from fedloom.messages import EvalResult, Instruction, Reply
from fedloom.server import RunResult, run_rounds
from fedloom.strategy import RoundOutcome, UpdateBounds, fedavg
from fedloom.transport._certs import create_federation
from fedloom.transport._client import ClientOptions, run_client
from fedloom.transport._fleet import GrpcFleet
from fedloom.transport._service import ServerOptions, start_server

pytestmark = pytest.mark.slow  # several rounds of real training over TLS

F32 = np.float32
DIGITS = load_dataset("digits", num_clients=4, seed=0)
ROUNDS = 3


def _trainer() -> LinearTrainer:
    return LinearTrainer(64, 10, local_epochs=2)


def _evaluate(parameters: Any) -> EvalResult:
    return _trainer().evaluate(parameters, DIGITS.test)


def _liar(ctx: ClientContext, ins: Instruction) -> Reply:
    """Every fit answered with the largest float32 in every value, for 2^64 - 1 examples."""
    assert ins.parameters is not None
    return Reply(ctx.client_id, ins.round, ins.phase, np.full(ins.parameters.shape, 3.4e38, F32),
                 2**64 - 1)  # fmt: skip


def _federation(
    tmp_path: Path, sites: list[str], bounds: UpdateBounds
) -> tuple[RunResult, list[RoundOutcome]]:
    """``ROUNDS`` rounds of FedAvg over gRPC with ``sites`` (site 3 lies) all connected."""
    made = create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=sites)
    fleet = GrpcFleet("abuse")
    server, port = start_server(fleet, ServerOptions("127.0.0.1:0", made["server"].load(), {}))

    def context(site: str) -> Callable[[dict[str, Any]], ClientContext]:
        return lambda model: ClientContext(site, DIGITS.client(int(site)), _trainer())

    pool = ThreadPoolExecutor(len(sites))
    outcomes: list[RoundOutcome] = []
    try:
        for site in sites:
            options = ClientOptions(f"127.0.0.1:{port}", made[site].load(), poll_seconds=1)
            app = ClientApp({"fit": _liar}) if site == "3" else ClientApp()
            pool.submit(run_client, options, context(site), app)
        assert fleet.wait_for_clients(len(sites), 30)
        result = run_rounds(
            fleet, fedavg(), _trainer().init_parameters(0), rounds=ROUNDS, evaluate=_evaluate,
            min_clients=3, round_timeout=60, bounds=bounds,
            on_commit=lambda state, outcome, selected: outcomes.append(outcome),
        )  # fmt: skip
    finally:
        fleet.finish()
        pool.shutdown(wait=True)
        server.stop(None).wait(10)
    return result, outcomes


def test_a_client_claiming_2_64_examples_with_a_huge_update_cannot_take_the_model(
    tmp_path: Path,
) -> None:
    # Execute: sites 0-2 with the liar under the default bounds, and without it
    attacked, outcomes = _federation(tmp_path / "a", ["0", "1", "2", "3"], UpdateBounds())
    honest, _ = _federation(tmp_path / "b", ["0", "1", "2"], UpdateBounds())

    # Assert: the liar is refused every round with the reason; the model is the honest one
    for outcome in outcomes:
        assert sorted(outcome.accepted) == ["0", "1", "2"]
        assert "times the round's median" in outcome.rejected["3"]
    assert np.isfinite(attacked.parameters).all()
    np.testing.assert_allclose(attacked.parameters, honest.parameters, rtol=1e-5, atol=1e-6)
    final = [r.history.rounds[-1].accuracy or 0.0 for r in (attacked, honest)]
    assert final[1] > 0.8 and abs(final[0] - final[1]) < 0.02, final


def test_without_the_bounds_the_same_liar_breaks_the_run(tmp_path: Path) -> None:
    # the bounds are what keeps the model: with them off the aggregate is not finite
    from fedloom.errors import DivergedError

    with pytest.raises(DivergedError):
        _federation(tmp_path, ["0", "1", "2", "3"], UpdateBounds(norm_multiple=None))
