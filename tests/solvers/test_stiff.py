"""Adaptive L-stable implicit methods (kvaerno5, kvaerno3, radau5): tableaus, stiff problems, Newton, gradients.

Order slopes and tolerance proportionality are covered by the registry-parametrized tests in
``test_convergence.py``; parity with a peer is against scipy's Radau (torchdiffeq has no implicit
adaptive method).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odecli import odeint, odeint_adjoint, track_stats
from odecli.registry import SOLVERS, load_builtins
from odecli.solvers.adaptive_implicit import AbstractAdaptiveImplicit
from odecli.solvers.errors import InvalidInputError, MaxStepsExceeded, NewtonDidNotConverge, StepSizeTooSmall
from odecli.solvers.esdirk import AbstractESDIRK
from odecli.solvers.jacobian import Jacobian
from tests.solvers.test_gradcheck import _field, _inputs

solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp

load_builtins()

F64 = torch.float64
ESDIRK = [n for n in SOLVERS.names() if isinstance(SOLVERS.get(n), type) and issubclass(SOLVERS.get(n), AbstractESDIRK)]
ESDIRK_TABLEAUS = [SOLVERS.get(n).tableau for n in ESDIRK]
STIFF = [n for n in SOLVERS.names() if isinstance(SOLVERS.get(n), type) and issubclass(SOLVERS.get(n), AbstractAdaptiveImplicit)]
ORDERS = {"kvaerno5": (5, 4), "kvaerno3": (3, 2), "radau5": (5, 3)}  # (solution, embedded)


def van_der_pol(mu: float):
    def func(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    def numpy_func(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    return func, numpy_func


def robertson(t, y):
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], dim=-1)


def robertson_numpy(t, y):
    y1, y2, y3 = y
    return [-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2]


def _solve(name, func, y0, t, rtol=1e-6, atol=1e-8, **options):
    solver = SOLVERS.get(name)(func, y0, rtol, atol, **options)
    with torch.no_grad():
        return solver.integrate(t), solver


# --------------------------------------------------------------------------------------------
# Registration and tableaus.


def test_registered_adaptive_implicit_and_listed():
    assert set(ESDIRK) == {"kvaerno5", "kvaerno3"}
    assert set(STIFF) == {"kvaerno5", "kvaerno3", "radau5"}
    for name in STIFF:
        cls = SOLVERS.get(name)
        assert cls.adaptive and cls.implicit and cls.reference and "L-stable" in SOLVERS.entry(name).description
        assert cls.order == ORDERS[name][0]


def _trees(a: np.ndarray, b: np.ndarray, order: int):
    """(order, value, expected) of the Runge–Kutta order conditions up to ``order`` (≤ 5)."""
    c = a.sum(axis=1)
    ac, ac2, aac = a @ c, a @ c**2, a @ a @ c
    conditions = [(1, b.sum(), 1.0), (2, b @ c, 1 / 2), (3, b @ c**2, 1 / 3), (3, b @ ac, 1 / 6)]
    conditions += [(4, b @ c**3, 1 / 4), (4, (b * c) @ ac, 1 / 8), (4, b @ ac2, 1 / 12), (4, b @ aac, 1 / 24)]
    conditions += [
        (5, b @ c**4, 1 / 5), (5, (b * c**2) @ ac, 1 / 10), (5, (b * c) @ ac2, 1 / 15), (5, (b * c) @ aac, 1 / 30),
        (5, b @ (ac * ac), 1 / 20), (5, b @ (a @ c**3), 1 / 20), (5, b @ (a @ (c * ac)), 1 / 40), (5, b @ (a @ ac2), 1 / 60),
        (5, b @ (a @ aac), 1 / 120),
    ]  # fmt: skip
    return [(p, value, expected) for p, value, expected in conditions if p <= order]


@pytest.mark.parametrize("tab", ESDIRK_TABLEAUS, ids=lambda t: t.name)
def test_order_conditions_of_solution_and_embedded_weights(tab):
    a = tab.full_a()
    order, embedded = ORDERS[tab.name]
    for p, value, expected in _trees(a, np.array(tab.b), order):
        assert value == pytest.approx(expected, abs=1e-10), f"{tab.name}: an order-{p} condition fails"
    for p, value, expected in _trees(a, np.array(tab.b_embedded), embedded):
        assert value == pytest.approx(expected, abs=1e-10), f"{tab.name}: an embedded order-{p} condition fails"
    # The embedded method is not accidentally of the full order (the error estimate would vanish).
    assert any(abs(v - e) > 1e-6 for p, v, e in _trees(a, np.array(tab.b_embedded), embedded + 1) if p == embedded + 1)


@pytest.mark.parametrize("tab", ESDIRK_TABLEAUS, ids=lambda t: t.name)
def test_l_stable_and_stiffly_accurate(tab):
    a, b = tab.full_a(), np.array(tab.b)
    ones = np.ones(tab.stages)

    def stability(z: complex) -> complex:
        # y1 = y0 + z b·Y; stiffly accurate, so also y1 = Y_s, the form without cancellation at large |z|.
        stages = np.linalg.solve(np.eye(tab.stages) - z * a, ones)
        assert abs(1 + z * b @ stages - stages[-1]) < 1e-9 * max(1.0, abs(z))
        return stages[-1]

    assert np.allclose(a[-1], b)  # stiffly accurate: y1 is the last stage
    assert abs(stability(-1e12)) < 1e-9  # L-stable: R(-∞) = 0
    # A-stable: |R| ≤ 1 on the imaginary axis (and so, R being analytic there, on the left half-plane).
    for y in np.concatenate([np.linspace(-50, 50, 401), [-1e6, 1e6]]):
        assert abs(stability(1j * y)) <= 1 + 1e-12
    for z in (-0.5 + 3j, -10 + 0.1j, -1e3 - 1e2j):
        assert abs(stability(z)) <= 1


# --------------------------------------------------------------------------------------------
# Stiff problems and parity with scipy's Radau.


@pytest.mark.parametrize("name", STIFF)
def test_matches_scipy_radau_at_tight_tolerance(name):
    func, numpy_func = van_der_pol(5.0)
    t = torch.linspace(0.0, 5.0, 11, dtype=F64)
    reference = solve_ivp(numpy_func, (0.0, 5.0), [2.0, 0.0], method="Radau", rtol=1e-12, atol=1e-12, t_eval=t.numpy()).y.T
    rtol, factor = (1e-7, 1000) if name == "kvaerno3" else (1e-10, 300)  # global error: local tolerance × a factor
    y = odeint(func, torch.tensor([2.0, 0.0], dtype=F64), t, method=name, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(y.numpy(), reference, rtol=0, atol=factor * rtol)


@pytest.mark.parametrize("name, max_steps", [("kvaerno5", 150), ("radau5", 300)])
def test_van_der_pol_mu_1000_far_fewer_steps_than_dopri5(name, max_steps):
    func, numpy_func = van_der_pol(1000.0)
    t = torch.tensor([0.0, 1.0, 100.0], dtype=F64)
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    reference = solve_ivp(numpy_func, (0.0, 100.0), [2.0, 0.0], method="Radau", rtol=1e-10, atol=1e-10, t_eval=t.numpy()).y.T
    with track_stats() as stats:
        y = odeint(func, y0, t, method=name, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(y.numpy(), reference, rtol=1e-5, atol=1e-7)
    assert stats.steps_accepted + stats.steps_rejected < max_steps
    # dopri5 is stability-limited to h ~ 1/μ on the slow manifold: it needs thousands of steps here.
    with pytest.raises(MaxStepsExceeded):
        odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8, options={"max_num_steps": 1500})


@pytest.mark.parametrize("name, rtol, max_steps", [("kvaerno5", 1e-6, 200), ("kvaerno3", 1e-5, 700), ("radau5", 1e-6, 400)])
def test_robertson_conserves_mass_and_matches_radau(name, rtol, max_steps):
    t = torch.tensor([0.0, 1e-3, 1.0, 1e2, 1e4], dtype=F64)
    reference = solve_ivp(robertson_numpy, (0.0, 1e4), [1.0, 0.0, 0.0], method="Radau", rtol=1e-12, atol=1e-16, t_eval=t.numpy()).y.T
    atol = torch.tensor([1e-8, 1e-12, 1e-8], dtype=F64)
    y, solver = _solve(name, robertson, torch.tensor([1.0, 0.0, 0.0], dtype=F64), t, rtol=rtol, atol=atol)
    assert solver.steps_accepted < max_steps
    torch.testing.assert_close(y.sum(1), torch.ones(len(t), dtype=F64), rtol=0, atol=1e-9)
    np.testing.assert_allclose(y.numpy(), reference, rtol=200 * rtol, atol=1e-11)


@pytest.mark.parametrize("name", STIFF)
def test_stiff_linear_decay_is_damped_in_one_big_step(name):
    """L-stability: a step of h·λ = -1e6 returns ~0, where an A-stable-only method would return ~±1."""
    y, solver = _solve(name, lambda t, y: -1e6 * y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                       rtol=1e3, atol=1e3, first_step=1.0)  # fmt: skip
    assert solver.steps_accepted == 1 and abs(y[-1].item()) < 1e-5


# --------------------------------------------------------------------------------------------
# Newton, the Jacobian and options.


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_newton_failure_rejects_and_shrinks_instead_of_raising(name):
    func, _ = van_der_pol(1000.0)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    good, _ = _solve(name, func, y0, t)
    y, solver = _solve(name, func, y0, t, max_iters=2, first_step=5.0)
    assert solver.n_newton_failures > 0 and solver.steps_rejected >= solver.n_newton_failures
    torch.testing.assert_close(y[-1], good[-1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_giving_up_raises_typed_errors(name):
    t = torch.tensor([0.0, 2.0], dtype=F64)
    with pytest.raises(StepSizeTooSmall) as info:  # y' = y² blows up at t = 1
        odeint(lambda t, y: y**2, torch.ones(1, dtype=F64), t, method=name)
    assert 0.99 < info.value.t < 1.0 + 1e-6  # an implicit step may land a hair past the pole: its equation still has a root there
    with pytest.raises(MaxStepsExceeded):
        odeint(lambda t, y: -y, torch.ones(1, dtype=F64), t, method=name, options={"max_num_steps": 3})
    with pytest.raises(StepSizeTooSmall) as info:  # Newton cannot converge in one iteration on a nonlinear problem
        odeint(lambda t, y: -(y**3), torch.ones(1, dtype=F64), t, method=name, options={"max_iters": 1, "min_step": 0.5})
    assert isinstance(info.value.__cause__, NewtonDidNotConverge)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_jacobian_is_reused_across_steps_and_factorised_per_step_size(name):
    func, _ = van_der_pol(1000.0)
    _, solver = _solve(name, func, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([0.0, 100.0], dtype=F64))
    steps = solver.steps_accepted + solver.steps_rejected
    assert solver.n_jacobians < steps / 2
    assert solver.n_factorisations <= steps


@pytest.mark.parametrize("name", STIFF)
def test_finite_difference_and_block_jacobians_give_the_same_solution(name):
    """A batch of independent Van der Pol oscillators: dense, finite-difference and block-diagonal Jacobians."""
    mus = torch.tensor([[10.0], [100.0], [1000.0]], dtype=F64)

    def batch(t, y):
        y = y.view(3, 2)
        return torch.cat([y[:, 1:], mus * (1 - y[:, :1] ** 2) * y[:, 1:] - y[:, :1]], dim=1).reshape(-1)

    y0 = torch.tensor([2.0, 0.0], dtype=F64).repeat(3)
    t = torch.tensor([0.0, 0.5, 3.0], dtype=F64)
    dense, _ = _solve(name, batch, y0, t)
    for options in ({"jacobian": "finite_difference"}, {"jacobian_blocks": 3}, {"jacobian_blocks": 3, "jacobian": "finite_difference"}):
        y, solver = _solve(name, batch, y0, t, **options)
        torch.testing.assert_close(y, dense, rtol=1e-5, atol=1e-6)
    jac, _ = solver.jacobian(torch.tensor(0.0, dtype=F64), y0)
    assert jac.shape == (3, 2, 2)
    torch.testing.assert_close(jac[2], torch.tensor([[0.0, 1.0], [-1.0, -3000.0]], dtype=F64), rtol=1e-6, atol=1e-6)


def test_options_are_honoured_and_checked():
    steps = []

    def func(t, y):
        return -y

    func.callback_step = lambda t0, y, h: steps.append(float(h))
    odeint(func, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="kvaerno5", options={"first_step": 0.125, "max_step": 0.25})
    assert steps[0] == 0.125 and max(steps) <= 0.25
    for bad in ({"jacobian": "bogus"}, {"jacobian_blocks": 3}, {"max_iters": 0}, {"controller": "nope"}):
        with pytest.raises(InvalidInputError):
            odeint(func, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="kvaerno5", options=bad)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 2)])
def test_float32_any_shape_and_decreasing_time(shape, name):
    y0 = torch.ones(shape)
    t = torch.tensor([1.0, 0.5, 0.0])
    y = odeint(lambda t, y: -2.0 * y, y0, t, method=name, rtol=1e-5, atol=1e-6)
    assert y.shape == (3, *shape) and y.dtype == torch.float32
    torch.testing.assert_close(y, y0 * torch.exp(2.0 * (1.0 - t)).view(3, *[1] * len(shape)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_per_element_tolerances_and_tuple_states(name):
    out = odeint(lambda t, y: (-y[0], -10 * y[1]), (torch.ones(2, dtype=F64), torch.ones(1, dtype=F64)), torch.tensor([0.0, 1.0], dtype=F64),
                 method=name, rtol=1e-8, atol=(1e-10, 1e-12))  # fmt: skip
    torch.testing.assert_close(out[0][-1], torch.full((2,), np.exp(-1.0), dtype=F64), rtol=1e-6, atol=0)
    torch.testing.assert_close(out[1][-1], torch.full((1,), np.exp(-10.0), dtype=F64), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------
# Gradients.

# The forward solve's Newton error (≤ κ·tol) varies non-smoothly with the inputs; gradcheck's finite
# differences (eps 1e-6) see it divided by eps, so its tolerance must be tight.
TIGHT = {"rtol": 1e-12, "atol": 1e-13}


FIXED_STEPS = {"first_step": 0.05, "min_step": 0.05, "max_step": 0.05}  # every step accepted (see below)


@pytest.mark.parametrize(
    "name, options",
    [("kvaerno5", None), ("kvaerno5", FIXED_STEPS), ("kvaerno3", FIXED_STEPS), ("radau5", None), ("radau5", FIXED_STEPS)],  # kvaerno3 at 1e-12 adaptive: ~10^4 steps
    ids=["kvaerno5-adaptive", "kvaerno5-fixed", "kvaerno3-fixed", "radau5-adaptive", "radau5-fixed"],
)
def test_direct_backprop_gradcheck(name, options):
    y0, weight, bias = _inputs(2)
    t = torch.tensor([0.0, 0.4], dtype=F64)

    def solve(y0, weight, bias):
        return odeint(_field(weight, bias), y0, t, method=name, options=options, **TIGHT)

    assert torch.autograd.gradcheck(solve, (y0, weight, bias), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_direct_backprop_gradcheck_on_a_stiff_problem_with_fixed_steps(name):
    """Stiff (h·λ ≈ 20 per step) and nonlinear: the stage graph is exact only through the IFT hook.

    ``min_step = max_step`` forces every step to be accepted, so finite differences see no step-size
    changes; the tight tolerance is then only Newton's.
    """
    scale = torch.tensor([1.0, 200.0], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    options = {"first_step": 0.1, "min_step": 0.1, "max_step": 0.1, "max_iters": 30}

    def solve(y0, scale):
        def func(t, y):
            return -scale * (y + 0.1 * y**3) + torch.stack([y[1], y[0]]) * 0.5

        return odeint(func, y0, t, method=name, rtol=1e-12, atol=1e-12, options=options)

    assert torch.autograd.gradcheck(solve, (y0, scale), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_gradients_at_interpolated_times_match_dopri5(name):
    """Interpolated outputs: gradients agree with dopri5's (finite differences would see step-count jumps there)."""
    y0, weight, bias = _inputs(3)
    t = torch.tensor([0.0, 0.3, 0.55, 0.7], dtype=F64)
    grads = []
    for method in ("dopri5", name):
        y = odeint(_field(weight, bias), y0, t, method=method, rtol=1e-10, atol=1e-11)
        grads.append(torch.autograd.grad((y * torch.arange(1.0, 5.0, dtype=F64)[:, None]).sum(), (y0, weight, bias)))
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_adjoint_gradcheck_y0_t_params(name):
    y0, weight, bias = _inputs()
    t = torch.tensor([0.0, 0.5], dtype=F64, requires_grad=True)

    def solve(y0, t, weight, bias):
        return odeint_adjoint(_field(weight, bias), y0, t, adjoint_params=(weight, bias), method=name, **TIGHT)

    assert torch.autograd.gradcheck(solve, (y0, t, weight, bias), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_adjoint_matches_direct_backprop_on_a_module(name):
    """Mildly stiff only: the adjoint re-solves y backwards in time, where a stiff decaying mode grows
    like exp(λ|t|) and forces tiny steps on any solver; stiff problems want direct backprop."""

    field = MildlyStiff(time_dependent=False)
    y0 = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    results = []
    for solve in (odeint, odeint_adjoint):
        y = solve(field, y0, t, method=name, rtol=1e-9, atol=1e-10)
        results.append(torch.autograd.grad(y.sum(), (y0, *field.parameters())))
    for adjoint, direct in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(adjoint, direct, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", STIFF)
def test_a_jacobian_the_field_supplies_is_used_and_gives_the_same_solution(name):
    """``func.jacobian_matrix(t, y)``: the solvers take J from it (through odeint, reversed time included)."""
    mu = 20.0
    func, _ = van_der_pol(mu)
    calls = []

    def supplied(t, y):
        calls.append(1)
        return torch.stack([torch.stack([torch.zeros_like(y[0]), torch.ones_like(y[0])]),
                            torch.stack([-2 * mu * y[0] * y[1] - 1, mu * (1 - y[0] ** 2)])])  # fmt: skip

    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    for t in (torch.tensor([0.0, 0.25, 0.5], dtype=F64), torch.tensor([0.5, 0.25, 0.0], dtype=F64)):
        with torch.no_grad():
            plain = odeint(func, y0, t, method=name, rtol=1e-6, atol=1e-8)
            func.jacobian_matrix = supplied
            calls.clear()
            hinted = odeint(func, y0, t, method=name, rtol=1e-6, atol=1e-8)
            del func.jacobian_matrix
        assert calls
        torch.testing.assert_close(hinted, plain, rtol=1e-12, atol=1e-12)


class MildlyStiff(torch.nn.Module):
    """Rates 1 and 20 with a nonlinear coupling, and (``time_dependent``) a factor cos(t) on it: then every block
    of the augmented Jacobian is nonzero."""

    def __init__(self, time_dependent: bool = True):
        super().__init__()
        self.rates = torch.nn.Parameter(torch.tensor([1.0, 20.0], dtype=F64))
        self.coupling = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))
        self.time_dependent = time_dependent

    def forward(self, t, y):
        coupled = self.coupling * torch.sin(y.flip(0))
        return -self.rates * y + (coupled * torch.cos(t) if self.time_dependent else coupled)


