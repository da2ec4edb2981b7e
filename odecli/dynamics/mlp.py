"""A time-dependent system given by a fixed random network: dy/dt = net(y·t)."""

from __future__ import annotations

from typing import Any

import torch

from odecli.dynamics.system import System, initial_state, time_grid
from odecli.registry import DYNAMICS


class RandomNetworkField(torch.nn.Module):
    """2-25-50-10-2 without biases, ELU after every layer (the last too), applied to y·t."""

    def __init__(self, widths: list[int], seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        sizes = [2, *widths, 2]
        self.weights = torch.nn.ParameterList(
            # nn.Linear's default initialisation, U(-1/sqrt(n_in), 1/sqrt(n_in)), drawn from `seed`.
            torch.nn.Parameter((2 * torch.rand(n_out, n_in, generator=generator, dtype=torch.float64) - 1) / n_in**0.5, requires_grad=False)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = y * t
        for weight in self.weights:
            x = torch.nn.functional.elu(x @ weight.to(y.dtype).T)
        return x


@DYNAMICS.register("mlp")
def mlp(widths: Any, seed: int, y0: Any, t_start: float, t_end: float, n_points: int) -> System:
    """A seeded random ELU network of y·t (non-autonomous)."""
    field = RandomNetworkField([int(w) for w in widths], seed)
    return System("mlp", field, initial_state(y0), time_grid(t_start, t_end, n_points), autonomous=False)
