"""The odeint interface: dense output, time direction, tuple states, dtypes, options, callbacks, events, gradients."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from odecli import odeint, track_stats
from odecli.registry import SOLVERS
from odecli.solvers.odeint import UnsupportedCallbackWarning
from odecli.solvers.problem import IgnoredOptionWarning
from tests.solvers.conftest import LINEAR_A, LINEAR_Y0, LinearField, exact_linear, registered_methods

FIXED_STEP = 0.01


def _fixed_grid_error_bound(method: str) -> float:
    """Global error allowed for a fixed grid of FIXED_STEP on the linear test problem over [-1, 1]: 5 h^order."""
    return 5 * FIXED_STEP ** SOLVERS.get(method).order


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_dense_output_at_off_grid_times_is_accurate(method):
    t = torch.tensor([0.0, 0.0137, 0.31, 0.3111, 0.9, 1.7, 2.2345, 3.0], dtype=torch.float64)
    y = odeint(LinearField(), LINEAR_Y0, t, method=method, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(y, exact_linear(t), rtol=0, atol=1e-8)


def test_many_outputs_in_one_step_cost_no_extra_evaluations(linear):
    coarse, fine = LinearField(), LinearField()
    odeint(coarse, LINEAR_Y0, torch.tensor([0.0, 2.0], dtype=torch.float64), rtol=1e-6, atol=1e-8)
    t = torch.linspace(0.0, 2.0, 500, dtype=torch.float64)
    y = odeint(fine, LINEAR_Y0, t, rtol=1e-6, atol=1e-8)
    assert fine.calls == coarse.calls
    torch.testing.assert_close(y, exact_linear(t), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", registered_methods())
def test_decreasing_time_solves_backwards(method):
    t = torch.linspace(1.0, -1.0, 5, dtype=torch.float64)
    adaptive = SOLVERS.get(method).adaptive
    options = None if adaptive else {"step_size": FIXED_STEP}
    y = odeint(LinearField(), LINEAR_Y0, t, method=method, rtol=1e-8, atol=1e-10, options=options)
    tolerance = 2e-5 if adaptive else max(2e-5, _fixed_grid_error_bound(method))
    torch.testing.assert_close(y, exact_linear(t), rtol=0, atol=tolerance)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "implicit_adams"])
def test_tuple_state_gives_tuple_output(method):
    a = torch.tensor(1.0, dtype=torch.float64)
    b = torch.ones(2, 3, dtype=torch.float64)

    def f(t, y):
        return (-y[0], 2 * y[1])

    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    options = {"step_size": 0.01} if method != "dopri5" else None
    ya, yb = odeint(f, (a, b), t, method=method, options=options)
    assert ya.shape == (3,) and yb.shape == (3, 2, 3)
    torch.testing.assert_close(ya, torch.exp(-t), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(yb, torch.exp(2 * t)[:, None, None].expand(3, 2, 3), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-8)])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_float32_and_float64(dtype, tol, method):
    t = torch.linspace(0.0, 1.0, 5, dtype=dtype)
    options = {"step_size": 1 / 64} if method == "rk4" else None  # outputs on grid points
    y = odeint(LinearField(dtype), LINEAR_Y0.to(dtype), t, method=method, rtol=tol / 10, atol=tol / 100, options=options)
    assert y.dtype == dtype
    torch.testing.assert_close(y, exact_linear(t.double()).to(dtype), rtol=0, atol=tol)


def test_single_time_returns_initial_state():
    y = odeint(LinearField(), LINEAR_Y0, torch.tensor([0.3], dtype=torch.float64))
    assert y.shape == (1, 2) and torch.equal(y[0], LINEAR_Y0)


def test_state_shape_is_kept_and_batch_rows_are_independent():
    y0 = torch.randn(4, 3, 2, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    y = odeint(lambda t, y: y @ LINEAR_A.T, y0, t)
    assert y.shape == (3, 4, 3, 2)
    single = odeint(lambda t, y: y @ LINEAR_A.T, y0[1, 2], t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y[:, 1, 2], single, rtol=0, atol=1e-6)


def test_pi_controller_is_accurate_and_not_wasteful():
    t = torch.linspace(0.0, 10.0, 5, dtype=torch.float64)
    with track_stats() as i_stats:
        y_i = odeint(LinearField(), LINEAR_Y0, t, rtol=1e-8, atol=1e-10)
    with track_stats() as pi_stats:
        y_pi = odeint(LinearField(), LINEAR_Y0, t, rtol=1e-8, atol=1e-10, options={"controller": "pi"})
    torch.testing.assert_close(y_pi, exact_linear(t), rtol=0, atol=1e-7)
    torch.testing.assert_close(y_i, y_pi, rtol=0, atol=1e-7)
    assert pi_stats.nfe_forward <= 1.3 * i_stats.nfe_forward


def test_track_stats_counts_evaluations_and_steps():
    f = LinearField()
    with track_stats() as stats:
        odeint(f, LINEAR_Y0, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert stats.nfe_forward == f.calls and stats.solves == 1
    assert stats.nfe_forward == 2 + 6 * (stats.steps_accepted + stats.steps_rejected)  # f0 + initial step + FSAL dopri5


def test_step_callbacks_are_called_like_torchdiffeq():
    class Field(LinearField):
        def __init__(self):
            super().__init__()
            self.steps, self.accepted, self.rejected = [], [], []

        def callback_step(self, t0, y0, dt):
            self.steps.append(float(t0))

        def callback_accept_step(self, t0, y0, dt):
            self.accepted.append(float(t0))

        def callback_reject_step(self, t0, y0, dt):
            self.rejected.append(float(t0))

    f = Field()
    with track_stats() as stats:
        odeint(f, LINEAR_Y0, torch.tensor([0.0, 3.0], dtype=torch.float64), rtol=1e-3, atol=1e-3, options={"first_step": 2.0})
    assert len(f.steps) == len(f.accepted) + len(f.rejected)
    assert len(f.accepted) == stats.steps_accepted and len(f.rejected) == stats.steps_rejected >= 1
    with pytest.warns(UnsupportedCallbackWarning):
        odeint(f, LINEAR_Y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4", options={"step_size": 0.5})


def test_step_t_and_jump_t_are_stepped_on():
    seen = []

    class Field(LinearField):
        def callback_accept_step(self, t0, y0, dt):
            seen.append(round(float(t0 + dt), 12))

    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    odeint(Field(), LINEAR_Y0, t, options={"step_t": torch.tensor([0.5]), "jump_t": torch.tensor([1.25])})
    assert 0.5 in seen and 1.25 in seen


def test_discontinuous_field_with_jump_t_is_accurate():
    def f(t, y):
        return torch.where(t < 1.0, torch.ones_like(y), -torch.ones_like(y))

    y = odeint(f, torch.zeros(1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64), options={"jump_t": torch.tensor([1.0])})
    assert float(y[-1]) == pytest.approx(0.0, abs=1e-9)


def test_ignored_option_warns_and_is_dropped():
    with pytest.warns(IgnoredOptionWarning, match="step_size"):
        odeint(LinearField(), LINEAR_Y0, torch.tensor([0.0, 1.0], dtype=torch.float64), options={"step_size": 0.1})


def test_event_stops_at_the_crossing_and_matches_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def event(t, y):
        return y[0] - 0.5

    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    event_t, y = odeint(LinearField(), LINEAR_Y0, t, event_fn=event)
    their_t, theirs = torchdiffeq.odeint(LinearField(), LINEAR_Y0, t, event_fn=event)
    assert y.shape == (2, 2)
    assert float(y[-1, 0]) == pytest.approx(0.5, abs=1e-6)
    assert float(event_t) == pytest.approx(float(their_t), abs=1e-6)


def test_event_in_reverse_time_and_fixed_grid():
    def event(t, y):
        return y[0] - 1.5

    t = torch.tensor([0.0, -10.0], dtype=torch.float64)
    for method, options in (("dopri5", None), ("rk4", {"step_size": 0.01})):
        event_t, y = odeint(LinearField(), LINEAR_Y0, t, method=method, options=options, event_fn=event)
        assert float(event_t) < 0
        assert float(y[-1, 0]) == pytest.approx(1.5, abs=1e-4)


def _field_with(weight):
    return lambda t, y: torch.tanh(y @ weight) - 0.1 * y


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.1}), ("tsit5", None)])
def test_gradcheck_direct_backprop(method, options):
    torch.manual_seed(0)
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)

    def solve(y0, weight):
        return odeint(_field_with(weight), y0, t, method=method, options=options, rtol=1e-9, atol=1e-11)

    assert torch.autograd.gradcheck(solve, (y0, weight))


def test_parameters_needing_grad_are_detected_after_the_first_step():
    """A field whose parameters only matter after t = 0.5 still gets a graph (the fast path restarts)."""
    weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        return -y * weight if float(t) > 0.5 else -y

    y = odeint(f, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(y[-1].sum(), weight)
    # y(1) = exp(-0.5 - 0.5 w): dy/dw = -0.5 y(1)
    assert float(grad) == pytest.approx(-0.5 * float(y[-1].detach()), rel=1e-5)


def test_no_grad_results_equal_grad_results():
    weight = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    with_graph = odeint(_field_with(weight), LINEAR_Y0, t)
    with torch.no_grad():
        without = odeint(_field_with(weight), LINEAR_Y0, t)
    assert with_graph.requires_grad and not without.requires_grad
    torch.testing.assert_close(with_graph.detach(), without, rtol=1e-12, atol=1e-14)


def test_no_warnings_on_a_plain_solve():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(LinearField(), LINEAR_Y0, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_user_norm_on_a_tuple_state_works_while_stats_are_tracked():
    """A custom norm gets the tuple parts, also when NFE counting wraps the function (it once got a wrapper)."""
    seen = []

    def norm(parts):
        seen.append(len(parts))
        return parts[0].abs().max()

    y0 = (torch.ones(3, requires_grad=True), torch.zeros(2))
    with track_stats():
        y = odeint(lambda t, y: (-y[0], y[0][:2]), y0, torch.tensor([0.0, 1.0]), options={"norm": norm})
        y[0].sum().backward()
    assert seen and set(seen) == {2}
    torch.testing.assert_close(y[0][-1], torch.full((3,), math.exp(-1.0)), rtol=1e-5, atol=1e-5)


def test_ignored_option_warning_points_at_the_callers_line():
    with pytest.warns(IgnoredOptionWarning) as record:
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), options={"step_size": 0.1})
    assert record[0].filename == __file__
