"""``odeint_checkpoint``: gradients equal direct backprop's (float64), gradcheck, NFE accounting, config."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

from odecli.solvers import InvalidInputError, odeint, odeint_checkpoint, track_stats
from odecli.tasks.common import ConfigError, make_solve

F64 = torch.float64


class TimeField(torch.nn.Module):
    """A small non-autonomous MLP vector field (time enters as an input feature)."""

    def __init__(self, dim: int = 2, width: int = 8):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(0.5 * torch.randn(width, dim + 1, generator=gen, dtype=F64))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(width, generator=gen, dtype=F64))
        self.w2 = torch.nn.Parameter(0.5 * torch.randn(dim, width, generator=gen, dtype=F64))

    def forward(self, t, y):
        x = torch.cat([y, t * torch.ones_like(y[..., :1])], dim=-1)
        return torch.tanh(x @ self.w1.T + self.b1) @ self.w2.T


class TupleField(torch.nn.Module):
    """A tuple state (position, velocity) of a damped oscillator with a learnable stiffness."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))

    def forward(self, t, state):
        x, v = state
        return v, -self.k * x - 0.1 * v * torch.cos(t)


CASES = [
    ("dopri5", None),
    ("bosh3", None),
    ("tsit5", None),
    ("dopri5", {"controller": "pi"}),
    ("rk4", {"step_size": 0.07}),
    ("rk4", None),
    ("euler", {"step_size": 0.1}),
    ("rk4_classic", {"step_size": 0.1, "interp": "cubic"}),
]


def _loss_and_grads(solve, func, y0, t, params):
    y = solve(func, y0, t)
    ys = y if isinstance(y, tuple) else (y,)
    loss = sum((part * torch.linspace(-1, 1, part.numel(), dtype=F64).reshape(part.shape).sin()).sum() for part in ys)
    inputs = (*(y0 if isinstance(y0, tuple) else (y0,)), *params)
    return y, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("method, options", CASES, ids=[f"{m}-{o}" for m, o in CASES])
