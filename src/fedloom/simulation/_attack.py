"""Adversarial clients, for testing how a strategy's defences hold up in simulation.

A fraction of the clients is malicious; :meth:`Attack.choose` draws them once, from the run's
seed, and they stay the same for the whole run. :func:`attack_mod` is a client mod that makes
them send a poisoned update instead of their honest one wherever they train (a plain fit, or
secure aggregation's key phase, which trains through it); honest clients, and every client's
evaluation, are untouched. ``k`` is :attr:`Attack.scale`.

``sign-flip``
    Train honestly, send ``-k * update`` (k = :data:`SIGN_FLIP_SCALE` by default): an update
    pointing against the descent direction. A sign-flipping Byzantine worker as in Li et al.
    (2019, RSA, AAAI) and the bit-flipping attack of Karimireddy, He & Jaggi (2021, ICML).
``gaussian``
    Send i.i.d. Gaussian noise, as Blanchard et al. (2017, Krum, NeurIPS) model Byzantine
    workers; here rescaled to ``k`` times the norm of the client's honest update (k = 1 by
    default), so that it cannot be told apart by its norm alone.
``label-flip``
    A data-poisoning attacker: train on the client's own data with every label ``y`` replaced
    by ``num_classes - 1 - y`` (a fixed permutation: 0 and ``num_classes - 1`` swap, and so on
    inwards), as in Fang et al. (2020, USENIX Security), and send that update unchanged.
``scale``
    Boosted model replacement (Bagdasaryan et al., 2020, AISTATS): train towards the
    attacker's model (on flipped labels, as ``label-flip``) and send ``k * update`` with
    ``k = cohort_size`` by default. With equal weights and server learning rate 1 the mean
    over the cohort becomes the attacker's model plus ``1 / cohort_size`` of the honest
    clients' updates, which Bagdasaryan et al. take to nearly cancel out near convergence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedloom.client import ClientContext, Handler, Mod, client_seed, mod
from fedloom.data import ArrayData, ClientData
from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.strategy import round_half_up

__all__ = ["ATTACKS", "SIGN_FLIP_SCALE", "Attack", "attack_mod"]

ATTACKS: tuple[str, ...] = ("sign-flip", "gaussian", "label-flip", "scale")

SIGN_FLIP_SCALE = 4.0
"""The default ``k`` of ``sign-flip``: malicious clients send ``-4 * update``."""

_CHOOSE_TAG = 0x6576696C  # b"evil": the malicious draw's own stream, apart from sampling's
_FORMAT = (
    f"expected --attack KIND:FRACTION with KIND one of {', '.join(ATTACKS)} and FRACTION "
    "in [0, 1), e.g. sign-flip:0.2"
)


@dataclass(frozen=True)
class Attack:
    """An attack: its kind, the fraction of clients that are malicious, and its strength k.

    Parameters
    ----------
    kind
        One of :data:`ATTACKS`.
    fraction
        In [0, 1): the share of all clients that are malicious (0: none).
    scale
        k, positive; ``None`` means the kind's default (see the module documentation).

    Examples
    --------
    >>> attack = Attack.parse("sign-flip:0.2")
    >>> attack
    Attack(kind='sign-flip', fraction=0.2, scale=None)
    >>> attack.choose([str(i) for i in range(10)], seed=0)
    ('5', '6')
    """

    kind: str
    fraction: float
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"unknown attack {self.kind!r}; {_FORMAT}")
        if not 0.0 <= self.fraction < 1.0:
            raise ConfigError(f"attack fraction must be in [0, 1), got {self.fraction}; {_FORMAT}")
        if self.scale is not None and not 0.0 < self.scale < float("inf"):
            raise ConfigError(
                f"--attack-scale (the attack's k) must be positive and finite, got {self.scale}"
            )

    @classmethod
    def parse(cls, spec: str) -> Attack:
        """Read ``"KIND:FRACTION"``, e.g. ``"sign-flip:0.2"``.

        Raises
        ------
        ConfigError
            If ``spec`` is not of that form, names an unknown kind, or the fraction is not a
            number in [0, 1).
        """
        kind, sep, fraction = spec.partition(":")
        if not sep or ":" in fraction:
            raise ConfigError(f"cannot read --attack {spec!r}; {_FORMAT}")
        try:
            value = float(fraction)
        except ValueError:
            raise ConfigError(
                f"--attack {spec!r}: FRACTION {fraction!r} is not a number; {_FORMAT}"
            ) from None
        return cls(kind.strip(), value)

    def choose(self, client_ids: Sequence[str], seed: int) -> tuple[str, ...]:
        """The malicious clients: ``round_half_up(fraction * n)`` of the ``n`` distinct ids.

        Drawn from ``numpy.random.default_rng([seed, tag])`` over the ids sorted (by value where
        they are digits), so the order of ``client_ids`` does not matter; call it once per run.
        The result is sorted the same way.
        """
        if seed < 0:
            raise ConfigError(f"--seed must be 0 or more, got {seed}")
        pool = sorted(set(client_ids), key=_id_order)
        count = round_half_up(self.fraction * len(pool))
        rng = np.random.default_rng([seed, _CHOOSE_TAG])
        chosen = rng.choice(len(pool), size=count, replace=False)
        return tuple(pool[i] for i in sorted(chosen.tolist()))


def _id_order(client_id: str) -> tuple[int, int, str]:
    """Digit ids first, by value ("2" before "10"); the rest after them, as strings."""
    if client_id.isascii() and client_id.isdigit():
        return (0, int(client_id), client_id)
    return (1, 0, client_id)


def _flip_labels(data: ArrayData, num_classes: int) -> ArrayData:
    """A copy of ``data`` with every label ``y`` replaced by ``num_classes - 1 - y``."""
    return ArrayData(data.x, num_classes - 1 - data.y)


def attack_mod(
    attack: Attack,
    malicious: Collection[str],
    *,
    num_classes: int,
    cohort_size: int,
) -> Mod:
    """A client mod with which the ``malicious`` clients send poisoned fit updates.

    Put it inside secure aggregation's mod (``(secagg_mod, attack_mod(...), ...)``, as
    ``fedloom.recipes`` does), so that the update a malicious client masks is the poisoned one.

    Parameters
    ----------
    attack
        What the malicious clients do.
    malicious
        Their ids, from :meth:`Attack.choose`.
    num_classes
        The number of label classes (``label-flip`` and ``scale`` flip labels over them).
    cohort_size
        Clients per round: ``scale``'s default boost.

    Raises
    ------
    ConfigError
        If ``num_classes`` is below 2 or ``cohort_size`` below 1.
    """
    if num_classes < 2:
        raise ConfigError(f"label flipping needs at least 2 classes, got {num_classes}")
    if cohort_size < 1:
        raise ConfigError(f"cohort_size must be at least 1, got {cohort_size}")
    bad = frozenset(malicious)
    default = {"sign-flip": SIGN_FLIP_SCALE, "gaussian": 1.0, "scale": float(cohort_size)}
    k = attack.scale if attack.scale is not None else default.get(attack.kind, 1.0)

    def poisoned(ctx: ClientContext, ins: Instruction, call_next: Handler) -> Reply:
        if ins.phase != "fit" or ctx.client_id not in bad:
            return call_next(ctx, ins)
        if attack.kind in ("label-flip", "scale"):
            train = ctx.data.train
            if len(train) and (train.y.min() < 0 or train.y.max() >= num_classes):
                raise ClientError(
                    ctx.client_id, ins.round, ins.phase,
                    f"labels must be in 0..{num_classes - 1} to be flipped",
                )  # fmt: skip
            data = ClientData(_flip_labels(train, num_classes), ctx.data.test)
            ctx = dataclasses.replace(ctx, data=data)  # the same state mapping
        honest = call_next(ctx, ins)
        if honest.vector is None:
            return honest
        return dataclasses.replace(honest, vector=_poison(attack.kind, k, honest.vector, ctx, ins))

    return mod()(poisoned)


def _poison(kind: str, k: float, update: Vector, ctx: ClientContext, ins: Instruction) -> Vector:
    """What a malicious client sends in place of its honest ``update``, as float32."""
    out: Vector
    if kind == "sign-flip":
        out = (update * np.float32(-k)).astype(np.float32)
    elif kind == "scale":
        out = (update * np.float32(k)).astype(np.float32)
    elif kind == "gaussian":
        seed = client_seed(int(ins.config.get("seed", 0)), ins.round, ctx.client_id)
        noise: npt.NDArray[np.float64] = np.random.default_rng(seed).standard_normal(update.size)
        norm = float(np.linalg.norm(noise))
        target = k * float(np.linalg.norm(update.astype(np.float64)))
        out = (noise * (target / norm if norm > 0 else 0.0)).astype(np.float32)
    else:  # label-flip: the update of training on flipped labels, as it is
        out = update
    return out
