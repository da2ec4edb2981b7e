"""A 2-D dynamical system to learn: its true vector field, initial state and time grid."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from odecli.errors import ConfigError
from odecli.registry import DYNAMICS

# Ground truth comes from a high-accuracy reference solve, never from the model's solver.
REFERENCE_METHOD = "dopri8"
REFERENCE_TOL = 1e-10
# Keys of a dynamics config that are not arguments of its factory.
RESERVED_KEYS = ("name", "train")

# A trajectory larger than this is a blow-up, not something to learn.
MAX_STATE = 1e4
UNBOUNDED_HINT = "Choose other parameters: another dynamics.seed, dynamics.power=1, a shorter dynamics.t_end, or another y0."

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class System:
    """What a fit needs to know about a system: f(t, y) (batched over leading dims), y0 and t."""

    name: str
    vector_field: VectorField
    y0: torch.Tensor
    t: torch.Tensor
    autonomous: bool = True
    _trajectory: torch.Tensor | None = field(default=None, repr=False)

    def trajectory(self) -> torch.Tensor:
        """The true solution at every time in ``t``, shape (len(t), 2), solved in float64."""
        if self._trajectory is None:
            from odecli.solvers import odeint
            from odecli.solvers.errors import SolverError

            y0, t = self.y0.double(), self.t.double()
            try:
                with torch.no_grad():
                    solution = odeint(self.vector_field, y0, t, rtol=REFERENCE_TOL, atol=REFERENCE_TOL, method=REFERENCE_METHOD)
            except SolverError as exc:
                raise ConfigError(f"dynamics '{self.name}' has no usable trajectory on t in [{float(t[0]):g}, {float(t[-1]):g}]: {exc} {UNBOUNDED_HINT}") from exc
            largest = float(solution.abs().max())
            if largest > MAX_STATE:
                raise ConfigError(f"dynamics '{self.name}' grows to |y| = {largest:.3g} on t in [{float(t[0]):g}, {float(t[-1]):g}]; no model learns that. {UNBOUNDED_HINT}")
            self._trajectory = solution.to(self.y0.dtype)
        return self._trajectory


def time_grid(t_start: float, t_end: float, n_points: int) -> torch.Tensor:
    if n_points < 2:
        raise ConfigError(f"dynamics.n_points must be at least 2, got {n_points}.")
    if not t_end > t_start:
        raise ConfigError(f"dynamics.t_end ({t_end}) must be greater than dynamics.t_start ({t_start}).")
    return torch.linspace(float(t_start), float(t_end), int(n_points))


def initial_state(y0: Any) -> torch.Tensor:
    state = torch.as_tensor(list(y0), dtype=torch.float32)
    if state.shape != (2,):
        raise ConfigError(f"dynamics.y0 must have 2 numbers, got {list(y0)}.")
    return state


def matrix(values: Any, name: str = "A") -> torch.Tensor:
    a = torch.as_tensor([list(row) for row in values], dtype=torch.float64)
    if a.shape != (2, 2):
        raise ConfigError(f"dynamics.{name} must be a 2x2 matrix like [[a, b], [c, d]], got {values}.")
    return a


def build_system(node: Mapping[str, Any]) -> System:
    """The system a dynamics config node names (``name`` plus the factory's keyword arguments)."""
    kwargs = {k: v for k, v in node.items() if k not in RESERVED_KEYS}
    factory = DYNAMICS.get(str(node["name"]))
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"dynamics '{node['name']}' does not accept these settings: {exc}") from exc
