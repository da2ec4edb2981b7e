"""Continuous normalizing flows: the dynamics f(t, z), the trace of ∂f/∂z, and log-likelihoods.

A CNF moves samples by dz/dt = f(t, z) and their log density by d log p / dt = −tr(∂f/∂z)
(Chen et al. 2018, Theorem 1). Data x at t = 0 flows to the base distribution at t = 1, so
log p(x) = log N(z(1); 0, I) + ∫₀¹ tr(∂f/∂z(t, z(t))) dt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from odecli.errors import ConfigError
from odecli.models.vector_field import ACTIVATIONS, check_widths
from odecli.registry import MODELS

TRACE_ESTIMATORS = ("exact", "hutchinson")
NOISE_KINDS = ("rademacher", "gaussian")


@MODELS.register("ffjord_mlp")
class ConcatMLP(nn.Module):
    """FFJORD-style dynamics: an MLP whose every layer also sees the time (concatenated input)."""

    def __init__(self, widths: Sequence[int] = (64, 64, 64), activation: str = "tanh", dim: int = 2, **_: object):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation '{activation}' is unknown; choose one of {', '.join(ACTIVATIONS)}.")
        sizes = [dim, *check_widths(widths), dim]
        self.layers = nn.ModuleList(nn.Linear(n_in + 1, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        time = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(*z.shape[:-1], 1)
        h = z
        for index, layer in enumerate(self.layers):
            h = layer(torch.cat([h, time], dim=-1))
            if index < len(self.layers) - 1:
                h = self.activation(h)
        return h


@MODELS.register("planar_cnf")
class PlanarCNF(nn.Module):
    """The paper's planar CNF: f(t, z) = Σₘ uₘ(t) tanh(wₘ(t)ᵀz + bₘ(t)), weights from a hypernetwork of t.

    ``width`` is M, the number of planar units (the paper compares M = 2, 8, 64).
    """

    def __init__(self, width: int = 8, hidden: int = 32, dim: int = 2, **_: object):
        super().__init__()
        if int(width) < 1:
            raise ConfigError(f"model.width must be a positive integer, got {width}.")
        self.width, self.dim = int(width), dim
        self.hyper = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, self.width * (2 * dim + 1)))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        params = self.hyper(torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(1, 1))[0]
        m, d = self.width, self.dim
        w = params[: m * d].reshape(m, d)
        u = params[m * d : 2 * m * d].reshape(m, d)
        b = params[2 * m * d :]
        return torch.tanh(z @ w.T + b) @ u


class CNFDynamics(nn.Module):
    """The augmented system (z, log-density change, regularisers) for odeint.

    ``trace``: ``exact`` takes one vector–Jacobian product per dimension; ``hutchinson`` estimates
    tr(J) = E[εᵀJε] with one product and noise ε fixed for the whole solve (call ``sample_noise``).
    ``regularize``: also integrate the kinetic energy ‖f‖² and the Jacobian Frobenius norm
    ‖εᵀJ‖² (Finlay et al. 2020, "How to train your neural ODE").
    """

    def __init__(self, field: nn.Module, trace: str = "exact", noise: str = "rademacher", regularize: bool = False):
        super().__init__()
        if trace not in TRACE_ESTIMATORS:
            raise ConfigError(f"trace '{trace}' is unknown; choose one of {', '.join(TRACE_ESTIMATORS)}.")
        if noise not in NOISE_KINDS:
            raise ConfigError(f"noise '{noise}' is unknown; choose one of {', '.join(NOISE_KINDS)}.")
        self.field = field
        self.trace = trace
        self.noise_kind = noise
        self.regularize = regularize
        self.noise: torch.Tensor | None = None

    def sample_noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> None:
        noise = torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
        self.noise = noise.sign() if self.noise_kind == "rademacher" else noise

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        training = torch.is_grad_enabled()  # False while evaluating: no graph through the trace
        z = state[0]
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.field(t, z)
            needs_noise = self.trace == "hutchinson" or self.regularize
            if needs_noise and self.noise is None:
                self.sample_noise(z)
            divergence, noise_jacobian = divergence_of(dz, z, self.trace, self.noise if needs_noise else None, create_graph=training)
        out = [dz, -divergence]
        if self.regularize:
            out += [(dz**2).sum(-1), (noise_jacobian**2).sum(-1)]
        if not training:
            out = [part.detach() for part in out]
        return tuple(out)


def divergence_of(
    dz: torch.Tensor, z: torch.Tensor, trace: str, noise: torch.Tensor | None, *, create_graph: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """tr(∂dz/∂z) per sample (exact, or Hutchinson's εᵀJε with the given noise), and εᵀJ when noise is given."""
    noise_jacobian = None
    if noise is not None:
        (noise_jacobian,) = torch.autograd.grad(dz, z, noise, create_graph=create_graph, retain_graph=True)
    if trace == "hutchinson":
        if noise_jacobian is None:
            raise ValueError("the Hutchinson estimator needs noise; call sample_noise first")
        return (noise_jacobian * noise).sum(-1), noise_jacobian
    total = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for i in range(z.shape[-1]):
        (row,) = torch.autograd.grad(dz[..., i].sum(), z, create_graph=create_graph, retain_graph=True)
        total = total + row[..., i]
    return total, noise_jacobian


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


Solve = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], tuple[torch.Tensor, ...]]


def log_likelihood(dynamics: CNFDynamics, solve: Solve, x: torch.Tensor, *, t1: float = 1.0) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """log p(x) per sample, and the regularisers' integrals (empty unless ``dynamics.regularize``)."""
    zeros = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    state = (x, zeros) + ((zeros, zeros) if dynamics.regularize else ())
    times = torch.tensor([0.0, t1], dtype=x.dtype, device=x.device)
    final = tuple(part[-1] for part in solve(dynamics, state, times, **step_control(dynamics)))
    z, delta_logp = final[0], final[1]
    return standard_normal_log_prob(z) - delta_logp, final[2:]


def flow_error_norm(errors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Step control on (z, Δlog p) only: the regularisers' integrals are quadratures of the same steps
    (RNODE, Finlay et al. 2020), and letting their error shrink the steps would hide the NFE they save."""
    return torch.maximum(errors[0].pow(2).mean().sqrt(), errors[1].pow(2).mean().sqrt())


def step_control(dynamics: CNFDynamics) -> dict[str, Any]:
    """The ``solve`` keyword arguments for a solve of ``dynamics``' augmented state."""
    return {"norm": flow_error_norm} if dynamics.regularize else {}


def transport(field: nn.Module, solve: Callable, z: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Positions of points z at each time of ``times`` under dz/dt = f (no log-density)."""
    return solve(field, z, times)
