"""Secure aggregation (Bonawitz et al. 2017; SecAgg+, Bell et al. 2020): the server learns only
the sum of the round's updates, even when clients drop out.

``SecAggRound`` is the server's round mechanism; :func:`advertise` and :func:`respond` are the
client's half, which the client runtime's ``secagg_mod`` runs. ``SecAggSettings`` holds what
both sides agree on; how updates become integers is the update chain's business.
"""

from fedloom.secagg._client import STATE_KEY, advertise, held_secrets, respond, settings_of
from fedloom.secagg._graph import secagg_plus_degree
from fedloom.secagg._protocol import KEYS, MASKED, PHASES, SHARE, UNMASK, SecAggSettings
from fedloom.secagg._server import SecAggRound

__all__ = [
    "KEYS",
    "MASKED",
    "PHASES",
    "SHARE",
    "STATE_KEY",
    "UNMASK",
    "SecAggRound",
    "SecAggSettings",
    "advertise",
    "held_secrets",
    "respond",
    "secagg_plus_degree",
    "settings_of",
]
