"""Fault injection: runs survive kills, Ctrl-C, NaNs, solver failures and full disks, and say what went wrong.

Each test names the fault in docs/reliability.md. The SIGKILL-and-resume tests for every task are in
tests/test_kill_resume.py (fit's between-checkpoints kill in the fast tier, the rest slow).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from odecli import hydra_bridge, tracking
from odecli.cli import app
from odecli.tasks.common import restore_rng_state, rng_state, seed_everything
from odecli.tracking import Run

runner = CliRunner()
TINY_FIT = ["dynamics=spiral", "iters=6", "eval_every=3", "plot_every=0", "checkpoint_every=2", "data.batch_size=4",
            "dynamics.n_points=200", "threads=1"]  # fmt: skip


def fit(run_dir: Path, *overrides: str) -> dict:
    hydra_bridge.run("fit", [*TINY_FIT, *overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def invoke_fit(run_dir: Path, *overrides: str):
    return runner.invoke(app, ["fit", *TINY_FIT, *overrides, f"hydra.run.dir={run_dir}"])


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the process ended before {path.name} appeared"
        assert time.time() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.02)


# ----- checkpoints -----------------------------------------------------------------------------
KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from odecli import tracking
    run = tracking.Run(sys.argv[1], tensorboard=False)
    run.save_checkpoint({"weights": torch.ones(3)}, 1)

    def stalled_write(data):  # the second checkpoint's bytes stop half-way and the process is killed
        raise SystemExit("unreachable")

    real_fdopen = tracking.os.fdopen
    def fdopen(fd, mode):
        handle = real_fdopen(fd, mode)
        real_write = handle.write
        def write(data):
            real_write(data[: len(data) // 2]); handle.flush()
            print("writing", flush=True); time.sleep(600)
        handle.write = write
        return handle
    tracking.os.fdopen = fdopen
    run.save_checkpoint({"weights": torch.full((100000,), 2.0)}, 2)
    """
)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in checkpoints.glob("ckpt_*.pt")] == ["ckpt_000000001.pt"]
    assert list(checkpoints.glob(".ckpt_*.tmp")), "the killed writer's partial file is where it was cut off"

    run = Run(tmp_path, tensorboard=False)
    state = run.load_latest_checkpoint()
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert not list(checkpoints.glob(".ckpt_*.tmp")), "the partial file is cleaned up on the next load"


def test_truncated_latest_checkpoint_is_reported_and_the_previous_one_resumes(tmp_path: Path) -> None:
    reference = fit(tmp_path / "reference", "iters=8")
    run_dir = tmp_path / "damaged"
    fit(run_dir, "iters=8")  # keeps checkpoints 4, 6, 8
    latest = run_dir / "checkpoints" / "ckpt_000000008.pt"
    latest.write_bytes(latest.read_bytes()[:1000])

    result = invoke_fit(run_dir, "iters=8", "resume=true")
    assert result.exit_code == 0, result.output
    assert "ckpt_000000008.pt is corrupt" in result.output and "continuing from step 6" in result.output
    resumed = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val_mse", "loss_train_last", "nfe_forward"):
        assert resumed[key] == reference[key], key


