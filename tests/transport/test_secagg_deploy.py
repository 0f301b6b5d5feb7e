"""Secure aggregation between real processes over gRPC with mutual TLS."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from fedloom.server import load_checkpoint


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
