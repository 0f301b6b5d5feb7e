"""What a hostile or broken client or file can send, and what the server does with it: metrics
that are not data are dropped, a non-finite model is never saved, identities that are not
client ids or a second certificate for one id are refused, a corrupt revocation file keeps the
last good list, and resuming a finished run says it is finished."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedloom.errors import DivergedError
from fedloom.messages import Instruction, Reply
from fedloom.server import load_checkpoint, run_rounds
from fedloom.simulation import ScriptedFleet
from fedloom.strategy import UpdateBounds, fedavg
from fedloom.transport import GrpcFleet, ServerOptions
from fedloom.transport._certs import Revocations, valid_client_id
from fedloom.transport._service import Refused, _Handlers


def _fit(client: str, ins: Instruction, vector: list[float], n: int = 10, **metrics: Any) -> Reply:
    return Reply(client, ins.round, "fit", np.array(vector, np.float32), n, metrics)


def test_metrics_that_are_not_finite_numbers_with_names_are_dropped(caplog) -> None:
    # Prepare: one client reports a NaN, an infinity, a badly named key and 100 extra keys
    flood = {f"k{i}": 1.0 for i in range(100)}

    def respond(client: str, ins: Instruction) -> Reply:
        if client == "1":
            return _fit(client, ins, [1.0], train_loss=float("nan"), score=float("inf"),
                        **{"bad name!": 2.0}, **flood)  # fmt: skip
        return _fit(client, ins, [1.0], train_loss=0.5)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedloom.round"):
        result = run_rounds(ScriptedFleet(["0", "1"], respond), fedavg(), np.zeros(1, np.float32),
                            rounds=1)  # fmt: skip

    # Assert: the honest loss alone is averaged; the flood is cut at 64 keys; said once
    record = result.history.rounds[0]
    assert record.train_loss == 0.5
    assert len(record.metrics) == 64 and "score" not in record.metrics
    assert "dropped 39 of client 1's metrics" in caplog.text


def test_a_model_that_overflows_is_never_saved(tmp_path: Path) -> None:
    # Prepare: round 1 is honest; in round 2 a client sends the largest float32 with a huge
    # weight, and, with the norm bound off, the weighted mean overflows the float32 model
    def respond(client: str, ins: Instruction) -> Reply:
        if ins.round == 2 and client == "1":
            return _fit(client, ins, [3.4e38], n=2**60)
        return _fit(client, ins, [1.0])

    fleet = ScriptedFleet(["0", "1"], respond)
    from fedloom.params import ParamSpec

    spec = ParamSpec(("w",), ((1,),), ("float32",))

    # Execute / Assert
    with pytest.raises(DivergedError, match="round 2: the new global model is not finite"):
        run_rounds(fleet, fedavg(server_lr=10.0), np.zeros(1, np.float32), rounds=3,
                   out_dir=tmp_path, spec=spec,
                   bounds=UpdateBounds(norm_multiple=None))  # fmt: skip
    saved = load_checkpoint(tmp_path / "model.npz")
    assert saved.round == 1 and np.isfinite(saved.parameters).all()


@dataclass
class _Context:
    """The parts of a gRPC servicer context the identity check reads."""

    common_name: bytes
    pem: bytes = b""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self.common_name], "x509_pem_cert": [self.pem]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple[()]:
        return ()


def _options(revoked: Revocations) -> ServerOptions:
    return ServerOptions("127.0.0.1:0", (b"", b"", b""), {}, revoked=lambda: revoked)


def _handlers() -> _Handlers:
    return _Handlers(GrpcFleet("run"), _options(Revocations()))


def test_an_identity_that_is_not_a_client_id_is_refused() -> None:
    assert not valid_client_id("0\x00evil") and not valid_client_id("") and valid_client_id("0")
    with pytest.raises(Refused, match="not a client id") as refused:
        _handlers().identity(_Context(b"0\x00evil"))
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_second_certificate_for_one_id_is_refused_until_the_first_is_revoked(
    monkeypatch,
) -> None:
    # Prepare: certificates are told apart by their serial
    import fedloom.transport._service as service

    monkeypatch.setattr(service, "_serial", lambda pem: int(pem.decode()))
    handlers = _handlers()

    # Execute / Assert: the first certificate is pinned, a second one is refused
    assert handlers.identity(_Context(b"0", b"1")) == "0"
    with pytest.raises(Refused, match="connected with another certificate") as refused:
        handlers.identity(_Context(b"0", b"2"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    # once the first is revoked, the second takes its place
    handlers.options = _options(Revocations(serials=frozenset({("0", 1)})))
    assert handlers.identity(_Context(b"0", b"2")) == "0"


def test_a_corrupt_revocation_file_keeps_the_last_good_list(tmp_path: Path, caplog) -> None:
    from fedloom.recipes._serve import _revocation

    (tmp_path / "revoked.txt").write_text("2\n")
    current = _revocation(str(tmp_path))
    assert current().refuses("2", None)
    (tmp_path / "revoked.txt").write_bytes(b"\xff\xfe 2\n3\n")  # not UTF-8, half written
    with caplog.at_level(logging.ERROR, logger="fedloom.transport"):
        assert current().refuses("2", None) and not current().refuses("3", None)
    assert "keeping the last list read" in caplog.text


def test_resuming_a_finished_run_says_it_is_finished_and_exits_0(
    tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    from fedloom.cli import main
    from fedloom.client import LinearTrainer
    from fedloom.config import SimulationConfig
    from fedloom.messages import RoundRecord
    from fedloom.server import RunStore

    monkeypatch.chdir(tmp_path)
    trainer = LinearTrainer(64, 10)
    (tmp_path / "run").mkdir()
    with RunStore(tmp_path / "run" / "run.db") as store:
        cfg = SimulationConfig(model="logreg", rounds=1, out="run")
        store.create_run(cfg.to_dict(), trainer.spec, trainer.init_parameters(0))
        store.commit_round(RoundRecord(1, 1, None, 0.5, 1.0, None, None, 0.1),
                           trainer.init_parameters(1), b"", [])  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="fedloom.transport"):
        status = main(["server", "--out", "run", "--insecure", "--resume"])

    assert status == 0
    assert "is complete (1 of 1 rounds): nothing to resume" in caplog.text
    assert "1 rounds in" in capsys.readouterr().out