class _RunsCodeWhenUnpickled:
    """A pickle payload that writes ``marker`` when loaded by a full (not weights-only) unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_checkpoint_carrying_code_is_refused_with_one_line_and_nothing_runs(tmp_path: Path) -> None:
    run_dir = tmp_path / "shared"
    fit(run_dir)  # a genuine run: checkpoints 2, 4, 6
    marker = tmp_path / "marker"
    crafted = run_dir / "checkpoints" / "ckpt_000000008.pt"
    torch.save({"step": 8, "state": {"model": _RunsCodeWhenUnpickled(marker)}}, crafted)
    completed = (run_dir / "metrics.json").read_bytes()

    result = invoke_fit(run_dir, "iters=10", "resume=true")
    assert result.exit_code == 2, result.output
    assert not marker.exists(), "resuming ran code from the checkpoint"
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"refusing checkpoint {crafted}: it refers to exec" in errors[0], errors[0]
    assert "move it out of" in errors[0] and "continuing from step" not in result.output
    # The completed run's metrics survive the failed resume; the attempt is recorded beside them.
    assert (run_dir / "metrics.json").read_bytes() == completed
    assert json.loads((run_dir / "metrics.failed_attempt.json").read_text())["status"] == "failed"


def test_a_checkpoint_of_the_old_format_is_refused_not_loaded(tmp_path: Path) -> None:
    run = Run(tmp_path, tensorboard=False)
    torch.save({"step": 1, "state": {"rng": np.random.get_state()}}, run.checkpoint_path(1))  # as checkpoints were before they held plain data only
    with pytest.raises(tracking.UnsafeCheckpoint, match=r"refusing checkpoint .*ckpt_000000001\.pt: it refers to numpy"):
        run.load_latest_checkpoint()


def test_checkpoints_hold_plain_data_only(tmp_path: Path) -> None:
    run = Run(tmp_path, tensorboard=False)
    with pytest.raises(TypeError, match=r"state\['log'\]\[0\]\['loss'\] is a numpy.float64"):
        run.save_checkpoint({"log": [{"loss": np.float64(1.0)}]}, 1)
    assert not run.checkpoints(), "nothing is written when the state is not plain"


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path) -> None:
    def draws() -> tuple:
        return random.random(), float(np.random.standard_normal()), float(torch.rand(()))  # standard_normal caches a gaussian

    seed_everything(7)
    draws()
    run = Run(tmp_path, tensorboard=False)
    run.save_checkpoint({"rng": rng_state()}, 1)
    expected = [draws() for _ in range(3)]
    seed_everything(123)  # anything else
    restore_rng_state(run.load_latest_checkpoint()["rng"])
    assert [draws() for _ in range(3)] == expected


# ----- Ctrl-C ----------------------------------------------------------------------------------
def test_ctrl_c_saves_a_checkpoint_writes_interrupted_and_exits_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    settings = [*TINY_FIT, "iters=100000", "checkpoint_every=1000", "eval_every=1000"]
    command = [sys.executable, "-m", "odecli.cli", "fit", *settings, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    _wait_for(run_dir / "tb", proc)
    time.sleep(3)  # some iterations in
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)  # a hang guard: with four agents sharing 2 cores, exiting took > 60 s after SIGINT
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    saved = Run(run_dir, tensorboard=False).load_latest_checkpoint()
    assert saved is not None and saved["step"] >= 1
    assert f"saving a checkpoint at iteration {saved['step']}" in output


# ----- NaN and Inf -----------------------------------------------------------------------------
def _nan_loss_at(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> None:
    """fit's L1 loss returns NaN on the given (1-based) training calls."""
    from odecli.tasks import fit as task

    real = task.LOSSES["l1"]
    calls = {"n": 0}

    def loss(pred, target):
        calls["n"] += 1
        value = real(pred, target)
        return value * float("nan") if calls["n"] in bad_calls else value

    monkeypatch.setitem(task.LOSSES, "l1", loss)


def test_nan_loss_stops_naming_the_iteration_and_keeps_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_loss_at(monkeypatch, {5})
    run_dir = tmp_path / "diverged"
    result = invoke_fit(run_dir)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "run failed: the loss became nan at iteration 5" in text and "optim.lr" in text and "solver.tol" in text, text
    assert "Traceback" not in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "TrainingDiverged" in metrics["error"]
    assert Run(run_dir, tensorboard=False).load_latest_checkpoint()["step"] == 4  # the last good one, intact


def test_nonfinite_skip_drops_the_bad_batch_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_loss_at(monkeypatch, {3})
    run_dir = tmp_path / "skipped"
    result = invoke_fit(run_dir, "nonfinite=skip")
    assert result.exit_code == 0, result.output
    assert "skipped batch" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["skipped_batches"] == 1 and metrics["val_mse"] == metrics["val_mse"]


def test_nonfinite_skip_gives_up_after_many_bad_batches_in_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_loss_at(monkeypatch, set(range(2, 100)))
    result = invoke_fit(tmp_path / "hopeless", "nonfinite=skip", "iters=20")
    assert result.exit_code == 1 and "10 batches in a row" in result.output, result.output


def test_nonfinite_solver_state_is_reported_like_a_nan_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from odecli.tasks import fit as task

    real_build = task.build_model
    calls = {"n": 0}

    def build_model(node, dim):  # a vector field that blows up part-way through training
        model = real_build(node, dim=dim)
        real_forward = model.forward

        def forward(t, y):
            calls["n"] += torch.is_grad_enabled()  # training solves only, not the evaluations
            out = real_forward(t, y)
            return out * float("inf") if calls["n"] > 100 else out

        model.forward = forward
        return model

    monkeypatch.setattr(task, "build_model", build_model)
    run_dir = tmp_path / "blown_up"
    result = invoke_fit(run_dir)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "run failed: the solver state" in text and "became nan at iteration" in text and "optim.lr" in text, text
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


def test_bad_nonfinite_policy_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke_fit(tmp_path / "x", "nonfinite=ignore")
    assert result.exit_code == 2 and "nonfinite must be one of stop, skip" in result.output, result.output


