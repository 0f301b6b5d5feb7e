"""Simulation: many virtual clients on one machine, through the same loop as deployment, with
simulated dropout, stragglers and attackers, on one process or a pool of worker processes, and a
scripted fleet for tests."""

from fedloom.simulation._attack import ATTACKS, SIGN_FLIP_SCALE, Attack, attack_mod
from fedloom.simulation._conditions import SimulatedConditions
from fedloom.simulation._fleet import InProcessFleet
from fedloom.simulation._pool import WorkerLaunch, WorkerPool
from fedloom.simulation._ray import RayFleet
from fedloom.simulation._runner import (
    ClientRunner,
    ClientStates,
    Outcome,
    RunnerSetup,
    Task,
    WorkerError,
)
from fedloom.simulation._scripted import Responder, ScriptedFleet, empty_reply

__all__ = [
    "ATTACKS",
    "SIGN_FLIP_SCALE",
    "Attack",
    "ClientRunner",
    "ClientStates",
    "InProcessFleet",
    "Outcome",
    "RayFleet",
    "Responder",
    "RunnerSetup",
    "ScriptedFleet",
    "SimulatedConditions",
    "Task",
    "WorkerError",
    "WorkerLaunch",
    "WorkerPool",
    "attack_mod",
    "empty_reply",
]
