"""Stopping a served run: SIGTERM and Ctrl-C stop the server at a clean point, its clients wait,
and a resumed server finishes with them, every round exactly once; a failed run's clients exit
with an error."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from _procs import Fedloom, rounds

from fedloom.server import RunStore

pytestmark = pytest.mark.slow  # real server and client processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_args(port: int, *extra: str) -> tuple[str, ...]:
    return (
        f"server --insecure --address 127.0.0.1:{port} --model logreg --dataset digits "
        "--clients 3 --min-clients 3 --rounds 5 --local-epochs 60 --wait-for-clients 60 "
        "--out run",
        *extra,
    )


def _client(port: int, client_id: int) -> tuple[str, ...]:
    return (
        f"client --insecure --server 127.0.0.1:{port} --client-id {client_id} "
        "--dataset digits --clients 3 --give-up 60",
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_server_resumes_with_the_same_clients_and_does_every_round_once(
    sig: signal.Signals, fedloom: Fedloom, tmp_path: Path
) -> None:
    # Prepare: a run of 5 rounds, its three clients
    port = _free_port()
    first = fedloom.start("server", *_server_args(port))
    clients = [fedloom.start(f"client{c}", *_client(port, c)) for c in range(3)]

    # Execute: stop the server once round 2 is on disk, then resume it on the same port
    fedloom.until("round 2", lambda: True if len(rounds(tmp_path / "run") or []) >= 2 else None, 90)
    first.popen.send_signal(sig)
    stopped = fedloom.wait(first, 30)
    alive = [client.returncode for client in clients]
    # (Ctrl-C's run is also given a sixth round as it resumes)
    more = ("--rounds", "6") if sig == signal.SIGINT else ()
    resumed = fedloom.start("resumed", *_server_args(port, "--resume", *more))
    status = fedloom.wait(resumed, 120)

    # Assert: the first server stopped cleanly and said where; the clients waited for the
    # second, which finished the run with them; every round was committed once, in order
    assert stopped == 0, fedloom.logs()
    assert "stopped early: interrupted after round" in first.out(), fedloom.logs()
    assert "no reply" not in first.err() and "stale" not in first.err(), fedloom.logs()
    assert alive == [None, None, None], fedloom.logs()
    assert status == 0, fedloom.logs()
    for client in clients:
        assert fedloom.wait(client, 30) == 0, fedloom.logs()
    last = 6 if more else 5
    history = rounds(tmp_path / "run") or []
    assert [r["round"] for r in history] == list(range(1, last + 1))
    with RunStore(tmp_path / "run" / "run.db") as store:
        assert store.latest().round == last
        assert store.run_config()["rounds"] == last
        for round in range(1, last + 1):
            taken = sorted(p.client_id for p in store.participation(round))
            assert taken == ["0", "1", "2"], (round, taken)


def test_the_clients_of_a_failed_run_exit_with_an_error(fedloom: Fedloom, tmp_path: Path) -> None:
    # Prepare: a round needs all 3 clients; one is killed while the run goes on
    port = _free_port()
    server = fedloom.start(
        "server", *_server_args(port, "--heartbeat-timeout", "2", "--round-timeout", "30")
    )
    clients = [fedloom.start(f"client{c}", *_client(port, c)) for c in range(3)]
    fedloom.until("round 1", lambda: True if rounds(tmp_path / "run") else None, 90)

    # Execute
    clients[2].kill()
    status = fedloom.wait(server, 60)

    # Assert: the server's run failed, and the clients left say so and exit non-zero
    assert status == 1, fedloom.logs()
    for client in clients[:2]:
        assert fedloom.wait(client, 30) == 1, fedloom.logs()
        assert "the server's run failed" in client.err(), fedloom.logs()
