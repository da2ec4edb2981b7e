"""Neural vector fields f(t, y; θ) for learning dynamics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from odecli.errors import ConfigError
from odecli.registry import MODELS

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus, "silu": nn.SiLU, "gelu": nn.GELU}
INPUT_TRANSFORMS = ("identity", "cube")


def check_widths(widths: Sequence[int]) -> list[int]:
    """Hidden-layer widths as ints, or a ``ConfigError`` naming ``model.widths`` (a zero width builds a net that
    silently outputs zeros)."""
    widths = list(widths) if isinstance(widths, Sequence) and not isinstance(widths, str) else [widths]
    if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
        raise ConfigError(f"model.widths must be a non-empty list of positive integers, got {widths}; for example model.widths=[64,64].")
    return widths


@MODELS.register("mlp")
class MLPVectorField(nn.Module):
    """MLP vector field: optional y**3 input transform (the spiral demo's) and optional time input."""

    def __init__(
        self,
        widths: Sequence[int] = (50,),
        activation: str = "tanh",
        input_transform: str = "identity",
        time_input: bool = False,
        dim: int = 2,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation '{activation}' is unknown; choose one of {', '.join(ACTIVATIONS)}.")
        if input_transform not in INPUT_TRANSFORMS:
            raise ConfigError(f"model.input_transform '{input_transform}' is unknown; choose one of {', '.join(INPUT_TRANSFORMS)}.")
        widths = check_widths(widths)
        self.input_transform = input_transform
        self.time_input = bool(time_input)
        sizes = [dim + int(self.time_input), *widths]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], dim))
        self.net = nn.Sequential(*layers)
        for module in self.net.modules():  # small initial field, as in torchdiffeq's ode_demo
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.1)
                nn.init.zeros_(module.bias)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = y**3 if self.input_transform == "cube" else y
        if self.time_input:
            x = torch.cat([x, torch.as_tensor(t, dtype=y.dtype).expand(*y.shape[:-1], 1)], dim=-1)
        return self.net(x)


def build_model(node: Mapping[str, Any], **extra: Any) -> nn.Module:
    """The model a model config node names (``name`` plus keyword arguments)."""
    kwargs = {k: v for k, v in node.items() if k != "name"}
    try:
        return MODELS.get(str(node["name"]))(**kwargs, **extra)
    except TypeError as exc:
        raise ConfigError(f"model '{node['name']}' does not accept these settings: {exc}") from exc


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
