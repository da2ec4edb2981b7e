"""odecli's solver core: ``odeint`` (torchdiffeq's interface) over registered solvers.

Importing this package registers every built-in method in ``odecli.registry.SOLVERS``.
"""

from __future__ import annotations

# Each module registers its methods in odecli.registry.SOLVERS on import.
from odecli.solvers import adams, adaptive_adams, esdirk, implicit, radau, runge_kutta, scipy_solver  # noqa: F401
from odecli.solvers.adjoint import odeint_adjoint
from odecli.solvers.checkpoint_adjoint import odeint_checkpoint
from odecli.solvers.errors import (
    CompileFallback,
    FuncOutputMismatch,
    InvalidInputError,
    InvalidTimeGrid,
    MaxStepsExceeded,
    NonFiniteState,
    SolverError,
    StepSizeTooSmall,
    UnknownMethod,
    UnknownOption,
)
from odecli.solvers.independent import BatchStats, odeint_independent
from odecli.solvers.odeint import odeint
from odecli.solvers.stats import SolveStats, track_stats
from odecli.solvers.terminal_event import odeint_event

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_checkpoint",
    "odeint_independent",
    "BatchStats",
    "odeint_event",
    "track_stats",
    "SolveStats",
    "SolverError",
    "StepSizeTooSmall",
    "MaxStepsExceeded",
    "NonFiniteState",
    "InvalidInputError",
    "InvalidTimeGrid",
    "FuncOutputMismatch",
    "UnknownMethod",
    "UnknownOption",
    "CompileFallback",
]
