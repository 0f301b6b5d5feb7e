"""The secure aggregation protocol end to end in simulation: the sum is right whoever drops,
the server's view is uniform, and tampering or unsafe settings are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import fedloom
from fedloom.client import ClientApp, ClientContext, LinearTrainer
from fedloom.compression import FixedPoint
from fedloom.compression._fixed_point import unpack
from fedloom.errors import ClientError, ConfigError, RoundFailedError
from fedloom.messages import Instruction, Reply
from fedloom.secagg import SecAggRound, SecAggSettings
from fedloom.secagg._protocol import (
    KEYS,
    MASKED,
    RELEASED_BYTES,
    SHARE,
    UNMASK,
    pack_map,
    unpack_map,
)
from fedloom.secagg._shamir import Share, combine
from fedloom.server._loop import drive
from fedloom.simulation import InProcessFleet, ScriptedFleet
from fedloom.strategy import Chain, RoundContext

N = 10
ENCODING = FixedPoint(clip=1.0, bits=20, modulus_bits=32)


def _dataset() -> fedloom.FederatedDataset:
    return fedloom.load_dataset("digits", num_clients=N, seed=0)


def scripted(inner, drops=None, rewrite=None) -> ScriptedFleet:
    """The in-process fleet behind one that drops chosen clients at chosen phases, keeps what
    the server received, and can rewrite instructions on their way to the clients."""
    return ScriptedFleet(inner=inner, drops=drops, rewrite=rewrite)


def _round(
    fleet, settings: SecAggSettings, trainer: LinearTrainer, round: int = 1, encoding=ENCODING
):
    """One secure round of the N clients; returns the encoding (whose error bound the tests
    check against), the model sent, and the outcome."""
    params = trainer.init_parameters(0) + np.float32(0.01)
    chain = Chain((encoding,))
    ctx = RoundContext(round, [str(i) for i in range(N)], params, {"seed": 0}, chain,
                       chain.init(params.shape[0]), N)  # fmt: skip
    mech = SecAggRound(settings)
    return encoding, params, drive(mech.run(ctx), fleet, None)


def _expected_mean(ds, trainer, params, survivors, encoding: FixedPoint, round: int = 1):
    """The plain weighted mean of the survivors' clipped updates with capped weights."""
    app = ClientApp()
    total = np.zeros(params.shape, np.float64)
    weight = 0.0
    for cid in survivors:
        ctx = ClientContext(cid, ds.client(int(cid)), trainer)
        reply = app.handle(ctx, Instruction(round, "fit", params, {"seed": 0}))
        w = min(reply.num_examples, encoding.weight_bound)
        clip = encoding.clip
        total += w * np.clip(reply.vector.astype(np.float64), -clip, clip)
        weight += w
    return total / weight, weight


@pytest.mark.parametrize("degree", [None, 8])  # SecAgg, and SecAgg+ with 8 of 9 neighbours
@pytest.mark.parametrize(
    ("after_share", "in_unmask"),
    [(set(), set()), ({"3"}, set()), (set(), {"6"}), ({"1", "4"}, {"8"})],
)  # 0 %, 10 % after sharing, 10 % in unmasking, 30 % across both
def test_decoded_sum_equals_the_plain_sum_within_the_quantization_bound(
    degree: int | None, after_share: set[str], in_unmask: set[str]
) -> None:
    # Prepare: clients in after_share never send a masked input; those in in_unmask send it
    # but vanish before unmasking (their input stays in the sum).
    ds = _dataset()
    trainer = LinearTrainer(64, 10, lr=0.1, local_epochs=2, batch_size=8)
    settings = SecAggSettings(threshold=0.6, degree=degree)
    encoding = dataclasses.replace(ENCODING, weight_bound=50)
    fleet = scripted(InProcessFleet(ds, trainer), {MASKED: after_share, UNMASK: in_unmask})

    # Execute
    enc, params, outcome = _round(fleet, settings, trainer, encoding=encoding)

    # Assert
    survivors = sorted(set(map(str, range(N))) - after_share, key=int)
    expected, weight = _expected_mean(ds, trainer, params, survivors, enc)
    bound = enc.error_bound_of_mean(len(survivors), weight)
    assert outcome.aggregate.count == len(survivors)
    assert outcome.aggregate.total_weight == weight
    assert np.abs(outcome.aggregate.vector - expected).max() <= bound + 1e-7
    assert bound < 1e-4  # the bound is small enough to matter


