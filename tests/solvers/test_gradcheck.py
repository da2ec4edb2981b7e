"""``torch.autograd.gradcheck`` in float64: adjoint, direct backprop through implicit methods, events."""

from __future__ import annotations

import pytest
import torch

from odecli.registry import SOLVERS
from odecli.solvers.adjoint import odeint_adjoint
from odecli.solvers.odeint import odeint
from odecli.solvers.terminal_event import odeint_event

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-11}


def _field(weight, bias):
    def func(t, y):
        return torch.tanh(y @ weight + bias) * torch.cos(t) - 0.1 * y

    return func


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    y0 = torch.randn(2, generator=gen, dtype=F64).requires_grad_(True)
    weight = (0.5 * torch.randn(2, 2, generator=gen, dtype=F64)).requires_grad_(True)
    bias = (0.1 * torch.randn(2, generator=gen, dtype=F64)).requires_grad_(True)
    return y0, weight, bias


def test_adjoint_gradcheck_y0_t_params():
    y0, weight, bias = _inputs()
    t = torch.tensor([0.0, 0.3, 0.6], dtype=F64, requires_grad=True)

    def solve(y0, t, weight, bias):
        # Weighting the times differently keeps every output time's gradient visible in 2 outputs.
        ys = odeint_adjoint(_field(weight, bias), y0, t, adjoint_params=(weight, bias), **TIGHT)
        return (ys * torch.tensor([[1.0], [2.0], [-1.5]], dtype=F64)).sum(0)

    assert torch.autograd.gradcheck(solve, (y0, t, weight, bias), atol=1e-6, rtol=1e-5)


def test_adjoint_gradcheck_with_seminorm_and_decreasing_time():
    y0, weight, bias = _inputs(1)
    t = torch.tensor([0.5, -0.2], dtype=F64, requires_grad=True)

    def solve(y0, t, weight, bias):
        return odeint_adjoint(_field(weight, bias), y0, t, adjoint_params=(weight, bias), adjoint_options={"norm": "seminorm"}, **TIGHT)

    assert torch.autograd.gradcheck(solve, (y0, t, weight, bias), atol=1e-6, rtol=1e-5)


# A fixed grid's solve is a smooth function of the inputs, so direct backprop's gradient is the finite differences'
# exactly (an adaptive solve's jumps where the accepted steps change: see test_time_gradients' slow tier).
FIXED_GRID = [name for name in SOLVERS.names() if not SOLVERS.get(name).adaptive]


@pytest.mark.parametrize("method", FIXED_GRID)
def test_direct_gradcheck_through_fixed_grid_methods(method):
    y0, weight, bias = _inputs(2)
    t = torch.tensor([0.0, 0.4], dtype=F64)

    def solve(y0, weight, bias):
        return odeint(_field(weight, bias), y0, t, method=method, options={"step_size": 0.1}, **TIGHT)

    assert torch.autograd.gradcheck(solve, (y0, weight, bias), atol=1e-6, rtol=1e-5)


def test_event_time_gradcheck():
    def event_time(h0, v0):
        def field(t, y):
            return torch.stack([y[1], -9.81 * torch.ones_like(y[1])])

        event_t, _ = odeint_event(field, torch.stack([h0, v0]), torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0], **TIGHT)
        return event_t

    h0 = torch.tensor(1.5, dtype=F64, requires_grad=True)
    v0 = torch.tensor(0.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(event_time, (h0, v0), atol=1e-6, rtol=1e-5)