# ----- solver failures -------------------------------------------------------------------------
def test_solver_failure_in_a_task_says_where_and_what_to_try(tmp_path: Path) -> None:
    run_dir = tmp_path / "failed"
    result = invoke_fit(run_dir, "+solver.options.max_num_steps=1")
    assert result.exit_code == 1, result.output
    assert "solver failed" in result.output and "max_num_steps=1 at t=" in result.output
    assert "loosen rtol/atol" in result.output and "Traceback" not in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "MaxStepsExceeded" in metrics["error"]


# ----- file system -----------------------------------------------------------------------------
def test_unwritable_output_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the outputs should go")
    result = runner.invoke(app, ["fit", *TINY_FIT, f"paths.output_dir={blocker}/outputs"])
    assert result.exit_code == 2, result.output
    assert "cannot write" in result.output and "paths.output_dir" in result.output and "Traceback" not in result.output


def test_disk_full_while_checkpointing_fails_cleanly_and_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from odecli import tracking

    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:  # the first checkpoint fits; then the disk is full
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(tracking.os, "fsync", fsync)
    run_dir = tmp_path / "full"
    result = invoke_fit(run_dir)
    assert result.exit_code == 1, result.output
    assert "disk full" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt_000000002.pt"]
    assert not (run_dir / "metrics.json").exists(), "no metrics.json claims a result"
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.undo()
    assert Run(run_dir, tensorboard=False).load_latest_checkpoint()["step"] == 2


