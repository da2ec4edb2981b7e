"""``odeint_adjoint``: gradients agree with direct backprop; seminorm; stats; torchdiffeq semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odecli.solvers.adjoint import odeint_adjoint
from odecli.solvers.errors import InvalidInputError
from odecli.solvers.odeint import odeint
from odecli.solvers.stats import track_stats

F64 = torch.float64


class NeuralField(nn.Module):
    """A small MLP vector field with one parameter it never uses."""

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(F64)
        self.unused = nn.Parameter(torch.ones(3, dtype=F64))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _grads(solve, func, y0, t, **kwargs):
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    ys = solve(func, y0, t, **kwargs)
    loss = (ys**2).sum() + ys[..., 0].sum()
    names, params = zip(*func.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, [y0, t, *params], allow_unused=True)
    return dict(zip(("y0", "t", *names), grads, strict=True))


def test_matches_direct_backprop_for_y0_and_parameters_and_closed_form_for_t():
    func = NeuralField()
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.2]], dtype=F64)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    adjoint = _grads(odeint_adjoint, func, y0, t, rtol=1e-10, atol=1e-10)
    direct = _grads(odeint, func, y0, t, rtol=1e-10, atol=1e-10)
    # The unused parameter: zeros from the adjoint (torchdiffeq semantics), None from autograd.
    assert direct.pop("unused") is None
    assert torch.equal(adjoint.pop("unused"), torch.zeros(3, dtype=F64))
    for name in direct:
        if name != "t":
            assert torch.allclose(adjoint[name], direct[name], rtol=1e-6, atol=1e-7), name
    # Moving an output time t_i (i > 0) moves y_i by f(t_i, y_i): dL/dt_i = <dL/dy_i, f>; moving t_0
    # shifts the whole trajectory: dL/dt_0 = -<dL/dy_0, f(t_0, y_0)>.
    with torch.no_grad():
        ys = odeint(func, y0, t, rtol=1e-10, atol=1e-10)
        dL_dy = 2 * ys + torch.tensor([1.0, 0.0], dtype=F64)
        expected = torch.stack([(dL_dy[i] * func(t[i], ys[i])).sum() for i in range(len(t))])
        # (the adjoint at t_0 before dL/dy_0 of the output y(t_0) = y0 itself is added)
        expected[0] = -((adjoint["y0"] - dL_dy[0]) * func(t[0], y0)).sum()
    assert torch.allclose(adjoint["t"], expected, rtol=1e-6, atol=1e-8)


def test_unused_parameter_grad_is_zero_tensor_after_backward():
    func = NeuralField()
    odeint_adjoint(func, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)).sum().backward()
    assert func.unused.grad is not None and torch.equal(func.unused.grad, torch.zeros(3, dtype=F64))
    assert func.net[0].weight.grad.abs().sum() > 0


def test_tuple_state_and_decreasing_time():
    class Rotation(nn.Module):
        def __init__(self):
            super().__init__()
            self.rate = nn.Parameter(torch.tensor(0.7, dtype=F64))

        def forward(self, t, state):
            x, v = state
            return v * self.rate, -x.reshape(v.shape) * self.rate

    # The direct reference is torchdiffeq's odeint, which (unlike odecli's) also differentiates w.r.t. t.
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = Rotation()
    t = torch.tensor([1.0, 0.5, -0.2], dtype=F64)
    results = []
    for solve in (odeint_adjoint, torchdiffeq.odeint):
        x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
        v0 = torch.tensor([0.5, -1.0], dtype=F64, requires_grad=True)
        tt = t.clone().requires_grad_(True)
        xs, vs = solve(func, (x0, v0), tt, rtol=1e-10, atol=1e-10)
        assert xs.shape == (3, 2) and vs.shape == (3, 2)
        loss = (xs**2).sum() + (vs * torch.arange(2, dtype=F64)).sum()
        results.append(torch.autograd.grad(loss, [x0, v0, tt, func.rate]))
    for a, d in zip(*results, strict=True):
        assert torch.allclose(a, d, rtol=1e-6, atol=1e-8)


class PlainField(nn.Module):
    """A float32 MLP vector field, as in a Neural-ODE training loop."""

    def __init__(self, hidden: int, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(scale)

    def forward(self, t, y):
        return self.net(y)


def _adjoint_nfe(func, y0, t, tol, adjoint_options):
    with track_stats() as stats:
        ys = odeint_adjoint(func, y0, t, rtol=tol, atol=tol, adjoint_options=adjoint_options)
        grads = torch.autograd.grad(ys.pow(2).mean(), list(func.parameters()))
    return stats, grads


def test_seminorm_lowers_backward_nfe_with_same_gradients():
    # Kidger et al. 2021: the parameter adjoint is an integral nothing depends on, so leaving it out
    # of the error norm lets the backward solve take larger steps. (On some problems the changed first
    # step costs a step instead, for torchdiffeq too, so this is one problem where it clearly helps.)
    func = PlainField(hidden=32)
    torch.manual_seed(1)
    y0, t = torch.randn(64, 2), torch.tensor([0.0, 5.0])
    default, grads_default = _adjoint_nfe(func, y0, t, 1e-6, None)
    semi, grads_semi = _adjoint_nfe(func, y0, t, 1e-6, {"norm": "seminorm"})
    assert semi.nfe_forward == default.nfe_forward
    assert 0 < semi.nfe_backward < default.nfe_backward, (semi, default)
    for a, b in zip(grads_default, grads_semi, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("hidden, t_end, scale, tol", [(32, 5.0, 1.0, 1e-6), (64, 5.0, 2.0, 1e-4)])
def test_seminorm_nfe_matches_torchdiffeq(hidden, t_end, scale, tol, capsys):
    """Measured NFE table (run with -s to print): odecli and torchdiffeq count the same work."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    torch.manual_seed(1)
    y0, t = torch.randn(64, 2), torch.tensor([0.0, t_end])
    for options in (None, {"norm": "seminorm"}):
        func = PlainField(hidden, scale)
        ours, _ = _adjoint_nfe(func, y0, t, tol, options)
        calls: list[int] = []
        func.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        ys = torchdiffeq.odeint_adjoint(func, y0, t, rtol=tol, atol=tol, adjoint_options=options)
        forward = len(calls)
        ys.pow(2).mean().backward()
        theirs = (forward, len(calls) - forward)
        with capsys.disabled():
            print(f"\nhidden={hidden} t_end={t_end} scale={scale} tol={tol:g} norm={'seminorm' if options else 'default'}: "
                  f"odecli nfe fwd/bwd {ours.nfe_forward}/{ours.nfe_backward}, torchdiffeq {theirs[0]}/{theirs[1]}")
        assert (ours.nfe_forward, ours.nfe_backward) == theirs


