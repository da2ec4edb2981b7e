"""Fixed-grid implicit Runge–Kutta methods: order, stiff stability, Newton failures, tableaus."""

from __future__ import annotations

import math

import pytest
import torch

from odecli import odeint, odeint_adjoint
from odecli.registry import SOLVERS, load_builtins
from odecli.solvers.errors import InvalidInputError, MaxStepsExceeded, NewtonDidNotConverge
from odecli.solvers.implicit import AbstractImplicitRungeKutta
from odecli.solvers.jacobian import Jacobian
from tests.solvers.test_stiff import MildlyStiff, no_differences

load_builtins()

IMPLICIT_RK = [n for n in SOLVERS.names() if isinstance(SOLVERS.get(n), type) and issubclass(SOLVERS.get(n), AbstractImplicitRungeKutta)]
F64 = torch.float64
A = torch.tensor([[-0.5, -2.0], [2.0, -0.5]], dtype=F64)
Y0 = torch.tensor([1.0, 0.5], dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)


def linear(t, y):
    return A.to(y) @ y


def _solve(name, func, y0, t, **options):
    solver = SOLVERS.get(name)(func, y0, options.pop("rtol", 1e-12), options.pop("atol", 1e-12), **options)
    return solver.integrate(t), solver


def test_the_whole_torchdiffeq_family_is_registered():
    assert set(IMPLICIT_RK) == {"implicit_euler", "implicit_midpoint", "trapezoid", "radauIIA3", "radauIIA5", "gl4", "gl6", "sdirk2", "trbdf2"}
    for name in IMPLICIT_RK:
        cls = SOLVERS.get(name)
        assert cls.implicit and not cls.adaptive and cls.reference and SOLVERS.entry(name).description


@pytest.mark.parametrize("name", IMPLICIT_RK)
def test_order_of_convergence_on_linear_system(name):
    exact = torch.linalg.matrix_exp(A) @ Y0
    steps = [0.1, 0.05, 0.025] if SOLVERS.get(name).order < 6 else [0.25, 0.125, 0.0625]
    errors = [(_solve(name, linear, Y0, T, step_size=h)[0][-1] - exact).norm().item() for h in steps]
    slope = math.log(errors[0] / errors[-1]) / math.log(steps[0] / steps[-1])
    assert slope == pytest.approx(SOLVERS.get(name).order, abs=0.25), errors


@pytest.mark.parametrize("name", IMPLICIT_RK)
def test_stiff_decay_stays_bounded_where_explicit_euler_explodes(name):
    lam, h, n_steps = -1000.0, 0.01, 50
    # Explicit Euler's iterate is (1 + h·λ)^n = (-9)^50: it blows up.
    assert abs((1 + h * lam) ** n_steps) > 1e40
    y, _ = _solve(name, lambda t, y: lam * y, torch.ones(1, dtype=F64), torch.tensor([0.0, h * n_steps], dtype=F64), step_size=h, rtol=1e-7, atol=1e-9)
    assert torch.isfinite(y).all() and y[-1].abs().item() <= 1.0


def test_implicit_euler_matches_its_stability_function_on_stiff_problem():
    lam, h = -1000.0, 0.01
    y, solver = _solve("implicit_euler", lambda t, y: lam * y, torch.ones(1, dtype=F64), torch.tensor([0.0, 0.1], dtype=F64), step_size=h)
    assert y[-1].item() == pytest.approx((1 / (1 - h * lam)) ** 10, rel=1e-10)
    # Linear problem, exact Jacobian: Newton is exact after one update, the second confirms it.
    # Per step: f(t0, y0), the Jacobian's evaluation, and two residual evaluations.
    assert solver.nfe == 10 * 4


def test_nonlinear_problem_matches_scipy_radau():
    scipy_integrate = pytest.importorskip("scipy.integrate")

    def van_der_pol(t, y):
        return torch.stack([y[1], 5 * (1 - y[0] ** 2) * y[1] - y[0]])

    y, _ = _solve("radauIIA5", van_der_pol, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), step_size=0.01)
    ref = scipy_integrate.solve_ivp(lambda t, y: van_der_pol(t, torch.tensor(y)).numpy(), (0, 1), [2.0, 0.0], method="Radau", rtol=1e-10, atol=1e-10)
    assert torch.allclose(y[-1], torch.tensor(ref.y[:, -1]), atol=1e-7)


def test_functional_iteration_on_a_stiff_step_raises_typed_error():
    with pytest.raises(NewtonDidNotConverge, match="did not converge") as info:
        _solve("implicit_euler", lambda t, y: -1000.0 * y, torch.ones(1, dtype=F64), T, step_size=0.01, jacobian="fixed_point")
    assert info.value.t == 0.0


def test_too_few_newton_iterations_on_a_nonlinear_problem_raise():
    with pytest.raises(NewtonDidNotConverge):
        _solve("gl4", lambda t, y: -(y**3), torch.ones(2, dtype=F64), T, step_size=0.5, max_iters=1)


def test_functional_iteration_converges_on_non_stiff_step():
    exact = torch.linalg.matrix_exp(A) @ Y0
    y, _ = _solve("gl6", linear, Y0, T, step_size=0.05, jacobian="fixed_point")
    assert torch.allclose(y[-1], exact, atol=1e-10)


