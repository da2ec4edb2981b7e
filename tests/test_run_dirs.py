"""Run directories: unique even when started in the same second, named after the overrides."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from odecli.hydra_bridge import override_summary, unique_run_dir


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
