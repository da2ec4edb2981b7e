"""Event root-finding: where ``event_fn(t, y)`` crosses zero inside a step.

Semantics are torchdiffeq's (main branch and 0.2.5 agree): ``odeint(..., event_fn=g)`` integrates
from ``t[0]`` until any component of ``g(t, y)`` changes sign and returns ``(event_t, solution)``
with ``solution = [y0, y(event_t)]``. The solvers locate the crossing with ``find_event``:
bisection on the step's dense output (no extra ``func`` calls) down to ``atol`` in time. Several
event components are merged by ``combine_event_functions``. The front end that makes ``event_t``
differentiable, ``odeint_event``, lives in ``odecli.solvers.terminal_event``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def find_event(
    interp_fn: Callable[[torch.Tensor], torch.Tensor],
    sign0: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    event_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Event time in ``[t0, t1]`` (where ``event_fn`` has left ``sign0``) and the state there.

    ``interp_fn(t)`` is the dense output of the step ``[t0, t1]``. Bisection halves the bracket
    until it is shorter than ``tol``; the state at the midpoint is returned with its graph (so
    gradients reach the step's inputs), the search itself runs without one.
    """
    with torch.no_grad():
        width = float((t1 - t0).abs())
        iterations = max(0, math.ceil(math.log2(width / tol))) if width > 0 and tol > 0 else 0
        for _ in range(iterations):
            t_mid = (t0 + t1) / 2
            same_side = torch.sign(event_fn(t_mid, interp_fn(t_mid))) == sign0
            t0 = torch.where(same_side, t_mid, t0)
            t1 = torch.where(same_side, t1, t_mid)
        event_t = (t0 + t1) / 2
    return event_t, interp_fn(event_t)


class EventWatch:
    """One event search over a solver's accepted steps: the sign at the start, each step's end checked,
    the crossing located on the step's dense output (``find_event``) to ``atol`` in time."""

    def __init__(self, event_fn: Callable, t0: torch.Tensor, y0: torch.Tensor, atol: float | torch.Tensor):
        self.event_fn, self.y0 = event_fn, y0
        self.tol = float(atol.max()) if isinstance(atol, torch.Tensor) else float(atol)
        with torch.no_grad():
            value0 = event_fn(t0, y0)
        self.on_start = bool(value0 == 0)  # the event holds at t0 already: it is found there, with no step
        self.sign0 = torch.sign(value0)

    def at_start(self, t0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t0, torch.stack([self.y0, self.y0])

    def crossed(self, t1: torch.Tensor, y1: torch.Tensor) -> bool:
        """Whether the event function has left its starting sign at a step's end ``(t1, y1)``."""
        with torch.no_grad():
            return bool(torch.sign(self.event_fn(t1, y1)) != self.sign0)

    def locate(self, interpolant: Callable[[torch.Tensor], torch.Tensor], t_start: torch.Tensor, t_end: torch.Tensor):
        """``(event_t, [y0, y(event_t)])`` for the step ``[t_start, t_end]`` whose end ``crossed``."""
        event_t, y_event = find_event(interpolant, self.sign0, t_start, t_end, self.event_fn, self.tol)
        return event_t, torch.stack([self.y0, y_event])


def combine_event_functions(event_fn: Callable, t0: torch.Tensor, y0: Any) -> Callable:
    """One scalar event function that crosses zero when any component of ``event_fn`` does.

    Components are sign-normalised at ``(t0, y0)`` so all start positive; their minimum is the first
    to reach zero.
    """
    with torch.no_grad():
        initial_signs = torch.sign(event_fn(t0, y0))

    def combined_event_fn(t, y):
        return torch.min(event_fn(t, y) * initial_signs)

    return combined_event_fn


__all__ = ["find_event", "EventWatch", "combine_event_functions"]
