"""Run directories: unique even when started in the same second, named after the overrides, never overwritten,
locked against a second writer (stale locks of killed runs cleared), and only started runs count."""

from __future__ import annotations

import errno
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from odecli import hydra_bridge, tracking
from odecli.cli import app
from odecli.hydra_bridge import override_summary, unique_run_dir
from odecli.report import find_runs
from odecli.tracking import LOCK_FILE, DirectoryInUse, DirectoryLock, lock_holder, read_lock_record


def test_same_stem_gets_distinct_directories(tmp_path: Path) -> None:
    first = unique_run_dir(tmp_path, "12-00-00")
    second = unique_run_dir(tmp_path, "12-00-00")
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == "12-00-00_2"


def test_concurrent_runs_never_share(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        dirs = list(pool.map(lambda _: unique_run_dir(tmp_path, "12-00-00"), range(32)))
    assert len(set(dirs)) == 32


def test_override_summary_is_short_and_safe() -> None:
    summary = override_summary(["dynamics=lotka", "solver=dopri5", "hydra.run.dir=/x", "model.widths=[50,50]", "hydra/launcher=joblib"])
    assert summary.startswith("dynamics=lotka,solver=dopri5")
    assert "hydra" not in summary and "/" not in summary and "[" not in summary
    assert len(override_summary([f"key{i}=value{i}" for i in range(50)])) <= 48


# ----- a directory that holds a run is never overwritten ---------------------------------------
runner = CliRunner()
TINY_FIT = ["dynamics=spiral", "iters=2", "eval_every=1", "plot_every=0", "checkpoint_every=1", "data.batch_size=4",
            "dynamics.n_points=100", "threads=1"]  # fmt: skip


def _hold(directory: Path, locked: Any) -> None:
    DirectoryLock(directory, task="fit").acquire()
    locked.set()
    time.sleep(600)  # until killed


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def hold_lock(directory: Path) -> multiprocessing.Process:
    """Another process (forked: no second torch import) that holds ``directory``'s lock until killed."""
    context = multiprocessing.get_context("fork")
    locked = context.Event()
    proc = context.Process(target=_hold, args=(directory, locked), daemon=True)
    proc.start()
    assert locked.wait(60), "the holder did not take the lock"
    return proc


def test_a_second_run_into_a_finished_run_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    hydra_bridge.run("fit", [*TINY_FIT, f"hydra.run.dir={run_dir}"])
    before = snapshot(run_dir)
    assert "metrics.json" in before and LOCK_FILE in before

    result = runner.invoke(app, ["fit", *TINY_FIT, "iters=1", f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{run_dir} holds a completed fit run (metrics.json, 2 checkpoints)" in text and "resume=true" in text, text
    assert "── " not in result.output, "no config tree for a run that does not start"
    assert snapshot(run_dir) == before


def test_checkpoints_of_an_earlier_run_are_not_overwritten_either(tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    (run_dir / "checkpoints").mkdir(parents=True)  # killed before metrics.json, by a version without run.lock
    (run_dir / "checkpoints" / "ckpt_000000002.pt").write_bytes(b"weights")
    result = runner.invoke(app, ["fit", *TINY_FIT, f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 2, result.output
    assert f"{run_dir} holds 1 checkpoint of an earlier run; continue it with resume=true" in " ".join(result.output.split())
    assert snapshot(run_dir) == {"checkpoints/ckpt_000000002.pt": b"weights"}


def test_a_live_lock_refuses_a_second_writer_naming_its_pid(tmp_path: Path) -> None:
    run_dir = tmp_path / "busy"
    holder = hold_lock(run_dir)
    try:
        before = snapshot(run_dir)
        for extra in ([], ["resume=true"]):
            result = runner.invoke(app, ["fit", *TINY_FIT, *extra, f"hydra.run.dir={run_dir}"])
            assert result.exit_code == 2, result.output
            assert f"is in use by pid {holder.pid}" in " ".join(result.output.split()), result.output
        with pytest.raises(DirectoryInUse, match=f"pid {holder.pid}"):
            DirectoryLock(run_dir, task="fit").acquire()
        assert snapshot(run_dir) == before
        assert [r.status for r in find_runs(run_dir)] == ["running"]
    finally:
        holder.kill()
        holder.join()


def test_the_stale_lock_of_a_killed_run_is_detected_and_cleared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "killed"
    holder = hold_lock(run_dir)
    holder.kill()
    holder.join()
    assert [r.status for r in find_runs(run_dir)] == ["killed"]
    refused = runner.invoke(app, ["fit", *TINY_FIT, f"hydra.run.dir={run_dir}"])
    assert refused.exit_code == 2 and "holds a killed fit run (0 checkpoints)" in " ".join(refused.output.split()), refused.output

    with hydra_bridge.prepare("fit", [*TINY_FIT, "resume=true", f"hydra.run.dir={run_dir}"]) as launch:
        assert launch.directory == run_dir
        assert read_lock_record(run_dir)["pid"] == os.getpid()
    assert read_lock_record(run_dir)["pid"] is None, "released: nothing stale is left"
    assert f"cleared the stale lock of pid {holder.pid} (that fit run was killed)" in capsys.readouterr().out


def test_without_flock_a_recorded_live_pid_still_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(fd: int, operation: int) -> None:  # a cluster file system mounted without locks
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(tracking.fcntl, "flock", no_flock)
    live = DirectoryLock(tmp_path / "run", task="fit")
    live.acquire()
    with pytest.raises(DirectoryInUse, match="no file locks"):
        DirectoryLock(tmp_path / "run", task="fit").acquire()
    assert lock_holder(tmp_path / "run")["pid"] == os.getpid()
    live.release()
    assert lock_holder(tmp_path / "run") is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "run" / LOCK_FILE).write_text(f'{{"task": "fit", "pid": {dead}, "host": "{socket.gethostname()}"}}')
    assert DirectoryLock(tmp_path / "run", task="fit").acquire()["pid"] == int(dead)


def test_a_sweep_into_a_directory_holding_a_sweep_is_refused(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "0").mkdir(parents=True)
    (sweep_dir / "0" / "metrics.json").write_text('{"status": "completed", "task": "fit"}')
    before = snapshot(sweep_dir)
    result = runner.invoke(app, ["fit", "-m", "seed=0,1", *TINY_FIT, f"hydra.sweep.dir={sweep_dir}"])
    assert result.exit_code == 2, result.output
    assert f"{sweep_dir} holds a sweep already (1 run: 1 completed)" in " ".join(result.output.split()), result.output
    assert snapshot(sweep_dir) == before


def test_report_counts_only_directories_where_a_run_started(tmp_path: Path) -> None:
    never_started = tmp_path / "fit" / "12-00-00_iters=-5"
    (never_started / ".hydra").mkdir(parents=True)  # what a refused config left behind before runs were checked first
    assert find_runs(tmp_path) == []
    started = tmp_path / "fit" / "12-00-01"
    with DirectoryLock(started, task="fit"):
        assert [(r.path, r.status) for r in find_runs(tmp_path)] == [(started, "running")]
    assert [r.status for r in find_runs(tmp_path)] == ["failed"], "released without metrics.json: it ended without a result"
