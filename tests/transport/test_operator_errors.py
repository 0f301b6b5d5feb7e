"""Day-one mistakes of an operator: each gets one line and exit status 2, at once, and leaves
nothing on disk. Addresses only (no host name is ever resolved); a DNS failure is injected."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest

from fedloom.cli import main
from fedloom.errors import ConfigError
from fedloom.server import RunStore
from fedloom.transport import check_address
from fedloom.transport._client import permanent_failure

SERVER = ["server", "--model", "logreg", "--dataset", "digits", "--rounds", "1"]


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:8O80", "the port '8O80' is not a number"),
        ("127.0.0.1", "has no port; write HOST:PORT"),
        ("https://127.0.0.1:8080", "without a scheme such as https://"),
        ("127.0.0.1:80800", "the port must be from 1 to 65535, got 80800"),
        ("127.0.0.l:8080", "'127.0.0.l' is not an IPv4 address"),
        ("::1:8080", "put an IPv6 address in brackets"),
        (":8080", "has no host"),
        ("127.0.0.1:\uff18\uff10\uff18\uff10", "is not a number"),  # full-width digits
        ("127.0.0.1:\u00b2", "is not a number"),
    ],
)
def test_a_malformed_address_is_refused_with_what_is_accepted(address: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_address(address, flag="--server")


def test_well_formed_addresses_pass_and_a_listener_may_ask_for_any_port() -> None:
    for address in ("127.0.0.1:8080", "[::1]:8080", "localhost:1", "fl.hospital.example:443"):
        assert check_address(address, flag="--server") == address
    assert check_address("127.0.0.1:0", flag="--address", listening=True) == "127.0.0.1:0"
    with pytest.raises(ConfigError, match="from 1 to 65535, got 0"):
        check_address("127.0.0.1:0", flag="--server")


@pytest.mark.parametrize(
    ("code", "details", "permanent"),
    [
        (grpc.StatusCode.UNAVAILABLE, "DNS resolution failed for fl.invalid:8080", "resolve"),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8080: "
            "Ssl handshake failed: SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED",
            "not from this client's CA",
        ),
        (grpc.StatusCode.PERMISSION_DENIED, "client 2 is revoked", "refused this client"),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.5:8080: "
            "Peer name 10.0.0.5 is not in peer certificate",
            "does not name the host in --server",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1808: "
            "Failed to connect to remote host: Connection refused",
            None,
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None),
    ],
)
def test_a_client_tells_permanent_errors_from_a_server_not_up_yet(
    code: grpc.StatusCode, details: str, permanent: str | None
) -> None:
    reason = permanent_failure(code, details)
    if permanent is None:
        assert reason is None
    else:
        assert reason is not None and permanent in reason and code.name in reason


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("fedloom: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_client_with_a_malformed_server_address_exits_at_once(capsys) -> None:
    started = time.monotonic()
    status = main(["client", "--server", "127.0.0.1:80800", "--client-id", "0", "--insecure",
                   "--dataset", "digits", "--clients", "3"])  # fmt: skip
    assert status == 2
    assert "port must be from 1 to 65535" in _one_error_line(capsys.readouterr().err)
    assert time.monotonic() - started < 10


def test_a_client_of_a_server_not_up_yet_retries_and_says_so_sparingly(capsys) -> None:
    # nothing listens on the port: connection refused, which a starting server would also give
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = main(["client", "--server", f"127.0.0.1:{port}", "--client-id", "0", "--insecure",
                   "--dataset", "digits", "--clients", "3", "--give-up", "3"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1
    assert "gave up after 3 s" in err
    assert err.count("retrying") <= 2, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "127.0.0.1:8O80", "--insecure"], "the port '8O80' is not a number"),
        (["--address", "127.0.0.1", "--insecure"], "has no port"),
        (["--certs", "no-such-folder"], "no-such-folder"),
        (["--resume", "--insecure"], "does not exist; start the run without --resume"),
        (
            ["--log", "mlflow:http://127.0.0.1:9", "--insecure"],
            "--log mlflow: cannot use the tracking store at http://127.0.0.1:9",
        ),
        (["--log", "wandb", "--insecure"], "unknown logger 'wandb'"),
    ],
)
def test_a_server_start_up_mistake_is_one_line_and_leaves_nothing_on_disk(
    extra: list[str], message: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status = main([*SERVER, "--out", "run", *extra])
    assert status == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_port_in_use_is_one_line_and_leaves_nothing_on_disk(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main([*SERVER, "--out", "run", "--insecure", "--address", f"127.0.0.1:{port}"])
    assert status == 2
    assert f"cannot listen on 127.0.0.1:{port}" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_resuming_with_fewer_rounds_than_done_is_refused_and_the_run_is_kept(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # Prepare: a stored run that has done rounds 1 and 2 of 3
    monkeypatch.chdir(tmp_path)
    from fedloom.client import LinearTrainer
    from fedloom.config import SimulationConfig
    from fedloom.messages import RoundRecord

    trainer = LinearTrainer(64, 10)
    (tmp_path / "run").mkdir()
    cfg = SimulationConfig(model="logreg", rounds=3, out="run")
    with RunStore(tmp_path / "run" / "run.db") as store:
        store.create_run(cfg.to_dict(), trainer.spec, trainer.init_parameters(0))
        for round in (1, 2):
            record = RoundRecord(round, 1, None, 0.5, 1.0, None, None, 0.1)
            store.commit_round(record, trainer.init_parameters(round), b"", [])
    before = (tmp_path / "run" / "run.db").read_bytes()

    # Execute
    status = main([*SERVER, "--out", "run", "--insecure", "--resume", "--rounds", "1"])

    # Assert
    assert status == 2
    assert "fewer than the 2 rounds this run has done" in _one_error_line(capsys.readouterr().err)
    assert (tmp_path / "run" / "run.db").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*SERVER, "--out", "run", "--insecure", "--round-timeout", "-1"],
         "--round-timeout must be a positive number of seconds, got -1.0"),
        ([*SERVER, "--out", "run", "--insecure", "--heartbeat-timeout", "nan"],
         "--heartbeat-timeout must be a positive number of seconds, got nan"),
        ([*SERVER, "--out", "run", "--insecure", "--wait-for-clients", "-1"],
         "--wait-for-clients must be a positive number of seconds"),
        ([*SERVER, "--out", "run", "--insecure", "--lr", "inf"],
         "--lr must be positive and finite"),
        ([*SERVER, "--out", "a-file", "--insecure"], "--out a-file is a file; give a folder"),
        ([*SERVER, "--out", "a-file/run", "--insecure"], "lies under the file a-file"),
        (["client", "--server", "127.0.0.1:1", "--client-id", "0", "--insecure", "--dataset",
          "digits", "--clients", "3", "--give-up", "-1"], "--give-up must be 0 or more seconds"),
        (["privacy", "--clients", "0", "--clients-per-round", "1", "--rounds", "1",
          "--noise-multiplier", "1"], "--clients must be at least 1, got 0"),
        (["certs", "--out", "certs", "--days", "99999999"], "--days must be a whole number from 1"),
        (["simulate", "--quiet", "--rounds", "1", "--out", " "], "--out must name a folder"),
    ],
)  # fmt: skip
def test_a_setting_out_of_range_is_one_line_before_anything_starts(
    argv: list[str], message: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    status = main(argv)
    assert status == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
