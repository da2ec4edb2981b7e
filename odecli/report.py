"""Summaries of many runs: one row per run directory found under a sweep (or any) directory.

Works on sweeps that are still running or partly failed: a job directory with a composed config
but no ``metrics.json`` yet is reported as ``running`` (or ``killed`` if the sweep is over).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from odecli.errors import UserError
from odecli.tracking import METRICS_FILE, atomic_write_bytes, atomic_write_json

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


def find_runs(root: Path) -> list[RunRecord]:
    """Every run directory under ``root`` (a directory with ``.hydra/`` or ``metrics.json``), in job order."""
    if not root.is_dir():
        raise UserError(f"No such directory: {root}. Pass a sweep directory (printed at the end of a sweep) or a run directory.")
    candidates = {p.parent for p in root.rglob(METRICS_FILE)} | {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    records = [_read_run(path) for path in candidates]
    return sorted(records, key=lambda r: _job_sort_key(r.path.relative_to(root)))


def _job_sort_key(relative: Path) -> tuple[Any, ...]:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in relative.parts)


def _read_run(path: Path) -> RunRecord:
    overrides: list[str] = []
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        loaded = yaml.safe_load(overrides_file.read_text()) or []
        overrides = [str(o) for o in loaded if not str(o).lstrip("+~").startswith("hydra")]
    metrics_file = path / METRICS_FILE
    if not metrics_file.is_file():
        return RunRecord(path, overrides, status="running")
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return RunRecord(path, overrides, status="unreadable", error=f"{METRICS_FILE}: {exc}")
    return RunRecord(path, overrides, status=str(metrics.get("status", "unknown")), metrics=metrics, error=str(metrics.get("error", "")))


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
    stem = "report" if (root / METRICS_FILE).exists() or (root / ".hydra").is_dir() else "summary"
    csv_path, json_path = root / f"{stem}.csv", root / f"{stem}.json"
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    atomic_write_json(json_path, [dict(zip(header, row, strict=True)) for row in table])
    return csv_path, json_path
