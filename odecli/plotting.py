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


# ----- tolerance study (odecli sweep tol): Chen et al. 2018, Figure 3 -------------------------
# ``rows`` are the sweep's points (dicts with solver, tol, nfe_forward, nfe_backward, error, ...);
# missing values are NaN or None and are left out of the curves.
SweepRows = Sequence[dict]
NFEHistoryCurves = dict  # tag ("nfe/forward", "nfe/backward") -> [(iteration, value), ...]


def _finite(value: object) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _solver_curves(rows: SweepRows, x_key: str, y_key: str) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Per solver, the (x, y, tol) points where both values are present, in tolerance order."""
    curves: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for row in sorted(rows, key=lambda r: -float(r["tol"])):
        xs, ys, tols = curves.setdefault(str(row["solver"]), ([], [], []))
        if _finite(row.get(x_key)) and _finite(row.get(y_key)):
            xs.append(float(row[x_key]))
            ys.append(float(row[y_key]))
            tols.append(float(row["tol"]))
    return curves


def _solver_colors(rows: SweepRows) -> dict[str, str]:
    names = list(dict.fromkeys(str(r["solver"]) for r in rows))
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _label_tols(ax: plt.Axes, xs: list[float], ys: list[float], tols: list[float], color: str) -> None:
    """Mark the loosest and tightest tolerance of a curve, so the direction of the sweep is readable."""
    import math

    for i in {0, len(xs) - 1} if xs else set():
        ax.annotate(f"1e{math.log10(tols[i]):.0f}" if abs(math.log10(tols[i]) % 1) < 1e-9 else f"{tols[i]:.0e}",
                    (xs[i], ys[i]), textcoords="offset points", xytext=(4, 3), fontsize=6, color=color)  # fmt: skip


def _ax_nfe_error(ax: plt.Axes, rows: SweepRows) -> None:
    colors = _solver_colors(rows)
    for solver, (xs, ys, tols) in _solver_curves(rows, "nfe_forward", "error").items():
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3.5, color=colors[solver], label=solver)
            _label_tols(ax, xs, ys, tols, colors[solver])
    ax.set(xscale="log", yscale="log", xlabel="NFE forward", ylabel="relative error of the solution", title="(a) NFE vs numerical error")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)


def _ax_nfe_time(ax: plt.Axes, rows: SweepRows) -> None:
    colors = _solver_colors(rows)
    for solver, (xs, ys, _) in _solver_curves(rows, "nfe_forward", "wall_time_s").items():
        if xs:
            ax.plot(xs, [y * 1000 for y in ys], marker="o", markersize=3.5, color=colors[solver], label=solver)
    ax.set(xscale="log", yscale="log", xlabel="NFE forward", ylabel="forward wall time (ms, median)", title="(b) NFE vs wall time")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)


def _ax_backward_forward(ax: plt.Axes, rows: SweepRows) -> None:
    colors = _solver_colors(rows)
    every: list[float] = []
    for key, marker, fill, suffix in (("nfe_backward_adjoint", "o", True, ""), ("nfe_backward_seminorm", "s", False, " (seminorm)")):
        for solver, (xs, ys, _) in _solver_curves(rows, "nfe_forward", key).items():
            if xs:
                ax.scatter(xs, ys, marker=marker, s=18, label=solver + suffix, color=colors[solver] if fill else "none", edgecolors=colors[solver])
                every += xs + ys
    if every:
        low, high = min(every) / 1.5, max(every) * 1.5
        line = [low, high]
        ax.plot(line, [v / 2 for v in line], color="black", linestyle="--", linewidth=1.0, label="y = x/2 (the paper)")
        ax.plot(line, line, color="gray", linestyle=":", linewidth=1.0, label="y = x")
    ax.set(xscale="log", yscale="log", xlabel="NFE forward", ylabel="NFE backward (adjoint)", title="(c) backward vs forward NFE")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=6, ncols=2)


def _ax_training(ax: plt.Axes, history: NFEHistoryCurves) -> None:
    for tag, color in (("nfe/forward", "C0"), ("nfe/backward", "C1")):
        points = history.get(tag) or []
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, color=color, alpha=0.35, linewidth=0.8)
            window = max(1, len(values) // 25)
            smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
            ax.plot(steps, smooth, color=color, linewidth=1.8, label=tag.replace("nfe/", "NFE "))
    ax.set(xlabel="training iteration", ylabel="NFE per iteration", title="(d) NFE over training")
    ax.grid(True, alpha=0.3)
    if history:
        ax.legend(fontsize=7)


def _single(draw: Callable[[plt.Axes], None], title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    draw(ax)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def nfe_error_figure(rows: SweepRows, *, title: str = "") -> Figure:
    """Figure 3a: forward NFE against the solution's error, one curve per solver (tolerances along it)."""
    return _single(lambda ax: _ax_nfe_error(ax, rows), title)


def nfe_time_figure(rows: SweepRows, *, title: str = "") -> Figure:
    """Figure 3b: forward NFE against forward wall time, one curve per solver."""
    return _single(lambda ax: _ax_nfe_time(ax, rows), title)


def backward_forward_nfe_figure(rows: SweepRows, *, title: str = "") -> Figure:
    """Figure 3c: backward (adjoint) NFE against forward NFE, with and without seminorm, and y = x/2."""
    return _single(lambda ax: _ax_backward_forward(ax, rows), title)


def nfe_training_figure(history: NFEHistoryCurves, *, title: str = "") -> Figure:
    """Figure 3d: forward and backward NFE per training iteration (raw and smoothed)."""
    return _single(lambda ax: _ax_training(ax, history), title)


def tolerance_study_figure(rows: SweepRows, history: NFEHistoryCurves | None = None, *, title: str = "") -> Figure:
    """All of Figure 3 in one image: (a)–(c) from the sweep, (d) when a training history is given."""
    fig, axes = plt.subplots(1, 4 if history else 3, figsize=(22 if history else 16.5, 4.6))
    _ax_nfe_error(axes[0], rows)
    _ax_nfe_time(axes[1], rows)
    _ax_backward_forward(axes[2], rows)
    if history:
        _ax_training(axes[3], history)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
