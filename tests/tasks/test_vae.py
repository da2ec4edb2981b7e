"""odecli vae end to end: spirals, ECG and a user's CSV train, plot, report both models, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from odecli import hydra_bridge
from odecli.cli import app
from odecli.data.irregular import write_series_csv

TINY = ["iters=4", "batch_size=8", "eval_every=2", "checkpoint_every=2", "plot_series=2", "threads=1", "solver.tol=1e-2",
        "data.n_spirals=24", "data.n_times=20", "data.n_obs=8"]  # fmt: skip
TINY_ECG = ["data=ecg", "iters=3", "batch_size=4", "eval_every=3", "checkpoint_every=3", "plot_series=2", "threads=1", "solver.tol=1e-2",
            "data.n_records=1", "data.beats_per_record=6", "data.warmup_beats=1", "data.sampling_rate=128", "data.n_times=30", "data.n_obs=10"]  # fmt: skip
KEYS = ("status", "rmse_interp", "rmse_extrap", "rnn_rmse_interp", "rnn_rmse_extrap", "n_obs")


def vae(run_dir: Path, *overrides: str) -> dict:
    hydra_bridge.run("vae", [*overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def test_spirals_end_to_end(tmp_path: Path) -> None:
    metrics = vae(tmp_path / "run", *TINY)
    assert all(key in metrics for key in KEYS), sorted(metrics)
    assert metrics["status"] == "completed" and metrics["n_obs"] == 8 and metrics["data"] == "spirals"
    assert all(0 < metrics[key] < 20 for key in KEYS[1:5])
    assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0
    for name in ("reconstruction.png", "latent.png"):
        assert (tmp_path / "run" / "plots" / name).stat().st_size > 5_000
    tags = _tensorboard_tags(tmp_path / "run")
    assert {"loss/elbo", "loss/kl", "metrics/rmse_interp", "metrics/rmse_extrap", "metrics/rnn_rmse_interp",
            "metrics/rnn_rmse_extrap", "nfe/forward", "nfe/backward"} <= tags  # fmt: skip


def _tensorboard_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


# (the adjoint in a training run is fast-tier in tests/tasks/test_fit.py; vae's is slow tier)
@pytest.mark.parametrize("overrides", [pytest.param(["solver.adjoint=true"], marks=pytest.mark.slow), ["baseline=false", "model.decoder=mlp", "model.encoder=rnn",
                                       "kl_anneal_iters=3", "grad_clip=1.0", "solver=rk4", "solver.step_size=0.5"]],
                         ids=["adjoint", "no-baseline-mlp-decoder-annealed-fixed-step"])  # fmt: skip
def test_options(overrides: list[str], tmp_path: Path) -> None:
    metrics = vae(tmp_path / "run", *TINY, "plot_series=0", "logger=none", *overrides)
    assert metrics["status"] == "completed" and metrics["rmse_interp"] < 20
    assert ("rnn_rmse_interp" in metrics) == ("baseline=false" not in overrides)


def test_ecg_trains_and_draws_phase_portraits(tmp_path: Path) -> None:
    metrics = vae(tmp_path / "run", *TINY_ECG)
    assert metrics["status"] == "completed" and metrics["data"] == "ecg" and metrics["n_obs"] == 10
    assert metrics["rmse_interp"] < 5 and metrics["rnn_rmse_extrap"] < 5
    for name in ("reconstruction.png", "latent.png", "phase.png"):
        assert (tmp_path / "run" / "plots" / name).exists()


def _write_csv(path: Path, n: int = 12, missing: bool = True) -> Path:
    rng = np.random.default_rng(0)
    series = []
    for i in range(n):
        t = np.sort(rng.uniform(0, 20, size=rng.integers(10, 16)))
        x = np.stack([np.sin(0.5 * t + i), 10 + 3 * np.cos(0.5 * t + i)], axis=1)
        if missing:
            x[rng.random(x.shape) < 0.15] = np.nan
        series.append((f"unit{i}", t, x))
    return write_series_csv(path, series, ["level", "flow"])


def test_own_csv_trains(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "mine.csv")
    metrics = vae(tmp_path / "run", f"data.path={path}", "data=csv", *TINY[:6])
    assert metrics["status"] == "completed" and metrics["data"] == "mine" and metrics["series_test"] == 2
    assert metrics["rmse_interp"] > 0 and metrics["rnn_rmse_extrap"] > 0  # in the file's units
    assert (tmp_path / "run" / "plots" / "reconstruction.png").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [("series_id,t,x1\na,0,1\na,1,two\n", "bad.csv:3:")],  # every kind of malformed file: tests/data/test_irregular.py
    ids=["not-a-number"],
)
def test_bad_csv_exits_2_naming_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = CliRunner().invoke(app, ["vae", "data=csv", f"data.path={path}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


def test_csv_without_a_path_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["vae", "data=csv", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.exit_code == 2 and "data.path" in result.output


def test_data_of_another_task_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["vae", "data=moons", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.exit_code == 2 and "Unknown data 'moons'" in result.output and "spirals" in result.output
    assert "circles" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.slow  # the fast tier resumes fit (tests/test_kill_resume.py, which kills and resumes vae in the slow tier)
def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    quiet = [*TINY, "plot_series=0", "logger=none"]
    partial = tmp_path / "partial"
    reference = vae(partial, *quiet)  # uninterrupted
    for late in sorted((partial / "checkpoints").iterdir())[1:]:  # as if killed right after iteration 2
        late.unlink()
    (partial / "metrics.json").unlink()
    resumed = vae(partial, *quiet, "resume=true")
    for key in ("rmse_interp", "rmse_extrap", "rnn_rmse_interp", "rnn_rmse_extrap", "loss_train_last", "elbo_test", "nfe_forward", "nfe_backward"):
        assert resumed[key] == reference[key], key


def test_sweep_vae_obs_runs_each_n_with_both_models(tmp_path: Path) -> None:
    cfg = hydra_bridge.compose("sweep/vae_obs", with_hydra=True)
    assert str(cfg.hydra.sweeper.params["data.n_obs"]) == "30,50,100" and cfg.task == "vae" and cfg.baseline


@pytest.mark.slow
def test_sweep_vae_obs_prints_the_comparison(tmp_path: Path) -> None:
    tiny = [o for o in TINY if not o.startswith(("data.n_obs", "data.n_times"))] + ["data.n_times=100", "plot_series=0", "iters=2"]
    result = CliRunner().invoke(app, ["sweep", "vae_obs", *tiny, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert sorted(row["n_obs"] for row in summary) == [30, 50, 100]
    assert all(row["rnn_rmse_extrap"] != "" and row["rmse_interp"] != "" for row in summary)
