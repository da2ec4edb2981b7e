"""2-D toy distributions for continuous normalizing flows (the sets of FFJORD and later CNF papers).

Each generator draws ``n`` samples from a ``torch.Generator``; scales follow FFJORD's
``toy_data.py`` so published numbers are comparable. Where the density is known in closed form
(``8gaussians``) the entry also gives ``log_prob``, which makes the true entropy — the NLL a
perfect model would reach — computable, and so the gap NLL − entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from odecli.errors import ConfigError
from odecli.registry import DENSITIES

Sampler = Callable[[int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Density:
    """A 2-D distribution: a sampler and, when known, its log density."""

    name: str
    sample: Sampler
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None


def _normal(n: int, generator: torch.Generator, dims: int = 2) -> torch.Tensor:
    return torch.randn(n, dims, generator=generator)


def _uniform(n: int, generator: torch.Generator, dims: int = 1) -> torch.Tensor:
    return torch.rand(n, dims, generator=generator)


# ----- 8 gaussians: the one with a closed-form density ------------------------------------------
_GAUSSIAN_CENTERS = torch.tensor(
    [(1, 0), (-1, 0), (0, 1), (0, -1), (1 / math.sqrt(2), 1 / math.sqrt(2)), (1 / math.sqrt(2), -1 / math.sqrt(2)),
     (-1 / math.sqrt(2), 1 / math.sqrt(2)), (-1 / math.sqrt(2), -1 / math.sqrt(2))],
)  # fmt: skip
# FFJORD: x = (4·center + 0.5·noise) / 1.414
_GAUSSIAN_MEANS = 4.0 * _GAUSSIAN_CENTERS / 1.414
_GAUSSIAN_STD = 0.5 / 1.414


def eight_gaussians_sample(n: int, generator: torch.Generator) -> torch.Tensor:
    which = torch.randint(0, 8, (n,), generator=generator)
    return _GAUSSIAN_MEANS[which] + _GAUSSIAN_STD * _normal(n, generator)


def eight_gaussians_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log of the equal-weight mixture of 8 isotropic Gaussians, exactly."""
    means = _GAUSSIAN_MEANS.to(x)
    squared = ((x[:, None, :] - means[None]) ** 2).sum(-1) / _GAUSSIAN_STD**2
    log_components = -0.5 * squared - 2 * math.log(_GAUSSIAN_STD) - math.log(2 * math.pi)
    return torch.logsumexp(log_components, dim=1) - math.log(8)


DENSITIES.add(Density("8gaussians", eight_gaussians_sample, eight_gaussians_log_prob), "8gaussians",
              description="Mixture of 8 Gaussians on a circle of radius 2.83 (std 0.35); density known exactly.")  # fmt: skip


# ----- the others (FFJORD's generators, in torch) ------------------------------------------------
def two_spirals(n: int, generator: torch.Generator) -> torch.Tensor:
    t = torch.sqrt(_uniform(n // 2, generator)) * 540 * (2 * math.pi) / 360
    d1x = -torch.cos(t) * t + _uniform(n // 2, generator) * 0.5
    d1y = torch.sin(t) * t + _uniform(n // 2, generator) * 0.5
    x = torch.cat([torch.cat([d1x, d1y], 1), torch.cat([-d1x, -d1y], 1)]) / 3
    x = x + 0.1 * _normal(len(x), generator)
    return _fill(x, n, generator)


def checkerboard(n: int, generator: torch.Generator) -> torch.Tensor:
    x1 = _uniform(n, generator)[:, 0] * 4 - 2
    x2_ = _uniform(n, generator)[:, 0] - torch.randint(0, 2, (n,), generator=generator).float() * 2
    x2 = x2_ + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def circles(n: int, generator: torch.Generator) -> torch.Tensor:
    """Two concentric circles (radii 3 and 1.5, as sklearn's make_circles scaled by 3), noise 0.08·3."""
    outer = n // 2
    angle = _uniform(n, generator)[:, 0] * 2 * math.pi
    radius = torch.cat([torch.full((outer,), 1.0), torch.full((n - outer,), 0.5)])
    x = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius[:, None]
    return (x + 0.08 * _normal(n, generator)) * 3


def moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """Two interleaving half circles (sklearn's make_moons, noise 0.1), scaled ×2 and centred as FFJORD."""
    upper = n // 2
    a = torch.linspace(0, math.pi, upper)
    b = torch.linspace(0, math.pi, n - upper)
    x = torch.cat([torch.stack([torch.cos(a), torch.sin(a)], 1), torch.stack([1 - torch.cos(b), 1 - torch.sin(b) - 0.5], 1)])
    x = x[torch.randperm(n, generator=generator)] + 0.1 * _normal(n, generator)
    return x * 2 + torch.tensor([-1.0, -0.2])


def pinwheel(n: int, generator: torch.Generator) -> torch.Tensor:
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = torch.linspace(0, 2 * math.pi, num_classes + 1)[:-1]
    features = _normal(n, generator) * torch.tensor([radial_std, tangential_std]) + torch.tensor([1.0, 0.0])
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    angles = rads[labels] + rate * torch.exp(features[:, 0])
    rotations = torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)], 1).reshape(n, 2, 2)
    return 2 * torch.einsum("ti,tij->tj", features, rotations)


def rings(n: int, generator: torch.Generator) -> torch.Tensor:
    """Four concentric rings (radii 4, 3, 2, 1 up to FFJORD's 0.08 noise), FFJORD's scaling."""
    sizes = [n // 4] * 3 + [n - 3 * (n // 4)]
    parts = []
    for radius, size in zip((1.0, 0.75, 0.5, 0.25), sizes, strict=True):
        angle = torch.linspace(0, 2 * math.pi, size + 1)[:-1]
        parts.append(torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius)
    x = torch.cat(parts) * 3.0
    x = x[torch.randperm(n, generator=generator)]
    return x + 0.08 * _normal(n, generator)


def swissroll(n: int, generator: torch.Generator) -> torch.Tensor:
    """sklearn's make_swiss_roll (noise 1.0) in its (x, z) plane, divided by 5 as FFJORD."""
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, generator)[:, 0])
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + 1.0 * _normal(n, generator)
    return x / 5


def _fill(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Shuffle and pad an odd-sized draw to exactly n points."""
    if len(x) < n:
        x = torch.cat([x, x[torch.randint(0, len(x), (n - len(x),), generator=generator)]])
    return x[torch.randperm(len(x), generator=generator)][:n]


for _name, _sampler, _text in (
    ("2spirals", two_spirals, "Two interleaved spirals."),
    ("checkerboard", checkerboard, "A 4x4 checkerboard of uniform squares."),
    ("circles", circles, "Two concentric noisy circles."),
    ("moons", moons, "Two interleaving half moons."),
    ("pinwheel", pinwheel, "Five curved arms."),
    ("rings", rings, "Four concentric noisy rings."),
    ("swissroll", swissroll, "A 2-D swiss roll."),
):
    DENSITIES.add(Density(_name, _sampler), _name, description=_text)


def get_density(name: str) -> Density:
    return DENSITIES.get(name)


def sample(name: str, n: int, seed: int) -> torch.Tensor:
    if n < 1:
        raise ConfigError(f"cannot draw {n} samples; use a positive number.")
    return get_density(name).sample(n, torch.Generator().manual_seed(seed)).float()