def no_differences(self, t, y):
    raise AssertionError("an implicit adjoint solve took its Jacobian by finite differences")


@pytest.mark.parametrize("name", STIFF)
def test_adjoint_of_an_implicit_method_takes_no_finite_difference_jacobian(name, monkeypatch):
    """The backward solve's Newton gets the augmented Jacobian from its blocks (``augmented_dynamics.jacobian_matrix``):
    ``Jacobian._differences`` is never called, and the gradients (y0, t, parameters) are direct backprop's."""
    field = MildlyStiff()
    y0 = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    weights = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.5, 3.0]], dtype=F64)
    results = []
    for solve in (odeint, odeint_adjoint):
        if solve is odeint_adjoint:
            monkeypatch.setattr(Jacobian, "_differences", no_differences)
        t = torch.tensor([0.0, 0.25, 0.5], dtype=F64, requires_grad=True)
        y = solve(field, y0, t, method=name, rtol=1e-6, atol=1e-7)
        results.append(torch.autograd.grad((y * weights).sum(), (y0, t, *field.parameters())))
    for adjoint, direct in zip(results[1], results[0], strict=True):  # both within the solve's tolerance of the truth
        torch.testing.assert_close(adjoint, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True], ids=["increasing_t", "decreasing_t"])
def test_augmented_jacobian_blocks_equal_finite_differences_but_the_second_derivative_block(reverse, monkeypatch):
    """Every Jacobian the backward solve uses equals the finite-difference Jacobian of the augmented system (as the
    solver sees it: reversed time included), except the second-derivative block ∂(adjoint rates)/∂y, which is zero."""
    taken = []
    real_call = Jacobian.__call__

    def spy(self, t, y):
        jac, evaluations = real_call(self, t, y)
        taken.append((self.provided is not None, jac[0], self._differences(t, y)[0][0]))
        return jac, evaluations

    monkeypatch.setattr(Jacobian, "__call__", spy)
    field = MildlyStiff()
    t = torch.tensor([0.0, 0.2], dtype=F64, requires_grad=True)  # short: backwards in time, y grows like exp(20 t)
    t = t.flip(0) if reverse else t
    y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    y = odeint_adjoint(field, y0, t, method="kvaerno5", rtol=1e-7, atol=1e-9)
    taken.clear()  # the forward solve's Jacobians are of f itself
    y[-1].sum().backward()
    assert taken and {provided for provided, _, _ in taken} == {True}  # func.jacobian_matrix, every time
    n = 2
    second_derivative = (slice(1 + n, None), slice(1, 1 + n))  # rows: a, a_θ (and below); columns: y
    for _, blocks, differences in taken:
        assert blocks[second_derivative].abs().max() == 0
        differences[second_derivative] = 0
        differences[0, 1 : 1 + n] = 0  # ∂(a_t rate)/∂y: second derivative too
        torch.testing.assert_close(blocks, differences, rtol=1e-5, atol=1e-6)
        assert blocks[1 : 1 + n, 1 : 1 + n].abs().max() > 1  # J is there, not zeros


