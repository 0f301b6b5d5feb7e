"""Simulation: many virtual clients on one machine, through the same loop as deployment, with
simulated dropout, stragglers and attackers."""

from fedloom.simulation._attack import ATTACKS, SIGN_FLIP_SCALE, Attack, attack_mod
from fedloom.simulation._conditions import SimulatedConditions
from fedloom.simulation._fleet import InProcessFleet

__all__ = [
    "ATTACKS",
    "SIGN_FLIP_SCALE",
    "Attack",
    "InProcessFleet",
    "SimulatedConditions",
    "attack_mod",
]