def test_two_sweeps_started_together_get_distinct_directories(tmp_path: Path) -> None:
    env = {**os.environ, "ODECLI_OUTPUT_DIR": str(tmp_path / "outputs"), "COLUMNS": "300"}
    command = [sys.executable, "-m", "odecli.cli", "fit", "-m", "seed=0,1", *TINY_FIT[:-1], "iters=2"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    sweeps = sorted((tmp_path / "outputs" / "fit" / "multirun").glob("*/*"))
    assert len(sweeps) == 2, sweeps
    for sweep in sweeps:
        statuses = [json.loads((sweep / job / "metrics.json").read_text())["status"] for job in ("0", "1")]
        assert statuses == ["completed", "completed"]
        for lock in (sweep / "sweep.lock", sweep / "0" / "run.lock", sweep / "1" / "run.lock"):  # each taken, then released
            record = json.loads(lock.read_text())
            assert record["task"] == "fit" and record["pid"] is None, (lock, record)


# ----- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["solver.tol=-1e-3"], "solver.rtol must be a positive number"),
        (["solver=rk4", "solver.step_size=0"], "solver.step_size must be a positive number"),
        (["dynamics.n_points=0"], "dynamics.n_points must be at least 2"),
        (["dynamics.t_end=-5"], "must be greater than dynamics.t_start"),
        (["data.batch_time=500"], "is longer than the 200 training points"),
        (["iters=abc"], "iters expects an integer"),
        (["iters=-3"], "iters must be an integer >= 1"),
        (["data.noise=-1"], "data.noise must be >= 0"),
        (["optim.lr=fast"], "optim.lr expects a number"),
        (["no_such_key=1"], "no_such_key"),
        (["solver=no_such_solver"], "no_such_solver"),
        (["dynamics=no_such_system"], "no_such_system"),
        (["threads=0"], "threads must be a positive integer"),
        (["device=tpu"], "device 'tpu'"),
        (["seed=null"], "seed cannot be null"),
    ],
)
def test_bad_values_exit_2_with_a_message_and_no_traceback(overrides: list[str], message: str, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = runner.invoke(app, ["fit", *TINY_FIT, *overrides, f"paths.output_dir={outputs}"])
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert_nothing_started(result.output, outputs)


def assert_nothing_started(output: str, outputs: Path) -> None:
    """A run refused for its settings: no run directory, no config tree, just the message."""
    assert not outputs.exists(), sorted(outputs.rglob("*"))
    assert "run directory" not in output and "── " not in output, output


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["classify", "epochs=0"], "epochs must be an integer >= 1"),
        (["vae", "data.n_obs=1"], "data.n_obs must be between 2"),
        (["cnf", "t1=-1"], "t1 (the flow's duration) must be positive"),
        (["sweep", "tol", "tols=[-1e-3]"], "tols must be a non-empty list of positive numbers"),
        (["sweep", "tol", "train.iters=0"], "iters must be an integer >= 1"),
        (["fit", "-m", "iters=2,-5"], "iters must be an integer >= 1, got -5"),
        (["sweep", "solvers", "threads=0"], "threads must be a positive integer"),
        (["classify", "model=rknet", "model.solver.method=dopri5"], "RK-Net integrates with a fixed step; 'dopri5' is adaptive"),
        (["classify", "model=rknet", "model.solver.adjoint=true"], "model.solver.adjoint must be false or checkpoint"),
        (["classify", "data.source=dir"], "data.source=dir needs data.dir=PATH"),
        (["vae", "data=csv"], "data.path is required: your own series"),
        (["classify", "model.channels=0"], "model.channels must be a positive integer"),
        (["classify", "+model.foo=1"], "model 'odenet' does not accept these settings"),
        (["fit", "+optim.foo=1"], "optim could not be built"),
        (["fit", "model.widths=[0]"], "model.widths must be a non-empty list of positive integers"),
        (["cnf", "model.widths=[0]"], "model.widths must be a non-empty list of positive integers"),
        (["classify", "model=mlp", "model.widths=[64,0]"], "model.widths must be a non-empty list of positive integers"),
        (["vae", "rnn.hidden=0"], "RNN hidden size must be positive"),
        (["cnf", "optim.lr=-1"], "optim.lr must be a positive number, got -1.0. Example: optim.lr="),
        (["vae", "+scheduler.bar=2"], "scheduler could not be built"),
    ],
)
def test_every_task_refuses_bad_values_before_creating_anything(command: list[str], message: str, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = runner.invoke(app, [*command, f"paths.output_dir={outputs}"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert_nothing_started(result.output, outputs)


BAD_SERIES = {  # case → (the file's content, what the message says)
    "series_bad_time": ("series_id,t,x1\na,0,1\na,zero,2\n", ":3: column t: 'zero' is not a number"),
    "series_bad_row": ("series_id,t,x1\na,0,1\na,1,2,3\n", ":3: expected 3 columns"),
    "series_too_few": ("series_id,t,x1\na,0,1\na,1,2\na,2,3\nb,0,1\n", "at least 2 are needed"),
}


@pytest.mark.parametrize("case", ["mnist_dir_missing", "mnist_file_missing", "mnist_truncated", "series_file_missing", *BAD_SERIES])
def test_bad_data_files_are_refused_before_creating_anything(case: str, tmp_path: Path) -> None:
    """Data the user supplies is checked with the run's settings: exit 2, one message, no run directory, no config tree."""
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    header = {"images": bytes.fromhex("00000803") + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2,
              "labels": bytes.fromhex("00000801") + (60000).to_bytes(4, "big")}  # fmt: skip
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist / name).write_bytes(header["images" if "images" in name else "labels"])  # headers only: truncated
    series = tmp_path / "series.csv"
    commands = {
        "mnist_dir_missing": (["classify", f"data.dir={tmp_path / 'nowhere'}"], "no such directory"),
        "mnist_file_missing": (["classify", f"data.dir={mnist}"], "missing t10k-labels-idx1-ubyte.gz"),
        "mnist_truncated": (["classify", f"data.dir={mnist}"], "train-images-idx3-ubyte: truncated"),
        "series_file_missing": (["vae", "data=csv", f"data.path={tmp_path / 'none.csv'}"], "none.csv: no such file"),
    }
    if case == "mnist_file_missing":
        (mnist / "t10k-labels-idx1-ubyte").unlink()
    if case in BAD_SERIES:
        content, message = BAD_SERIES[case]
        series.write_text(content)
        commands[case] = (["vae", "data=csv", f"data.path={series}"], message)
    command, message = commands[case]
    outputs = tmp_path / "outputs"
    result = runner.invoke(app, [*command, f"paths.output_dir={outputs}"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and result.output.count("error:") == 1, result.output
    assert_nothing_started(result.output, outputs)


def test_every_task_registers_its_value_checks() -> None:
    from odecli.registry import TASKS, load_all

    load_all()
    for name in TASKS.names():
        assert callable(TASKS.entry(name).meta.get("validate")), f"task {name} has no validate= check in TASKS.register"


def test_a_run_stopped_from_outside_is_interrupted_not_failed(tmp_path: Path) -> None:
    """A launcher cancelling a sweep (Ray on Ctrl-C) stops the job with SystemExit: the run is marked
    interrupted (resumable from its checkpoints), not failed with no error."""
    from odecli.registry import TASKS

    entry = TASKS.entry("fit")

    def stopped_mid_run(cfg, run):
        run.save_checkpoint({"model": {}}, 1)
        raise SystemExit(1)

    TASKS.remove("fit")
    TASKS.add(stopped_mid_run, "fit", aliases=entry.aliases, description=entry.description, defaults=entry.defaults, **entry.meta)
    try:
        run_dir = tmp_path / "stopped"
        result = runner.invoke(app, ["fit", *TINY_FIT, f"hydra.run.dir={run_dir}"])
    finally:
        TASKS.remove("fit")
        TASKS.add(entry.obj, "fit", aliases=entry.aliases, description=entry.description, defaults=entry.defaults, **entry.meta)
    assert result.exit_code != 0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
