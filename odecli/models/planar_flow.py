"""Planar normalizing flow (Rezende & Mohamed 2015): the discrete baseline of the paper's Figure 4.

K layers f(z) = z + û·tanh(wᵀz + b), with log|det ∂f/∂z| = log|1 + ûᵀψ(z)|, ψ = tanh'(wᵀz + b)·w, and
û = u + (m(wᵀu) − wᵀu)·w/‖w‖², m(x) = −1 + softplus(x), which keeps every layer invertible.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from odecli.errors import ConfigError
from odecli.registry import MODELS


@MODELS.register("planar_nf")
class PlanarFlow(nn.Module):
    """A stack of ``depth`` planar layers (the paper compares K = 2, 8, 32). Not an ODE: sampled directly."""

    discrete = True

    def __init__(self, depth: int = 8, dim: int = 2, **_: object):
        super().__init__()
        if int(depth) < 1:
            raise ConfigError(f"model.depth must be a positive integer, got {depth}.")
        self.w = nn.Parameter(torch.randn(int(depth), dim) * 0.1)
        self.u = nn.Parameter(torch.randn(int(depth), dim) * 0.1)
        self.b = nn.Parameter(torch.zeros(int(depth)))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(z), log|det ∂f/∂z|)`` for a batch of base samples."""
        log_det = torch.zeros(len(z), dtype=z.dtype, device=z.device)
        for w, u, b in zip(self.w, self.u, self.b, strict=True):
            wu = w @ u
            u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w @ w)
            activation = torch.tanh(z @ w + b)
            psi = (1 - activation**2)[:, None] * w
            log_det = log_det + torch.log((1 + psi @ u_hat).abs() + 1e-12)
            z = z + activation[:, None] * u_hat
        return z, log_det
