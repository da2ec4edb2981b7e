"""`odecli report`: a summary table of a sweep, including running and failed jobs."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odecli.cli import app
from odecli.report import find_runs
from odecli.tracking import DirectoryLock


def _job(root: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in [*overrides, "hydra.run.dir=x"]))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "sweep"
    _job(root, 0, ["solver=dopri5"], {"status": "completed", "val_mse": 0.01, "nfe_forward": 26.0, "wall_time_s": 3.0})
    _job(root, 1, ["solver=bosh3"], {"status": "failed", "error": "StepSizeTooSmall: at t=3", "wall_time_s": 1.0})
    _job(root, 2, ["solver=euler"], None)
    _job(root, 10, ["solver=rk4"], {"status": "completed", "val_mse": 0.02, "nfe_forward": 40.0, "wall_time_s": 2.0})
    (root / "3" / ".hydra").mkdir(parents=True)
    (root / "3" / "metrics.json").write_text("{not json")
    (root / "4" / ".hydra").mkdir(parents=True)  # a job that never started: not a run
    with DirectoryLock(root / "2", task="fit"):  # job 2 is still running
        yield root


def test_find_runs_orders_jobs_numerically_and_reads_status(sweep: Path) -> None:
    records = find_runs(sweep)
    assert [r.path.name for r in records] == ["0", "1", "2", "3", "10"]
    assert [r.status for r in records] == ["completed", "failed", "running", "unreadable", "completed"]
    assert records[0].overrides == ["solver=dopri5"]
    assert "StepSizeTooSmall" in records[1].error


def test_report_command_prints_table_and_writes_summary(sweep: Path) -> None:
    root = sweep
    result = CliRunner().invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert "2 completed" in result.output and "1 failed" in result.output and "1 running" in result.output
    with open(root / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5
    assert table[0]["val_mse"] == "0.01" and table[0]["overrides"] == "solver=dopri5"
    assert list(table[0])[:4] == ["run", "overrides", "status", "val_mse"]
    assert json.loads((root / "summary.json").read_text())[1]["status"] == "failed"


def test_report_on_missing_or_empty_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "No such directory" in missing.output
    empty = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert empty.exit_code == 2 and "No runs under" in empty.output


def test_report_on_a_run_that_wrote_its_own_summary_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "tol"
    _job(root, 0, ["solvers=[dopri5]"], {"status": "completed", "wall_time_s": 1.0})
    (root / "metrics.json").write_text(json.dumps({"status": "completed", "task": "sweep_tol"}))
    (root / "summary.csv").write_text("solver,tol\ndopri5,0.001\n")
    result = CliRunner().invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "summary.csv").read_text() == "solver,tol\ndopri5,0.001\n"
    assert (root / "report.csv").exists()


def test_report_defaults_to_the_output_directory(tmp_path: Path, monkeypatch) -> None:
    # `odecli report` with no argument summarises where runs go: $ODECLI_OUTPUT_DIR, else ./outputs.
    runs = tmp_path / "elsewhere"
    (runs / "fit" / "a").mkdir(parents=True)
    (runs / "fit" / "a" / "metrics.json").write_text(json.dumps({"status": "completed", "task": "fit", "val_mse": 0.5}))
    monkeypatch.setenv("ODECLI_OUTPUT_DIR", str(runs))
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    assert "1 completed" in result.output and (runs / "summary.csv").exists()
    monkeypatch.delenv("ODECLI_OUTPUT_DIR")
    monkeypatch.chdir(tmp_path)
    nothing = CliRunner().invoke(app, ["report"])
    assert nothing.exit_code == 2 and "No such directory: outputs" in " ".join(nothing.output.split())
