"""Figures of 2-D densities: data vs learned density vs model samples, and a flow's evolution."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _square(ax: plt.Axes, limit: float, title: str) -> None:
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def density_figure(data: torch.Tensor, grid: torch.Tensor, log_density: torch.Tensor, samples: torch.Tensor, *, limit: float, title: str) -> Figure:
    """Three panels: data samples, the learned density exp(log p) on a grid, samples drawn from the model."""
    side = int(round(len(grid) ** 0.5))
    fig, (ax_data, ax_density, ax_samples) = plt.subplots(1, 3, figsize=(12, 4.2))
    ax_data.hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=120, range=[[-limit, limit], [-limit, limit]], cmap="viridis")
    _square(ax_data, limit, "data")
    density = log_density.exp().reshape(side, side).numpy()
    ax_density.imshow(density, origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
    _square(ax_density, limit, "learned density")
    ax_samples.hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), bins=120, range=[[-limit, limit], [-limit, limit]], cmap="viridis")
    _square(ax_samples, limit, "samples from the model")
    fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig


def flow_figure(frames: Sequence[tuple[float, torch.Tensor]], *, limit: float, title: str) -> Figure:
    """Model samples at several times, from the Gaussian base to the data (Chen et al. 2018, Figure 6)."""
    fig, axes = plt.subplots(1, len(frames), figsize=(2.6 * len(frames), 2.9))
    for ax, (fraction, points) in zip(axes, frames, strict=True):
        ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=1.5, alpha=0.5, color="C0", linewidths=0)
        _square(ax, limit, f"{fraction:.0%} of the flow")
    fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig


def matching_figure(grid: torch.Tensor, target_log_density: torch.Tensor, samples: torch.Tensor, model_log_density: torch.Tensor | None,
                    *, limit: float, title: str) -> Figure:  # fmt: skip
    """Density matching: the target exp(−U), samples of the model, and (for a CNF) the model's density."""
    side = int(round(len(grid) ** 0.5))
    panels = 3 if model_log_density is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.2))
    axes[0].imshow(target_log_density.exp().reshape(side, side).numpy(), origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
    _square(axes[0], limit, "target exp(−U)")
    axes[1].hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), bins=100, range=[[-limit, limit], [-limit, limit]], cmap="viridis")
    _square(axes[1], limit, "samples from the model")
    if model_log_density is not None:
        axes[2].imshow(model_log_density.exp().reshape(side, side).numpy(), origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
        _square(axes[2], limit, "model density")
    fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig
