"""A solver registered by a plugin file is a first-class method: odeint, the registry and the configs see it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from odecli import hydra_bridge, odeint, registry

RALSTON_PLUGIN = textwrap.dedent(
    '''
    """Ralston's second-order method (minimum error bound among two-stage RK2 methods)."""
    from odecli.registry import SOLVERS
    from odecli.solvers.runge_kutta import AbstractFixedGridRungeKutta
    from odecli.solvers.tableau import ButcherTableau

    RALSTON = ButcherTableau(name="ralston", c=(0.0, 2 / 3), a=((), (2 / 3,)), b=(1 / 4, 3 / 4))


    @SOLVERS.register("test_ralston", description="Ralston's RK2 (from a plugin)")
    class Ralston(AbstractFixedGridRungeKutta):
        tableau, order = RALSTON, 2
        reference = "Ralston 1962"
    '''
)


@pytest.fixture
def ralston(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registries: None) -> Path:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "ralston.py").write_text(RALSTON_PLUGIN)
    monkeypatch.setenv("ODECLI_PLUGINS", str(plugin_dir))
    registry.load_plugin_files()
    return plugin_dir


def test_plugin_solver_is_registered_with_its_source(ralston: Path) -> None:
    entry = registry.SOLVERS.entry("test_ralston")
    assert entry.source == f"plugin {(ralston / 'ralston.py').resolve()}"


def test_plugin_solver_solves_at_its_order(ralston: Path) -> None:
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = torch.linalg.matrix_exp(a * 2.0) @ y0
    errors = []
    for step in (0.1, 0.05):
        t = torch.tensor([0.0, 2.0], dtype=torch.float64)
        y = odeint(lambda t, y: a @ y, y0, t, method="test_ralston", options={"step_size": step})
        errors.append((y[-1] - exact).norm().item())
    slope = torch.log2(torch.tensor(errors[0] / errors[1])).item()
    assert 1.7 < slope < 2.3


def test_plugin_solver_is_a_config_option(ralston: Path) -> None:
    cfg = hydra_bridge.compose("fit", ["solver=test_ralston"])
    assert cfg.solver.method == "test_ralston"
