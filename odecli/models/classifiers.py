"""Image classifiers of the paper's Section 3: ODE-Net, ResNet, RK-Net and an MLP baseline.

All convolutional models share the paper's layout (Chen et al. 2018, code ``odenet_mnist.py``):
a convolutional downsampling stem to ``channels`` feature maps of 7×7 (or 6×6, as the paper's
code), a middle part, then group norm, ReLU, global average pooling and a linear layer.

- ``odenet``: the middle is one ODE block, dh/dt = f(t, h) on [0, 1], f being two 3×3
  convolutions with group norm and the time as an extra input channel; solved by any
  registered solver, adjoint optional (the task passes ``solve``).
- ``rknet``: the same block integrated by a fixed-step Runge–Kutta method with gradients
  backpropagated through the steps.
- ``resnet``: ``blocks`` residual blocks (two 3×3 convolutions each) in place of the ODE block.
- ``mlp_classifier`` (``model=mlp`` in ``odecli classify``): one hidden layer (300 units in the paper).

Registered in ``MODELS`` without config defaults, so they are not options of ``fit``'s
``model`` group; ``odecli classify`` selects them from ``conf/classifier/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from odecli.errors import ConfigError
from odecli.models.vector_field import check_widths
from odecli.registry import MODELS

Solve = Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]

IMAGE_SHAPE = (1, 28, 28)
N_CLASSES = 10
FEATURE_SIZES = (7, 6)


def group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with min(32, channels) groups, as the paper's code."""
    return nn.GroupNorm(min(32, channels), channels)


def downsampling(channels: int, feature_size: int = 6) -> nn.Sequential:
    """28×28×1 → ``feature_size``² × ``channels``: a 3×3 convolution and two strided 4×4 ones."""
    if feature_size not in FEATURE_SIZES:
        raise ConfigError(f"model.feature_size must be 7 (7×7 feature maps) or 6 (6×6, the paper's code), got {feature_size}.")
    padding = 1 if feature_size == 7 else 0  # 28 → 28 → 14 → 7, or 28 → 26 → 13 → 6
    return nn.Sequential(
        nn.Conv2d(IMAGE_SHAPE[0], channels, 3, 1, padding=padding),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
    )


def head(channels: int) -> nn.Sequential:
    """Group norm, ReLU, global average pooling, linear layer to the ten classes."""
    return nn.Sequential(group_norm(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, N_CLASSES))


class ConcatConv2d(nn.Module):
    """A 3×3 convolution whose input has the time t appended as a constant channel."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in + 1, channels_out, 3, 1, 1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        time_channel = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([time_channel, x], dim=1))


class ConvODEFunc(nn.Module):
    """f(t, h) = GN(conv(t, ReLU(GN(conv(t, ReLU(GN(h))))))): the ODE block's vector field."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm2 = group_norm(channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm3 = group_norm(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, self.relu(self.norm1(h)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


def default_solve(func: Callable, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dopri5 at rtol = atol = 1e-3, the paper's setting (used when no solve is given)."""
    from odecli.solvers import odeint

    return odeint(func, y0, t, rtol=1e-3, atol=1e-3, method="dopri5")


class ODEBlock(nn.Module):
    """h(1) from h(0) by solving dh/dt = f(t, h) on [0, ``t_end``] with ``solve``."""

    def __init__(self, func: nn.Module, solve: Solve | None = None, t_end: float = 1.0):
        super().__init__()
        self.func = func
        self.solve = solve or default_solve
        self.register_buffer("t", torch.tensor([0.0, float(t_end)]), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.solve(self.func, h, self.t.to(h.dtype))[-1]


class ResBlock(nn.Module):
    """h + conv(ReLU(GN(conv(ReLU(GN(h)))))): the paper's pre-activation residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.norm1(h)))
        out = self.conv2(self.relu(self.norm2(out)))
        return h + out


def _check_channels(channels: int) -> int:
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ConfigError(f"model.channels must be a positive integer, got {channels!r}.")
    return channels


class ConvClassifier(nn.Module):
    """Downsampling stem → middle → head; ``kind`` says what the middle is (for tables and logs)."""

    kind = "conv"

    def __init__(self, channels: int, feature_size: int, middle: nn.Module):
        super().__init__()
        self.channels = channels
        self.downsampling = downsampling(channels, feature_size)
        self.middle = middle
        self.head = head(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.middle(self.downsampling(x)))


@MODELS.register("odenet", description="ODE-Net classifier: conv downsampling, one ODE block (any solver, adjoint optional), pooled linear head", task="classify")
class ODENet(ConvClassifier):
    """ODE-Net classifier: conv downsampling, one ODE block, group norm, pooling, linear head."""

    kind = "ode"

    def __init__(self, channels: int = 64, feature_size: int = 6, solve: Solve | None = None, t_end: float = 1.0):
        channels = _check_channels(channels)
        super().__init__(channels, feature_size, ODEBlock(ConvODEFunc(channels), solve, t_end))


@MODELS.register("rknet", description="RK-Net classifier: the ODE-Net's block by a fixed-step Runge–Kutta method, backprop through the steps", task="classify")
class RKNet(ODENet):
    """RK-Net: ODE-Net whose block is integrated by a fixed-step Runge–Kutta method, backpropagated directly.

    The task checks that the solver it passes is fixed-step and not the adjoint.
    """


@MODELS.register("resnet", description="ResNet classifier: conv downsampling, residual blocks, pooled linear head", task="classify")
class ResNet(ConvClassifier):
    """ResNet classifier: the ODE-Net's downsampling and head with ``blocks`` residual blocks between."""

    kind = "residual"

    def __init__(self, channels: int = 64, feature_size: int = 6, blocks: int = 6):
        channels = _check_channels(channels)
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
            raise ConfigError(f"model.blocks must be a positive integer, got {blocks!r}.")
        super().__init__(channels, feature_size, nn.Sequential(*(ResBlock(channels) for _ in range(blocks))))


@MODELS.register("mlp_classifier", description="MLP classifier on the 784 pixels (one hidden layer of 300 units in the paper)", task="classify")
class MLPClassifier(nn.Module):
    """MLP on flattened 28×28 images: ``widths`` hidden ReLU layers, then ten logits."""

    kind = "mlp"

    def __init__(self, widths: Sequence[int] = (300,)):
        super().__init__()
        widths = check_widths(widths)
        sizes = [IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2], *widths]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-1], N_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


CLASSIFIERS = ("odenet", "rknet", "resnet", "mlp_classifier")
SOLVED = ("odenet", "rknet")  # the classifiers that take a ``solve``


def build_classifier(node: Mapping[str, Any], solve: Solve | None = None) -> nn.Module:
    """The classifier a ``classifier/`` config node names; ``solve`` goes to the ODE block (if any).

    Keys other than the model's keyword arguments (``name``, ``solver``) are not passed on.
    """
    name = MODELS.canonical(str(node["name"]))
    if name not in CLASSIFIERS:
        raise ConfigError(f"model '{name}' is not an image classifier; odecli classify takes one of: odenet, resnet, rknet, mlp.")
    kwargs = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in node.items() if k not in ("name", "solver")}
    if name in SOLVED:
        kwargs["solve"] = solve
    try:
        return MODELS.get(name)(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model '{name}' does not accept these settings: {exc}") from exc
