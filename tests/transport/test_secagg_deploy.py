"""Secure aggregation between real processes over gRPC with mutual TLS."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedloom.privacy import distributed_noise
from fedloom.privacy._discrete import ddg_epsilon, ddg_rho
from fedloom.server import load_checkpoint

pytestmark = pytest.mark.slow  # real server and client processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fedloom(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedloom", *args]


def _run_federation(tmp: Path, name: str, extra: list[str]) -> tuple[int, Path]:
    port = _free_port()
    out = tmp / name
    server = subprocess.Popen(
        _fedloom(
            "server",
            "--certs",
            "certs",
            "--address",
            f"127.0.0.1:{port}",
            "--min-clients",
            "3",
            "--clients",
            "3",
            "--rounds",
            "3",
            "--model",
            "logreg",
            "--wait-for-clients",
            "60",
            "--out",
            str(out),
            *extra,
        ),
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    clients = [
        subprocess.Popen(
            _fedloom(
                "client",
                "--certs",
                "certs",
                "--server",
                f"127.0.0.1:{port}",
                "--client-id",
                str(i),
                "--dataset",
                "digits",
                "--clients",
                "3",
            ),
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    try:
        log, _ = server.communicate(timeout=90)
        for c in clients:
            c.communicate(timeout=30)
    finally:
        for proc in (server, *clients):
            if proc.poll() is None:
                proc.kill()
    assert server.returncode == 0, log
    return server.returncode, out


def test_secagg_over_grpc_with_tls_trains_the_same_model_as_plain_fedavg(tmp_path: Path) -> None:
    # Prepare
    subprocess.run(
        _fedloom("certs", "--out", "certs", "--server-host", "127.0.0.1", "--clients", "0,1,2"),
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )

    # Execute: the same run, plain and under secure aggregation
    _, plain = _run_federation(tmp_path, "plain", [])
    _, secure = _run_federation(tmp_path, "secure", ["--secure-aggregation", "secagg"])

    # Assert: every round completed with 3 clients; the models agree within quantization
    rounds = json.loads((secure / "history.json").read_text())["rounds"]
    assert [r["clients"] for r in rounds] == [3, 3, 3]
    a = load_checkpoint(plain / "model.npz").parameters
    b = load_checkpoint(secure / "model.npz").parameters
    assert np.abs(a - b).max() < 1e-3
    assert not np.array_equal(a, np.zeros_like(a))


def test_distributed_dp_over_grpc_records_the_epsilon_of_the_noise_that_arrived(
    tmp_path: Path,
) -> None:
    # Prepare: 3 clients, all needed (SecAgg of 3 at threshold 2/3 needs 2; each client adds
    # noise for the 1 other it can count on), delta below 1/3
    subprocess.run(
        _fedloom("certs", "--out", "certs", "--server-host", "127.0.0.1", "--clients", "0,1,2"),
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    dp = ["--secure-aggregation", "secagg", "--dp", "distributed", "--noise-multiplier", "2",
          "--delta", "0.01"]  # fmt: skip

    # Execute
    _, out = _run_federation(tmp_path, "ddp", dp)

    # Assert: epsilon per round as the simulation's ledger computes it for 3 contributors
    rounds = json.loads((out / "history.json").read_text())["rounds"]
    assert [r["clients"] for r in rounds] == [3, 3, 3]
    noise, sensitivity = distributed_noise(1.0, 2.0, cohort=3, least=2, dim=650, modulus_bits=32)
    rho = ddg_rho(sensitivity, None, noise.sigma, 2, 650)
    spent = [r["metrics"]["epsilon"] for r in rounds]
    assert spent == pytest.approx([ddg_epsilon([rho] * t, 0.01) for t in (1, 2, 3)], rel=1e-9)


def test_the_server_refuses_dp_without_the_number_of_users(tmp_path: Path) -> None:
    args = ["server", "--insecure", "--dp", "central", "--noise-multiplier", "1", "--out",
            str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run(_fedloom(*args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs --clients N" in result.stderr and "Traceback" not in result.stderr
