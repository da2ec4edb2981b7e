"""odecli fit end to end: every dynamics trains, logs, plots and checkpoints (SIGKILL and resume: tests/test_kill_resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odecli import hydra_bridge
from odecli.registry import DYNAMICS, load_all

REPO = Path(__file__).resolve().parents[2]
# A few cheap iterations: enough to exercise every code path (eval, plots, checkpoints).
TINY = ["iters=4", "eval_every=2", "plot_every=0", "checkpoint_every=2", "data.batch_size=4", "dynamics.n_points=200", "threads=1"]


@pytest.fixture(autouse=True)
def _example_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODECLI_PLUGINS", str(REPO / "plugins"))
    load_all()


def fit(run_dir: Path, *overrides: str) -> dict:
    hydra_bridge.run("fit", [*overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "metrics.json").read_text())


def scalar_tags(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]} | {
        f"image:{tag}": [] for tag in events.Tags()["images"]
    }


def _all_dynamics() -> list[str]:
    """Every registered dynamics, the example plugin's included (its directory named here: the environment is left alone)."""
    load_all([REPO / "plugins"])
    return sorted(DYNAMICS.names())


ALL_DYNAMICS = _all_dynamics()


def test_the_example_plugins_dynamics_is_among_those_tested() -> None:
    """plugins/van_der_pol.py registers itself: a plugin that failed to load (a warning) would silently drop out of the list."""
    assert "van_der_pol" in ALL_DYNAMICS and DYNAMICS.entry("van_der_pol").source.endswith("van_der_pol.py")


# The default (lotka_volterra) and the example plugin's dynamics in the fast tier, the others slow (where
# test_defaults_learn_each_dynamics also trains each one to convergence).
FAST_DYNAMICS = {"lotka_volterra", "van_der_pol"}


@pytest.mark.parametrize("dynamics", [d if d in FAST_DYNAMICS else pytest.param(d, marks=pytest.mark.slow) for d in ALL_DYNAMICS])
def test_every_dynamics_trains_logs_and_plots(dynamics: str, tmp_path: Path) -> None:
    run_dir = tmp_path / dynamics
    metrics = fit(run_dir, f"dynamics={dynamics}", *TINY)
    assert metrics["status"] == "completed"
    assert metrics["iters"] == 4 and metrics["dynamics"] == dynamics
    assert 0 <= metrics["val_mse"] < float("inf")
    assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0
    for key in ("wall_time_s", "nfe_forward_last", "nfe_backward_last", "params"):
        assert key in metrics
    assert (run_dir / "plots" / "dynamics.png").stat().st_size > 10_000
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt_000000002.pt", "ckpt_000000004.pt"]
    tags = scalar_tags(run_dir)
    assert tags["loss/train"] == [1, 2, 3, 4]
    assert tags["nfe/forward"] == [1, 2, 3, 4] and tags["nfe/backward"] == [1, 2, 3, 4] and "time/step" in tags
    assert tags["loss/val"] == [0, 2, 4]
    assert "image:plots/fit/dynamics" in tags


def test_extrapolation_split_and_training_animation(tmp_path: Path) -> None:
    metrics = fit(tmp_path / "run", "dynamics=spiral", "data.extrapolate=0.25", "data.noise=0.01", *TINY, "plot_every=2", "gif=true")
    assert metrics["extrapolation_mse"] >= 0
    assert (tmp_path / "run" / "plots" / "training.gif").stat().st_size > 1000
    assert "loss/extrapolation" in scalar_tags(tmp_path / "run")


@pytest.mark.parametrize(
    "solver",
    [
        ["solver=rk4", "solver.step_size=0.05"],
        ["solver=bosh3", "solver.adjoint=true", "solver.adjoint_seminorm=true"],
        ["solver=implicit_adams", "solver.step_size=0.1"],
    ],
    ids=["fixed-step", "adjoint", "implicit_adams"],
)
def test_other_solvers_and_the_adjoint(solver: list[str], tmp_path: Path) -> None:
    metrics = fit(tmp_path / "run", "dynamics=spiral", *solver, *TINY)
    assert metrics["status"] == "completed" and metrics["nfe_backward"] > 0


def test_same_config_gives_same_metrics(tmp_path: Path) -> None:
    first = fit(tmp_path / "a", "dynamics=lotka", "data.noise=0.05", *TINY)
    second = fit(tmp_path / "b", "dynamics=lotka", "data.noise=0.05", *TINY)
    for key in ("val_mse", "loss_train_last", "nfe_forward", "nfe_backward"):
        assert first[key] == second[key]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_time=5000"], "data.batch_time=5000 is longer than"),
        (["resume=true"], "hydra.run.dir=<its directory>"),
        (["data.extrapolate=1.5"], "data.extrapolate"),
        (["dynamics=random_matrix", "dynamics.seed=0"], "has no usable trajectory"),
        (["loss=huber"], "loss must be one of l1, mse, got 'huber'. Example: loss=l1"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(overrides: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from odecli.cli import app

    result = CliRunner().invoke(app, ["fit", *overrides, "iters=2"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# The slow tier checks that the defaults actually learn: the validation error falls by a stated factor.
LEARNS = {"spiral": 20, "random_matrix": 20, "lotka_volterra": 20, "nonlinear": 20, "mlp": 20, "van_der_pol": 20}


@pytest.mark.slow
@pytest.mark.parametrize("dynamics", sorted(LEARNS))
def test_defaults_learn_each_dynamics(dynamics: str, tmp_path: Path) -> None:
    metrics = fit(tmp_path / "run", f"dynamics={dynamics}", "plot_every=0", "threads=1")
    first_val = scalar_tags_values(tmp_path / "run", "loss/val")[0]
    assert metrics["val_mse"] * LEARNS[dynamics] < first_val, (metrics["val_mse"], first_val)


def scalar_tags_values(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)]