def test_float32_state_converges_despite_tolerances_below_its_precision():
    y, _ = _solve("radauIIA3", linear, Y0.float(), T.float(), step_size=0.05, rtol=1e-7, atol=1e-9)
    assert y.dtype == torch.float32
    assert torch.allclose(y[-1].double(), torch.linalg.matrix_exp(A) @ Y0, atol=1e-3)


def test_output_times_between_grid_points_are_interpolated():
    t = torch.tensor([0.0, 0.33, 0.5, 1.0], dtype=F64)
    for interp, atol in (("linear", 5e-2), ("cubic", 1e-4)):
        y, _ = _solve("gl4", linear, Y0, t, step_size=0.1, interp=interp)
        exact = torch.stack([torch.linalg.matrix_exp(A * s) @ Y0 for s in t])
        assert torch.allclose(y, exact, atol=atol), interp


def test_gradients_flow_through_the_newton_solve():
    def solve(y0, rate):
        y, _ = _solve("radauIIA3", lambda t, y: -rate * y**3, y0, torch.tensor([0.0, 0.5], dtype=F64), step_size=0.1, rtol=1e-13, atol=1e-13)
        return y[-1]

    y0 = torch.tensor([1.0, 0.7], dtype=F64, requires_grad=True)
    rate = torch.tensor(1.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (y0, rate), atol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [({"jacobian": "exact"}, "jacobian"), ({"max_iters": 0}, "max_iters"), ({"interp": "quadratic"}, "interp"), ({"step_size": -0.1}, "step_size")],
)
def test_bad_options_raise_invalid_input(options, message):
    with pytest.raises(InvalidInputError, match=message):
        SOLVERS.get("gl4")(linear, Y0, 1e-7, 1e-9, **options)


def test_tableau_structure():
    assert SOLVERS.get("sdirk2").tableau.diagonally_implicit
    assert SOLVERS.get("trbdf2").tableau.diagonally_implicit
    assert not SOLVERS.get("gl4").tableau.diagonally_implicit


@pytest.mark.parametrize("name", ["implicit_euler", "gl4"])
def test_fixed_grid_event_location(name):
    def ball(t, y):
        return torch.stack([y[1], -9.81 * torch.ones_like(y[1])])

    solver = SOLVERS.get(name)(ball, torch.tensor([2.0, 1.0], dtype=F64), 1e-7, 1e-10, step_size=0.01, interp="cubic")
    event_t, solution = solver.integrate_until_event(torch.tensor(0.0, dtype=F64), lambda t, y: y[0])
    exact = (1.0 + math.sqrt(1.0 + 2 * 9.81 * 2.0)) / 9.81
    assert event_t.item() == pytest.approx(exact, abs=1e-2 if name == "implicit_euler" else 1e-8)
    assert solution.shape == (2, 2) and abs(solution[-1, 0].item()) < 1e-6


def test_fixed_grid_event_needs_step_size_and_an_end():
    with pytest.raises(InvalidInputError, match="step_size"):
        SOLVERS.get("gl4")(linear, Y0, 1e-7, 1e-9).integrate_until_event(torch.tensor(0.0, dtype=F64), lambda t, y: y[0])
    # An event that never comes ends at the step budget (max_num_steps, or torchdiffeq's 20000 event steps).
    solver = SOLVERS.get("implicit_euler")(lambda t, y: -y, torch.ones(1, dtype=F64), 1e-7, 1e-9, step_size=0.1, max_num_steps=50)
    with pytest.raises(MaxStepsExceeded, match="max_num_steps=50"):
        solver.integrate_until_event(torch.tensor(0.0, dtype=F64), lambda t, y: y[0] + 1.0)  # never reaches -1
    assert solver.steps_accepted == 50


@pytest.mark.parametrize("name", IMPLICIT_RK)
def test_adjoint_takes_its_newton_jacobian_from_the_augmented_blocks_not_differences(name, monkeypatch):
    """``odeint_adjoint`` on a fixed grid: the backward Newton uses the augmented system's block Jacobian
    (``Jacobian._differences`` raises here), and the gradients agree with direct backprop up to the
    discretisation (the adjoint of a fixed-grid method is not the discrete gradient: O(h^order) apart)."""
    field = MildlyStiff(time_dependent=False)
    rates = field.rates
    y0 = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.25, 0.5], dtype=F64)
    direct = torch.autograd.grad(odeint(field, y0, t, method=name, options={"step_size": 0.01}).sum(), (y0, rates))

    monkeypatch.setattr(Jacobian, "_differences", no_differences)
    y = odeint_adjoint(field, y0, t, method=name, options={"step_size": 0.01}, adjoint_params=(rates,))
    adjoint = torch.autograd.grad(y.sum(), (y0, rates))
    tolerance = 0.5 * 0.2 ** SOLVERS.get(name).order  # implicit Euler: 10%; order 2: 2%; order 4+: < 0.1%
    for a, d in zip(adjoint, direct, strict=True):
        torch.testing.assert_close(a, d, rtol=tolerance, atol=tolerance * float(d.abs().max()))
