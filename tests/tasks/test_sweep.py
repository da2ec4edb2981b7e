"""odecli sweep: the tolerance study (tiny grids) and generic Hydra multirun sweeps (failures, launchers)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from odecli import hydra_bridge
from odecli.cli import app
from odecli.errors import ConfigError
from odecli.solvers import odeint
from odecli.tasks.sweep_tol import (
    COLUMNS,
    Problem,
    Reference,
    load_field,
    measure,
    sweep_settings,
    tensorboard_steps,
    training_config,
)

runner = CliRunner()
# A fit field that trains in a moment: few iterations on a short trajectory.
TINY_FIT = ["iters=4", "eval_every=2", "plot_every=0", "checkpoint_every=2", "data.batch_size=4", "dynamics.n_points=200", "threads=1"]
TINY_TRAIN = ["train.iters=3", "train.eval_every=3", "train.checkpoint_every=3", "+train.data.batch_size=4", "dynamics.n_points=200"]
TINY_GRID = ["solvers=[dopri5,bosh3]", "tols=[1e-2,1e-5]", "repeats=1"]
REQUIRED = ["solver", "tol", "nfe_forward", "nfe_backward", "error", "grad_error", "wall_time_s"]


def sweep(*args: str):
    return runner.invoke(app, ["sweep", *args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ----- odecli sweep tol ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tol_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny default-path sweep (brief training, then 2 solvers × 2 tolerances), shared by the tests below."""
    out = tmp_path_factory.mktemp("sweep") / "tol"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ODECLI_OUTPUT_DIR", str(out.parent / "outputs"))
        result = sweep("tol", *TINY_GRID, *TINY_TRAIN, f"hydra.sweep.dir={out}")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_sweep_tol_tiny_grid_writes_table_summary_and_figures(tol_sweep: tuple[Path, str]) -> None:
    out, output = tol_sweep
    assert f"sweep directory: {out}" in output
    assert "tolerance sweep" in output and "backward/forward NFE" in output

    rows = read_csv(out / "summary.csv")
    assert list(rows[0])[: len(REQUIRED)] == REQUIRED
    assert [(r["solver"], float(r["tol"])) for r in rows] == [("dopri5", 1e-2), ("dopri5", 1e-5), ("bosh3", 1e-2), ("bosh3", 1e-5)]
    for solver in ("dopri5", "bosh3"):
        loose, tight = (r for r in rows if r["solver"] == solver)
        assert loose["status"] == tight["status"] == "completed"
        assert int(tight["nfe_forward"]) > int(loose["nfe_forward"])  # tighter tolerance: more evaluations ...
        assert float(tight["error"]) < float(loose["error"])  # ... and less error
        assert float(tight["grad_error"]) < 1e-2
        for key in ("nfe_backward_direct", "nfe_backward_adjoint", "nfe_backward_seminorm", "wall_time_s"):
            assert float(tight[key]) > 0
    assert len(json.loads((out / "summary.json").read_text())) == 4

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["task"] == "sweep_tol"
    assert metrics["nfe_ratio_adjoint"] > 0 and metrics["nfe_ratio_seminorm"] > 0 and metrics["nfe_ratio_direct"] > 0
    assert metrics["from_run"] == str(out / "train")  # the brief training is a fit run of its own
    assert json.loads((out / "train" / "metrics.json").read_text())["status"] == "completed"
    for name in ("nfe_vs_error", "nfe_vs_time", "backward_vs_forward_nfe", "nfe_over_training", "figure3"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5_000, name
    # TensorBoard: one run per solver and metric, so the solvers' curves overlay.
    assert (out / "tb" / "tol_nfe_forward_dopri5").is_dir() and (out / "tb" / "tol_nfe_forward_bosh3").is_dir()


def test_sweep_tol_from_a_fit_run_reads_its_checkpoint_and_training_curves(tol_sweep: tuple[Path, str], tmp_path: Path) -> None:
    fit_dir = tmp_path / "fit" / "10-00-00_iters=3,solver=bosh3"  # run directory names hold '=' and ','
    shutil.copytree(tol_sweep[0] / "train", fit_dir)
    out = tmp_path / "tol"
    result = sweep("tol", f"from_run={fit_dir}", "solvers=[tsit5]", "tols=[1e-3]", "repeats=1", "modes=[adjoint,seminorm]", f"hydra.sweep.dir={out}")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["from_run"] == str(fit_dir) and metrics["checkpoint_step"] == 3 and metrics["dynamics"] == "spiral"
    assert not (out / "train").exists()
    (row,) = read_csv(out / "summary.csv")
    assert row["nfe_backward_direct"] == "" and float(row["nfe_backward_seminorm"]) > 0
    assert (out / "plots" / "nfe_over_training.png").is_file()  # (d) from the fit run's TensorBoard events


def test_sweep_tol_explains_a_missing_or_wrong_from_run(tmp_path: Path) -> None:
    missing = sweep("tol", f"from_run={tmp_path / 'nope'}", f"hydra.sweep.dir={tmp_path / 'a'}")
    assert missing.exit_code == 2 and "there is no run directory" in missing.output
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoints"):
        load_field(tmp_path / "empty")


@pytest.mark.parametrize(
    ("override", "message"),
    [("solvers=[dopri55]", "Did you mean 'dopri5'"), ("solvers=[rk4]", "fixed step"), ("tols=[0.0]", "positive"), ("modes=[forward]", "modes")],
)
def test_sweep_tol_rejects_bad_settings(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep_settings(hydra_bridge.compose("sweep/tol", [override]))


def test_the_brief_training_is_fits_config_composed_with_the_sweeps_settings() -> None:
    """Without from_run, the field is trained with fit's config composed by Hydra: fit's own keys and defaults (its
    scheduler), the sweep's groups whole (spiral, nothing of fit's lotka_volterra), then train.* as fit overrides."""
    cfg = hydra_bridge.compose(
        "sweep/tol", ["train.iters=3", "+train.data.batch_size=4", "+train.loss=mse", "dynamics.n_points=200", "solver.tol=1e-5", "optim=rmsprop"]
    )
    fit = training_config(cfg)
    assert (fit.task, fit.iters, fit.eval_every, fit.data.batch_size, fit.loss) == ("fit", 3, 60, 4, "mse")  # train.* (sweep's defaults too)
    assert fit.data.batch_time == 10 and fit.plot_every == 0  # fit's own data settings kept beside train's data.batch_size
    assert (fit.dynamics.name, fit.dynamics.n_points, fit.dynamics.power) == ("spiral", 200, 3) and "form" not in fit.dynamics
    assert fit.solver.rtol == fit.solver.adjoint_atol == 1e-5  # the sweep's solver, its interpolations kept
    assert fit.optim._target_ == "torch.optim.RMSprop" and (fit.device, fit.threads) == ("cpu", 1)
    assert fit.scheduler._target_.endswith("CosineAnnealingLR") and fit.scheduler.T_max == 3  # fit's default, over train.iters
    with pytest.raises(ConfigError, match="Unknown config key 'lossy'"):  # a fit key misspelt under train.* is refused
        training_config(hydra_bridge.compose("sweep/tol", ["+train.lossy=mse"]))


def _spiral_problem() -> tuple[nn.Module, Problem, Reference]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    field = _Autonomous(model)
    problem = Problem(torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), torch.zeros(2, 1))
    solution = odeint(field, problem.y0, problem.t, rtol=1e-12, atol=1e-12, method="dopri5")
    solution.pow(2)[1:].mean().backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in field.parameters()])
    field.zero_grad(set_to_none=True)
    return field, problem, Reference(solution.detach(), gradient.detach())


