"""Checks that fedloom runs the benchmark's workload: the harness's data split, and training that
matches a plain PyTorch loop written from the workload's description."""

from __future__ import annotations

from typing import Any

import numpy as np


def _digits_recipe(num_clients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """The harness's split, from its README: (features / 16, labels, test rows, client rows)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    features = (x / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    test_rows, train_rows = perm[:360], perm[360:]
    parts = np.array_split(np.random.default_rng(1).permutation(len(train_rows)), num_clients)
    return features, y.astype(np.int64), test_rows, [train_rows[p] for p in parts]


def _same_rows(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> bool:
    """Whether two labelled sets hold the same rows, in any order (duplicates counted)."""
    a, b = np.column_stack([x1, y1]), np.column_stack([x2, y2])
    if a.shape != b.shape:
        return False
    return np.array_equal(a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])])


def check_split(num_clients: int) -> bool:
    """Whether ``load_dataset("digits", ...)`` gives the harness's test set and, client by
    client, the harness's training rows (in any order: both shuffle them before each epoch)."""
    import fedloom

    x, y, test_rows, client_rows = _digits_recipe(num_clients)
    ds = fedloom.load_dataset("digits", num_clients=num_clients, partition="iid", seed=0)
    if ds.num_clients != num_clients:
        return False
    if not _same_rows(ds.test.x, ds.test.y, x[test_rows], y[test_rows]):
        return False
    for i, rows in enumerate(client_rows):
        data = ds.client(i)
        if len(data.test) != 0 or not _same_rows(data.train.x, data.train.y, x[rows], y[rows]):
            return False
    return True


def check_training() -> dict[str, Any]:
    """One fedloom round of 2 clients against a plain PyTorch loop written from the workload,
    on fedloom's own client data (whose split ``check_split`` checks).

    The reference: ``torch.manual_seed(0)`` then ``Linear(64, 128)``, ``Linear(128, 10)`` (the
    harness builds its model the same way); each client trains one epoch from the global model
    with a fresh ``SGD(lr=0.05, momentum=0.9)``, batches of 32 in a shuffled order,
    cross-entropy; the new global model is the example-weighted mean. fedloom shuffles with a
    generator seeded by ``client_seed(0, round, client_id)``; the reference uses the same order,
    so the two must agree to float rounding. The same loop without momentum must not agree (the
    check can tell).
    """
    import torch
    from torch import nn

    import fedloom
    from fedloom.client import client_seed

    torch.set_num_threads(1)
    clients = fedloom.load_dataset("digits", num_clients=2, partition="iid", seed=0)
    data = [clients.client(i).train for i in range(2)]

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def reference(momentum: float) -> np.ndarray:
        torch.manual_seed(0)
        start = mlp().state_dict()
        total = [torch.zeros_like(t, dtype=torch.float64) for t in start.values()]
        for i, d in enumerate(data):
            model = mlp()
            model.load_state_dict(start)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
            xs, ys = torch.from_numpy(d.x), torch.from_numpy(d.y)
            gen = torch.Generator().manual_seed(client_seed(0, 1, str(i)))
            order = torch.randperm(len(d), generator=gen)
            for b in range(0, len(d), 32):
                idx = order[b : b + 32]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            for t, p in zip(total, model.state_dict().values(), strict=True):
                t += p.double() * len(d)
        n = sum(len(d) for d in data)
        return np.concatenate([(t / n).numpy().ravel() for t in total])

    result = fedloom.simulate(
        fedloom.SimulationConfig(
            dataset="digits",
            model="mlp",
            clients=2,
            partition="iid",
            rounds=1,
            local_epochs=1,
            batch_size=32,
            lr=0.05,
            momentum=0.9,
            seed=0,
        )
    )
    got = result.parameters.astype(np.float64)
    diff = float(np.abs(got - reference(0.9)).max())
    diff_without_momentum = float(np.abs(got - reference(0.0)).max())
    return {
        "max_abs_diff_vs_reference": diff,
        "max_abs_diff_vs_reference_without_momentum": diff_without_momentum,
        "matches": diff < 1e-5 and diff_without_momentum > 1e-3,
    }
