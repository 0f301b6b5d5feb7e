"""The server's half of secure aggregation: a four-phase round mechanism.

The server relays keys and encrypted shares it cannot read, adds up masked inputs it cannot
read, and at the end rebuilds just enough secrets to remove the masks from the sum: the
self-mask seeds of the clients whose input is in the sum, and the mask keys of the clients that
dropped after sharing. A client that drops in any phase only leaves the round; the round fails,
with :class:`~fedloom.errors.RoundFailedError`, when fewer clients remain than the threshold.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedloom.errors import ConfigError, RoundFailedError
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.secagg._client import pairwise_mask_seed
from fedloom.secagg._crypto import prg_into
from fedloom.secagg._graph import neighbours
from fedloom.secagg._protocol import (
    KEYS,
    MASKED,
    SHARE,
    UNMASK,
    SecAggSettings,
    mask_sign,
    pack_ids,
    pack_map,
    unpack_map,
)
from fedloom.secagg._shamir import Share, combine
from fedloom.strategy import Aggregate, RoundContext, RoundOutcome, RoundSteps, WeightedMean

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

    Only a weighted mean composes with it: the server sees the sum and nothing else. The
    aggregate is ``Σ w_i Δ_i / Σ w_i`` with each ``Δ_i`` clipped to the encoding's range and
    ``w_i`` the example count capped at the weight bound; it equals the plain weighted mean to
    within :meth:`error_bound`.

    Parameters
    ----------
    settings
        Threshold, degree, encoding and weight bound, sent to every client.
    seed
        Seeds SecAgg+'s neighbour graph (a fresh graph each round).
    """

    settings: SecAggSettings = field(default_factory=SecAggSettings)
    seed: int = 0

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

    def error_bound(self, count: int, total_weight: float) -> float:
        """The largest per-coordinate difference between the decoded mean and the weighted mean
        of the clipped updates, for ``count`` clients of summed weight ``total_weight``."""
        bound = self.settings.encoding.error_bound(count)
        return bound * self.settings.weight_bound / total_weight

    def run(self, ctx: RoundContext) -> RoundSteps:
        if not isinstance(ctx.aggregator, WeightedMean):
            raise ConfigError(
                "secure aggregation reveals only the sum of the updates, so it composes only "
                f"with the weighted mean, not with {type(ctx.aggregator).__name__}"
            )
        settings = self.settings
        k = settings.encoding.modulus_bits
        count = ctx.parameters.shape[0] + 1
        view = _View(ctx.round, frozenset(ctx.selected))
        config = {**ctx.config, **settings.to_config()}

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

        # 2. share keys
        share_ins = {
            u: Instruction(
                ctx.round,
                SHARE,
                None,
                config,
                {"keys": pack_map({v: keys[v][0] + keys[v][1] for v in sorted(graph[u])})},
            )
            for u in u1
        }
        inbox: dict[str, dict[str, bytes]] = defaultdict(dict)
        u2: list[str] = []
        for reply in view.replies((yield share_ins), SHARE, u1):
            try:
                sealed = unpack_map(reply.payload.get("shares", b""))
            except ValueError as exc:
                view.reject(reply.client_id, f"malformed shares: {exc}")
                continue
            if set(sealed) != graph[reply.client_id] or not all(sealed.values()):
                view.reject(reply.client_id, "shares not addressed to exactly its neighbours")
                continue
            u2.append(reply.client_id)
            for v, blob in sealed.items():
                inbox[v][reply.client_id] = blob
        self._enough(ctx.round, SHARE, len(u2), least)

        # 3. masked input
        u2_set = frozenset(u2)
        ids = pack_ids(sorted(u2))
        masked_ins = {
            u: Instruction(
                ctx.round,
                MASKED,
                None,
                config,
                {"shares": pack_map({s: b for s, b in inbox[u].items() if s in u2_set}), "u2": ids},
            )
            for u in u2
        }
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

        # 4. unmask
        survivors = frozenset(u3)
        dropped = sorted(u2_set - survivors)
        lists = {"u3": pack_ids(sorted(u3)), "dropped": pack_ids(dropped)}
        unmask_ins = {u: Instruction(ctx.round, UNMASK, None, config, lists) for u in u3}
        b_shares: dict[str, list[Share]] = defaultdict(list)
        s_shares: dict[str, list[Share]] = defaultdict(list)
        for reply in view.replies((yield unmask_ins), UNMASK, u3):
            parsed = self._released(reply, graph, survivors, frozenset(dropped))
            if parsed is None:
                view.reject(reply.client_id, "malformed or inconsistent unmask shares")
                continue
            for owner, share in parsed[0].items():
                b_shares[owner].append(share)
            for owner, share in parsed[1].items():
                s_shares[owner].append(share)

        for v in u3:
            seed = self._rebuild(ctx.round, b_shares[v], needed[v], 32, f"self mask of {v}")
            prg_into(seed, total, subtract=True)
        for v in dropped:
            secret = self._rebuild(ctx.round, s_shares[v], needed[v], 32, f"mask key of {v}")
            if _public_of(secret) != keys[v][1]:
                raise RoundFailedError(ctx.round, UNMASK, 0, needed[v], f"bad shares for {v}")
            for u in sorted(graph[v] & survivors):
                seed = pairwise_mask_seed(secret, keys[u][1], ctx.round)
                prg_into(seed, total, subtract=mask_sign(u, v) > 0)

        total = total.astype(np.uint64) & np.uint64((1 << k) - 1)
        weight = float(int(total[-1]))
        summed = settings.encoding.decode_sum(total[:-1], len(u3))
        mean = summed * (settings.weight_bound / weight) if weight > 0 else summed * 0.0
        log.info(
            "round %d: secure sum of %d clients (%d dropped after sharing)",
            ctx.round,
            len(u3),
            len(dropped),
        )
        aggregate = Aggregate(mean.astype(np.float32), len(u3), weight)
        return RoundOutcome(
            aggregate, ctx.aggregator_state, {}, view.rejected, accepted=tuple(sorted(u3))
        )

    @staticmethod
    def _enough(round: int, phase: str, have: int, need: int) -> None:
        if have < need:
            raise RoundFailedError(
                round, phase, have, need, "secure aggregation needs at least t clients"
            )

    @staticmethod
    def _released(
        reply: Reply,
        graph: Mapping[str, frozenset[str]],
        survivors: frozenset[str],
        dropped: frozenset[str],
    ) -> tuple[dict[str, Share], dict[str, Share]] | None:
        """The shares a survivor released, split into self-mask and mask-key shares; None when
        anything is malformed or asks for a secret it must not release."""
        try:
            entries = unpack_map(reply.payload.get("shares", b""))
            b: dict[str, Share] = {}
            s: dict[str, Share] = {}
            for key, raw in entries.items():
                kind, _, owner = key.partition(":")
                if owner not in graph[reply.client_id]:
                    return None
                if kind == "b" and owner in survivors:
                    b[owner] = Share.from_bytes(raw)
                elif kind == "s" and owner in dropped:
                    s[owner] = Share.from_bytes(raw)
                else:
                    return None
            return b, s
        except ValueError:
            return None

    @staticmethod
    def _rebuild(round: int, shares: list[Share], need: int, length: int, what: str) -> bytes:
        """A secret from its shares; two disjoint-enough subsets must agree when there are
        more than ``need`` shares, so one bad share is caught rather than silently used."""
        if len(shares) < need:
            raise RoundFailedError(
                round, UNMASK, len(shares), need, f"too few shares of the {what}"
            )
        try:
            secret = combine(shares[:need], need, length)
            if len(shares) > need and combine(shares[-need:], need, length) != secret:
                raise ValueError("inconsistent shares")
        except ValueError as exc:
            raise RoundFailedError(round, UNMASK, len(shares), need, f"{what}: {exc}") from None
        return secret


def _graph_seed(seed: int, round: int) -> int:
    return int(np.random.SeedSequence([seed, round, 0x5EC466]).generate_state(1)[0])