class _Autonomous(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def test_measure_counts_and_compares_every_backward_mode() -> None:
    field, problem, reference = _spiral_problem()
    row = measure(field, problem, reference, "dopri5", 1e-7, repeats=3)
    assert set(COLUMNS) <= set(row) and row["status"] == "completed"
    assert row["nfe_forward"] == 6 * row["steps_accepted"] + 6 * row["steps_rejected"] + 2  # FSAL: 6 new stages per step
    for mode in ("direct", "adjoint", "seminorm"):
        assert row[f"nfe_backward_{mode}"] > 0
        assert row[f"grad_error_{mode}"] < 1e-4
    assert row["error"] < 1e-5 and row["nfe_backward"] == row["nfe_backward_adjoint"]


def test_measure_records_budget_limits_instead_of_failing() -> None:
    field, problem, reference = _spiral_problem()
    skipped = measure(field, problem, reference, "adaptive_heun", 1e-9, repeats=1, max_steps=10)
    assert skipped["status"] == "skipped" and "max_num_steps=10" in skipped["note"] and math.isnan(skipped["nfe_forward"])
    forward_only = measure(field, problem, reference, "dopri5", 1e-6, repeats=1, max_backward_nfe=1)
    assert forward_only["status"] == "completed" and forward_only["nfe_forward"] > 0
    assert math.isnan(forward_only["nfe_backward"]) and "budget.max_backward_nfe" in forward_only["note"]


def test_tensorboard_steps_are_tolerance_digits_when_possible() -> None:
    assert tensorboard_steps([1e-1, 1e-8]) == {1e-1: 1, 1e-8: 8}
    assert tensorboard_steps([1e-3, 3e-4, 1e-4]) == {1e-3: 0, 3e-4: 1, 1e-4: 2}


# ----- generic sweeps (Hydra multirun) ------------------------------------------------------
# Launcher and sweeper plugins come with the `sweep` extra (pip install -e '.[sweep]').
PLUGINS = {"parallel": "hydra_joblib_launcher", "cluster": "hydra_submitit_launcher", "optuna": "hydra_optuna_sweeper"}


def needs_plugin(module: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(f"hydra_plugins.{module}") is None
    return pytest.mark.skipif(missing, reason=f"hydra_plugins.{module} is not installed: pip install -e '.[sweep]'")


def _installed(sweep_name: str) -> bool:
    module = PLUGINS.get(sweep_name)
    return module is None or importlib.util.find_spec(f"hydra_plugins.{module}") is not None


TINY_JOB = ["iters=2", "eval_every=2", "checkpoint_every=2", "data.batch_size=4", "dynamics=spiral", "dynamics.n_points=200", "solver.tol=1e-3"]


def test_every_shipped_sweep_composes_as_documented() -> None:
    names = hydra_bridge.sweep_names()
    ours = {"tol", "solvers", "dynamics", "width", "parallel", "cluster", "optuna"}
    assert ours <= set(names)
    for name in filter(_installed, names):
        cfg = hydra_bridge.compose(f"sweep/{name}", [], with_hydra=True)
        if name in ours:
            assert hydra_bridge.is_multirun_config(cfg) == (name != "tol"), name
    if not _installed("cluster"):
        return
    cluster = hydra_bridge.compose("sweep/cluster", [], with_hydra=True)  # the tolerance study, a SLURM job per solver
    assert cluster.task == "sweep_tol" and cluster.hydra.sweeper.params.solvers.count("],[") == 6
    assert cluster.hydra.launcher._target_.endswith("SlurmLauncher") and cluster.hydra.launcher.timeout_min > 0


@pytest.mark.slow
def test_tolerance_study_split_into_one_job_per_solver(tol_sweep: tuple[Path, str], tmp_path: Path) -> None:
    """What `odecli sweep cluster` does on SLURM, here with the basic launcher: a job per solver, then the report."""
    out = tmp_path / "split"
    field = tol_sweep[0] / "train"
    result = sweep("tol", "hydra.mode=MULTIRUN", "solvers=[dopri5],[bosh3]", "tols=[1e-3]", "repeats=1", f"from_run={field}", f"hydra.sweep.dir={out}")
    assert result.exit_code == 0, result.output
    assert [read_csv(out / job / "summary.csv")[0]["solver"] for job in ("0", "1")] == ["dopri5", "bosh3"]
    jobs = read_csv(out / "summary.csv")
    assert [r["status"] for r in jobs] == ["completed", "completed"] and float(jobs[0]["nfe_ratio_adjoint"]) > 0


def test_generic_sweep_with_a_failing_job_finishes_the_others_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    # max_num_steps=1 makes job 0's solver fail; job 1 must still run.
    result = sweep("solvers", "solver=dopri5", "+solver.options.max_num_steps=1,10000", *TINY_JOB, f"hydra.sweep.dir={out}")
    assert result.exit_code == 1, result.output
    assert "1 job(s) failed" in result.output and "1 completed, 1 failed" in result.output
    rows = read_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["failed", "completed"]
    assert "MaxStepsExceeded" in rows[0]["error"] and float(rows[1]["val_mse"]) >= 0
    again = runner.invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and "1 completed, 1 failed" in again.output


@pytest.mark.slow  # two fresh worker processes importing torch: ~50 s on a busy 2-core machine
@needs_plugin("hydra_joblib_launcher")
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    out = tmp_path / "parallel"
    result = sweep("parallel", "solver=dopri5,bosh3", "solver.tol=1e-3", *TINY_JOB[:-1], f"hydra.sweep.dir={out}")
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert sorted(r["overrides"].split()[0] for r in rows) == ["solver=bosh3", "solver=dopri5"]
    assert len({r["metrics"] if "metrics" in r else r["run"] for r in rows}) == 2  # a run directory per job


@pytest.mark.slow
@needs_plugin("hydra_submitit_launcher")
def test_submitit_local_launcher_runs_the_same_code_path(tmp_path: Path) -> None:
    out = tmp_path / "submitit"
    result = sweep(
        "solvers", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "solver=dopri5,tsit5", *TINY_JOB, f"hydra.sweep.dir={out}"
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert (out / ".submitit").is_dir()


@pytest.mark.slow
@needs_plugin("hydra_optuna_sweeper")
def test_optuna_sweeper_minimises_validation_loss(tmp_path: Path) -> None:
    out = tmp_path / "optuna"
    result = sweep("optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", *TINY_JOB, f"hydra.sweep.dir={out}")
    assert result.exit_code == 0, result.output
    assert "best" in (out / "optimization_results.yaml").read_text()
    assert len([r for r in read_csv(out / "summary.csv") if r["status"] == "completed"]) == 2
