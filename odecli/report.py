"""Summaries of many runs: one row per run directory found under a sweep (or any) directory.

A run is a directory in which odecli started a task: it holds ``metrics.json`` (the run ended) or
``run.lock`` (taken when the task starts). A directory a run never started in (a config error, a
refused directory) is not a run. Works on sweeps that are still running or partly failed: a job
without ``metrics.json`` is ``running`` while its process holds the lock, ``killed`` once it is gone.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from odecli.errors import UserError
from odecli.tracking import (
    CHECKPOINT_PREFIX,
    LOCK_FILE,
    METRICS_FILE,
    atomic_write_bytes,
    atomic_write_json,
    lock_holder,
    read_lock_record,
)

# Columns shown first when present; the rest follow alphabetically.
PREFERRED_COLUMNS = ("val_mse", "test_accuracy", "test_error", "nll_test", "n_obs", "rmse_interp", "rmse_extrap", "rnn_rmse_interp", "rnn_rmse_extrap",
                     "nfe_forward", "nfe_backward", "wall_time_s")  # fmt: skip
HIDDEN_COLUMNS = {"task", "run_dir", "status", "error"}


@dataclass
class RunRecord:
    """What one run directory says about itself."""

    path: Path
    overrides: list[str]
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def is_run(path: Path) -> bool:
    """Whether a task was started in ``path`` (see the module docstring)."""
    return (path / METRICS_FILE).is_file() or (path / LOCK_FILE).is_file()


def find_runs(root: Path) -> list[RunRecord]:
    """Every run under ``root`` (``root`` itself included), in job order."""
    if not root.is_dir():
        raise UserError(f"No such directory: {root}. Pass a sweep directory (printed at the end of a sweep) or a run directory.")
    candidates = {p.parent for name in (METRICS_FILE, LOCK_FILE) for p in root.rglob(name)}
    records = [_read_run(path) for path in candidates]
    return sorted(records, key=lambda r: _job_sort_key(r.path.relative_to(root)))


def describe_run(path: Path) -> str | None:
    """What ``path`` holds, e.g. 'a completed fit run (metrics.json, 3 checkpoints)'; None when it holds no run.

    Checkpoints alone count too (a run an older odecli started, killed before it wrote metrics.json).
    """
    checkpoints = len(list((path / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*.pt")))
    counted = f"{checkpoints} checkpoint{'' if checkpoints == 1 else 's'}"
    if not is_run(path):
        return f"{counted} of an earlier run" if checkpoints else None
    record = _read_run(path)
    task = record.metrics.get("task") or (read_lock_record(path) or {}).get("task")
    contents = [METRICS_FILE] if (path / METRICS_FILE).is_file() else []
    contents.append(counted)
    article = "an" if record.status[0] in "aeiou" else "a"
    return f"{article} {record.status} {task + ' ' if task else ''}run ({', '.join(contents)})"


def _job_sort_key(relative: Path) -> tuple[Any, ...]:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in relative.parts)


def as_typed(override: str) -> str:
    """An override as the user typed it: ``density@data=moons`` → ``data=moons`` (hydra_bridge.packaged_overrides adds the group)."""
    return re.sub(r"^([+~]?)[\w.]+@([\w.]+)=", r"\1\2=", override)


def _read_run(path: Path) -> RunRecord:
    overrides: list[str] = []
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        loaded = yaml.safe_load(overrides_file.read_text()) or []
        overrides = [as_typed(str(o)) for o in loaded if not str(o).lstrip("+~").startswith("hydra")]
    metrics_file = path / METRICS_FILE
    if not metrics_file.is_file():
        return RunRecord(path, overrides, status=_status_without_metrics(path))
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return RunRecord(path, overrides, status="unreadable", error=f"{METRICS_FILE}: {exc}")
    return RunRecord(path, overrides, status=str(metrics.get("status", "unknown")), metrics=metrics, error=str(metrics.get("error", "")))


def _status_without_metrics(path: Path) -> str:
    if lock_holder(path) is not None:
        return "running"
    if (read_lock_record(path) or {}).get("pid") is not None:
        return "killed"  # its process never released the lock
    return "failed"  # it ended, but could not write its metrics (e.g. a full disk)


def metric_columns(records: list[RunRecord]) -> list[str]:
    keys = {k for r in records for k, v in r.metrics.items() if k not in HIDDEN_COLUMNS and _scalar(v)}
    first = [k for k in PREFERRED_COLUMNS if k in keys]
    return first + sorted(keys - set(first))


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def rows(root: Path, records: list[RunRecord]) -> tuple[list[str], list[list[Any]]]:
    columns = metric_columns(records)
    header = ["run", "overrides", "status", *columns, "error"]
    table = [[str(r.path.relative_to(root)) or ".", " ".join(r.overrides), r.status, *(r.metrics.get(c, "") for c in columns), r.error] for r in records]
    return header, table


def write_summary(root: Path, records: list[RunRecord]) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.json`` in ``root``, written atomically.

    When ``root`` is itself a run (a sweep task such as ``sweep tol`` writes its own per-point
    ``summary.csv``), the report goes to ``report.csv`` / ``report.json`` instead of overwriting it.
    """
    header, table = rows(root, records)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(table)
    stem = "report" if is_run(root) else "summary"
    csv_path, json_path = root / f"{stem}.csv", root / f"{stem}.json"
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    atomic_write_json(json_path, [dict(zip(header, row, strict=True)) for row in table])
    return csv_path, json_path
