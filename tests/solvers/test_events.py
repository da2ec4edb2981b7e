"""Terminal events: event times and their gradients against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odecli.registry import SOLVERS
from odecli.solvers.adaptive import AbstractAdaptiveSolver
from odecli.solvers.adjoint import odeint_adjoint
from odecli.solvers.errors import InvalidInputError
from odecli.solvers.events import combine_event_functions, find_event
from odecli.solvers.odeint import odeint
from odecli.solvers.terminal_event import odeint_event

F64 = torch.float64


class FallingBall(nn.Module):
    """State (height, velocity) under gravity ``g``."""

    def __init__(self, g: float = 9.81):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=F64))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[1])])


def hits_ground(t, y):
    return y[0]


def test_find_event_brackets_the_root_of_the_dense_output():
    t0, t1 = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    y0, y1 = torch.tensor([1.0], dtype=F64), torch.tensor([-3.0], dtype=F64)

    def interp(t):
        return y0 + (t - t0) * (y1 - y0)

    sign0 = torch.sign(hits_ground(t0, y0))
    event_t, y_event = find_event(interp, sign0, t0, t1, lambda t, y: y[0], tol=1e-10)
    assert event_t.item() == pytest.approx(0.25, abs=1e-10)
    assert y_event.item() == pytest.approx(0.0, abs=1e-9)


def test_combined_event_fires_on_the_first_component_to_cross():
    combined = combine_event_functions(lambda t, y: torch.stack([y[0] - 2.0, 5.0 - y[0]]), torch.tensor(0.0), torch.tensor([0.0]))
    assert combined(torch.tensor(0.0), torch.tensor([0.0])) > 0
    assert combined(torch.tensor(0.0), torch.tensor([2.5])) < 0  # the first component changed sign
    assert combined(torch.tensor(0.0), torch.tensor([1.5])) > 0


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint], ids=["direct", "adjoint"])
def test_falling_ball_event_time_and_gradients_match_closed_form(interface):
    ball = FallingBall()
    h0 = torch.tensor(2.0, dtype=F64, requires_grad=True)
    v0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    event_t, solution = odeint_event(ball, torch.stack([h0, v0]), t0, event_fn=hits_ground, odeint_interface=interface, rtol=1e-10, atol=1e-12)
    # h0 + v0 s - g s²/2 = 0  →  s = (v0 + sqrt(v0² + 2 g h0)) / g
    exact_t = t0 + (v0 + torch.sqrt(v0**2 + 2 * ball.g * h0)) / ball.g
    assert event_t.item() == pytest.approx(exact_t.item(), abs=1e-9)
    assert solution.shape == (2, 2) and solution[-1, 0].abs().item() < 1e-8
    inputs = [h0, v0, ball.g, t0]
    got = torch.autograd.grad(event_t, inputs, retain_graph=True)
    want = torch.autograd.grad(exact_t, inputs)
    for g, w in zip(got, want, strict=True):
        assert g.item() == pytest.approx(w.item(), rel=1e-6, abs=1e-9)
    # Impact velocity -sqrt(v0² + 2 g h0): its gradient includes the event time's dependence on h0.
    (dv_dh0,) = torch.autograd.grad(solution[-1, 1], h0)
    assert dv_dh0.item() == pytest.approx(-(ball.g / torch.sqrt(v0**2 + 2 * ball.g * h0)).item(), rel=1e-6)


def test_event_time_gradient_wrt_t0_through_direct_odeint():
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    event_t, _ = odeint_event(FallingBall(), torch.tensor([2.0, 1.0], dtype=F64), t0, event_fn=hits_ground, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(event_t, t0)
    assert grad.item() == pytest.approx(1.0, abs=1e-8)


def test_reverse_time_event():
    # y' = 1 backwards from y(0) = 0 reaches y = -0.5 at t = -0.5.
    event_t, solution = odeint_event(
        lambda t, y: torch.ones_like(y), torch.zeros(1, dtype=F64), torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0] + 0.5, reverse_time=True, atol=1e-10
    )
    assert event_t.item() == pytest.approx(-0.5, abs=1e-8)
    assert solution[-1].item() == pytest.approx(-0.5, abs=1e-8)


def test_tuple_state_event():
    height = torch.tensor([3.0], dtype=F64, requires_grad=True)
    velocity = torch.tensor([0.0], dtype=F64)

    def field(t, state):
        return state[1], -torch.ones_like(state[1])

    event_t, (hs, vs) = odeint_event(field, (height, velocity), torch.tensor(0.0, dtype=F64), event_fn=lambda t, s: s[0][0], rtol=1e-10, atol=1e-12)
    assert hs.shape == (2, 1) and vs.shape == (2, 1)
    assert event_t.item() == pytest.approx(6.0**0.5, abs=1e-8)
    (grad,) = torch.autograd.grad(event_t, height)  # t = sqrt(2 h)  →  dt/dh = 1 / sqrt(2 h)
    assert grad.item() == pytest.approx(1 / 6.0**0.5, rel=1e-6)


def test_t0_must_be_a_single_time_tensor():
    with pytest.raises(InvalidInputError, match="t0"):
        odeint_event(lambda t, y: -y, torch.ones(1), 0.0, event_fn=hits_ground)
    with pytest.raises(InvalidInputError, match="single time"):
        odeint_event(lambda t, y: -y, torch.ones(1), torch.zeros(2), event_fn=hits_ground)


def _bounces(pos0, vel0, t0, gravity, restitution, interface, n_bounces=3):
    """torchdiffeq's bouncing-ball example in miniature: event-terminated solves chained by bounces.

    Each solve runs until the ball reaches the floor; the next starts at that event time with the
    velocity reflected and scaled by ``restitution`` (and the ball a hair above the floor, as the
    example does, so the restart is not itself an event). Returns the event times and the last velocity.
    """

    def fall(t, state):
        return state[1], -gravity * torch.ones_like(state[1])

    kwargs = {"adjoint_params": (gravity,)} if interface is odeint_adjoint else {}
    state, t, times = (pos0, vel0), t0, []
    for _ in range(n_bounces):
        t, (pos, vel) = odeint_event(fall, state, t, event_fn=lambda t, s: s[0][0], odeint_interface=interface, rtol=1e-10, atol=1e-12, **kwargs)
        state = (pos[-1] + 1e-9, -restitution * vel[-1])
        times.append(t)
    return torch.stack(times), state[1]


def _bounce_inputs():
    values = {"pos0": [1.5], "vel0": [0.4], "t0": 0.3, "gravity": 9.81, "restitution": 0.8}
    return tuple(torch.tensor(v, dtype=F64, requires_grad=True) for v in values.values())


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint], ids=["direct", "adjoint"])
def test_bouncing_ball_event_times_match_closed_form(interface):
    pos0, vel0, t0, gravity, restitution = _bounce_inputs()
    times, _ = _bounces(pos0, vel0, t0, gravity, restitution, interface)
    g, v = 9.81, 0.4
    impact = (v**2 + 2 * g * 1.5) ** 0.5
    expected = [0.3 + (v + impact) / g]
    for _ in range(2):  # each bounce leaves at restitution·impact and returns after 2 v / g
        impact *= 0.8
        expected.append(expected[-1] + 2 * impact / g)
    torch.testing.assert_close(times, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-7)


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint], ids=["direct", "adjoint"])
def test_bouncing_ball_gradients_match_finite_differences(interface):
    # Gradients of every bounce time and the final velocity w.r.t. the initial state, the start time
    # and both parameters (torchdiffeq's examples/bouncing_ball.py checks the same situation).
    # eps = 1e-4: the chained event solves (rtol 1e-10) move the outputs by rounding-level noise of up to
    # ~6e-12 when an input moves (measured on an AVX-512 CPU), which gradcheck's default eps = 1e-6 turns into
    # a 1.5e-6 finite-difference error (over atol) where the exact derivative is 0 (final velocity vs t0).
    assert torch.autograd.gradcheck(lambda *inputs: _bounces(*inputs, interface), _bounce_inputs(), eps=1e-4, atol=1e-6, rtol=1e-5)


def adaptive_methods() -> list[str]:
    """Every registered method on the one adaptive loop (explicit pairs, ESDIRK, Radau): events come from the loop."""
    return sorted(name for name in SOLVERS.names() if issubclass(SOLVERS.get(name), AbstractAdaptiveSolver))


@pytest.mark.parametrize("method", adaptive_methods())
def test_every_adaptive_method_finds_the_event(method):
    h0, v0, g = 2.0, 1.0, 9.81
    event_t, solution = odeint_event(FallingBall(g), torch.tensor([h0, v0], dtype=F64), torch.tensor(0.5, dtype=F64), event_fn=hits_ground,
                                     method=method, rtol=1e-7, atol=1e-8)  # fmt: skip
    exact = 0.5 + (v0 + (v0**2 + 2 * g * h0) ** 0.5) / g
    assert event_t.item() == pytest.approx(exact, abs=1e-6)
    assert abs(solution[-1, 0].item()) < 1e-6


@pytest.mark.parametrize("method", [name for name in adaptive_methods() if "jump_t" in SOLVERS.get(name).options])
def test_every_adaptive_method_with_jump_t_restarts_at_the_jump(method):
    # y' = 1 before t = 1 and -1 after: y(2) = 0 exactly. jump_t makes a step end at 1 and the next start past it.
    def field(t, y):
        return torch.where(t < 1.0, 1.0, -1.0) * torch.ones_like(y)

    t = torch.tensor([0.0, 2.0], dtype=F64)
    y = odeint(field, torch.zeros(1, dtype=F64), t, method=method, rtol=1e-8, atol=1e-10, options={"jump_t": torch.tensor([1.0], dtype=F64)})
    assert abs(y[-1].item()) < 1e-9


@pytest.mark.parametrize("method", ["dopri5", "rk4", "implicit_adams", "kvaerno5"])
def test_an_event_holding_at_t0_is_found_there_without_a_step(method):
    # The event watch is the loops' shared one: fixed-grid and adaptive methods answer alike.
    options = {"step_size": 0.1} if not SOLVERS.get(method).adaptive else None
    y0 = torch.tensor([0.0, 2.0], dtype=F64)
    t0 = torch.tensor(0.5, dtype=F64)
    event_t, solution = odeint_event(FallingBall(), y0, t0, event_fn=hits_ground, method=method, options=options)
    assert float(event_t) == 0.5
    assert torch.equal(solution, torch.stack([y0, y0]))
