"""``batch_mode='independent'``: per-sample step control (each sample solves as if alone)."""

from __future__ import annotations

import pytest
import torch

from odecli.solvers import InvalidInputError, independent, odeint, odeint_adjoint, odeint_independent, track_stats
from odecli.solvers.controllers import CONTROLLERS, AbstractController
from odecli.solvers.errors import InvalidTimeGrid, MaxStepsExceeded
from odecli.tasks.common import ConfigError, make_solve
from tests.solvers.conftest import adaptive_explicit_methods

F64 = torch.float64
INDEPENDENT = {"batch_mode": "independent"}


def van_der_pol(mu: torch.Tensor):
    """A batch of Van der Pol oscillators, one μ per sample (state (B, 2))."""

    def field(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x**2) * v - x], dim=-1)

    return field


ADAPTIVE_EXPLICIT = adaptive_explicit_methods()


@pytest.mark.parametrize("controller", sorted(CONTROLLERS))
@pytest.mark.parametrize("method", ADAPTIVE_EXPLICIT)
def test_each_sample_takes_the_steps_it_takes_alone(method, controller):
    mu = torch.tensor([0.5, 2.0, 8.0], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.5, 0.5]], dtype=F64)
    t = torch.linspace(0, 4, 9, dtype=F64)
    options = {"controller": controller}
    # rtol 1e-4: every registered pair's error estimates stay far above the rounding of its stages (at 1e-6 dopri8's
    # first estimates are ~1e-11 of the tolerance, where rounding moves them 4x and the solutions 3e-7 apart), and
    # the second-order pairs take ~2500 steps, not ~25000. Measured agreement: 1e-10 (dopri8), 3e-13 (the others).
    batch, counts = odeint_independent(van_der_pol(mu), y0, t, rtol=1e-4, atol=1e-6, method=method, options=options, return_stats=True)
    assert batch.shape == (9, 3, 2)
    for b in range(3):
        with track_stats() as alone:
            solo = odeint(van_der_pol(mu[b : b + 1]), y0[b : b + 1], t, rtol=1e-4, atol=1e-6, method=method, options=options)
        torch.testing.assert_close(batch[:, b], solo[:, 0], rtol=1e-9, atol=1e-9)
        assert int(counts.steps_accepted[b]) == alone.steps_accepted
        assert int(counts.steps_rejected[b]) == alone.steps_rejected


def test_the_step_budget_stops_the_sample_that_spends_it():
    # mu = 1 reaches every output in a few steps; mu = 1000 is stiff for dopri5 and spends the budget of attempts
    # between two outputs (the joint loop's rule), so the error names its time, not the finished sample's.
    mu = torch.tensor([1.0, 1000.0], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=F64)
    t = torch.linspace(0, 10, 3, dtype=F64)
    with pytest.raises(MaxStepsExceeded) as caught:
        odeint_independent(van_der_pol(mu), y0, t, rtol=1e-6, atol=1e-8, options={"max_num_steps": 200})
    assert 0 < caught.value.t < 5  # stuck before its first output; sample 0 was done by then
    solution = odeint_independent(van_der_pol(mu[:1]), y0[:1], t, rtol=1e-6, atol=1e-8, options={"max_num_steps": 200})
    assert torch.isfinite(solution).all()


def test_parity_with_torchode_per_sample_dopri5():
    """torchode's per-sample control (Dopri5 + IntegralController) is the peer: same solution, same accepted steps per sample."""
    torchode = pytest.importorskip("torchode")
    mu = torch.logspace(0, 1, 6, dtype=F64)
    y0 = torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu)], dim=-1)
    t = torch.linspace(0, 10, 11, dtype=F64)
    tol = 1e-7
    ours, counts = odeint_independent(van_der_pol(mu), y0, t, rtol=tol, atol=tol, method="dopri5", return_stats=True)
    term = torchode.ODETerm(van_der_pol(mu))
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), torchode.IntegralController(atol=tol, rtol=tol, term=term))
    theirs = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t.expand(len(y0), -1)))
    torch.testing.assert_close(ours, theirs.ys.transpose(0, 1), rtol=0, atol=2e-5)  # both within ~global error of the truth
    # Same controller family, so the same step sequence up to the rejection fallback (which differs): ±2 steps each.
    assert (counts.steps_accepted - theirs.stats["n_accepted"].to(counts.steps_accepted)).abs().max() <= 2
    assert len(set(counts.steps_accepted.tolist())) > 3  # the samples really did take different numbers of steps


def test_mixed_stiffness_batch_needs_fewer_evaluations_than_joint():
    mu = torch.logspace(0, 1, 16, dtype=F64)  # μ from 1 to 10: relaxation spikes at different times
    y0 = torch.stack([torch.full((16,), 2.0, dtype=F64), torch.zeros(16, dtype=F64)], dim=-1)
    t = torch.linspace(0, 30, 31, dtype=F64)
    with track_stats() as joint:
        odeint(van_der_pol(mu), y0, t, rtol=1e-5, atol=1e-5)
    with track_stats() as independent:
        odeint(van_der_pol(mu), y0, t, rtol=1e-5, atol=1e-5, options=INDEPENDENT)
    assert independent.nfe_forward < 0.8 * joint.nfe_forward