@pytest.mark.parametrize("checkpoints", [None, 3])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_gradients_equal_direct_backprop(method, options, checkpoints, direction):
    func = TimeField()
    y0 = torch.tensor([[0.3, -0.8], [1.1, 0.4]], dtype=F64, requires_grad=True)
    t = direction * torch.tensor([0.0, 0.35, 0.9, 1.6], dtype=F64)
    kwargs = {"rtol": 1e-6, "atol": 1e-8, "method": method, "options": options}
    with track_stats() as direct_stats:
        y_direct, g_direct = _loss_and_grads(lambda f, y, s: odeint(f, y, s, **kwargs), func, y0, t, list(func.parameters()))
    with track_stats() as ckpt_stats:
        y_ckpt, g_ckpt = _loss_and_grads(lambda f, y, s: odeint_checkpoint(f, y, s, checkpoints=checkpoints, **kwargs), func, y0, t, list(func.parameters()))
    torch.testing.assert_close(y_ckpt, y_direct, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_ckpt, g_direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert ckpt_stats.nfe_forward == direct_stats.nfe_forward
    assert ckpt_stats.steps_backward == ckpt_stats.steps_accepted > 0
    if checkpoints is None:
        # Every step is recomputed once with its VJP: the same count as direct backprop's VJPs.
        assert ckpt_stats.nfe_backward == direct_stats.nfe_backward
    else:
        assert ckpt_stats.nfe_backward >= direct_stats.nfe_backward  # plus any graph-free replays


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.1})])
def test_tuple_state_gradients_equal_direct_backprop(method, options):
    func = TupleField()
    y0 = (torch.tensor([1.0, 0.2], dtype=F64, requires_grad=True), torch.tensor([0.0, -0.5], dtype=F64, requires_grad=True))
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    kwargs = {"rtol": 1e-7, "atol": 1e-9, "method": method, "options": options}
    y_direct, g_direct = _loss_and_grads(lambda f, y, s: odeint(f, y, s, **kwargs), func, y0, t, [func.k])
    y_ckpt, g_ckpt = _loss_and_grads(lambda f, y, s: odeint_checkpoint(f, y, s, checkpoints=2, **kwargs), func, y0, t, [func.k])
    for a, b in zip((*y_ckpt, *g_ckpt), (*y_direct, *g_direct), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _gradcheck_problem():
    gen = torch.Generator().manual_seed(1)
    weight = (0.5 * torch.randn(2, 2, generator=gen, dtype=F64)).requires_grad_(True)
    bias = (0.1 * torch.randn(2, generator=gen, dtype=F64)).requires_grad_(True)
    y0 = torch.randn(2, generator=gen, dtype=F64).requires_grad_(True)
    return y0, weight, bias


@pytest.mark.parametrize(
    "method, options, autonomous",
    [("dopri5", None, True), ("dopri5", None, False), ("tsit5", None, True), ("rk4", None, False), ("rk4", {"step_size": 0.1}, False)],
)
def test_gradcheck_y0_params_and_output_times(method, options, autonomous):
    y0, weight, bias = _gradcheck_problem()
    # Output times off the fixed grid (t0 + 0.1k): linear interpolation has kinks at grid points.
    t = torch.tensor([0.1, 0.43, 0.77, 1.24], dtype=F64, requires_grad=True)

    def field(time, y):
        out = torch.tanh(y @ weight.T + bias)
        return out if autonomous else out * torch.cos(time)

    def solve(y0, t, weight, bias):
        return odeint_checkpoint(field, y0, t, rtol=1e-9, atol=1e-11, method=method, options=options, adjoint_params=(weight, bias), checkpoints=2)

    # Adaptive steps are constants: with a non-autonomous field, moving t[0] moves the step sizes
    # the controller picks, which no backprop through odecli's solver sees; check t[1:] there.
    if autonomous or not method.startswith(("dopri", "tsit")):
        assert torch.autograd.gradcheck(solve, (y0, t, weight, bias), atol=1e-6, rtol=1e-5)
    else:
        t_rest = t[1:].detach().requires_grad_(True)
        t0 = t[:1].detach()
        assert torch.autograd.gradcheck(lambda y0, tr, w, b: solve(y0, torch.cat([t0, tr]), w, b), (y0, t_rest, weight, bias), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options", [None, {"step_size": 0.1}])
def test_output_time_gradients_equal_torchdiffeq_direct_backprop_on_fixed_grids(options):
    y0, weight, bias = _gradcheck_problem()
    t = torch.tensor([0.1, 0.45, 0.8, 1.2], dtype=F64, requires_grad=True)

    def field(time, y):
        return torch.tanh(y @ weight.T + bias) * torch.cos(time)

    ours = odeint_checkpoint(field, y0, t, method="rk4", options=options, adjoint_params=(weight, bias))
    theirs = torchdiffeq.odeint(field, y0, t, method="rk4", options=options)
    g_ours = torch.autograd.grad(ours.sin().sum(), (y0, t, weight, bias))
    g_theirs = torch.autograd.grad(theirs.sin().sum(), (y0, t, weight, bias))
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_checkpoints_bound_the_stored_states():
    from odecli.solvers.checkpoint_adjoint import _Tape

    tape = _Tape(limit=8)
    y = torch.zeros(3)
    for step in range(1000):
        tape.add(float(step), 1.0, y, None)
        assert len(tape.saved) <= 8
    assert 0 in tape.saved and len(tape.starts) == 1000


def test_no_graph_needed_runs_a_plain_solve():
    func = TimeField()
    y0 = torch.tensor([0.3, -0.8], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with torch.no_grad():
        out = odeint_checkpoint(func, y0, t)
    torch.testing.assert_close(out, odeint(func, y0, t))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "implicit_adams"}, "adjoint=True"),
        ({"checkpoints": 0}, "positive integer"),
        ({"options": {"jump_t": [0.5]}}, "jump_t"),
        ({"options": {"batch_mode": "independent"}}, "batch_mode"),
    ],
)
def test_clear_errors(kwargs, message):
    func = TimeField()
    y0 = torch.tensor([0.3, -0.8], dtype=F64, requires_grad=True)
    with pytest.raises(InvalidInputError, match=message):
        odeint_checkpoint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), **kwargs)


def test_plain_function_needs_adjoint_params():
    with pytest.raises(InvalidInputError, match="adjoint_params"):
        odeint_checkpoint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]))


def test_make_solve_selects_checkpoint_and_rejects_bad_values():
    base = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6, "step_size": None, "options": {}}
    func = TimeField()
    y0 = torch.tensor([0.3, -0.8], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with track_stats() as tracked:
        make_solve({**base, "adjoint": "checkpoint", "checkpoints": 4})(func, y0, t).sum().backward()
    assert tracked.steps_backward == tracked.steps_accepted > 0
    with pytest.raises(ConfigError, match="false .*true .*checkpoint"):
        make_solve({**base, "adjoint": "checkpointed"})
    with pytest.raises(ConfigError, match="checkpoints"):
        make_solve({**base, "adjoint": "checkpoint", "checkpoints": -1})