def test_backward_solves_are_counted_as_backward_not_forward():
    func = NeuralField()
    y0, t = torch.ones(2, dtype=F64), torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with track_stats() as forward_only:
        odeint(func, y0, t)
    with track_stats() as stats:
        odeint_adjoint(func, y0, t).sum().backward()
    assert stats.nfe_forward == forward_only.nfe_forward > 0
    assert stats.nfe_backward > 0 and stats.steps_backward > 0


def test_fixed_grid_adjoint_method():
    func = NeuralField()
    y0, t = torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    adjoint = _grads(odeint_adjoint, func, y0, t, method="rk4", options={"step_size": 0.01})
    direct = _grads(odeint, func, y0, t, method="rk4", options={"step_size": 0.01})
    direct.pop("unused")
    direct.pop("t")  # odecli's direct odeint does not differentiate w.r.t. t; gradcheck covers the adjoint's
    for name in direct:
        assert torch.allclose(adjoint[name], direct[name], rtol=1e-5, atol=1e-7), name


def test_plain_function_needs_adjoint_params():
    def decay(t, y):
        return -y

    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    with pytest.raises(InvalidInputError, match="adjoint_params"):
        odeint_adjoint(decay, y0, torch.tensor([0.0, 1.0], dtype=F64))
    (grad,) = torch.autograd.grad(odeint_adjoint(decay, y0, torch.tensor([0.0, 1.0], dtype=F64), adjoint_params=())[-1].sum(), y0)
    assert grad.item() == pytest.approx(torch.exp(torch.tensor(-1.0)).item(), rel=1e-6)


def test_explicit_adjoint_params_on_a_closure():
    rate = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=F64)
    y1 = odeint_adjoint(lambda t, y: -rate * y, y0, torch.tensor([0.0, 1.0], dtype=F64), adjoint_params=(rate,), rtol=1e-10, atol=1e-10)[-1]
    (grad,) = torch.autograd.grad(y1.sum(), rate)
    assert grad.item() == pytest.approx(-2.0 * torch.exp(torch.tensor(-0.5, dtype=F64)).item(), rel=1e-7)


def test_different_adjoint_method_with_options_needs_adjoint_options():
    with pytest.raises(InvalidInputError, match="adjoint_options"):
        odeint_adjoint(NeuralField(), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="rk4", options={"step_size": 0.1}, adjoint_method="dopri5")


def test_adjoint_callbacks_run_during_backward_only():
    calls = {"forward": 0, "backward": 0}

    class Field(NeuralField):
        def callback_step(self, t0, y0, dt):
            calls["forward"] += 1

        def callback_step_adjoint(self, t0, y0, dt):
            calls["backward"] += 1

    ys = odeint_adjoint(Field(), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    assert calls == {"forward": calls["forward"], "backward": 0} and calls["forward"] > 0
    ys.sum().backward()
    assert calls["backward"] > 0


def test_caller_options_are_not_modified():
    options, adjoint_options = {"first_step": 0.1}, {"norm": "seminorm"}
    ys = odeint_adjoint(NeuralField(), torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), options=options, adjoint_options=adjoint_options)
    ys.sum().backward()
    assert options == {"first_step": 0.1} and adjoint_options == {"norm": "seminorm"}


def _graph_size(tensor: torch.Tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def test_forward_keeps_no_graph_of_the_solver_steps():
    # O(1) memory in the number of steps: the graph is the same size however many steps were taken.
    func = NeuralField()
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    sizes = {}
    for tol in (1e-3, 1e-10):
        with track_stats() as stats:
            ys = odeint_adjoint(func, y0, t, rtol=tol, atol=tol)
        sizes[stats.nfe_forward] = _graph_size(ys)
    assert len(sizes) == 2 and len(set(sizes.values())) == 1, sizes
    assert _graph_size(odeint(func, y0, t, rtol=1e-10, atol=1e-10)) > 10 * next(iter(sizes.values()))


def test_custom_adjoint_norm_sees_the_users_tuple_structure():
    seen = []

    def norm(tensors):
        seen.append(tuple(x.shape for x in tensors))
        return max(x.abs().max() for x in tensors if x.numel())

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, dtype=F64))

        def forward(self, t, state):
            a, b = state
            return -a * self.w[0], -b * self.w[1]

    a0, b0 = torch.ones(2, dtype=F64), torch.ones(1, 3, dtype=F64)
    xs, ys = odeint_adjoint(Field(), (a0, b0), torch.tensor([0.0, 1.0], dtype=F64), adjoint_options={"norm": norm})
    (xs.sum() + ys.sum()).backward()
    # (t, *y, *adj_y, *adj_params), as torchdiffeq hands it over for tuple states
    assert seen and set(seen) == {((), (2,), (1, 3), (2,), (1, 3), (3,))}
