"""The Ray fleet on a real two-node Ray cluster on 127.0.0.1, started by the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _workers import killer_setup

import fedloom
from fedloom.client import LinearTrainer
from fedloom.errors import ConfigError
from fedloom.simulation import RayFleet
from fedloom.strategy import fedavg

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

BASE: dict[str, Any] = {
    "dataset": "digits", "model": "logreg", "clients": 30, "rounds": 3, "fraction": 0.5,
    "partition": "dirichlet:0.5", "seed": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and a second node, one CPU each, so that two actors must use both."""
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, include_dashboard=False, logging_level="ERROR")
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def test_two_actors_on_two_nodes_give_the_model_of_one_process(cluster: Any) -> None:
    # Execute
    here = fedloom.simulate(**BASE)
    there = fedloom.simulate(**BASE, engine="ray", workers=2, ray_address=cluster.address)

    # Assert
    np.testing.assert_array_equal(here.parameters, there.parameters)
    assert here.history.column("accuracy") == there.history.column("accuracy")


def test_actors_are_placed_on_both_nodes_by_their_resources(cluster: Any) -> None:
    # Execute
    fleet = RayFleet(killer_setup, 10, 2, worker_cpus=1.0)
    try:
        nodes = fleet.nodes()
    finally:
        fleet.close()

    # Assert: one CPU per node and one per actor leave Ray one choice
    assert len(set(nodes)) == 2


def test_killing_an_actor_mid_round_drops_its_clients_and_the_run_goes_on(
    cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the biggest client kills its actor's process the first time it trains
    ds, _, _ = killer_setup()
    rows = int(ds.client_sizes().max())
    fleet = RayFleet(killer_setup, ds.num_clients, 2)
    config = {"marker": str(tmp_path / "killed"), "victim_rows": rows, "seed": 0}
    start = LinearTrainer(64, 10).init_parameters(0)

    # Execute
    try:
        result = fedloom.run_rounds(fleet, fedavg(), start, rounds=3, client_config=config)
    finally:
        fleet.close()

    # Assert
    clients = [r.clients for r in result.history.rounds]
    assert clients[0] in (8, 9) and clients[1:] == [10, 10]
    assert "Ray actor" in caplog.text and "died in round 1" in caplog.text


def test_an_actor_larger_than_any_node_is_refused_with_the_largest_node(cluster: Any) -> None:
    # Execute / Assert
    # 2 CPUs in all, but 1 per node: an actor of 2 would never be placed
    with pytest.raises(ConfigError, match=r"asks for 2 CPU and 0 GPU, but no node .* 1 CPU"):
        RayFleet(killer_setup, 10, 1, worker_cpus=2)


def test_ray_settings_need_the_ray_engine() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="--worker-cpus needs --engine ray"):
        fedloom.SimulationConfig(worker_cpus=2.0)
    with pytest.raises(ConfigError, match="--engine must be local or ray"):
        fedloom.SimulationConfig(engine="dask")