def test_per_sample_time_grids_in_both_directions():
    rate = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    y0 = torch.tensor([[1.0], [2.0], [-1.0]], dtype=F64)
    t = torch.stack([torch.linspace(0, 3, 5, dtype=F64), torch.linspace(1, 2, 5, dtype=F64), torch.linspace(2, -1, 5, dtype=F64)])

    def field(time, y):
        assert time.shape == (3, 1)  # per-sample times, broadcastable against y
        return -rate[:, None] * y * time

    out = odeint(field, y0, t, rtol=1e-9, atol=1e-11, options=INDEPENDENT)
    exact = y0[None] * torch.exp(-rate[None, :, None] * (t.T[..., None] ** 2 - t.T[:1, :, None] ** 2) / 2)
    torch.testing.assert_close(out, exact, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("steps_per_chunk", [1, 3, 64])
def test_outputs_read_in_chunks_of_steps(monkeypatch, steps_per_chunk):
    # Outputs are read off the accepted steps in chunks (PendingOutputs): whatever the chunk, every one of many
    # outputs is there, from the step that covers it, and the same to the last bit.
    monkeypatch.setattr(independent, "PendingOutputs", type("Chunked", (independent.PendingOutputs,), {"MAX_STEPS": steps_per_chunk}))
    rate = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    y0 = torch.tensor([[1.0, -1.0], [2.0, 0.5], [-1.0, 3.0]], dtype=F64)
    t = torch.linspace(0, 3, 200, dtype=F64)
    out = odeint(lambda time, y: -rate[:, None] * y, y0, t, rtol=1e-8, atol=1e-10, options=INDEPENDENT)
    exact = y0[None] * torch.exp(-rate[None, :, None] * t[:, None, None])
    torch.testing.assert_close(out, exact, rtol=2e-7, atol=1e-9)
    monkeypatch.undo()
    assert torch.equal(out, odeint(lambda time, y: -rate[:, None] * y, y0, t, rtol=1e-8, atol=1e-10, options=INDEPENDENT))


def test_direct_backprop_through_independent_steps():
    rate = torch.tensor([0.3, 3.0], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=F64, requires_grad=True)
    t = torch.linspace(0, 2, 4, dtype=F64)

    def solve(y0, rate):
        return odeint(lambda time, y: -rate[:, None] * y, y0, t, rtol=1e-10, atol=1e-12, options=INDEPENDENT)

    with track_stats() as tracked:
        solve(y0, rate).sum().backward()
    assert tracked.nfe_backward > 0
    exact = torch.autograd.grad((y0[None] * torch.exp(-rate[None, :, None] * t[:, None, None])).sum(), (y0, rate))
    torch.testing.assert_close(y0.grad, exact[0], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(rate.grad, exact[1], rtol=1e-7, atol=1e-9)
    assert torch.autograd.gradcheck(solve, (y0.detach().requires_grad_(True), rate.detach().requires_grad_(True)), atol=1e-6, rtol=1e-5)


class ControllerWithoutPerSampleRule(AbstractController):
    def propose(self, h: float, error_ratio: float, accepted: bool) -> float:
        return h


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("rk4", {}, "fixed grid"),
        ("implicit_adams", {}, "not an explicit Runge-Kutta"),
        ("dopri5", {"jump_t": [0.5]}, "not supported"),
        ("dopri5", {"controller": ControllerWithoutPerSampleRule()}, "no per-sample rule"),
    ],
)
def test_unsupported_combinations_name_the_fix(method, options, message):
    y0 = torch.ones(2, 1, dtype=F64)
    with pytest.raises(InvalidInputError, match=message) as info:
        odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64), method=method, options={**INDEPENDENT, **options})
    assert "batch_mode='joint'" in str(info.value)


def test_bad_inputs_are_rejected():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(InvalidInputError, match="'joint', 'independent'"):
        odeint(lambda t, y: -y, torch.ones(2, dtype=F64), t, options={"batch_mode": "per_sample"})
    with pytest.raises(InvalidInputError, match="one tensor"):
        odeint(lambda t, y: y, (torch.ones(2, dtype=F64), torch.ones(2, dtype=F64)), t, options=INDEPENDENT)
    with pytest.raises(InvalidTimeGrid, match=r"\(batch=2, T\)"):
        odeint(lambda t, y: -y, torch.ones(2, 1, dtype=F64), torch.zeros(3, 2, dtype=F64), options=INDEPENDENT)
    with pytest.raises(InvalidInputError, match="batch_mode='joint' only"):
        odeint_adjoint(lambda t, y: -y, torch.ones(2, 1, dtype=F64), t, options=INDEPENDENT, adjoint_params=())
    # 'joint' is accepted explicitly and means today's behaviour.
    torch.testing.assert_close(odeint(lambda t, y: -y, torch.ones(2, dtype=F64), t, options={"batch_mode": "joint"}), odeint(lambda t, y: -y, torch.ones(2, dtype=F64), t))


def test_make_solve_batch_mode():
    base = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6, "step_size": None, "options": {}, "adjoint": False}
    y0 = torch.tensor([[1.0], [2.0]], dtype=F64)
    out = make_solve({**base, "batch_mode": "independent"})(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64))
    torch.testing.assert_close(out[-1], y0 * torch.exp(torch.tensor(-1.0, dtype=F64)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="joint or independent"):
        make_solve({**base, "batch_mode": "separate"})
    with pytest.raises(ConfigError, match="adjoint=false"):
        make_solve({**base, "batch_mode": "independent", "adjoint": True})
