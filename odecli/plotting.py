"""Figures: trajectories in time and phase space (true solid, model dotted) and vector fields."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files and TensorBoard only; never a window

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

TRUE_STYLE = {"linestyle": "-", "linewidth": 1.6}
MODEL_STYLE = {"linestyle": ":", "linewidth": 2.2}
FieldFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grid(trajectory: torch.Tensor, points: int = 21, margin: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    low, high = trajectory.min(dim=0).values, trajectory.max(dim=0).values
    pad = (high - low).clamp(min=1e-3) * margin
    xs = torch.linspace(float(low[0] - pad[0]), float(high[0] + pad[0]), points)
    ys = torch.linspace(float(low[1] - pad[1]), float(high[1] + pad[1]), points)
    return torch.meshgrid(xs, ys, indexing="xy")


def _stream(ax: plt.Axes, field: FieldFn, time: float, trajectory: torch.Tensor, title: str) -> None:
    gx, gy = _grid(trajectory)
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    with torch.no_grad():
        velocity = field(torch.tensor(time, dtype=points.dtype), points).reshape(*gx.shape, 2)
    speed = velocity.norm(dim=-1)
    ax.streamplot(gx.numpy(), gy.numpy(), velocity[..., 0].numpy(), velocity[..., 1].numpy(), color=speed.numpy(), cmap="viridis", density=0.9, linewidth=0.8)
    ax.plot(trajectory[:, 0], trajectory[:, 1], color="black", alpha=0.35, linewidth=1.0)
    ax.set_title(title)
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def dynamics_figure(
    t: torch.Tensor,
    true_y: torch.Tensor,
    model_y: torch.Tensor,
    true_field: FieldFn,
    model_field: FieldFn,
    *,
    title: str,
    extrapolate_from: float | None = None,
    field_time: float | None = None,
) -> Figure:
    """Four panels: states over time, phase portrait (true solid, model dotted), true and learned vector fields."""
    t, true_y, model_y = t.detach().cpu(), true_y.detach().cpu(), model_y.detach().cpu()
    fig, (ax_time, ax_phase, ax_true, ax_model) = plt.subplots(1, 4, figsize=(19, 4.4))
    for i, label in enumerate(("x", "y")):
        ax_time.plot(t, true_y[:, i], color=f"C{i}", label=f"{label} true", **TRUE_STYLE)
        ax_time.plot(t, model_y[:, i], color=f"C{i}", label=f"{label} model", **MODEL_STYLE)
    ax_phase.plot(true_y[:, 0], true_y[:, 1], color="C2", label="true", **TRUE_STYLE)
    ax_phase.plot(model_y[:, 0], model_y[:, 1], color="C3", label="model", **MODEL_STYLE)
    if extrapolate_from is not None:
        ax_time.axvline(extrapolate_from, color="gray", linestyle="--", linewidth=1.0, label="extrapolation →")
    ax_time.set(title="states over time", xlabel="t")
    ax_phase.set(title="phase portrait", xlabel="x", ylabel="y")
    ax_time.legend(fontsize=7, ncols=2, loc="upper right")
    ax_phase.legend(fontsize=8)
    when = float(t[len(t) // 2]) if field_time is None else field_time
    _stream(ax_true, true_field, when, true_y, f"true vector field (t={when:.3g})")
    _stream(ax_model, model_field, when, true_y, f"learned vector field (t={when:.3g})")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def phase_animation(true_y: torch.Tensor, frames: Sequence[tuple[int, torch.Tensor]], path: Path, fps: int = 4) -> Path:
    """A GIF of the phase portrait as training goes on (one frame per plotted iteration)."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(true_y[:, 0], true_y[:, 1], color="C2", label="true", **TRUE_STYLE)
    (line,) = ax.plot([], [], color="C3", label="model", **MODEL_STYLE)
    ax.legend(fontsize=8, loc="upper right")
    low, high = true_y.min(dim=0).values, true_y.max(dim=0).values
    pad = (high - low) * 0.2
    ax.set_xlim(float(low[0] - pad[0]), float(high[0] + pad[0]))
    ax.set_ylim(float(low[1] - pad[1]), float(high[1] + pad[1]))

    def draw(index: int):
        iteration, model_y = frames[index]
        line.set_data(model_y[:, 0], model_y[:, 1])
        ax.set_title(f"iteration {iteration}")
        return (line,)

    animation = FuncAnimation(fig, draw, frames=len(frames), blit=True)
    animation.save(str(path), writer=PillowWriter(fps=fps))
    plt.close(fig)
    return path
