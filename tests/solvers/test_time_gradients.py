"""Gradients with respect to the time points ``t``, as torchdiffeq gives them.

Direct backprop differentiates the discrete solve: a fixed-grid method's grid is built from ``t``; an
adaptive method's steps move with ``t[0]`` (their sizes are constants) and each output is read from
the dense output at its own time. ``odeint_adjoint`` gives ``<a(t_i), f(t_i, y_i)>`` per output
time and the accumulated ``t[0]`` term. Every registered method is covered through the registry.
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch

from odecli.registry import SOLVERS
from odecli.solvers.adjoint import odeint_adjoint
from odecli.solvers.errors import InvalidInputError
from odecli.solvers.odeint import odeint

F64 = torch.float64
DIFFERENTIABLE = [name for name in SOLVERS.names() if getattr(SOLVERS.get(name), "differentiable", True)]
OUTSIDE_AUTOGRAD = [name for name in SOLVERS.names() if not getattr(SOLVERS.get(name), "differentiable", True)]


def _weights(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(2, 2, generator=gen, dtype=F64)


def _autonomous(weight):
    def func(t, y):
        return torch.tanh(y @ weight) - 0.1 * y

    return func


def _driven(weight):
    """A vector field that reads ``t``: the steps' times matter, not only the outputs'."""

    def func(t, y):
        return torch.tanh(y @ weight) * torch.cos(t) - 0.1 * y

    return func


def _tuple_field(weight):
    def func(t, state):
        x, v = state
        return v, torch.tanh(x @ weight) - 0.2 * v

    return func


def _y0() -> torch.Tensor:
    return torch.tensor([0.4, -0.7], dtype=F64, requires_grad=True)


def _times(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


# With a driven field, finite differences also see an adaptive method's step sizes change with t[0]
# (the gradient, as torchdiffeq's, holds them constant): tolerances and steps small enough that this,
# and the dense output's own error, stay inside gradcheck's tolerance. An adaptive solve also jumps by about
# its tolerance where a perturbation changes the accepted steps: finite differences of width 2 * TIGHT_EPS
# turn a 1e-8 jump into 5e-6, inside gradcheck's atol = 1e-5 (the default eps = 1e-6 turned one into a
# failure for fehlberg2), while their truncation error (eps^2 times a third derivative of order 1) is ~1e-7.
# gradcheck's fast mode (a seeded random projection of the Jacobian) keeps the low-order methods' thousands
# of steps within a minute.
TIGHT = {"rtol": 1e-8, "atol": 1e-10, "options": {"max_step": 0.05}}
TIGHT_EPS = 1e-3


def _solve_kwargs(method: str) -> dict:
    return dict(TIGHT) if SOLVERS.get(method).adaptive else {}


@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_t_grad_is_set_for_every_method(method):
    t = torch.linspace(1, 2, 4, dtype=F64, requires_grad=True)
    odeint(_driven(_weights()), _y0().detach(), t, method=method).sum().backward()
    assert t.grad is not None and bool(torch.isfinite(t.grad).all()) and bool((t.grad != 0).any())


@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_gradcheck_y0_t_autonomous(method):
    # Autonomous: the steps do not depend on t[0], so the gradient is the finite differences' exactly.
    func = _autonomous(_weights(1))
    assert torch.autograd.gradcheck(lambda y0, t: odeint(func, y0, t, method=method), (_y0(), _times(0.0, 0.3, 0.5, 0.9)))


# A fixed grid's solve is a smooth map of (y0, t); an adaptive one's jumps by about its tolerance where a
# perturbation changes the accepted steps, which finite differences need tight tolerances (and time) to
# hide: the slow tuple test below covers the adaptive methods.
FIXED_GRID = [name for name in DIFFERENTIABLE if not SOLVERS.get(name).adaptive]


@pytest.mark.parametrize("method", FIXED_GRID)
def test_gradcheck_y0_t_autonomous_tuple_state(method):
    func = _tuple_field(_weights(6))
    x0 = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    v0 = torch.tensor([0.1, 0.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x0, v0, t: odeint(func, (x0, v0), t, method=method), (x0, v0, _times(0.0, 0.4, 0.7)))


@pytest.mark.slow
@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_gradcheck_y0_t_driven_tensor_state(method):
    func = _driven(_weights(2))
    kwargs = _solve_kwargs(method)
    torch.manual_seed(0)

    def solve(y0, t):
        return odeint(func, y0, t, method=method, **kwargs)

    assert torch.autograd.gradcheck(solve, (_y0(), _times(0.2, 0.5, 0.9)), eps=TIGHT_EPS, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_gradcheck_y0_t_tuple_state_decreasing_time(method):
    func = _tuple_field(_weights(3))
    kwargs = _solve_kwargs(method)
    x0 = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    v0 = torch.tensor([0.1, 0.5], dtype=F64, requires_grad=True)

    def solve(x0, v0, t):
        return odeint(func, (x0, v0), t, method=method, **kwargs)

    torch.manual_seed(0)
    assert torch.autograd.gradcheck(solve, (x0, v0, _times(0.8, 0.5, 0.1)), eps=TIGHT_EPS, fast_mode=True)


def _refined_grid(func, y0, t, points_between=150):
    """A fine grid through every time in ``t``, built from ``t`` (so direct backprop sees each output time move)."""
    s = torch.linspace(0, 1, points_between + 1, dtype=t.dtype)[:-1]
    return torch.cat([a + (b - a) * s for a, b in zip(t[:-1], t[1:], strict=True)] + [t[-1:]])


@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_adjoint_t_grad_matches_direct_backprop(method):
    weight = _weights(4).requires_grad_(True)
    func = _driven(weight)
    cls = SOLVERS.get(method)
    kwargs = _solve_kwargs(method) if cls.adaptive else {"options": {"grid_constructor": _refined_grid}}
    # The adjoint's gradient is the continuous one; a fixed grid's differs from it by O(h^order).
    tolerance = 1e-4 if cls.adaptive else max(1e-4, 20 * (0.3 / 150) ** cls.order)
    grads = []
    for solve in (odeint, lambda *a, **k: odeint_adjoint(*a, adjoint_params=(weight,), **k)):
        t = _times(0.1, 0.4, 0.6)
        y0 = _y0()
        ys = solve(func, y0, t, method=method, **kwargs)
        (ys * torch.tensor([[1.0], [2.0], [-1.5]], dtype=F64)).sum().backward()
        grads.append(torch.cat([t.grad, y0.grad]))
    torch.testing.assert_close(grads[1], grads[0], rtol=tolerance, atol=tolerance / 10)


# gradcheck through odeint_adjoint compares the adjoint's gradient, the exact solution's, with finite
# differences of the numerical solve: they agree only as far as the solve is accurate, so the solve is made
# accurate and gradcheck's atol follows the method's error. Finite differences are taken with
# ADJOINT_EPS = 1e-3, whose truncation error (eps^2 times a third derivative of order 1 here) is ~1e-7.
# - Adaptive methods: rtol = atol = 1e-8. The solve's error, and its jumps by about the tolerance when a
#   perturbation changes the accepted steps, divided by 2 * ADJOINT_EPS, stay below atol = 1e-5.
# - Fixed grids: a grid through every output time, built from t with a fixed number of points per interval
#   (finite differences then see a smooth map), of step h; the gradient's error is O(h^order) with a
#   constant of order 1 for this mild problem on an interval under 1, so atol = max(1e-5, 10 h^order).
#   h aims at h^order = 1e-6, but no finer than FINEST_FIXED_STEP (first-order methods would need 10^6 steps).
ADJOINT_EPS = 1e-3
ADJOINT_ADAPTIVE_TOL = 1e-8
FINEST_FIXED_STEP = 1e-3


def _adjoint_gradcheck(method: str, func, inputs: tuple, solve_state) -> None:
    """gradcheck ``odeint_adjoint`` on ``solve_state(*inputs[:-1])`` and ``t = inputs[-1]``, accurately enough."""
    cls = SOLVERS.get(method)
    t = inputs[-1]
    if cls.adaptive:
        kwargs = {"rtol": ADJOINT_ADAPTIVE_TOL, "atol": ADJOINT_ADAPTIVE_TOL}
        atol = 1e-5
    else:
        longest = float((t[1:] - t[:-1]).abs().max().detach())
        step = max(FINEST_FIXED_STEP, 1e-6 ** (1 / cls.order))
        points_between = math.ceil(longest / step)
        kwargs = {"options": {"grid_constructor": functools.partial(_refined_grid, points_between=points_between)}}
        atol = max(1e-5, 10 * (longest / points_between) ** cls.order)

    def solve(*args):
        return odeint_adjoint(func, solve_state(*args[:-1]), args[-1], method=method, adjoint_params=(), **kwargs)

    torch.manual_seed(0)  # fast mode: a random projection of the Jacobian, so a first-order grid's 800 implicit steps fit a minute
    assert torch.autograd.gradcheck(solve, inputs, eps=ADJOINT_EPS, atol=atol, rtol=1e-4, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", SOLVERS.names())
def test_adjoint_gradcheck_y0_t_tensor_state(method):
    _adjoint_gradcheck(method, _driven(_weights(2)), (_y0(), _times(0.2, 0.5, 0.9)), lambda y0: y0)


@pytest.mark.slow
@pytest.mark.parametrize("method", SOLVERS.names())
def test_adjoint_gradcheck_y0_t_tuple_state_decreasing_time(method):
    x0 = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    v0 = torch.tensor([0.1, 0.5], dtype=F64, requires_grad=True)
    _adjoint_gradcheck(method, _tuple_field(_weights(3)), (x0, v0, _times(0.8, 0.5, 0.1)), lambda x0, v0: (x0, v0))


@pytest.mark.parametrize("method", OUTSIDE_AUTOGRAD)
def test_methods_outside_autograd_refuse_t_requiring_grad(method):
    with pytest.raises(InvalidInputError, match="outside autograd"):
        odeint(_autonomous(_weights()), _y0().detach(), _times(0.0, 0.5), method=method)


def test_t_without_grad_builds_no_graph():
    ys = odeint(_autonomous(_weights()), _y0().detach(), torch.tensor([0.0, 0.5], dtype=F64))
    assert not ys.requires_grad


def test_t_grad_matches_torchdiffeq_on_fixed_grids_and_dopri5():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = _driven(_weights(5))
    for method, options in [("dopri5", {}), ("euler", {}), ("rk4", {"step_size": 0.07, "interp": "cubic"}), ("midpoint", {"step_size": 0.07, "perturb": True})]:
        grads = []
        for solve in (torchdiffeq.odeint, odeint):
            t = torch.linspace(1, 8, 10, dtype=F64, requires_grad=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                solve(func, _y0().detach(), t, method=method, options=dict(options)).sum().backward()
            grads.append(t.grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9, msg=method)
