"""The matrix systems of the Neural ODE tutorials: dy/dt = (y**power) @ A.

``spiral``, ``random_matrix`` and ``lotka_volterra`` (``form: matrix``) share this field;
``power: 3`` is the tutorials' cubic spiral, ``power: 1`` the plain linear system.
"""

from __future__ import annotations

from typing import Any

import torch

from odecli.dynamics.system import System, initial_state, matrix, time_grid
from odecli.errors import ConfigError
from odecli.registry import DYNAMICS


class MatrixField(torch.nn.Module):
    """dy/dt = (y**power) @ A, batched over leading dimensions."""

    def __init__(self, a: torch.Tensor, power: int):
        super().__init__()
        if int(power) < 1:
            raise ConfigError(f"dynamics.power must be a positive integer, got {power}.")
        self.register_buffer("a", a)
        self.power = int(power)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y**self.power) @ self.a.to(y.dtype)


def _matrix_system(name: str, a: torch.Tensor, power: int, y0: Any, t_start: float, t_end: float, n_points: int) -> System:
    return System(name, MatrixField(a, power), initial_state(y0), time_grid(t_start, t_end, n_points))


@DYNAMICS.register("spiral")
def spiral(A: Any, power: int, y0: Any, t_start: float, t_end: float, n_points: int) -> System:
    """Damped cubic spiral dy/dt = (y**3) @ A, the torchdiffeq ode_demo system."""
    return _matrix_system("spiral", matrix(A), power, y0, t_start, t_end, n_points)


@DYNAMICS.register("random_matrix")
def random_matrix(seed: int, scale: float, power: int, y0: Any, t_start: float, t_end: float, n_points: int) -> System:
    """The spiral's field with A = randn(2, 2) * scale drawn from ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    a = torch.randn(2, 2, generator=generator, dtype=torch.float64) * float(scale)
    return _matrix_system("random_matrix", a, power, y0, t_start, t_end, n_points)


class ClassicLotkaVolterra(torch.nn.Module):
    """dx/dt = a·x − b·x·y, dy/dt = d·x·y − c·y (x prey, y predators)."""

    def __init__(self, a: float, b: float, c: float, d: float):
        super().__init__()
        self.a, self.b, self.c, self.d = float(a), float(b), float(c), float(d)

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        x, y = state[..., 0], state[..., 1]
        return torch.stack((self.a * x - self.b * x * y, self.d * x * y - self.c * y), dim=-1)


@DYNAMICS.register("lotka_volterra", aliases=("lotka",))
def lotka_volterra(
    form: str, a: float, b: float, c: float, d: float, power: int, y0: Any, t_start: float, t_end: float, n_points: int
) -> System:
    """Lotka–Volterra: the tutorials' matrix form (y**power) @ [[0, -bc/d], [da/b, 0]], or the classic predator–prey equations."""
    if form == "matrix":
        a_matrix = torch.tensor([[0.0, -b * c / d], [d * a / b, 0.0]], dtype=torch.float64)
        return _matrix_system("lotka_volterra", a_matrix, power, y0, t_start, t_end, n_points)
    if form == "classic":
        return System("lotka_volterra", ClassicLotkaVolterra(a, b, c, d), initial_state(y0), time_grid(t_start, t_end, n_points))
    raise ConfigError(f"dynamics.form must be 'matrix' or 'classic', got '{form}'.")
