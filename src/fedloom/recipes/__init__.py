"""Recipes: settings in, a whole run out. The one reader of
:class:`~fedloom.config.SimulationConfig`.

:func:`plan` resolves the settings into a :class:`RunPlan` (every default applied once: local
SGD, sampling, the strategy with its update chain and round mechanism, the privacy ledger);
:func:`simulate` runs a plan on one machine, :func:`serve` over gRPC, :func:`serve_client` joins
a served run, :func:`audit_run` attacks a finished simulation's model, and :func:`predict` and
:func:`export` use a finished run's model, and :func:`run_status` says where a kept run
stands.
"""

from fedloom.recipes._audit import RunAudit, audit_run
from fedloom.recipes._kept import RunStatus, run_status
from fedloom.recipes._plan import (
    RunPlan,
    cohort_size,
    default_delta,
    local_sgd,
    plan,
    sampler_for,
)
from fedloom.recipes._serve import (
    ServeSettings,
    load_trainer,
    model_description,
    serve,
    serve_client,
)
from fedloom.recipes._simulate import builtin_dataset, builtin_trainer, simulate
from fedloom.recipes._use import Predictions, export, predict

__all__ = [
    "Predictions",
    "RunAudit",
    "RunPlan",
    "RunStatus",
    "ServeSettings",
    "audit_run",
    "builtin_dataset",
    "builtin_trainer",
    "cohort_size",
    "default_delta",
    "export",
    "load_trainer",
    "local_sgd",
    "model_description",
    "plan",
    "predict",
    "run_status",
    "sampler_for",
    "serve",
    "serve_client",
    "simulate",
]