def test_every_masked_input_the_server_sees_is_uniform() -> None:
    # Prepare: a model of 6,500 parameters makes each masked input 6,501 values.
    ds = _dataset()
    trainer = LinearTrainer(64, 100)
    fleet = scripted(InProcessFleet(ds, trainer))

    # Execute
    _round(fleet, SecAggSettings(), trainer)

    # Assert: per message, a chi-square test on the top 4 bits (15 degrees of freedom; the
    # threshold 57 is exceeded by uniform data with probability 8e-7) and the low bit's mean.
    # The encoded inputs themselves fail it: most values sit near 0 or 2^32 - small.
    seen = fleet.received[MASKED]
    assert len(seen) == N
    for reply in seen:
        y = unpack(reply.payload["masked"], 6501, 32)
        counts = np.bincount((y >> np.uint64(28)).astype(np.int64), minlength=16)
        chi2 = ((counts - len(y) / 16) ** 2 / (len(y) / 16)).sum()
        assert chi2 < 57
        assert abs((y & np.uint64(1)).mean() - 0.5) < 5 * 0.5 / np.sqrt(len(y))
    plain = ENCODING.encode(np.full(6501, 0.001))
    counts = np.bincount((plain >> np.uint64(28)).astype(np.int64), minlength=16)
    assert ((counts - 6501 / 16) ** 2 / (6501 / 16)).sum() > 57


def test_the_server_never_receives_both_secrets_of_one_client() -> None:
    # Prepare: client 2 drops after sharing; everyone else survives.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)
    fleet = scripted(InProcessFleet(ds, trainer), {MASKED: {"2"}})

    # Execute
    _round(fleet, SecAggSettings(), trainer)

    # Assert: rebuild each owner's secret from what the survivors released (one value per
    # neighbour in U2, sorted; x = the holder's rank among the owner's sorted neighbours + 1).
    # For the dropped client it is its mask key (its public key matches what it advertised);
    # for every survivor it is not its mask key, so it can only be the self-mask seed.
    ids = sorted(map(str, range(N)))
    s_pk = {r.client_id: r.payload["s_pk"] for r in fleet.received[KEYS]}
    released = {r.client_id: r.payload["shares"] for r in fleet.received[UNMASK]}
    t = SecAggSettings().shares_needed(N - 1)
    for owner in ids:
        holders = [u for u in ids if u != owner and u in released]
        points = []
        for u in holders[:t]:
            slot = [v for v in ids if v != u].index(owner)
            y = int.from_bytes(released[u][slot * RELEASED_BYTES : (slot + 1) * RELEASED_BYTES])
            points.append(Share([v for v in ids if v != owner].index(u) + 1, y))
        secret = combine(points, t, 32)
        pk = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
        assert (pk == s_pk[owner]) == (owner == "2")


def test_a_client_refuses_to_release_both_secrets_of_a_neighbour() -> None:
    # Prepare: a malicious server names client 5 both surviving and dropped.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)

    def lie(cid: str, ins: Instruction) -> Instruction:
        if ins.phase != UNMASK:
            return ins
        u3 = unpack_map(ins.payload["u3"])
        return dataclasses.replace(ins, payload={**ins.payload, "dropped": pack_map(
            {"5": b""} if "5" in u3 else {})})  # fmt: skip

    fleet = scripted(InProcessFleet(ds, trainer), rewrite=lie)

    # Execute / Assert
    with pytest.raises(ClientError, match="both surviving and dropped"):
        _round(fleet, SecAggSettings(), trainer)


def test_a_tampered_share_is_detected_by_its_recipient() -> None:
    # Prepare: flip one bit of one encrypted share on its way to client 0.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)

    def tamper(cid: str, ins: Instruction) -> Instruction:
        if ins.phase != MASKED or cid != "0":
            return ins
        held = bytearray(ins.payload["shares"])  # client 0's first record is client 1's
        held[40] ^= 1
        return dataclasses.replace(ins, payload={**ins.payload, "shares": bytes(held)})

    fleet = scripted(InProcessFleet(ds, trainer), rewrite=tamper)

    # Execute / Assert
    with pytest.raises(ClientError, match="share from client 1 failed to authenticate"):
        _round(fleet, SecAggSettings(), trainer)


def _spoil_released(spoil: dict[str, list[int]]) -> ClientApp:
    """An app whose clients in ``spoil`` flip the last bit of the released shares at the
    given slots (a lying or faulty survivor)."""
    base = ClientApp()

    def handle(ctx: ClientContext, ins: Instruction) -> Reply:
        reply = base.handle(ctx, ins)
        if ins.phase != UNMASK or ctx.client_id not in spoil:
            return reply
        raw = bytearray(reply.payload["shares"])
        for slot in spoil[ctx.client_id]:
            raw[(slot + 1) * RELEASED_BYTES - 1] ^= 1
        return dataclasses.replace(reply, payload={"shares": bytes(raw)})

    return ClientApp({p: handle for p in (KEYS, SHARE, MASKED, UNMASK)})


def test_a_bad_released_share_is_caught_and_the_other_shares_rebuild_the_secret() -> None:
    # Prepare: client 0 spoils its share of client 1's self-mask seed (slot 0: "1" is first
    # among 0's neighbours). It is among the first t = 6 holders of 1's shares (x = 1), so the
    # first rebuild fails the seed's commitment; the last 6 holders leave client 0 out.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)
    fleet = InProcessFleet(ds, trainer, app=_spoil_released({"0": [0]}))
    settings = SecAggSettings()

    # Execute
    enc, params, outcome = _round(fleet, settings, trainer)

    # Assert: the sum is still exact
    survivors = [str(i) for i in range(N)]
    expected, weight = _expected_mean(ds, trainer, params, survivors, enc)
    assert np.abs(outcome.aggregate.vector - expected).max() <= enc.error_bound_of_mean(N, weight)


