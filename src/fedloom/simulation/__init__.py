"""Simulation: many virtual clients on one machine, through the same loop as deployment."""

from fedloom.simulation._fleet import InProcessFleet
from fedloom.simulation._run import simulate

__all__ = ["InProcessFleet", "simulate"]
