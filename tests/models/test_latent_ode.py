"""The latent ODE and the RNN baseline: batched solves at per-series times, masks, gradients, prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odecli.data.irregular import IrregularBatch
from odecli.models.latent_ode import GapRNN, LatentODE, solve_at
from odecli.registry import MODELS, load_all
from odecli.solvers import track_stats
from odecli.tasks.common import make_solve

pytestmark = pytest.mark.usefixtures("one_thread")


def solver(**settings) -> object:
    return make_solve({"method": "dopri5", "rtol": 1e-4, "atol": 1e-4, "adjoint": False, **settings})


def batch(seed: int = 0, n: int = 6, dim: int = 2, missing: float = 0.0) -> IrregularBatch:
    rng = np.random.default_rng(seed)
    times = [np.sort(rng.choice(np.linspace(0, 3, 40), size=rng.integers(4, 10), replace=False)) for _ in range(n)]
    values = [np.stack([np.cos(t + i) for i in range(dim)], axis=1) + 0.05 * rng.standard_normal((len(t), dim)) for t in times]
    for v in values:
        v[rng.random(v.shape) < missing] = np.nan
    return IrregularBatch.from_lists(times, values, dim)


def test_both_models_are_registered() -> None:
    load_all()
    assert MODELS.get("latent_ode") is LatentODE and MODELS.get("rnn_baseline") is GapRNN


def test_solve_at_matches_one_solve_per_series() -> None:
    torch.manual_seed(0)
    model = LatentODE(2)
    obs = batch()
    z0 = torch.randn(len(obs), 4)
    together = solve_at(solver(), model.field, z0, obs.t)
    for i in range(len(obs)):
        times = torch.cat([torch.zeros(1), obs.t[i]]).unique()
        alone = solver()(model.field, z0[i], times)
        k = 1 if float(obs.t[i, 0]) > 0 else 0
        torch.testing.assert_close(together[i, : len(times) - k], alone[k:][: len(times) - k], atol=2e-3, rtol=1e-3)


def test_missing_values_change_nothing() -> None:
    torch.manual_seed(0)
    obs = batch(missing=0.3)
    assert not obs.mask.all()
    scribbled = IrregularBatch(obs.t, obs.x + 100 * (1 - obs.mask), obs.mask)
    model, rnn = LatentODE(2), GapRNN(2)
    terms = model.elbo_terms(obs, solver(), 0.1, torch.Generator().manual_seed(1))
    again = model.elbo_terms(scribbled, solver(), 0.1, torch.Generator().manual_seed(1))
    for a, b in zip(terms, again, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(rnn.one_step_predictions(obs), rnn.one_step_predictions(scribbled))


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_elbo_gradient_reaches_the_vector_field(adjoint: bool) -> None:
    torch.manual_seed(0)
    model = LatentODE(2).double()
    obs = batch(n=4)
    obs = IrregularBatch(obs.t.double(), obs.x.double(), obs.mask.double())
    solve = solver(adjoint=adjoint, rtol=1e-8, atol=1e-8)
    with track_stats() as stats:
        log_likelihood, kl = model.elbo_terms(obs, solve, 0.1, torch.Generator().manual_seed(0))
        (kl - log_likelihood).mean().backward()
    grads = [p.grad for p in model.field.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is not None for p in model.encoder.parameters()) and stats.nfe_backward > 0
    if adjoint:  # the adjoint's gradient is the direct one, up to the tolerance
        direct = LatentODE(2).double()
        direct.load_state_dict(model.state_dict())
        log_likelihood, kl = direct.elbo_terms(obs, solver(rtol=1e-8, atol=1e-8), 0.1, torch.Generator().manual_seed(0))
        (kl - log_likelihood).mean().backward()
        by_adjoint = torch.cat([p.grad.flatten() for p in model.parameters()])
        by_backprop = torch.cat([p.grad.flatten() for p in direct.parameters()])
        assert float((by_adjoint - by_backprop).norm() / by_backprop.norm()) < 1e-4


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = LatentODE(2)
    obs = batch(n=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    solve = make_solve({"method": "rk4", "rtol": 1e-3, "atol": 1e-3, "step_size": 0.25})  # cheap and steady
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        log_likelihood, kl = model.elbo_terms(obs, solve, 0.1, generator)
        loss = (kl - log_likelihood).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_rnn_answers_queries_at_observed_times_as_its_one_step_predictions() -> None:
    torch.manual_seed(0)
    rnn = GapRNN(2)
    obs = batch()
    with torch.no_grad():
        one_step = rnn.one_step_predictions(obs)
        queried = rnn.predict(obs, obs.t)
    valid = obs.valid
    torch.testing.assert_close(queried[valid], one_step[valid])


def test_rnn_feedback_rolls_forward_past_the_data() -> None:
    torch.manual_seed(0)
    rnn = GapRNN(2)
    obs = batch()
    future = obs.t.max(1).values[:, None] + torch.tensor([0.5, 1.0, 1.5])
    with torch.no_grad():
        plain = rnn.predict(obs, future)
        rolled = rnn.predict(obs, future, feedback=torch.ones_like(future, dtype=torch.bool))
        shuffled = rnn.predict(obs, future.flip(1), feedback=torch.ones_like(future, dtype=torch.bool)).flip(1)
    torch.testing.assert_close(plain[:, 0], rolled[:, 0])  # the first future point has nothing fed back yet
    assert not torch.allclose(plain[:, 1:], rolled[:, 1:])
    torch.testing.assert_close(rolled, shuffled)  # queries are answered in time order, whatever their order


def test_latent_ode_predicts_at_any_times() -> None:
    torch.manual_seed(0)
    model = LatentODE(3, decoder="linear", encoder="rnn")
    obs = batch(dim=3)
    times = torch.rand(len(obs), 7) * 5
    with torch.no_grad():
        out = model.predict(obs, times, solver())
    assert out.shape == (len(obs), 7, 3) and torch.isfinite(out).all()
