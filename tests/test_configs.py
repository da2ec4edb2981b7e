"""Every option of every config group composes, and what it names can be built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from odecli import hydra_bridge
from odecli.dynamics import build_system
from odecli.models import build_model
from odecli.registry import SOLVERS, load_all

load_all()


def _group_options() -> list[tuple[str, str, str]]:
    """(primary config, group, option) for every group the primary config selects from."""
    from hydra.core.global_hydra import GlobalHydra

    cases = []
    with hydra_bridge._initialized():
        loader = GlobalHydra.instance().config_loader()
        for name in hydra_bridge.primary_configs():
            cfg = hydra_bridge.compose(name, with_hydra=True)
            for group in cfg.hydra.runtime.choices:
                if group.startswith("hydra") or group in ("experiment",):
                    continue
                for option in loader.get_group_options(group):
                    cases.append((name, group, option))
            for option in loader.get_group_options("experiment"):
                cases.append((name, "experiment", option))
    return cases


CASES = _group_options()


def test_there_are_options_to_test() -> None:
    assert any(group == "solver" for _, group, _ in CASES)
    assert any(group == "dynamics" for _, group, _ in CASES)


@pytest.mark.parametrize(("config_name", "group", "option"), CASES, ids=[f"{c}-{g}={o}" for c, g, o in CASES])
def test_option_composes_and_instantiates(config_name: str, group: str, option: str) -> None:
    cfg = hydra_bridge.compose(config_name, [f"{group}={option}"])
    if group == "experiment":  # a global overlay: check the whole config resolves
        OmegaConf.to_container(cfg, resolve=True)
        return
    node = OmegaConf.select(cfg, group)
    OmegaConf.to_container(node, resolve=True)  # every interpolation resolves
    if group == "dynamics":
        system = build_system(OmegaConf.to_container(node, resolve=True))
        assert system.y0.shape == (2,) and system.t.ndim == 1
    elif group == "model":
        assert build_model(OmegaConf.to_container(node, resolve=True)) is not None
    elif group == "solver":
        assert node.method in SOLVERS
    elif isinstance(node, DictConfig) and "_target_" in node:
        from hydra.utils import instantiate

        assert instantiate(node) is not None


def test_every_registered_solver_is_a_config_option() -> None:
    for name in SOLVERS.all_names():
        assert hydra_bridge.compose("fit", [f"solver={name}"]).solver.method == SOLVERS.canonical(name)


@pytest.mark.slow
def test_non_editable_install_finds_its_configs(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(repo)],
        check=True,
        timeout=600,
    )
    assert (target / "odecli" / "conf" / "fit.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import odecli.hydra_bridge as b, sys; print(b.config_root()); sys.exit(0 if b.compose('fit').task == 'fit' else 1)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout
