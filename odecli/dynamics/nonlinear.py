"""A system that switches between two linear spirals depending on where the state is."""

from __future__ import annotations

from typing import Any

import torch

from odecli.dynamics.system import System, initial_state, matrix, time_grid
from odecli.registry import DYNAMICS


class SwitchingField(torch.nn.Module):
    """With g = Σ(y ⊙ x0): dy/dt = σ(g)·(y − x0) Aᵀ + σ(−g)·(y + x0) Bᵀ."""

    def __init__(self, x0: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("x0", x0.double())
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x0, a, b = self.x0.to(y.dtype), self.a.to(y.dtype), self.b.to(y.dtype)
        g = (y * x0).sum(dim=-1, keepdim=True)
        return torch.sigmoid(g) * ((y - x0) @ a.T) + torch.sigmoid(-g) * ((y + x0) @ b.T)


@DYNAMICS.register("nonlinear")
def nonlinear(A: Any, B: Any, y0: Any, t_start: float, t_end: float, n_points: int) -> System:
    """Two linear spirals around ±x0 blended by a sigmoid gate."""
    x0 = initial_state(y0)
    return System("nonlinear", SwitchingField(x0, matrix(A, "A"), matrix(B, "B")), x0, time_grid(t_start, t_end, n_points))
