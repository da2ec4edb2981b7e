"""``adams``: the adaptive variable-step, variable-order Adams–Bashforth–Moulton method (``adaptive_adams.py``).

Interface, events, jump_t, tuple/0-dim states, decreasing time and time gradients are in the
registry-parametrized tests; here: its order, accuracy against scipy and exact solutions, its dense
output, gradients, the step budget, its options and its cost against dopri5.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from odecli import odeint, track_stats
from odecli.dynamics.matrix import MatrixField
from odecli.solvers import MaxStepsExceeded
from odecli.solvers.adaptive_adams import GAMMA_STAR, AdaptiveAdams, StepCoefficients
from odecli.solvers.adjoint import odeint_adjoint
from odecli.solvers.errors import InvalidInputError
from tests.solvers.conftest import LINEAR_Y0, LinearField, exact_linear
from tests.solvers.test_gradcheck import _field, _inputs

solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp

F64 = torch.float64
SPIRAL_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)  # odecli's `spiral` dynamics (conf/dynamics/spiral.yaml)
SPIRAL_Y0 = torch.tensor([2.0, 0.0], dtype=F64)


def Spiral() -> MatrixField:  # noqa: N802 -- used as the field's class
    """dy/dt = (y**3) @ A: odecli's ``spiral`` dynamics (torchdiffeq's ode_demo)."""
    return MatrixField(SPIRAL_A, 3)


class NeuralField(torch.nn.Module):
    """A small tanh MLP vector field, 2-50-2, seeded (without touching the global generator's state)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2)).double()

    def forward(self, t, y):
        return self.net(y)


def test_coefficients_on_constant_steps_are_the_classical_adams_ones():
    # On equal steps the divided differences are backward differences: g_j are Adams–Bashforth's γ_j
    # (1, 1/2, 5/12, 3/8, 251/720) and the error constants are Adams–Moulton's |γ*_j|.
    c = StepCoefficients((1.0,) * 4, 5, 13, F64, torch.device("cpu"))
    np.testing.assert_allclose(c.g[:5], [1, 1 / 2, 5 / 12, 3 / 8, 251 / 720], rtol=1e-13)
    np.testing.assert_allclose(GAMMA_STAR[:5], [1, 1 / 2, 1 / 12, 1 / 24, 19 / 720], rtol=1e-13)
    np.testing.assert_allclose(c.predict.numpy(), c.g[:5], rtol=1e-13)  # β = 1


def test_variable_step_coefficients_integrate_the_interpolating_polynomial_exactly():
    # One predictor step over uneven past steps is exact for a polynomial f of degree k-1 (order k).
    k, h, past = 4, 0.3, [0.1, 0.25, 0.05]
    nodes = [0.0, -past[0], -past[0] - past[1], -sum(past)]  # t_n, t_{n-1}, ... with t_n = 0

    def f(s):
        return 1 + 2 * s - 3 * s**2 + 0.5 * s**3

    # Newton divided differences f[t_n..t_{n-j}] and φ_j(n) = Π_{i<j} (t_n - t_{n-i-1}) · f[...].
    table = [f(x) for x in nodes]
    divided = [table[0]]
    for j in range(1, k):
        table = [(table[i] - table[i + 1]) / (nodes[i] - nodes[i + j]) for i in range(k - j)]
        divided.append(table[0])
    phi = [divided[j] * math.prod(nodes[0] - nodes[i + 1] for i in range(j)) for j in range(k)]
    c = StepCoefficients(tuple(p / h for p in past), k, 13, F64, torch.device("cpu"))
    predicted = h * float(c.predict @ torch.tensor(phi, dtype=F64))
    exact = h + h**2 - h**3 + 0.125 * h**4  # ∫_0^h f
    assert predicted == pytest.approx(exact, rel=1e-13)


# Pinned order k: PECE (Adams–Bashforth k, Adams–Moulton k+1) converges with order k + 1. Constant steps h
# (max_step = h, tolerances too loose to reject), the start-up from a step 2^-(k+8) h so its error is negligible.
PINNED = {1: [1 / 64, 1 / 128, 1 / 256], 2: [1 / 32, 1 / 64, 1 / 128], 3: [1 / 16, 1 / 32, 1 / 64], 4: [1 / 8, 1 / 16, 1 / 32], 6: [1 / 4, 1 / 8, 1 / 16]}


@pytest.mark.parametrize("order", sorted(PINNED))
def test_pinned_order_converges_at_order_plus_one_on_constant_steps(order):
    t = torch.tensor([0.0, 2.0], dtype=F64)
    exact = exact_linear(t)[-1]  # torch.linalg.matrix_exp
    errors = []
    for h in PINNED[order]:
        options = {"min_order": order, "max_order": order, "first_step": h * 2.0 ** -(order + 8), "max_step": h}
        y = odeint(LinearField(), LINEAR_Y0, t, method="adams", rtol=1e6, atol=1e6, options=options)
        errors.append(float((y[-1] - exact).abs().max()))
    slope = np.polyfit(np.log(PINNED[order]), np.log(errors), 1)[0]
    assert abs(slope - (order + 1)) <= 0.3, f"order {order}: observed {slope:.2f}, errors {errors}"


@pytest.mark.parametrize("order", [2, 4, None], ids=["order2", "order4", "variable"])
def test_error_is_proportional_to_the_tolerance(order):
    t = torch.tensor([0.0, 4.0], dtype=F64)
    exact = exact_linear(t)[-1]
    tols = [1e-6, 1e-7, 1e-8, 1e-9]
    options = {"min_order": order, "max_order": order} if order else {}
    errors = [float((odeint(LinearField(), LINEAR_Y0, t, method="adams", rtol=tol, atol=tol, options=options)[-1] - exact).abs().max()) for tol in tols]
    slope = np.polyfit(np.log(tols), np.log(errors), 1)[0]
    assert 0.8 <= slope <= 1.2, f"error ~ tol^{slope:.2f}: {errors}"
    assert all(0.01 * tol <= error <= 10 * tol for tol, error in zip(tols, errors, strict=True)), errors


def test_the_order_varies_within_its_bounds():
    t = torch.linspace(0.0, 25.0, 5, dtype=F64)
    free = AdaptiveAdams(Spiral(), SPIRAL_Y0, 1e-8, 1e-8)
    free.integrate(t)
    orders = free.orders_used
    assert orders[:4] == [1, 2, 3, 4]  # the start-up raises the order by one per step
    assert max(orders) >= 8 and any(b < a for a, b in zip(orders, orders[1:], strict=False))  # raised high, lowered too
    capped = AdaptiveAdams(Spiral(), SPIRAL_Y0, 1e-8, 1e-8, min_order=2, max_order=3)
    capped.integrate(t)
    assert set(capped.orders_used[1:]) <= {2, 3} and capped.orders_used.count(3) > len(capped.orders_used) // 2


def test_matches_scipy_lsoda_and_dopri8_at_rtol_1e_8():
    t = torch.linspace(0.0, 25.0, 51, dtype=F64)
    y = odeint(Spiral(), SPIRAL_Y0, t, method="adams", rtol=1e-8, atol=1e-8)
    reference = odeint(Spiral(), SPIRAL_Y0, t, method="dopri8", rtol=1e-13, atol=1e-13)
    lsoda = solve_ivp(lambda s, z: (z**3) @ SPIRAL_A.numpy(), (0.0, 25.0), SPIRAL_Y0.numpy(), method="LSODA", t_eval=t.numpy(), rtol=1e-8, atol=1e-8)
    lsoda_error = np.abs(lsoda.y.T - reference.numpy()).max()
    error = float((y - reference).abs().max())
    assert error < 1e-6 and error < 2 * lsoda_error, (error, lsoda_error)  # measured: 2.2e-7 vs LSODA's 1.9e-6


def test_dense_output_between_steps_is_accurate_and_takes_no_extra_steps():
    # Outputs come from the corrector polynomial of the step that covers them: 1000 outputs cost
    # the same evaluations as 2, and are as accurate as the step ends.
    sparse, dense = torch.tensor([0.0, 4.0], dtype=F64), torch.linspace(0.0, 4.0, 1000, dtype=F64)
    f_sparse, f_dense = LinearField(), LinearField()
    y_sparse = odeint(f_sparse, LINEAR_Y0, sparse, method="adams", rtol=1e-9, atol=1e-9)
    y_dense = odeint(f_dense, LINEAR_Y0, dense, method="adams", rtol=1e-9, atol=1e-9)
    assert f_dense.calls == f_sparse.calls
    assert torch.equal(y_dense[-1], y_sparse[-1])
    assert float((y_dense - exact_linear(dense)).abs().max()) < 1e-8


def test_dense_output_is_the_steps_polynomial_from_y_n_to_y_n_plus_1():
    # Each step's polynomial starts at y_n and ends at y_{n+1} (the corrected value), continuous across steps.
    # Loose tolerance: long steps, so a polynomial that missed the corrector's term would miss y_{n+1} by ~1e-6.
    solver = AdaptiveAdams(LinearField(), LINEAR_Y0, 1e-5, 1e-5)
    starts = []
    solver.step_observer = lambda start, size, y0, k1, outputs: starts.append((start, size, y0))
    solver.integrate(torch.tensor([0.0, 3.0], dtype=F64))
    assert len(starts) > 10
    for (start, size, y0), (_, _, y1) in zip(starts[5:9], starts[6:10], strict=True):
        times = torch.tensor([0.0, start + 1e-9 * size, start + 0.5 * size, start + (1 - 1e-9) * size], dtype=F64)
        probe = AdaptiveAdams(LinearField(), LINEAR_Y0, 1e-5, 1e-5).integrate(times)
        assert float((probe[1] - y0).abs().max()) < 1e-8
        assert float((probe[3] - y1).abs().max()) < 1e-8
        assert float((probe[2] - exact_linear(times)[2]).abs().max()) < 1e-4


@pytest.mark.parametrize("solve", [odeint, odeint_adjoint], ids=["direct", "adjoint"])
def test_gradcheck(solve):
    y0, weight, bias = _inputs()
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)

    def run(y0, weight, bias):
        kwargs = {"adjoint_params": (weight, bias)} if solve is odeint_adjoint else {}
        return solve(_field(weight, bias), y0, t, method="adams", rtol=1e-10, atol=1e-11, **kwargs)

    assert torch.autograd.gradcheck(run, (y0, weight, bias), atol=1e-6, rtol=1e-5)


