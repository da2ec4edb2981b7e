"""CNF maths: the exact trace equals autograd's Jacobian trace, Hutchinson's estimate is unbiased,
and log-likelihoods match the change-of-variables formula where it is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from odecli import odeint
from odecli.data.toy2d import eight_gaussians_log_prob, sample
from odecli.models.cnf import CNFDynamics, ConcatMLP, PlanarCNF, divergence_of, log_likelihood, standard_normal_log_prob


def _solve(func, y0, t, norm=None):
    return odeint(func, y0, t, rtol=1e-8, atol=1e-8, method="dopri5", options={"norm": norm} if norm else None)


@pytest.mark.parametrize("field", [ConcatMLP(widths=(16, 16)), PlanarCNF(width=4)], ids=["ffjord_mlp", "planar_cnf"])
def test_exact_trace_matches_the_full_jacobian(field: torch.nn.Module) -> None:
    torch.manual_seed(0)
    z = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    field = field.double()
    t = torch.tensor(0.3, dtype=torch.float64)
    divergence, _ = divergence_of(field(t, z), z, "exact", None)
    for i in range(len(z)):
        jacobian = torch.autograd.functional.jacobian(lambda x: field(t, x[None])[0], z[i].detach())
        assert divergence[i].item() == pytest.approx(torch.trace(jacobian).item(), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(noise: str) -> None:
    torch.manual_seed(1)
    field = ConcatMLP(widths=(16,)).double()
    z = torch.randn(1, 2, dtype=torch.float64).expand(20_000, 2).clone().requires_grad_(True)
    t = torch.tensor(0.5, dtype=torch.float64)
    dz = field(t, z)
    exact, _ = divergence_of(dz, z, "exact", None)
    dynamics = CNFDynamics(field, trace="hutchinson", noise=noise)
    dynamics.sample_noise(z.detach(), torch.Generator().manual_seed(2))
    estimates, _ = divergence_of(dz, z, "hutchinson", dynamics.noise)
    stderr = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - exact[0].item()) < 4 * stderr + 1e-12
    assert estimates.std().item() > 0  # it is an estimate, not the exact value in disguise


class Linear(torch.nn.Module):
    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = a

    def forward(self, t, z):
        return z @ self.a.T


def test_log_likelihood_of_a_linear_flow_is_the_change_of_variables_formula() -> None:
    a = torch.tensor([[-0.3, 0.8], [-0.5, 0.2]], dtype=torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64)
    log_p, _ = log_likelihood(CNFDynamics(Linear(a), trace="exact"), _solve, x)
    z1 = x @ torch.linalg.matrix_exp(a).T
    expected = standard_normal_log_prob(z1) + torch.trace(a)
    torch.testing.assert_close(log_p, expected, rtol=1e-6, atol=1e-6)


def test_regularisers_integrate_kinetic_energy() -> None:
    a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # rotation: ‖f‖² = ‖z‖² is constant
    x = torch.randn(4, 2, dtype=torch.float64)
    dynamics = CNFDynamics(Linear(a), trace="exact", regularize=True)
    dynamics.sample_noise(x, torch.Generator().manual_seed(0))
    _, (kinetic, jacobian) = log_likelihood(dynamics, _solve, x)
    torch.testing.assert_close(kinetic, (x**2).sum(-1), rtol=1e-6, atol=1e-6)
    noise = dynamics.noise
    torch.testing.assert_close(jacobian, ((noise @ a) ** 2).sum(-1), rtol=1e-6, atol=1e-6)


def test_eight_gaussians_density_is_normalised_and_matches_its_samples() -> None:
    axis = torch.linspace(-6, 6, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    mass = eight_gaussians_log_prob(grid).exp().sum() * (12 / 600) ** 2
    assert mass.item() == pytest.approx(1.0, abs=1e-4)
    x = sample("8gaussians", 20_000, seed=0).double()
    assert -eight_gaussians_log_prob(x).mean().item() == pytest.approx(2.83, abs=0.05)


def test_samples_are_reproducible_and_seeded() -> None:
    assert torch.equal(sample("moons", 100, seed=3), sample("moons", 100, seed=3))
    assert not torch.equal(sample("moons", 100, seed=3), sample("moons", 100, seed=4))
