"""odecli cnf end to end: every density trains, evaluates against the truth, plots and resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from odecli import hydra_bridge
from odecli.registry import DENSITIES, load_all

TINY = ["iters=4", "batch_size=32", "eval_every=2", "plot_every=0", "checkpoint_every=2", "test_samples=200",
        "entropy_samples=2000", "grid_points=12", "flow_frames=3", "threads=1", "solver.tol=1e-3"]  # fmt: skip


def cnf(run_dir: Path, *overrides: str) -> dict:
    hydra_bridge.run("cnf", [*overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def _densities() -> list[str]:
    load_all()
    return DENSITIES.names()


@pytest.mark.parametrize("data", _densities())
def test_every_density_draws_finite_spread_samples_reproducibly(data: str) -> None:
    import torch

    density = DENSITIES.get(data)
    first, again = (density.sample(500, torch.Generator().manual_seed(0)) for _ in range(2))
    assert first.shape == (500, 2) and bool(torch.isfinite(first).all()) and torch.equal(first, again)
    assert float(first.std(0).min()) > 0.1  # spread over the plane, not collapsed


# One training run per density: 8gaussians (the one with a known density) in the fast tier, the others slow.
@pytest.mark.parametrize("data", [d if d == "8gaussians" else pytest.param(d, marks=pytest.mark.slow) for d in _densities()])
def test_every_density_trains_and_plots(data: str, tmp_path: Path) -> None:
    metrics = cnf(tmp_path / data, f"data={data}", *TINY)
    assert metrics["status"] == "completed" and metrics["data"] == data
    assert math.isfinite(metrics["nll_test"]), metrics["nll_test"]
    assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0
    assert ("nll_gap" in metrics) == (data == "8gaussians")
    for name in ("density.png", "flow.png"):
        assert (tmp_path / data / "plots" / name).stat().st_size > 5_000


def _eight_gaussians_entropy_by_quadrature() -> float:
    """−∫ p log p over [−5, 5]² on an 801² grid (the mixture's mass outside is below 1e-9): 2.8319 nats."""
    import torch

    from odecli.data.toy2d import eight_gaussians_log_prob

    x = torch.linspace(-5.0, 5.0, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    log_p = eight_gaussians_log_prob(grid)
    return float(-(log_p.exp() * log_p).sum() * (x[1] - x[0]) ** 2)


def test_known_density_reports_entropy_and_gap(tmp_path: Path) -> None:
    """The true entropy (a Monte Carlo mean of −log p) agrees with quadrature within its standard error, and
    the test NLL (a cross-entropy) lies above it (Gibbs' inequality; 4 iterations leave the model far from p)."""
    metrics = cnf(tmp_path / "run", "data=8gaussians", *TINY)
    assert 0 < metrics["true_entropy_stderr"] < 0.05  # 2000 samples
    assert abs(metrics["true_entropy"] - _eight_gaussians_entropy_by_quadrature()) < 4 * metrics["true_entropy_stderr"], metrics
    assert metrics["nll_gap"] > 0.5, metrics


@pytest.mark.parametrize(
    "overrides",
    [["trace=hutchinson"], ["trace=hutchinson", "noise=gaussian"], ["model=planar_cnf"], ["regularize.kinetic=0.1", "regularize.jacobian=0.1"],
     ["solver.adjoint=true"], ["solver=rk4", "solver.step_size=0.25"]],
    ids=["hutchinson", "gaussian-noise", "planar", "regularized", "adjoint", "fixed-step"],
)
def test_options(overrides: list[str], tmp_path: Path) -> None:
    metrics = cnf(tmp_path / "run", *TINY, *overrides)
    assert metrics["status"] == "completed" and metrics["nll_test"] < 20


@pytest.mark.slow  # the fast tier resumes fit (tests/test_kill_resume.py, which kills and resumes cnf in the slow tier)
def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = cnf(tmp_path / "whole", *TINY)
    partial = tmp_path / "partial"
    cnf(partial, *TINY)
    for late in sorted((partial / "checkpoints").iterdir())[1:]:  # as if killed right after iteration 2
        late.unlink()
    (partial / "metrics.json").unlink()
    resumed = cnf(partial, *TINY, "resume=true")
    for key in ("nll_test", "loss_train_last", "nfe_forward", "nfe_backward"):
        assert resumed[key] == reference[key], key


def test_unknown_density_is_a_clear_error() -> None:
    from typer.testing import CliRunner

    from odecli.cli import app

    result = CliRunner().invoke(app, ["cnf", "data=mooons"])
    assert result.exit_code == 2 and "moons" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("model", ["ffjord_mlp", "planar_cnf", "planar_nf"])
def test_density_matching_reports_a_true_kl(model: str, tmp_path: Path) -> None:
    metrics = cnf(tmp_path / "run", "objective=kl", "target=u2", f"model={model}", *TINY)
    assert metrics["status"] == "completed" and metrics["objective"] == "kl"
    assert -0.05 < metrics["kl"] < 50  # a KL divergence: never (much) below zero
    assert (tmp_path / "run" / "plots" / "matching.png").exists()


def test_planar_nf_needs_the_kl_objective() -> None:
    from typer.testing import CliRunner

    from odecli.cli import app

    result = CliRunner().invoke(app, ["cnf", "model=planar_nf", "iters=1"])
    assert result.exit_code == 2 and "objective=kl" in result.output


def test_log_normalizer_of_a_gaussian_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    from odecli.data import targets

    monkeypatch.setitem(targets.TARGETS, "gauss", lambda z: 0.5 * (z**2).sum(1))
    assert targets.log_normalizer("gauss") == pytest.approx(math.log(2 * math.pi), abs=1e-4)
    targets.log_normalizer.cache_clear()
