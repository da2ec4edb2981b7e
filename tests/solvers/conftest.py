"""Shared problems for the solver tests: a linear ODE with an exact solution (matrix exponential)."""

from __future__ import annotations

import pytest
import torch

from odecli.registry import SOLVERS
from odecli.solvers.runge_kutta import AbstractAdaptiveRungeKutta

# torchdiffeq's explicit_adams lets the Bashforth order climb to 11 by default, whose stability region is too
# small for a damped rotation at the steps these tests take: it diverges there, as torchdiffeq's does.
DIVERGES_WITH_DEFAULTS = {"explicit_adams": "Adams-Bashforth at order 11 (torchdiffeq's default) is unstable on this problem"}


def registered_methods(strict: bool = True) -> list:
    """Every registered method as a pytest parameter; those in DIVERGES_WITH_DEFAULTS marked xfail."""
    return [
        pytest.param(name, marks=[pytest.mark.xfail(strict=strict, reason=DIVERGES_WITH_DEFAULTS[name])] if name in DIVERGES_WITH_DEFAULTS else [])
        for name in SOLVERS.names()
    ]

def adaptive_explicit_methods() -> list[str]:
    """The registered adaptive explicit Runge–Kutta pairs (the methods ``options={'compile': True}`` and
    ``batch_mode='independent'`` take), sorted."""
    return sorted(name for name in SOLVERS.names() if isinstance(SOLVERS.get(name), type) and issubclass(SOLVERS.get(name), AbstractAdaptiveRungeKutta))


# A damped rotation: smooth, non-stiff, with a known solution y(t) = expm(A (t - t0)) y0.
LINEAR_A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)
LINEAR_Y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)


class LinearField(torch.nn.Module):
    """dy/dt = A y, counting its evaluations."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.register_buffer("A", LINEAR_A.to(dtype))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return y @ self.A.T


def exact_linear(t: torch.Tensor, y0: torch.Tensor = LINEAR_Y0) -> torch.Tensor:
    """Exact solution of dy/dt = A y at every time in ``t`` (rows), starting at ``t[0]``."""
    a = LINEAR_A.to(y0.dtype)
    return torch.stack([y0 @ torch.linalg.matrix_exp(a * (ti - t[0])).T for ti in t.to(y0.dtype)])


@pytest.fixture
def linear():
    return LinearField()
