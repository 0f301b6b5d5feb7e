"""Simulation: many virtual clients on one machine, through the same loop as deployment, with
simulated dropout, stragglers and attackers, and a scripted fleet for tests."""

from fedloom.simulation._attack import ATTACKS, SIGN_FLIP_SCALE, Attack, attack_mod
from fedloom.simulation._conditions import SimulatedConditions
from fedloom.simulation._fleet import InProcessFleet
from fedloom.simulation._scripted import Responder, ScriptedFleet, empty_reply

__all__ = [
    "ATTACKS",
    "SIGN_FLIP_SCALE",
    "Attack",
    "InProcessFleet",
    "Responder",
    "ScriptedFleet",
    "SimulatedConditions",
    "attack_mod",
    "empty_reply",
]
