"""The server's half of secure aggregation: a four-phase round mechanism.

The server relays keys and encrypted shares it cannot read, adds up masked inputs it cannot
read, and at the end rebuilds just enough secrets to remove the masks from the sum: the
self-mask seeds of the clients whose input is in the sum, and the mask keys of the clients that
dropped after sharing. A client that drops in any phase only leaves the round; the round fails,
with :class:`~fedloom.errors.RoundFailedError`, when fewer clients remain than the threshold.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedloom.errors import RoundFailedError
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.secagg._client import pairwise_mask_seeds, self_seed_commitment
from fedloom.secagg._crypto import prg_into
from fedloom.secagg._graph import neighbours
from fedloom.secagg._protocol import (
    KEYS,
    MASKED,
    RELEASED_BYTES,
    SEALED_BYTES,
    SHARE,
    UNMASK,
    SecAggSettings,
    mask_sign,
    pack_ids,
    pack_map,
)
from fedloom.secagg._shamir import interpolate
from fedloom.strategy import RoundContext, RoundOutcome, RoundSteps, Total, check_sum_only

__all__ = ["SecAggRound"]

log = logging.getLogger("fedloom.secagg")

U64 = npt.NDArray[np.uint64]


def _public_of(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass
class _View:
    """What the server has learnt so far in one round, and whom it refused and why."""

    round: int
    selected: frozenset[str]
    rejected: dict[str, str] = field(default_factory=dict)

    def replies(
        self, replies: Iterable[Reply], phase: str, allowed: Iterable[str]
    ) -> Iterator[Reply]:
        """The replies of this phase from ``allowed`` clients, one per client."""
        wanted = set(allowed)
        seen: set[str] = set()
        for reply in replies:
            cid = reply.client_id
            if (
                cid not in wanted
                or cid in seen
                or reply.round != self.round
                or reply.phase != phase
            ):
                self.reject(cid, f"unexpected reply in phase {phase!r}")
                continue
            seen.add(cid)
            yield reply

    def reject(self, client_id: str, reason: str) -> None:
        log.warning("round %d: dropped client %s: %s", self.round, client_id, reason)
        self.rejected.setdefault(client_id, reason)


@dataclass(frozen=True)
class SecAggRound:
    """Secure aggregation of the round's updates (SecAgg, or SecAgg+ with a ``degree``).

    It works with the strategy's update chain (:class:`~fedloom.strategy.Chain`), whose client
    links end in an integer encoding: it sends the chain's settings with the keys phase, masks
    and sums the encoded updates, and hands the unmasked sum to :meth:`Chain.finish`, which
    decodes it. With the fixed-point encoding the aggregate is ``Σ w_i Δ_i / Σ w_i`` with each
    ``Δ_i`` clipped to the encoding's range and ``w_i`` the example count capped at the weight
    bound, to within the encoding's ``error_bound_of_mean``. Nothing is unmasked when fewer
    inputs arrived than the chain's ``min_contributors`` (distributed DP's least noise).

    Parameters
    ----------
    settings
        Threshold and degree, sent to every client.
    seed
        Seeds SecAgg+'s neighbour graph (a fresh graph each round).
    """

    settings: SecAggSettings = field(default_factory=SecAggSettings)
    seed: int = 0

    hides_updates: ClassVar[bool] = True

    def init(self, parameters: Vector) -> None:
        return None

    def least_survivors(self, selected: int) -> int:
        """The fewest clients that must stay to the end of a round of ``selected`` clients: t of
        the neighbourhood a client has when nobody drops (all others for SecAgg)."""
        span = (
            selected - 1
            if self.settings.degree is None
            else min(self.settings.degree, selected - 1)
        )
        return max(2, self.settings.shares_needed(span))

    def run(self, ctx: RoundContext) -> RoundSteps:
        chain, encoding = check_sum_only(ctx.aggregator)
        settings = self.settings
        k = encoding.modulus_bits
        count = encoding.encoded_size(ctx.parameters.shape[0])
        view = _View(ctx.round, frozenset(ctx.selected))
        config = {**ctx.config, **settings.to_config(), **chain.client_config()}

        # 1. advertise keys (and train)
        start = Instruction(ctx.round, KEYS, ctx.parameters, config)
        keys: dict[str, tuple[bytes, bytes]] = {}
        for reply in view.replies((yield dict.fromkeys(ctx.selected, start)), KEYS, ctx.selected):
            c_pk, s_pk = reply.payload.get("c_pk", b""), reply.payload.get("s_pk", b"")
            if len(c_pk) != 32 or len(s_pk) != 32:
                view.reject(reply.client_id, "public keys missing or not 32 bytes")
                continue
            keys[reply.client_id] = (c_pk, s_pk)
        u1 = sorted(keys)
        least = self.least_survivors(len(ctx.selected))
        self._enough(ctx.round, KEYS, len(u1), least)
        graph = neighbours(u1, settings.degree, seed=_graph_seed(self.seed, ctx.round))
        needed = {u: settings.shares_needed(len(graph[u])) for u in u1}
        least = max(least, *needed.values())

        # 2. share keys: each client gets its neighbours' keys, in sorted order (with every
        # client a neighbour of every other, one list of all keys for all: a client skips its own)
        order = {u: sorted(graph[u]) for u in u1}
        entry = {v: pack_map({v: keys[v][0] + keys[v][1]}) for v in u1}
        everyone = b"".join(entry.values())
        complete = all(len(order[u]) == len(u1) - 1 for u in u1)
        share_ins = {
            u: Instruction(
                ctx.round,
                SHARE,
                None,
                config,
                {"keys": everyone if complete else b"".join([entry[v] for v in order[u]])},
            )
            for u in u1
        }
        sealed: dict[str, bytes] = {}
        commitment: dict[str, bytes] = {}
        for reply in view.replies((yield share_ins), SHARE, u1):
            raw = reply.payload.get("shares", b"")
            deg = len(order[reply.client_id])
            if len(raw) != deg * SEALED_BYTES:
                view.reject(
                    reply.client_id,
                    f"shares not {deg} records of {SEALED_BYTES} bytes, one per neighbour",
                )
                continue
            b_commit = reply.payload.get("b_commit", b"")
            if len(b_commit) != 32:
                view.reject(reply.client_id, "self-mask commitment missing or not 32 bytes")
                continue
            sealed[reply.client_id] = raw
            commitment[reply.client_id] = b_commit
        u2 = sorted(sealed)
        self._enough(ctx.round, SHARE, len(u2), least)

        # 3. masked input: each client gets the shares addressed to it, from its neighbours in
        # U2 in sorted order; the sender's record for v sits at v's rank among its neighbours
        u2_set = frozenset(u2)
        active = {u: [v for v in order[u] if v in u2_set] for u in u2}
        slot = {u: dict(zip(active[u], range(len(active[u])), strict=True)) for u in u2}
        ids = pack_ids(u2)
        inbox = _route(u2, order, active, sealed)
        del sealed
        masked_ins = {
            v: Instruction(ctx.round, MASKED, None, config, {"shares": inbox[v], "u2": ids})
            for v in u2
        }
        del inbox
        word = np.dtype("<u4") if k <= 32 else np.dtype("<u8")
        total = np.zeros(count, dtype=word)
        u3: list[str] = []
        for reply in view.replies((yield masked_ins), MASKED, u2):
            raw = reply.payload.get("masked", b"")
            if len(raw) != count * word.itemsize:
                view.reject(reply.client_id, "malformed masked input: wrong length")
                continue
            np.add(total, np.frombuffer(raw, dtype=word), out=total)
            u3.append(reply.client_id)
        self._enough(ctx.round, MASKED, len(u3), least)
        if len(u3) < chain.min_contributors:
            raise RoundFailedError(
                ctx.round, MASKED, len(u3), chain.min_contributors, chain.requirement
            )

        # 4. unmask
        survivors = frozenset(u3)
        dropped = sorted(u2_set - survivors)
        lists = {"u3": pack_ids(sorted(u3)), "dropped": pack_ids(dropped)}
        unmask_ins = {u: Instruction(ctx.round, UNMASK, None, config, lists) for u in u3}
        released: dict[str, bytes] = {}
        for reply in view.replies((yield unmask_ins), UNMASK, u3):
            raw = reply.payload.get("shares", b"")
            if not _released_ok(raw, len(active[reply.client_id])):
                view.reject(reply.client_id, "malformed unmask shares")
                continue
            released[reply.client_id] = raw

        def rebuild(v: str, self_mask: bool) -> bytes:
            """v's self-mask seed (or mask key) from the shares its neighbours released: x is
            a holder's rank among v's sorted neighbours + 1 (as v dealt them), y sits at v's
            rank among the holder's neighbours in U2. The first ``need`` shares are used, or
            else the last ``need``; the result must match v's commitment (or public key), so
            a bad share is caught, never silently used."""
            what = f"{'self mask' if self_mask else 'mask key'} of {v}"
            need = needed[v]
            held = ((x, u) for x, u in enumerate(order[v], start=1) if u in released)
            first = list(itertools.islice(held, need))
            if len(first) < need:
                raise RoundFailedError(
                    ctx.round, UNMASK, len(first), need, f"too few shares of the {what}"
                )
            for chosen in itertools.chain([first], _last_shares(order[v], released, need)):
                xs, ys = [], []
                for x, u in chosen:
                    at = slot[u][v] * RELEASED_BYTES
                    xs.append(x)
                    ys.append(int.from_bytes(released[u][at : at + RELEASED_BYTES], "big"))
                try:
                    value = interpolate(tuple(xs), ys, 32)
                except ValueError:
                    continue
                if self_mask and self_seed_commitment(value) == commitment[v]:
                    return value
                if not self_mask and _public_of(value) == keys[v][1]:
                    return value
                log.warning("round %d: a bad share of the %s", ctx.round, what)
            raise RoundFailedError(
                ctx.round, UNMASK, need, need, f"the shares of the {what} disagree"
            )

        for v in u3:
            prg_into(rebuild(v, self_mask=True), total, subtract=True)
        for v in dropped:
            secret = rebuild(v, self_mask=False)
            peers = sorted(graph[v] & survivors)
            seeds = pairwise_mask_seeds(secret, [keys[u][1] for u in peers], ctx.round)
            for u, seed in zip(peers, seeds, strict=True):
                prg_into(seed, total, subtract=mask_sign(u, v) > 0)

        total = total.astype(np.uint64) & np.uint64((1 << k) - 1)
        aggregate, chain_state = chain.finish(Total(total, 0.0, len(u3)), ctx.aggregator_state)
        log.info(
            "round %d: secure sum of %d clients (%d dropped after sharing)",
            ctx.round,
            len(u3),
            len(dropped),
        )
        return RoundOutcome(aggregate, chain_state, {}, view.rejected, accepted=tuple(sorted(u3)))

    @staticmethod
    def _enough(round: int, phase: str, have: int, need: int) -> None:
        if have < need:
            raise RoundFailedError(
                round, phase, have, need, "secure aggregation needs at least t clients"
            )


def _route(
    u2: list[str],
    order: dict[str, list[str]],
    active: dict[str, list[str]],
    sealed: dict[str, bytes],
) -> dict[str, bytes]:
    """Each client's inbox: the records addressed to it, from its neighbours in U2 in sorted
    order. Sender u's record for v sits at v's rank among u's sorted neighbours."""
    n = len(u2)
    if all(len(order[u]) == n - 1 for u in u2):
        # every client a neighbour of every other, all in U2: client j's record for client i
        # is row i - 1 of j's reply for j < i and row i for j > i; a slice of a 3-d view each
        grid = np.frombuffer(b"".join([sealed[u] for u in u2]), dtype=np.uint8)
        grid = grid.reshape(n, n - 1, SEALED_BYTES)
        # (the last client's second slice is empty; its column index only has to exist)
        return {
            v: np.concatenate([grid[:i, i - 1], grid[i + 1 :, min(i, n - 2)]]).tobytes()
            for i, v in enumerate(u2)
        }
    rank = {u: {v: i for i, v in enumerate(order[u])} for u in u2}
    return {
        v: b"".join(
            [
                sealed[u][rank[u][v] * SEALED_BYTES : (rank[u][v] + 1) * SEALED_BYTES]
                for u in active[v]
            ]
        )
        for v in u2
    }


def _last_shares(
    order: list[str], released: dict[str, bytes], need: int
) -> Iterator[list[tuple[int, str]]]:
    """The second try at a secret, made only if the first fails: the last ``need`` holders'
    shares, when there are more than ``need``."""
    holders = [(x, u) for x, u in enumerate(order, start=1) if u in released]
    if len(holders) > need:
        yield holders[-need:]


def _released_ok(raw: bytes, count: int) -> bool:
    """Is ``raw`` ``count`` share values, each below 2^521 (its first byte at most 1)?"""
    return len(raw) == count * RELEASED_BYTES and max(raw[::RELEASED_BYTES], default=0) <= 1


def _graph_seed(seed: int, round: int) -> int:
    return int(np.random.SeedSequence([seed, round, 0x5EC466]).generate_state(1)[0])
