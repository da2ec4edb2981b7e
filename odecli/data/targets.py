"""Unnormalised 2-D target densities p̃(z) = exp(−U(z)) for density matching (minimising KL(q‖p)).

The four energies of Rezende & Mohamed (2015, Table 1), which the Neural ODE paper's Figure 4
uses to compare planar normalizing flows with planar CNFs. ``log_normalizer`` integrates exp(−U)
on a fine grid, so a reported KL is a true KL, not a KL up to a constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch

from odecli.errors import UserError, did_you_mean

Energy = Callable[[torch.Tensor], torch.Tensor]


def _w1(z: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def u1(z: torch.Tensor) -> torch.Tensor:
    """A ring with two lobes."""
    ring = 0.5 * ((z.norm(dim=1) - 2) / 0.4) ** 2
    lobes = torch.logsumexp(torch.stack([-0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2]), dim=0)
    return ring - lobes


def u2(z: torch.Tensor) -> torch.Tensor:
    """A sine wave."""
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def u3(z: torch.Tensor) -> torch.Tensor:
    """Two sine waves that split."""
    w2 = 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)
    return -torch.logsumexp(torch.stack([-0.5 * ((z[:, 1] - _w1(z)) / 0.35) ** 2, -0.5 * ((z[:, 1] - _w1(z) + w2) / 0.35) ** 2]), dim=0)


def u4(z: torch.Tensor) -> torch.Tensor:
    """A sine wave and a step."""
    w3 = 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)
    return -torch.logsumexp(torch.stack([-0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2, -0.5 * ((z[:, 1] - _w1(z) + w3) / 0.35) ** 2]), dim=0)


TARGETS: dict[str, Energy] = {"u1": u1, "u2": u2, "u3": u3, "u4": u4}
# The energies live well inside this square; beyond it exp(−U) is negligible (U2–U4 are periodic
# in z1, so they are restricted to it, as in the figures of both papers).
LIMIT = 4.0


def energy(name: str) -> Energy:
    if name not in TARGETS:
        raise UserError(f"Unknown target '{name}'.{did_you_mean(name, TARGETS)} Targets: {', '.join(TARGETS)}.")
    return TARGETS[name]


def restricted_energy(name: str) -> Energy:
    """U inside the square [−LIMIT, LIMIT]², growing quadratically outside (so q cannot escape to infinity)."""
    base = energy(name)

    def u(z: torch.Tensor) -> torch.Tensor:
        outside = (z.abs() - LIMIT).clamp(min=0)
        return base(z) + 0.5 * (outside / 0.1).pow(2).sum(dim=1)

    return u


@cache
def log_normalizer(name: str, points: int = 801) -> float:
    """log ∫ exp(−U) over the plane (restricted energy), by the trapezoid-free midpoint rule on a fine grid."""
    span = LIMIT + 1.0
    axis = torch.linspace(-span, span, points, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    cell = (axis[1] - axis[0]) ** 2
    return float(torch.logsumexp(-restricted_energy(name)(grid), dim=0) + torch.log(cell))
