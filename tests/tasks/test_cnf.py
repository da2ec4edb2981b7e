"""odecli cnf end to end: every density trains, evaluates against the truth, plots and resumes."""

from __future__ import annotations

import json
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
def test_every_density_trains_and_plots(data: str, tmp_path: Path) -> None:
    metrics = cnf(tmp_path / data, f"data={data}", *TINY)
    assert metrics["status"] == "completed" and metrics["data"] == data
    assert metrics["nll_test"] == pytest.approx(metrics["nll_test"])  # finite
    assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0
    assert ("nll_gap" in metrics) == (data == "8gaussians")
    for name in ("density.png", "flow.png"):
        assert (tmp_path / data / "plots" / name).stat().st_size > 5_000


def test_known_density_reports_entropy_and_gap(tmp_path: Path) -> None:
    metrics = cnf(tmp_path / "run", "data=8gaussians", *TINY)
    assert metrics["true_entropy"] == pytest.approx(2.83, abs=0.1)
    assert metrics["nll_gap"] == pytest.approx(metrics["nll_test"] - metrics["true_entropy"])


@pytest.mark.parametrize(
    "overrides",
    [["trace=hutchinson"], ["trace=hutchinson", "noise=gaussian"], ["model=planar_cnf"], ["regularize.kinetic=0.1", "regularize.jacobian=0.1"],
     ["solver.adjoint=true"], ["solver=rk4", "solver.step_size=0.25"]],
    ids=["hutchinson", "gaussian-noise", "planar", "regularized", "adjoint", "fixed-step"],
)
def test_options(overrides: list[str], tmp_path: Path) -> None:
    metrics = cnf(tmp_path / "run", *TINY, *overrides)
    assert metrics["status"] == "completed" and metrics["nll_test"] < 20


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
    import math

    from odecli.data import targets

    monkeypatch.setitem(targets.TARGETS, "gauss", lambda z: 0.5 * (z**2).sum(1))
    assert targets.log_normalizer("gauss") == pytest.approx(math.log(2 * math.pi), abs=1e-4)
    targets.log_normalizer.cache_clear()
