"""Property test: any value for a numeric setting either runs or fails with a clean message — never a traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from odecli.cli import app

TINY = ["dynamics=spiral", "iters=3", "eval_every=3", "plot_every=0", "checkpoint_every=3", "data.batch_size=4", "dynamics.n_points=100", "threads=1"]
# `threads` changes torch's process-wide thread pool, which is unsafe while other threads of this test process run
# torch (TensorBoard writers of earlier runs): it is exercised in a subprocess of its own below.
NUMERIC_KEYS = [
    "iters", "eval_every", "plot_every", "checkpoint_every", "seed",
    "data.batch_time", "data.batch_size", "data.noise", "data.extrapolate",
    "solver.tol", "solver.rtol", "solver.atol", "solver.step_size", "optim.lr",
    "dynamics.n_points", "dynamics.t_start", "dynamics.t_end",
]  # fmt: skip
values = st.one_of(
    st.integers(-3, 30),
    st.sampled_from([-1.0, 0.0, 1e-3, 0.25, 1.0, 10.0, 1e30]),
    st.sampled_from(["nan", "inf", "-inf", "abc", "null", "''", "[1,2]", "true"]),
)
CLEAN_PREFIXES = ("error:", "run failed:", "solver failed:")


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(NUMERIC_KEYS), value=values)
def test_a_numeric_override_runs_or_fails_cleanly(key: str, value: object, tmp_path: Path) -> None:
    if key in ("iters", "dynamics.n_points") and isinstance(value, int):
        value = min(value, 8)  # keep each example a few seconds
    if key.startswith("solver.") and isinstance(value, float) and 0 < value < 1e-2:
        value = 1e-2  # tight tolerances are valid but slow; their handling is the solver tests' business
    run_dir = tmp_path / f"run_{key}_{abs(hash(str(value)))}"
    result = CliRunner().invoke(app, ["fit", *TINY, f"{key}={value}", f"hydra.run.dir={run_dir}"])
    check_runs_or_fails_cleanly(result.exit_code, result.output, run_dir)


@pytest.mark.parametrize("threads", ["2", "null"])
def test_a_thread_count_runs_or_fails_cleanly(threads: str, tmp_path: Path) -> None:
    # A valid count changes torch's threads for the whole process: each such run gets a process of its own.
    run_dir = tmp_path / "run"
    args = ["fit", *TINY, f"threads={threads}", f"hydra.run.dir={run_dir}"]
    code = "import sys; from odecli.cli import app; app(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    check_runs_or_fails_cleanly(done.returncode, done.stdout + done.stderr, run_dir)


@pytest.mark.parametrize("threads", ["-1", "0", "1e30", "abc"])
def test_a_bad_thread_count_is_refused_before_torch_is_touched(threads: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["fit", *TINY, f"threads={threads}", f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 2, result.output
    check_runs_or_fails_cleanly(result.exit_code, result.output, run_dir)


def check_runs_or_fails_cleanly(exit_code: int, output: str, run_dir: Path) -> None:
    output = " ".join(output.split())
    assert "Traceback" not in output and "unexpected error" not in output, output
    if exit_code == 0:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and math.isfinite(metrics["val_mse"]), metrics
    else:
        assert exit_code in (1, 2), (exit_code, output)
        assert any(prefix in output for prefix in CLEAN_PREFIXES), output
