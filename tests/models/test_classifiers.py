"""The classifiers of `odecli classify`: shapes, parameter counts near the paper's, solver plumbing, config errors."""

from __future__ import annotations

import pytest
import torch

from odecli.errors import ConfigError
from odecli.models import count_parameters
from odecli.models.classifiers import CLASSIFIERS, build_classifier
from odecli.registry import MODELS, load_all
from odecli.solvers import odeint, track_stats

load_all()


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("feature_size", [6, 7])
def test_every_classifier_maps_images_to_ten_logits(name: str, feature_size: int) -> None:
    assert name in MODELS and MODELS.entry(name).meta.get("task") == "classify"
    node = {"name": name} if name == "mlp_classifier" else {"name": name, "channels": 8, "feature_size": feature_size}
    model = build_classifier(node)
    logits = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("node", "paper", "tolerance"),
    [
        ({"name": "odenet", "channels": 64}, 0.22e6, 0.06),  # the paper's Table 1: ODE-Net 0.22 M
        ({"name": "resnet", "channels": 64, "blocks": 6}, 0.60e6, 0.05),  # ResNet 0.60 M
        ({"name": "rknet", "channels": 64}, 0.22e6, 0.06),  # RK-Net 0.22 M
        ({"name": "mlp_classifier", "widths": [300]}, 0.24e6, 0.01),  # 1-layer MLP 0.24 M
        ({"name": "odenet", "channels": 32}, 53e3, 0.02),  # the CPU default the issue names: about 53k
    ],
)
def test_parameter_counts_are_near_the_papers(node: dict, paper: float, tolerance: float) -> None:
    params = count_parameters(build_classifier(node))
    assert abs(params - paper) / paper < tolerance, params


def test_odenet_uses_the_solve_it_is_given_and_counts_nfe() -> None:
    calls = []

    def solve(func, y0, t):
        calls.append(t.tolist())
        return odeint(func, y0, t, method="rk4", options={"step_size": 0.5})

    model = build_classifier({"name": "odenet", "channels": 8}, solve=solve)
    with track_stats() as stats:
        model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert calls == [[0.0, 1.0]]
    assert stats.nfe_forward == 8 and stats.nfe_backward > 0  # 2 steps of a 4-stage method; direct backprop counted


def test_default_solve_is_adaptive_dopri5() -> None:
    model = build_classifier({"name": "odenet", "channels": 8})
    with track_stats() as stats, torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    assert stats.nfe_forward >= 8 and stats.steps_accepted >= 1


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "odenet", "channels": 0}, "model.channels must be a positive integer"),
        ({"name": "odenet", "feature_size": 5}, "model.feature_size must be 7"),
        ({"name": "resnet", "blocks": 0}, "model.blocks must be a positive integer"),
        ({"name": "mlp_classifier", "widths": []}, "model.widths must be a non-empty list"),
        ({"name": "mlp_classifier", "channels": 8}, "does not accept these settings"),
        ({"name": "mlp"}, "not an image classifier"),
    ],
)
def test_bad_settings_are_config_errors(node: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_classifier(node)