def test_bad_shares_in_both_rebuilds_fail_the_round_rather_than_unmask_wrongly() -> None:
    # Prepare: clients 0 (first holder) and 9 (last holder; "1" is at slot 1 of its
    # neighbours) both spoil their share of client 1's seed.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)
    fleet = InProcessFleet(ds, trainer, app=_spoil_released({"0": [0], "9": [1]}))

    # Execute / Assert
    with pytest.raises(RoundFailedError, match="shares of the self mask of 1 disagree"):
        _round(fleet, SecAggSettings(), trainer)


def test_a_client_without_a_self_mask_commitment_is_dropped() -> None:
    # Prepare: client 4 leaves out the commitment to its self-mask seed.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)
    base = ClientApp()

    def handle(ctx: ClientContext, ins: Instruction) -> Reply:
        reply = base.handle(ctx, ins)
        if ins.phase == SHARE and ctx.client_id == "4":
            return dataclasses.replace(reply, payload={"shares": reply.payload["shares"]})
        return reply

    app = ClientApp({p: handle for p in (KEYS, SHARE, MASKED, UNMASK)})
    settings = SecAggSettings(threshold=0.6)

    # Execute
    _, _, outcome = _round(InProcessFleet(ds, trainer, app=app), settings, trainer)

    # Assert
    assert outcome.rejected == {"4": "self-mask commitment missing or not 32 bytes"}
    assert outcome.aggregate.count == N - 1


@pytest.mark.parametrize("phase", [KEYS, SHARE, MASKED, UNMASK])
def test_more_dropouts_than_n_minus_t_fail_the_round_clearly(phase: str) -> None:
    # t = ceil(0.6 * 9) = 6 of 10: five clients gone leaves 5 < 6.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)
    fleet = scripted(InProcessFleet(ds, trainer), {phase: {"0", "2", "4", "6", "8"}})
    with pytest.raises(RoundFailedError, match="only 5 client"):
        _round(fleet, SecAggSettings(threshold=0.6), trainer)


def test_malformed_replies_drop_their_senders_and_the_round_completes() -> None:
    # Prepare: client 7's app sends a truncated masked input; client 3's advertises a short key.
    ds = _dataset()
    trainer = LinearTrainer(64, 10)
    base = ClientApp()

    def broken(ctx: ClientContext, ins: Instruction) -> Reply:
        reply = base.handle(ctx, ins)
        if ctx.client_id == "7" and ins.phase == MASKED:
            return dataclasses.replace(reply, payload={"masked": reply.payload["masked"][:-4]})
        if ctx.client_id == "3" and ins.phase == KEYS:
            return dataclasses.replace(reply, payload={**reply.payload, "c_pk": b"short"})
        return reply

    app = ClientApp({p: broken for p in (KEYS, SHARE, MASKED, UNMASK)})
    fleet = InProcessFleet(ds, trainer, app=app)
    settings = SecAggSettings(threshold=0.6)

    # Execute
    enc, params, outcome = _round(fleet, settings, trainer)

    # Assert
    assert outcome.aggregate.count == 8
    assert set(outcome.rejected) == {"3", "7"}
    survivors = [str(i) for i in range(N) if i not in (3, 7)]
    expected, weight = _expected_mean(ds, trainer, params, survivors, enc)
    assert np.abs(outcome.aggregate.vector - expected).max() <= enc.error_bound_of_mean(8, weight)


def test_an_unsafe_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--secagg-threshold must be in \(0.5, 1\]"):
        SecAggSettings(threshold=0.5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "median"}, "only the sum of the updates, but median"),
        ({"strategy": "krum"}, "but krum needs every update"),
        ({"strategy": "scaffold"}, "cannot be combined"),
        ({"secure_aggregation": None, "secagg_bits": 8}, "--secagg-bits needs"),
        ({"secure_aggregation": "secagg++"}, "secagg or secagg+"),
        ({"secagg_modulus_bits": 24, "secagg_bits": 20}, "overflow"),
    ],
)
def test_configurations_that_do_not_compose_are_refused(settings: dict, message: str) -> None:
    run = {"dataset": "digits", "model": "logreg", "clients": 20, "rounds": 1,
           "secure_aggregation": "secagg", **settings}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        fedloom.simulate(**run)


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_fedavg_with_secure_aggregation_learns_as_without(mode: str) -> None:
    # Same seed: the only difference is the quantization, far below what moves accuracy.
    run = {"dataset": "digits", "model": "logreg", "clients": 20, "rounds": 5}
    plain = fedloom.simulate(**run)
    secure = fedloom.simulate(**run, secure_aggregation=mode)
    assert secure.history.column("clients") == [20] * 5
    assert abs((secure.history.final_accuracy or 0) - (plain.history.final_accuracy or 0)) < 0.01
    assert np.abs(secure.parameters - plain.parameters).max() < 1e-3
