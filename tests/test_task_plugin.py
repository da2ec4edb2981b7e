"""A training task added by a plugin (tests/task_plugin/: one module with its schema, and its config; nothing else) is
a command: it appears in `odecli --help` and `odecli list tasks`, runs, resumes, logs TensorBoard scalars and
metrics.json, and its schema checks and documents its settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odecli.cli import app

PLUGIN_DIR = Path(__file__).parent / "task_plugin"
runner = CliRunner()


@pytest.fixture
def decay_plugin(clean_registries: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin directory as third parties point odecli at theirs; the registries are restored afterwards."""
    monkeypatch.setenv("ODECLI_PLUGINS", str(PLUGIN_DIR))


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def scalar_steps(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_plugin_task_is_a_command_listed_with_its_help(decay_plugin: None) -> None:
    assert "Learn the rate of an exponential decay" in invoke("--help").output
    listing = " ".join(invoke("list", "tasks").output.split())
    assert "decay" in listing and "task_plugin" in listing  # the source names the plugin file
    help_text = invoke("decay", "--help").output
    assert "Examples:  odecli decay" in help_text and "--multirun" in help_text


def test_a_plugin_task_runs_logs_and_resumes_to_the_numbers_of_an_uninterrupted_run(decay_plugin: None, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    invoke("decay", f"hydra.run.dir={whole}")
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["loss_train_last"]) and metrics["nfe_forward"] > 0
    assert metrics["rate_error"] < 0.4 - 0.1, "six Adam steps move k from 0.1 towards 0.5"
    steps = scalar_steps(whole)
    for tag in ("loss/train", "nfe/forward", "nfe/backward", "time/step", "train/rate"):
        assert steps[tag] == [1, 2, 3, 4, 5, 6], tag
    assert steps["metrics/rate_error"] == [2, 4, 6]

    halves = tmp_path / "halves"  # 4 iterations, then resume=true with iters=6 (iters may change on resume)
    invoke("decay", "iters=4", f"hydra.run.dir={halves}")
    assert "continuing from step 4" in invoke("decay", "resume=true", f"hydra.run.dir={halves}").output
    resumed = json.loads((halves / "metrics.json").read_text())
    for key in ("loss_train_last", "rate_error", "rate", "nfe_forward", "nfe_backward"):
        assert resumed[key] == metrics[key], key
    assert scalar_steps(halves)["loss/train"] == [1, 2, 3, 4, 5, 6]


def test_a_plugin_tasks_schema_checks_and_documents_its_settings(decay_plugin: None, tmp_path: Path) -> None:
    result = runner.invoke(app, ["decay", "rate=-1", f"hydra.run.dir={tmp_path / 'refused'}"])
    assert result.exit_code == 2, result.output
    assert "rate must be positive (the decay's k), got -1" in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "refused").exists()
    wrong_type = runner.invoke(app, ["decay", "iters=many"])
    assert wrong_type.exit_code == 2 and "iters" in wrong_type.output, wrong_type.output
    keys = " ".join(invoke("config", "decay").output.split())
    assert "rate" in keys and "the true k of dy/dt" in keys and "checkpoint every N iterations" in keys


def test_a_plugin_tasks_config_places_its_groups_like_a_shipped_one(clean_registries: None, tmp_path: Path) -> None:
    """A plugin task whose defaults put a group at another package (density@data) gets the same `data=NAME`
    translation as cnf: packaged_groups reads the config the task registered, not only conf/NAME.yaml."""
    from odecli import hydra_bridge
    from odecli.registry import TASKS

    config = tmp_path / "flowlike.yaml"
    config.write_text("defaults:\n  - density@data: moons\n  - _self_\nseed: 0\n")
    TASKS.add(lambda cfg, run: {}, "flowlike_plugin_task", config=config, description="A plugin task with a density.")
    assert hydra_bridge.packaged_groups("flowlike_plugin_task") == {"data": "density"}
    assert hydra_bridge.packaged_groups("cnf") == {"data": "density"}  # the shipped config, read the same way
