"""The schemas (odecli/schemas.py): every key typed and documented, bad values refused at composition, plugins' own keys kept."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from odecli import hydra_bridge
from odecli.cli import app
from odecli.errors import ConfigError
from odecli.registry import DYNAMICS, load_all
from odecli.schemas import documented_keys
from odecli.tasks.common import make_solve

load_all()
TASK_CONFIGS = [*hydra_bridge.primary_configs(), "sweep/tol"]


@pytest.mark.parametrize("config_name", TASK_CONFIGS)
def test_every_key_of_a_task_config_has_a_type_and_a_doc_line(config_name: str) -> None:
    undocumented = [(key, type_words) for key, type_words, _, doc in documented_keys(hydra_bridge.compose(config_name)) if not doc]
    assert not undocumented, f"{config_name}: keys without a schema field (type and doc line): {undocumented}"


@pytest.mark.parametrize(
    ("config_name", "overrides", "message"),
    [
        ("fit", ["iters=abc"], "iters expects an integer (default 1000), got 'abc'. Example: iters=1000"),
        ("fit", ["seed=null"], "seed cannot be null: it expects an integer (default 0). Example: seed=0"),
        ("fit", ["solver.batch_mode=both"], "solver.batch_mode must be joint or independent, got 'both'. Example: solver.batch_mode=joint"),
        ("fit", ["data.extrapolate=1"], "data.extrapolate must be the held-out fraction of the time span, in [0, 1), got 1.0"),
        ("cnf", ["trace=approximate"], "trace must be one of exact, hutchinson, got 'approximate'"),
        ("classify", ["distributed.node_rank=2"], "distributed.node_rank must be in 0..0 (distributed.nnodes=1), got 2"),
        ("fit", ["dynamics.power=cubic"], "dynamics.power expects an integer (default 3), got 'cubic'"),
        ("fit", ["dynamics.form=x", "solvr.tol=1"], "Unknown config key 'solvr.tol'. Did you mean 'solver.tol'?"),
        ("fit", ["experiment=paper_mnist"], "experiment/paper_mnist sets 'width', which fit does not have"),
    ],
)
def test_a_bad_value_is_one_message_naming_the_key_the_range_and_an_example(config_name: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        hydra_bridge.compose(config_name, overrides)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_null_is_taken_where_the_schema_allows_it() -> None:
    assert hydra_bridge.compose("fit", ["threads=null", "solver.step_size=null"]).threads is None


def test_a_value_left_to_the_user_shows_in_a_config_but_is_required_for_a_run() -> None:
    assert hydra_bridge.compose("vae", ["data=csv"]).data._get_node("path")._is_missing()
    with pytest.raises(ConfigError, match=r"data\.path is required: your own series"):
        hydra_bridge.compose("vae", ["data=csv"], for_run=True)


def test_a_solver_given_from_python_is_checked_by_the_same_schema() -> None:
    base = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6}
    make_solve(base)  # the rest takes the solvers' own defaults
    with pytest.raises(ConfigError, match=r"solver\.atol must be a positive number, got -1\.0"):
        make_solve({**base, "atol": -1.0})
    with pytest.raises(ConfigError, match="solver takes the settings method, tol"):
        make_solve({**base, "rtoll": 1e-3})


@pytest.fixture
def plugin_dynamics(clean_registries: None) -> str:
    """A dynamics registered from Python with keys no built-in schema knows (mu, damping)."""

    def oscillator(mu: float, damping: float, y0: list[float], t_start: float, t_end: float, n_points: int) -> None:
        """An oscillator from a test plugin."""

    defaults = {"mu": 1.0, "damping": 0.1, "y0": [1.0, 0.0], "t_start": 0.0, "t_end": 5.0, "n_points": 50}
    DYNAMICS.register("test_oscillator", defaults=defaults)(oscillator)
    return "test_oscillator"


def test_a_plugins_own_keys_compose_and_are_overridable(plugin_dynamics: str) -> None:
    cfg = hydra_bridge.compose("fit", [f"dynamics={plugin_dynamics}", "dynamics.mu=2.5", "+dynamics.extra=1"])
    assert (cfg.dynamics.name, cfg.dynamics.mu, cfg.dynamics.damping, cfg.dynamics.extra) == (plugin_dynamics, 2.5, 0.1, 1)
    with pytest.raises(ConfigError, match=r"Unknown config key 'dynamics\.muu'"):  # still closed to typos
        hydra_bridge.compose("fit", [f"dynamics={plugin_dynamics}", "dynamics.muu=2.5"])
    assert ("dynamics.mu", "number", 2.5, "") in list(documented_keys(cfg))  # no schema: typed by its value, no doc line


def test_a_method_specific_solver_option_goes_under_options() -> None:
    cfg = hydra_bridge.compose("fit", ["solver=rk4", "+solver.options.perturb=true"])
    assert cfg.solver.options == {"perturb": True}


def test_config_shows_each_key_with_its_type_value_and_doc_line() -> None:
    result = CliRunner().invoke(app, ["config", "fit", "solver.tol=1e-4"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "solver.rtol" in line)
    assert "number" in row and "0.0001" in row and "relative tolerance" in row, row