def test_direct_and_adjoint_gradients_agree():
    y0, weight, bias = _inputs()
    t = torch.linspace(0.0, 3.0, 5, dtype=F64)
    grads = []
    for solve in (odeint, odeint_adjoint):
        kwargs = {"adjoint_params": (weight, bias)} if solve is odeint_adjoint else {}
        y = solve(_field(weight, bias), y0, t, method="adams", rtol=1e-10, atol=1e-10, **kwargs)
        grads.append(torch.autograd.grad(y.square().sum(), (y0, weight, bias)))
    for direct, adjoint in zip(*grads, strict=True):
        assert torch.allclose(direct, adjoint, rtol=1e-6, atol=1e-7)


# A narrower bump (0.2 wide at 3.3 or 7.7) is stepped over: f is exactly 0.0 where the steps land, so every
# error estimate is 0 (dopri5 steps over bumps up to 0.2 wide at all three centres too).
@pytest.mark.parametrize("centre", [3.3, 5.0, 7.7])
def test_a_sudden_bump_is_met_by_rejections_and_smaller_steps(centre):
    # f = exp(-((t - centre)/0.5)²): steps grown on the flat part are rejected at the bump and shrink through it.
    width = 0.5

    def bump(t, y):
        return torch.exp(-(((t - centre) / width) ** 2)).expand(1) + 0 * y

    t = torch.tensor([0.0, 10.0], dtype=F64)
    with track_stats() as stats:
        y = odeint(bump, torch.zeros(1, dtype=F64), t, method="adams", rtol=1e-8, atol=1e-8)
    exact = width * math.sqrt(math.pi) * (math.erf(centre / width) + math.erf((10 - centre) / width)) / 2
    assert stats.steps_rejected > 0
    assert abs(float(y[-1]) - exact) < 1e-6  # measured: 5.9e-8 to 8.5e-8 after 4-8 rejections in 100-106 steps


