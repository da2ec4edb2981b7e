"""The step budget (``solver.max_num_steps``): a diverging run fails fast, and absurd fixed grids are refused before allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from typer.testing import CliRunner

from odecli.cli import app
from odecli.errors import ConfigError
from odecli.registry import SOLVERS
from odecli.solvers import MaxStepsExceeded, StepSizeTooSmall, odeint
from odecli.solvers.errors import GridTooLarge
from odecli.solvers.grid import MAX_GRID_STEPS
from odecli.solvers.problem import IgnoredOptionWarning
from odecli.tasks.common import SolverGaveUp, make_solve
from odecli.tasks.loop import TrainingLoop
from odecli.tracking import Run

runner = CliRunner()
TINY_FIT = ["dynamics=spiral", "iters=6", "eval_every=3", "plot_every=0", "checkpoint_every=1", "data.batch_size=4",
            "dynamics.n_points=200", "threads=1", "logger=none"]  # fmt: skip
ROTATION = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)


def solver_config(method: str, **changes: Any) -> dict[str, Any]:
    """A solver config as conf/solver/dopri5.yaml composes it, with ``changes``."""
    config = {"method": method, "rtol": 1e-6, "atol": 1e-6, "step_size": None, "max_num_steps": 10_000, "adjoint": False,
              "checkpoints": None, "batch_mode": "joint", "adjoint_seminorm": False, "options": {}}  # fmt: skip
    return {**config, **changes}


class Rotation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.matrix = nn.Parameter(ROTATION.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ self.matrix.T


# ----- every solve in a task is budgeted ----------------------------------------------------------
@pytest.mark.parametrize("method", SOLVERS.names())
def test_every_method_that_counts_steps_gets_the_budget(method: str) -> None:
    cls = SOLVERS.get(method)
    fixed_grid = not cls.adaptive
    solve = make_solve(solver_config(method, max_num_steps=1, step_size=0.01 if fixed_grid else None))
    y0, t = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 10.0], dtype=torch.float64)
    if "max_num_steps" not in cls.options:  # it cannot be budgeted, so it is not handed an option it would ignore
        with warnings.catch_warnings():
            warnings.simplefilter("error", IgnoredOptionWarning)
            assert torch.isfinite(solve(Rotation(), y0, t)).all()
    elif fixed_grid:
        with pytest.raises(ConfigError, match=r"1,000 steps in all, 1,000 of them .* more than solver\.max_num_steps=1\b"):
            solve(Rotation(), y0, t)
    else:
        with pytest.raises(MaxStepsExceeded, match=r"max_num_steps=1 "):
            solve(Rotation(), y0, t)


@pytest.mark.parametrize("adjoint,batch_mode", [(False, "independent"), ("checkpoint", "joint"), (True, "joint")])
def test_budget_reaches_checkpointed_adjoint_and_per_sample_solves(adjoint: Any, batch_mode: str) -> None:
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    with pytest.raises(MaxStepsExceeded, match="max_num_steps=3 "):
        make_solve(solver_config("dopri5", max_num_steps=3, adjoint=adjoint, batch_mode=batch_mode))(Rotation(), y0, t)
    assert torch.isfinite(make_solve(solver_config("dopri5", adjoint=adjoint, batch_mode=batch_mode))(Rotation(), y0, t)).all()


@pytest.mark.parametrize("seminorm", [False, True])
def test_the_adjoints_backward_solve_is_budgeted(seminorm: bool) -> None:
    # A loose forward solve passes the budget; the backward solve at 1e-12 needs far more steps than it.
    def config(budget: int) -> dict[str, Any]:
        return solver_config("dopri5", rtol=1e-3, atol=1e-3, adjoint=True, adjoint_rtol=1e-12, adjoint_atol=1e-12,
                             adjoint_seminorm=seminorm, max_num_steps=budget)  # fmt: skip

    y0, t = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = Rotation()
    solution = make_solve(config(20))(field, y0, t)
    with pytest.raises(MaxStepsExceeded, match="max_num_steps=20 "):
        solution[-1].sum().backward()
    make_solve(config(10_000))(field, y0, t)[-1].sum().backward()
    assert torch.isfinite(field.matrix.grad).all()


@pytest.mark.parametrize("value", [0, -5, 1.5, "many", True, None])
def test_budget_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"solver\.max_num_steps must be a positive integer.*Example: solver\.max_num_steps=100000"):
        make_solve(solver_config("dopri5", max_num_steps=value))


def test_budget_must_be_a_positive_integer_on_the_command_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fit", *TINY_FIT, "solver.max_num_steps=0", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.exit_code == 2, result.output
    assert "solver.max_num_steps must be a positive integer" in result.output and "Traceback" not in result.output


# ----- a diverging run fails fast ------------------------------------------------------------------
def test_diverging_run_stops_at_the_budget_and_keeps_its_last_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "diverged"
    result = runner.invoke(app, ["fit", *TINY_FIT, "optim.lr=1e9", "solver.max_num_steps=100", f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # whatever the console's width
    assert "run failed: at iteration " in output and "more than its step budget (max_num_steps=100" in output, output
    assert "Lower the learning rate (optim.lr=" in output and "raise solver.max_num_steps" in output and "Traceback" not in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "step budget" in metrics["error"]
    failed_at = int(metrics["error"].split("at iteration ")[1].split()[0])
    assert 1 < failed_at < 6
    kept = sorted(path.name for path in (run_dir / "checkpoints").glob("ckpt_*.pt"))
    assert kept == [f"ckpt_{i:09d}.pt" for i in range(1, failed_at)]  # nothing written for the failed iteration
    state = Run(run_dir, tensorboard=False).load_latest_checkpoint()
    assert state["step"] == failed_at - 1
    assert all(torch.isfinite(value).all() for value in state["model"].values())


def test_backward_solve_over_budget_ends_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "backward"
    overrides = ["solver.adjoint=true", "solver.tol=1e-3", "solver.adjoint_rtol=1e-12", "solver.adjoint_atol=1e-12", "solver.max_num_steps=20"]
    result = runner.invoke(app, ["fit", *TINY_FIT, *overrides, f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 1, result.output
    assert "at iteration 1 a solve needed more than its step budget (max_num_steps=20" in " ".join(result.output.split())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    "cause,expected",
    [
        (MaxStepsExceeded(0.25, 7), "at iteration 4 a solve needed more than its step budget (max_num_steps=7; it stopped at t=0.25)"),
        (StepSizeTooSmall(0.25, 1e-300, 0.0), "at iteration 4 the solver's step size fell to 1e-300 at t=0.25, too small to go on"),
    ],
)
def test_a_solver_giving_up_ends_the_run_even_when_nonfinite_batches_are_skipped(cause: Exception, expected: str) -> None:
    # Skipping is for NaN batches; a solve that gives up would spin as long on the next batch.
    cfg = OmegaConf.create({"optim": {"lr": 0.5}, "nonfinite": "skip"})
    loop = TrainingLoop(run=None, cfg=cfg, start=0, save=lambda iteration: None)
    with pytest.raises(SolverGaveUp) as stopped, loop.iteration(4):
        raise cause
    assert str(stopped.value).startswith(expected) and "Lower the learning rate (optim.lr=0.5; try a tenth)" in str(stopped.value)
    assert stopped.value.exit_code == 1 and loop.skipped == 0


@pytest.mark.slow
def test_the_issues_diverging_command_ends_within_a_minute(tmp_path: Path) -> None:
    """`odecli fit optim.lr=1e9 iters=5` (issue 16) hung for more than 5 minutes before the budget."""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "odecli.cli", "fit", "optim.lr=1e9", "iters=5", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    elapsed = time.monotonic() - began
    assert done.returncode == 1, done.stdout + done.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "step budget" in done.stderr or "became" in done.stderr, done.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


# ----- fixed grids are refused before allocation ---------------------------------------------------
FIXED_GRID_METHODS = [name for name in SOLVERS.names() if not SOLVERS.get(name).adaptive]


@pytest.mark.filterwarnings("ignore::odecli.solvers.adams.CorrectorDidNotConverge")  # implicit_adams at h = 0.125; not the point here
@pytest.mark.parametrize("method", FIXED_GRID_METHODS)
def test_fixed_grid_within_the_budget_runs_and_one_step_more_is_refused(method: str) -> None:
    y0, t = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    solution = odeint(lambda t, y: y @ ROTATION.T, y0, t, method=method, options={"step_size": 0.125, "max_num_steps": 4})
    assert solution.shape == (3, 2) and torch.isfinite(solution).all()
    with pytest.raises(GridTooLarge) as refused:
        odeint(lambda t, y: y @ ROTATION.T, y0, t, method=method, options={"step_size": 0.125, "max_num_steps": 3})
    assert (refused.value.total_steps, refused.value.widest_steps, refused.value.limit) == (8, 4, 3)
    assert "step_size=0.125 would take 8 steps in all, 4 of them between the output times t=0 and t=0.5: more than max_num_steps=3" in str(refused.value)


@pytest.mark.parametrize("method", FIXED_GRID_METHODS)
@pytest.mark.parametrize("reverse", [False, True])
def test_absurd_fixed_grid_is_refused_before_allocation(method: str, reverse: bool) -> None:
    # 10^10 steps: 40 GB of times in float32, refused in well under a second without touching memory.
    t = torch.linspace(0.0, 10.0, 1000)
    began = time.perf_counter()
    with pytest.raises(GridTooLarge) as refused:
        odeint(lambda t, y: -y, torch.ones(2), t.flip(0) if reverse else t, method=method, options={"step_size": 1e-9})
    assert time.perf_counter() - began < 1.0
    assert refused.value.total_steps == 10**10 and refused.value.limit == MAX_GRID_STEPS and not refused.value.per_interval
    assert f"would take 10,000,000,000 steps in all, more than the {MAX_GRID_STEPS:,} a fixed grid may hold" in str(refused.value)


def test_absurd_fixed_grid_on_the_command_line_is_a_config_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "grid"
    result = runner.invoke(app, ["fit", *TINY_FIT, "solver=rk4", "solver.step_size=1e-9", f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "error: solver.step_size=1e-09 would take 25,000,000,000 steps in all" in output, output
    assert "more than solver.max_num_steps=10,000. Use a larger solver.step_size, or raise solver.max_num_steps." in output
    assert "Traceback" not in output and "allocate" not in output
    assert not run_dir.exists(), "a run refused for its config leaves no directory behind"
    assert "config" not in result.output.split("error:")[0], "no config tree for a run that does not start"
