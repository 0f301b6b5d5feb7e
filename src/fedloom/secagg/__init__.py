"""Secure aggregation (Bonawitz et al. 2017; SecAgg+, Bell et al. 2020): the server learns only
the sum of the round's updates, even when clients drop out.

``SecAggRound`` is the server's round mechanism; the client's handlers are built into every
:class:`~fedloom.client.ClientApp`. ``SecAggSettings`` holds what both sides agree on.
"""

from fedloom.secagg._encoding import FixedPoint
from fedloom.secagg._protocol import PHASES, SecAggSettings
from fedloom.secagg._server import SecAggRound

__all__ = ["PHASES", "FixedPoint", "SecAggRound", "SecAggSettings"]
