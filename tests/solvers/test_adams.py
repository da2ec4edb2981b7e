"""Fixed-step Adams methods: derived coefficients, order, parity with torchdiffeq, and the RK4 start being rk4's own steps."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odecli.registry import SOLVERS, load_builtins
from odecli.solvers.adams import CorrectorDidNotConverge, adams_coefficients
from odecli.solvers.errors import InvalidInputError

load_builtins()

F64 = torch.float64
ADAMS = ["explicit_adams", "implicit_adams"]


def van_der_pol(t, y):
    return torch.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]]) * torch.cos(t)


def test_names_and_alias_match_torchdiffeq():
    assert SOLVERS.canonical("fixed_adams") == "implicit_adams"
    assert not SOLVERS.get("explicit_adams").implicit and SOLVERS.get("implicit_adams").implicit
    for name in ADAMS:
        assert SOLVERS.get(name).order == 4 and not SOLVERS.get(name).adaptive


def test_known_coefficients():
    assert adams_coefficients(2, implicit=False) == (Fraction(3, 2), Fraction(-1, 2))
    assert adams_coefficients(4, implicit=False) == tuple(Fraction(c, 24) for c in (55, -59, 37, -9))
    assert adams_coefficients(3, implicit=True) == tuple(Fraction(c, 12) for c in (5, 8, -1))


@settings(max_examples=25, deadline=None)
@given(n_terms=st.integers(1, 12), implicit=st.booleans(), degree=st.integers(0, 11))
def test_coefficients_integrate_polynomials_exactly(n_terms, implicit, degree):
    # An n-term Adams formula is exact for derivatives that are polynomials of degree < n.
    if degree >= n_terms:
        return
    weights = adams_coefficients(n_terms, implicit)
    nodes = [1 - j if implicit else -j for j in range(n_terms)]
    assert sum(w * Fraction(node) ** degree for w, node in zip(weights, nodes, strict=True)) == Fraction(1, degree + 1)


@pytest.mark.parametrize("name", ADAMS)
@pytest.mark.parametrize("options", [{"step_size": 0.05}, {"step_size": 0.075, "interp": "cubic"}, {}, {"step_size": 0.1, "max_order": 6}])
def test_matches_torchdiffeq_to_rounding(name, options):
    # Evenly spaced grids (each step divides [0, 3]); see the next test for uneven ones. The Adams steps are
    # torchdiffeq's arithmetic; the RK4 start sums its stages as every Runge-Kutta step here does
    # (y0 + dt·Σ b_i k_i, where torchdiffeq writes the 3/8 rule out by hand), which differs in the last bits
    # on some steps: measured at most 6 units in the last place (1.35e-15 relative) on these cases.
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torchdiffeq.odeint(van_der_pol, y0, t, method=name, options=options)
        solver = SOLVERS.get(name)(van_der_pol, y0, 1e-7, 1e-9, **options)
        got = solver.integrate(t)
    ulps = (got - expected).abs() / torch.finfo(F64).eps / expected.abs().clamp_min(torch.finfo(F64).tiny)
    assert float(ulps.max()) <= 8


@pytest.mark.parametrize("name", ADAMS)
def test_the_start_steps_are_rk4s_own(name):
    # max_order below 4: every step is a start step, so the solution is the rk4 method's (Kutta's 3/8 rule, not
    # classic RK4, which differs here by ~1e-7), up to the rounding of Adams' tensor times.
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0, 3, 7, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adams = SOLVERS.get(name)(van_der_pol, y0, 1e-7, 1e-9, step_size=0.05, max_order=3)
        got = adams.integrate(t)
    rk4 = SOLVERS.get("rk4")(van_der_pol, y0, 1e-7, 1e-9, step_size=0.05)
    torch.testing.assert_close(got, rk4.integrate(t), rtol=1e-14, atol=1e-15)
    assert adams.nfe == rk4.nfe


def _grid_whose_step_grows_by_half(h: float):
    """A grid over [0, 2] of steps h for the first third, then steps of about 1.5 h."""

    def grid(func, y0, t):
        n_first = round(2 / 3 / h)
        n_rest = round((2 - n_first * h) / (1.5 * h))
        return torch.cat([torch.arange(n_first, dtype=F64) * h, n_first * h + torch.linspace(0, 2 - n_first * h, n_rest + 1, dtype=F64)])

    return grid


@pytest.mark.parametrize("name", ADAMS)
@pytest.mark.parametrize("uneven", ["grid_constructor", "short_last_step"])
def test_uneven_grid_keeps_the_order(name, uneven):
    # The weights assume equal spacing: where the step changes (a grid_constructor's grid, or the short last
    # step of step_size = 1.3 h over [0, 2]) the history restarts from RK4. Reusing it, as torchdiffeq does, makes
    # the error fall only 2-4x per halving of h here; with the restart it falls 15x (explicit) or more.
    a = torch.tensor([[-0.5, -2.0], [2.0, -0.5]], dtype=F64)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    exact = torch.linalg.matrix_exp(a * 2) @ y0
    errors = []
    for h in (0.02, 0.01):
        options = {"grid_constructor": _grid_whose_step_grows_by_half(h)} if uneven == "grid_constructor" else {"step_size": 1.3 * h}
        solver = SOLVERS.get(name)(lambda t, y: a @ y, y0, 1e-10, 1e-12, max_order=5, **options)
        errors.append((solver.integrate(torch.tensor([0.0, 2.0], dtype=F64))[-1] - exact).norm().item())
    assert errors[0] / errors[1] > 8, errors


@pytest.mark.parametrize("name", ADAMS)
@pytest.mark.filterwarnings("ignore::odecli.solvers.adams.CorrectorDidNotConverge")  # at the coarsest step
def test_order_of_convergence(name):
    # max_order=5: the default lets the explicit formula climb to AB11, whose stability region is
    # so small that it diverges on this mildly damped oscillator at every step size tried here
    # (torchdiffeq does the same, bit for bit).
    a = torch.tensor([[-0.5, -2.0], [2.0, -0.5]], dtype=F64)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    exact = torch.linalg.matrix_exp(a * 2) @ y0
    steps = [0.1, 0.05, 0.025]
    errors = []
    for h in steps:
        solver = SOLVERS.get(name)(lambda t, y: a @ y, y0, 1e-10, 1e-12, step_size=h, max_order=5)
        errors.append((solver.integrate(torch.tensor([0.0, 2.0], dtype=F64))[-1] - exact).norm().item())
    slope = math.log(errors[0] / errors[-1]) / math.log(steps[0] / steps[-1])
    assert slope >= 3.7, errors


def test_unconverged_corrector_warns_with_typed_warning():
    solver = SOLVERS.get("implicit_adams")(van_der_pol, torch.tensor([1.0, 0.5], dtype=F64), 1e-14, 1e-14, step_size=0.2, max_iters=1)
    with pytest.warns(CorrectorDidNotConverge, match="did not converge"):
        solver.integrate(torch.tensor([0.0, 2.0], dtype=F64))


def test_max_order_above_table_raises():
    with pytest.raises(InvalidInputError, match="max_order"):
        SOLVERS.get("explicit_adams")(van_der_pol, torch.zeros(2, dtype=F64), 1e-7, 1e-9, max_order=13)