@pytest.mark.parametrize("name", ["kvaerno5", "radau5"])
def test_finite_difference_jacobian_perturbs_only_the_hinted_columns(name):
    """``func.jacobian_columns = (start, stop)``: the other elements do not enter f, so their columns are skipped."""
    rates = torch.tensor([1.0, 50.0, 0.0, 0.0, 0.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.ones(6, dtype=F64)
    calls = []

    def field(t, y):
        calls.append(1)
        return torch.cat([-rates[:2] * y[:2] + 0.1 * y[:2].flip(0), y[:2].sum().expand(4)])

    solutions = []
    for hint in (None, (0, 2)):
        field.jacobian_columns = hint
        calls.clear()
        y, solver = _solve(name, field, y0, t, jacobian="finite_difference")
        solutions.append((y, len(calls), solver.n_jacobians))
    (plain, plain_calls, jacobians), (hinted, hinted_calls, hinted_jacobians) = solutions
    torch.testing.assert_close(hinted, plain, rtol=1e-10, atol=1e-12)
    assert jacobians == hinted_jacobians and plain_calls - hinted_calls == 4 * jacobians
    # odeint's front end hands the hint on to the solver (reversed time included).
    counts = []
    for hint in (None, (0, 2)):
        field.jacobian_columns = hint
        calls.clear()
        odeint(field, y0, t.flip(0), method=name, options={"jacobian": "finite_difference"})
        counts.append(len(calls))
    saved = counts[0] - counts[1]
    assert saved > 0 and saved % 4 == 0  # four skipped columns per Jacobian
