"""The odecli command line: help, listing, config inspection, and clean errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odecli import __version__
from odecli.cli import app

runner = CliRunner()
COMMANDS = ["fit", "classify", "vae", "cnf", "sweep", "report", "list", "config", "board"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Examples" in result.output


def test_unknown_command_exits_2_with_suggestion() -> None:
    result = invoke("fitt")
    assert result.exit_code == 2
    assert "fit" in result.output


@pytest.mark.parametrize("kind", ["dynamics", "solvers", "models", "tasks", "sweeps"])
def test_list_kind(kind: str) -> None:
    result = invoke("list", kind)
    assert result.exit_code == 0, result.output
    assert kind in result.output


def test_list_all_shows_every_kind_and_sources() -> None:
    result = invoke("list")
    assert result.exit_code == 0
    for kind in ("dynamics", "solvers", "models", "tasks", "sweeps"):
        assert kind in result.output


def test_list_unknown_kind() -> None:
    result = invoke("list", "solver")
    assert result.exit_code == 2
    assert "Did you mean 'solvers'" in result.output


def test_config_prints_tree_and_yaml() -> None:
    tree = invoke("config", "fit", "dynamics=lotka", "solver=dopri5")
    assert tree.exit_code == 0, tree.output
    assert "dynamics" in tree.output and "dopri5" in tree.output
    yaml = invoke("config", "fit", "solver=rk4", "--yaml")
    assert yaml.exit_code == 0, yaml.output
    assert "method: rk4" in yaml.output


def test_config_tol_sets_rtol_and_atol() -> None:
    result = invoke("config", "fit", "solver.tol=1e-4", "--yaml")
    assert result.exit_code == 0, result.output
    assert "rtol: 0.0001" in result.output and "atol: 0.0001" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "dynamics=lotkaa"], ["Unknown dynamics 'lotkaa'", "Did you mean 'lotka'", "spiral"]),
        (["fit", "solver=dopri55"], ["Unknown solver 'dopri55'", "dopri5"]),
        (["fit", "solver.rtol=abc"], ["solver.rtol expects a number", "'abc'"]),
        (["fit", "iters=many"], ["iters expects an integer"]),
        (["fit", "solvr.rtol=1e-3"], ["Unknown config key 'solvr.rtol'", "Did you mean 'solver.rtol'"]),
        (["fit", "seed=="], ["Cannot parse override"]),
        (["config", "fitt"], ["Unknown task 'fitt'", "Did you mean 'fit'"]),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(args: list[str], expected: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output, result.output
    assert "Traceback" not in result.output


def test_bad_override_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "ODECLI_OUTPUT_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "odecli.cli", "fit", "dynamics=nope"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Unknown dynamics 'nope'" in proc.stderr and "lotka_volterra" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "fit").exists(), "a rejected run must not create a run directory"


def test_debug_flag_shows_traceback() -> None:
    result = invoke("fit", "dynamics=nope", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.output and "Unknown dynamics 'nope'" in result.output, result.output


def test_board_refuses_missing_logdir(tmp_path: Path) -> None:
    result = invoke("board", "--logdir", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "No such directory" in result.output


def test_a_command_whose_task_is_not_registered_says_so_and_fails(clean_registries: None) -> None:
    from odecli.registry import TASKS, load_all

    load_all()
    task = next(name for name in TASKS.names() if name in COMMANDS)
    TASKS.remove(task)
    result = invoke(task)
    assert result.exit_code == 1
    assert "not available yet" in result.output


# ----- output that survives pipes: nothing hard-wrapped when stdout/stderr is not a terminal ----------
def piped(*args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """odecli in a real process with stdout and stderr piped (as under `| grep`, `tee` or a job log)."""
    terminal_hints = ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")
    env = {key: value for key, value in os.environ.items() if key not in terminal_hints}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "odecli.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_list_in_a_pipe_keeps_every_description_on_one_line() -> None:
    from odecli.registry import SOLVERS, load_all

    load_all()
    proc = piped("list", "solvers")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for entry in SOLVERS.entries():
        assert any(entry.description in line for line in lines), f"{entry.name}'s description is broken across lines:\n{proc.stdout}"


def test_list_in_a_pipe_honours_columns() -> None:
    from odecli.registry import SOLVERS, load_all

    load_all()
    proc = piped("list", "solvers", columns=80)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) == 80, proc.stdout  # filled, not exceeded
    assert all(name in proc.stdout for name in SOLVERS.names())


def test_report_in_a_pipe_keeps_a_long_cell_on_one_line(tmp_path: Path) -> None:
    run = tmp_path / "sweep" / "0"
    (run / ".hydra").mkdir(parents=True)
    long_override = "data.dir=" + "/a-much-longer-directory-name-than-usual" * 6
    (run / ".hydra" / "overrides.yaml").write_text(f"- {long_override}\n")
    (run / "metrics.json").write_text('{"status": "completed", "val_mse": 0.01, "wall_time_s": 3.0}')
    proc = piped("report", str(tmp_path / "sweep"))
    assert proc.returncode == 0, proc.stderr
    assert any(long_override in line and "completed" in line for line in proc.stdout.splitlines()), proc.stdout


def test_an_error_in_a_pipe_is_one_line_even_with_narrow_columns(tmp_path: Path) -> None:
    proc = piped("report", str(tmp_path / ("a-much-longer-directory-name-than-usual-" * 4)), columns=40)
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith("error: No such directory") and line.endswith("or a run directory."), proc.stderr


def test_a_usage_error_in_a_pipe_is_one_unboxed_line() -> None:
    unknown = "--an-option-nobody-defined-" + "with-a-much-longer-name-than-usual-" * 3
    proc = piped("list", unknown)
    assert proc.returncode == 2
    assert f"Error: No such option: {unknown}" in proc.stderr.splitlines(), proc.stderr


def test_an_error_quoting_brackets_is_printed_as_it_is(tmp_path: Path) -> None:
    """Paths and values in messages are text, not rich markup: `[draft]` must not vanish as a style tag."""
    missing = tmp_path / "[draft] runs" / "[b]"
    result = invoke("report", str(missing))
    assert result.exit_code == 2
    assert f"No such directory: {missing}." in result.output, result.output


def test_a_run_directory_with_brackets_is_printed_as_it_is(tmp_path: Path) -> None:
    run_dir = tmp_path / "[draft] run"
    # A tiny fit run: two iterations, no plots.
    tiny = ["dynamics=spiral", "iters=2", "eval_every=2", "plot_every=0", "checkpoint_every=2", "data.batch_size=2", "dynamics.n_points=50", "threads=1"]
    result = invoke("fit", *tiny, f"hydra.run.dir='{run_dir}'")
    assert result.exit_code == 0, result.output
    assert f"run directory: {run_dir}" in result.output, result.output
