"""odecli: a command-line experiment runner for Neural ODEs with a fast torchdiffeq-compatible solver."""

__version__ = "0.1.0"

from odecli.solvers import SolveStats, odeint, odeint_adjoint, odeint_event, track_stats  # noqa: E402

__all__ = ["odeint", "odeint_adjoint", "odeint_event", "track_stats", "SolveStats", "__version__"]