def test_step_budget_is_enforced():
    with pytest.raises(MaxStepsExceeded, match="max_num_steps=20"):
        odeint(Spiral(), SPIRAL_Y0, torch.tensor([0.0, 25.0], dtype=F64), method="adams", rtol=1e-8, atol=1e-8, options={"max_num_steps": 20})


@pytest.mark.parametrize(
    "options",
    [{"max_order": 13}, {"min_order": 0}, {"max_order": 2.5}, {"min_order": 5, "max_order": 3}, {"max_order": True}],
    ids=["above-12", "zero", "float", "min-above-max", "bool"],
)
def test_invalid_orders_are_refused(options):
    with pytest.raises(InvalidInputError, match="order"):
        odeint(Spiral(), SPIRAL_Y0, torch.tensor([0.0, 1.0], dtype=F64), method="adams", options=options)


def test_the_rk_controller_options_are_not_adams_options():
    with pytest.warns(UserWarning, match="ignores"):
        odeint(Spiral(), SPIRAL_Y0, torch.tensor([0.0, 1.0], dtype=F64), method="adams", options={"safety": 0.5})


def _nfe_and_error(field, method: str, tol: float, reference: torch.Tensor, t: torch.Tensor) -> tuple[int, float]:
    with track_stats() as stats, torch.no_grad():
        y = odeint(field, SPIRAL_Y0, t, method=method, rtol=tol, atol=tol)
    return stats.nfe_forward, float((y - reference).abs().max())


