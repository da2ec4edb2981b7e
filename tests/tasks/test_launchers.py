"""Sweeps beyond one process: Hydra's Ray launcher (a local Ray, and a real Ray head on the loopback address),
submitit (locally, and the sbatch script a SLURM cluster would receive). Nothing leaves the machine: Ray is kept
to 127.0.0.1 and sends no usage statistics, and SLURM's sbatch is a stand-in that records its script.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from odecli import hydra_bridge
from odecli.hydra_bridge import JobError, JobFailure

# Copied from tests/tasks/test_sweep.py: a fit job that trains in a moment.
TINY_JOB = ["iters=2", "eval_every=2", "checkpoint_every=2", "plot_every=0", "data.batch_size=4", "dynamics=spiral", "dynamics.n_points=200", "threads=1"]
# Three jobs; the middle one gives its solver one step, so it fails while running (not when its settings are checked).
ONE_FAILS = "+solver.options.max_num_steps=10000,1,10000"


def needs_plugin(module: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(f"hydra_plugins.{module}") is None
    return pytest.mark.skipif(missing, reason=f"hydra_plugins.{module} is not installed: pip install -e '.[sweep]'")


def odecli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, as users run it (Ray and submitit keep state in the process that starts them)."""
    return subprocess.run([sys.executable, "-m", "odecli.cli", *args], capture_output=True, text=True, env=env or dict(os.environ), timeout=timeout)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_one_failed_two_completed(sweep_dir: Path, proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "1 job(s) failed (jobs 1)" in " ".join(output.split()) and "2 completed, 1 failed" in output, output
    metrics = [json.loads((sweep_dir / str(job) / "metrics.json").read_text()) for job in range(3)]
    assert [m["status"] for m in metrics] == ["completed", "failed", "completed"]
    assert metrics[1]["error"].startswith("MaxStepsExceeded") and "max_num_steps=1 " in metrics[1]["error"]
    for job in (0, 2):
        assert metrics[job]["iters"] == 2 and metrics[job]["val_mse"] >= 0 and metrics[job]["nfe_forward"] > 0
        assert (sweep_dir / str(job) / "checkpoints").is_dir() and (sweep_dir / str(job) / "tb").is_dir()
    rows = read_csv(sweep_dir / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]


def test_a_failed_jobs_error_that_cannot_be_unpickled_crosses_processes_as_job_error() -> None:
    """Launchers pickle job returns back to the sweep; an error whose __init__ wants more than its message would
    raise on unpickling there (Ray: RaySystemError, joblib: BrokenProcessPool) and stop every other job."""
    import pickle

    from odecli.solvers.errors import MaxStepsExceeded

    with pytest.raises(TypeError):  # the reason: this error type does not survive a pickle round trip by itself
        pickle.loads(pickle.dumps(MaxStepsExceeded(t=1.5, max_num_steps=1)))
    back = pickle.loads(pickle.dumps(JobFailure(MaxStepsExceeded(t=1.5, max_num_steps=1))))
    assert isinstance(back.error, JobError) and str(back.error).startswith("MaxStepsExceeded: Exceeded max_num_steps=1")
    plain = pickle.loads(pickle.dumps(JobFailure(ValueError("bad value"))))
    assert type(plain.error) is ValueError and str(plain.error) == "bad value"  # one that survives travels as itself


# ----- Ray ----------------------------------------------------------------------------------
def ray_env(tmp_path: Path) -> dict[str, str]:
    """Ray on loopback only, no usage statistics, token authentication with a token of this test's own
    (nothing written to ~/.ray), and the odecli under test importable by Ray's workers."""
    return {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's single-machine mode: every address is 127.0.0.1
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(hydra_bridge.__file__).parents[1]), os.environ.get("PYTHONPATH")])),
        "ODECLI_OUTPUT_DIR": str(tmp_path / "outputs"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def stop_ray(env: dict[str, str]) -> None:
    subprocess.run([ray_cli(), "stop", "--force"], capture_output=True, env=env, timeout=120)


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real Ray head on 127.0.0.1 (2 CPUs, no dashboard); its address and the environment to reach it."""
    env = ray_env(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    start = [ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={address.split(':')[1]}", "--num-cpus=2"]
    try:
        started = subprocess.run([*start, "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield address, env
    finally:
        stop_ray(env)


@pytest.mark.slow  # a Ray head (~10 s) and three jobs in fresh Ray workers importing torch: ~40 s on a shared 2-core machine
@needs_plugin("hydra_ray_launcher")
def test_multirun_on_a_ray_cluster_by_address_isolates_a_failing_job(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_head
    out = tmp_path / "sweep"
    proc = odecli("fit", "-m", ONE_FAILS, *TINY_JOB, "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}", f"hydra.sweep.dir={out}", env=env)
    output = proc.stdout + proc.stderr
    assert f"Connecting to existing Ray cluster at address: {address}" in output and "Started a local Ray instance" not in output, output
    assert "(_run_job pid=" in output  # the jobs' own output, forwarded by Ray from its workers
    assert_one_failed_two_completed(out, proc)
    listed = odecli("report", str(out), env=env)
    assert listed.returncode == 0 and "2 completed, 1 failed" in listed.stdout


@pytest.mark.slow  # a local Ray (~10 s) and two jobs in fresh workers: ~30 s on a shared 2-core machine
@needs_plugin("hydra_ray_launcher")
def test_sweep_on_a_local_ray_started_by_the_launcher(tmp_path: Path) -> None:
    env = ray_env(tmp_path)
    out = tmp_path / "sweep"
    try:
        proc = odecli("sweep", "solvers", "solver=dopri5,bosh3", "solver.tol=1e-3", *TINY_JOB, "hydra/launcher=ray", f"hydra.sweep.dir={out}", env=env)
    finally:
        stop_ray(env)  # the launcher leaves its Ray running until the CLI exits; make sure nothing is left behind
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Started a local Ray instance" in output, output
    rows = read_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert [json.loads((out / job / "metrics.json").read_text())["solver"] for job in ("0", "1")] == ["dopri5", "bosh3"]


def test_the_ray_launcher_is_told_to_leave_the_object_store_to_ray() -> None:
    """hydra-ray-launcher 1.2.2 would pass object_store_memory=75 MB to ray.init, which refuses it when joining a cluster."""
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("hydra_plugins.hydra_ray_launcher is not installed: pip install -e '.[sweep]'")
    chosen = ["hydra/launcher=ray", "hydra.launcher.ray.init.address=10.0.0.1:6379", "seed=0"]

    def launcher(overrides: list[str]) -> object:
        return hydra_bridge.compose("fit", overrides, with_hydra=True).hydra.launcher

    assert hydra_bridge.launcher_overrides(launcher(chosen)) == ["+hydra.launcher.ray.init.object_store_memory=null"]
    assert hydra_bridge.launcher_overrides(launcher([*chosen, "+hydra.launcher.ray.init.object_store_memory=100000000"])) == []
    assert hydra_bridge.launcher_overrides(launcher(["seed=0"])) == []  # the basic launcher needs nothing
    cfg = hydra_bridge.compose("fit", [*chosen[:2], "+hydra.launcher.ray.init.object_store_memory=null"], with_hydra=True)
    assert cfg.hydra.launcher.ray.init == {"address": "10.0.0.1:6379", "object_store_memory": None}


# ----- SLURM (submitit) ---------------------------------------------------------------------
SLURM_EXAMPLE = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.timeout_min=120",
    "hydra.launcher.gpus_per_node=1",
    "hydra.launcher.cpus_per_task=4",
    "hydra.launcher.mem_gb=16",
    "hydra.launcher.array_parallelism=2",
]


@needs_plugin("hydra_submitit_launcher")
def test_the_slurm_example_composes_to_the_documented_launcher_settings() -> None:
    cfg = hydra_bridge.compose("fit", ["seed=0", *SLURM_EXAMPLE], with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node, launcher.cpus_per_task) == ("gpu", 120, 1, 4)
    assert (launcher.mem_gb, launcher.array_parallelism, launcher.nodes, launcher.tasks_per_node) == (16, 2, 1, 1)
    assert launcher.submitit_folder.endswith("/.submitit/%j")


@needs_plugin("hydra_submitit_launcher")
def test_what_sbatch_receives_for_a_sweep(tmp_path: Path) -> None:
    """The real plugin and submitit write the batch script; a stand-in sbatch on PATH records it and refuses the job
    (submitit also looks for srun, which the script would call on the cluster)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch_script.sh"
    stand_ins = {"sbatch": f'cp "$1" {record}\necho "sbatch: error: this is a test machine" >&2', "srun": 'echo "srun: not here" >&2'}
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ODECLI_OUTPUT_DIR": str(tmp_path / "outputs")}
    out = tmp_path / "sweep"
    proc = odecli("fit", "-m", "seed=0,1,2", *TINY_JOB, *SLURM_EXAMPLE, f"hydra.sweep.dir={out}", env=env, timeout=120)
    assert proc.returncode != 0 and "sbatch" in proc.stdout + proc.stderr
    script = record.read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=120",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --array=0-2%2",  # three jobs, two at a time
        "#SBATCH --job-name=fit",
    ):
        assert line in script.splitlines(), f"{line!r} not in:\n{script}"
    assert f"{out}/.submitit/" in script and "submitit.core._submit" in script


@pytest.mark.slow  # three jobs, each a fresh process importing torch: ~40 s each on a shared 2-core machine
@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"], id="submitit_local", marks=needs_plugin("hydra_submitit_launcher")),
        pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], id="joblib", marks=needs_plugin("hydra_joblib_launcher")),
    ],
)
def test_a_local_launcher_runs_a_multirun_and_isolates_a_failing_job(launcher: list[str], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    env = {**os.environ, "ODECLI_OUTPUT_DIR": str(tmp_path / "outputs")}
    proc = odecli("fit", "-m", ONE_FAILS, *TINY_JOB, *launcher, f"hydra.sweep.dir={out}", env=env)
    assert_one_failed_two_completed(out, proc)
    if "submitit" in launcher[0]:
        assert (out / ".submitit").is_dir()

