"""The fixed grid ``t0, t0 + h, t0 + 2h, ...`` that ``options={'step_size': h}`` asks for, within the step budget.

Every fixed-grid method (explicit and implicit Runge–Kutta, Adams) builds its grid here, so the
budget is checked once, *before* the grid's points are allocated (``step_size=1e-9`` over ``[0, 10]``
would otherwise allocate 10¹⁰ times, 40 GB): a grid is refused with ``GridTooLarge`` when it would take
more than ``max_num_steps`` steps between two consecutive output times (the meaning torchdiffeq gives
``max_num_steps`` for its adaptive methods), or more than ``MAX_GRID_STEPS`` in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from odecli.solvers.controllers import DEFAULT_MAX_NUM_STEPS
from odecli.solvers.errors import GridTooLarge

# No fixed grid holds more steps than torchdiffeq's default max_num_steps: its times alone would take 8 GB or more.
MAX_GRID_STEPS = DEFAULT_MAX_NUM_STEPS


def nudge(t: float, toward: float, dtype: torch.dtype) -> float:
    """The next representable time after ``t`` toward ``toward`` in ``dtype`` (torchdiffeq's ``perturb``)."""
    value = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(value, torch.tensor(toward, dtype=dtype)))


def nudge_time(t: float | torch.Tensor, toward: float | torch.Tensor, dtype: torch.dtype) -> float | torch.Tensor:
    """``nudge`` for a float time, or for a tensor time that keeps its gradient (the ulp added is a constant)."""
    if isinstance(t, torch.Tensor):
        # In tensors, without reading the time on the host: a compiled step (``compiled.py``) traces this.
        value = t.detach().to(dtype)
        target = toward.detach().to(dtype) if isinstance(toward, torch.Tensor) else torch.tensor(toward, dtype=dtype, device=t.device)
        return t + (torch.nextafter(value, target) - value).to(t.dtype)
    return nudge(t, float(toward.detach()) if isinstance(toward, torch.Tensor) else toward, dtype)


def count_grid_steps(t: torch.Tensor, step_size: float) -> tuple[int, int, int]:
    """``(steps over the whole span, steps across the widest output interval, index of that interval's start)``."""
    with torch.no_grad():
        gaps = (t[1:] - t[:-1]).abs().double()
        widest = int(gaps.argmax())
        total = math.ceil(float(gaps.sum()) / step_size)
        across_widest = math.ceil(float(gaps[widest]) / step_size)
    return total, across_widest, widest


def check_grid_size(t: torch.Tensor, step_size: float, max_num_steps: int) -> None:
    """Raise ``GridTooLarge`` when the grid over the output times ``t`` would exceed the step budget (nothing allocated)."""
    if len(t) < 2:
        return
    total, across_widest, widest = count_grid_steps(t, step_size)
    if across_widest > max_num_steps or total > MAX_GRID_STEPS:
        per_interval = across_widest > max_num_steps
        limit = max_num_steps if per_interval else MAX_GRID_STEPS
        raise GridTooLarge(step_size, total, across_widest, float(t[widest]), float(t[widest + 1]), limit, per_interval=per_interval)


def grid_from_step_size(step_size: float, max_num_steps: int) -> Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]:
    """torchdiffeq's grid ``t0, t0 + h, t0 + 2h, ...`` with the last point moved onto ``t[-1]`` (either direction).

    Raises ``GridTooLarge`` (before allocating) when an output interval would need more than ``max_num_steps``
    steps, or the whole span more than ``MAX_GRID_STEPS``.
    """

    def grid(func, y0, t):
        check_grid_size(t, step_size, max_num_steps)
        direction = 1.0 if len(t) < 2 or bool(t[-1] > t[0]) else -1.0
        start, end = direction * t[0], direction * t[-1]
        n_points = torch.ceil((end - start) / step_size + 1).item()
        points = torch.arange(0, n_points, dtype=t.dtype, device=t.device) * step_size + start
        points[-1] = end
        return direction * points

    return grid