def test_fewer_evaluations_than_dopri5_at_rtol_1e_8_on_the_spiral_for_a_smaller_error():
    # Measured (101 outputs on [0, 25], float64): adams 1230 NFE (error 2.2e-7) vs dopri5 2720 (5.2e-7).
    t = torch.linspace(0.0, 25.0, 101, dtype=F64)
    with torch.no_grad():
        reference = odeint(Spiral(), SPIRAL_Y0, t, method="dopri8", rtol=1e-13, atol=1e-13)
    adams, dopri5 = (_nfe_and_error(Spiral(), method, 1e-8, reference, t) for method in ("adams", "dopri5"))
    assert adams[0] < dopri5[0] and adams[1] < dopri5[1], (adams, dopri5)


def test_fewer_evaluations_than_dopri5_at_rtol_1e_8_on_neural_fields():
    # Eight seeded 2-50-2 tanh fields (101 outputs on [0, 25], float64). Measured: adams 1296 NFE in all vs
    # dopri5 1618 (fewer on 6 of 8; seed 0: 135 vs 122, seed 6: 168 vs 146), max error 3.5e-7 vs 8.7e-7, per
    # field at most 1.13x dopri5's (seed 7: 1.8e-8 vs 1.6e-8; elsewhere 1.2-35x smaller).
    t = torch.linspace(0.0, 25.0, 101, dtype=F64)
    totals = {"adams": 0, "dopri5": 0}
    for seed in range(8):
        with torch.no_grad():
            reference = odeint(NeuralField(seed), SPIRAL_Y0, t, method="dopri8", rtol=1e-13, atol=1e-13)
        results = {method: _nfe_and_error(NeuralField(seed), method, 1e-8, reference, t) for method in totals}
        for method, (nfe, _) in results.items():
            totals[method] += nfe
        assert results["adams"][1] < 1.5 * results["dopri5"][1], (seed, results)
    assert totals["adams"] < 0.85 * totals["dopri5"], totals


def test_error_constants_are_adams_moulton():
    # Σ_{i≤j} γ*_i / (j + 1 - i) = 0 for j ≥ 1 (Hairer, Nørsett & Wanner I, III.1).
    exact = [Fraction(1), Fraction(-1, 2), Fraction(-1, 12), Fraction(-1, 24), Fraction(-19, 720), Fraction(-3, 160)]
    assert GAMMA_STAR[:6] == tuple(abs(float(x)) for x in exact)
