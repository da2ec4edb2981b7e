"""The one fixed-grid loop: every fixed-grid method (explicit and implicit Runge–Kutta, Adams) steps through it.

Semantics are torchdiffeq's ``FixedGridODESolver``: the grid is ``t`` itself, or ``t0, t0 + h, ...`` for
``options={'step_size': h}`` (``grid.grid_from_step_size``, within the step budget), or whatever a
``grid_constructor(func, y0, t)`` returns; outputs between grid points are interpolated linearly or, with
``interp='cubic'``, by the cubic Hermite through the step's ends and slopes; ``perturb=True`` evaluates
``func`` one ulp inside each step, so a discontinuity on a grid point is seen from the step's side.
With ``event_fn`` the loop steps by ``step_size`` until the event changes sign and finds the crossing on the
step's interpolant.

A method supplies one step behind two hooks (the fixed-grid part of the stepper protocol):

* ``first_slope(t0, t1, y)`` — ``f(t0, y)`` at the start of a solve (where a method may check ``func``'s
  output once and prepare per-solve buffers);
* ``step(t0, t1, y, f0)`` — ``(y1, f0)``: one step from ``y`` at ``t0`` to ``t1``; ``f0`` is ``f(t0, y)``
  when the loop has it, else ``None`` and the step evaluates it.

Times reach the hooks as Python floats (cheap arithmetic), or as 0-d tensors taken from the grid when
``t`` requires grad (so each step and output is a function of ``t``, as torchdiffeq differentiates it) or
when the method declares ``tensor_times`` (its stage times are then computed in the time dtype exactly as
torchdiffeq computes them, which keeps the Adams steps bit-for-bit equal to torchdiffeq's).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from odecli.solvers.base import AbstractSolver, raise_if_not_finite
from odecli.solvers.controllers import DEFAULT_MAX_NUM_STEPS, parse_max_num_steps
from odecli.solvers.errors import InvalidInputError, MaxStepsExceeded
from odecli.solvers.events import EventWatch
from odecli.solvers.grid import grid_from_step_size, nudge_time
from odecli.solvers.interpolation import cubic_hermite, linear

FIXED_GRID_OPTIONS = frozenset({"step_size", "grid_constructor", "interp", "perturb", "max_num_steps"})
MAX_EVENT_STEPS = 20000  # as torchdiffeq: an event that never comes must still end


def consecutive_pairs(grid: torch.Tensor, chunk: int = 512) -> Iterator[tuple[float, float]]:
    """``(grid[k], grid[k+1])`` as floats, read a chunk at a time: host memory stays O(1) in the steps."""
    previous = None
    for start in range(0, len(grid), chunk):
        for value in grid[start : start + chunk].tolist():
            if previous is not None:
                yield previous, value
            previous = value


class AbstractFixedGridSolver(AbstractSolver):
    """Steps over a fixed grid and interpolates at the output times; subclasses give ``first_slope`` and ``step``."""

    adaptive: ClassVar[bool] = False
    differentiates_times: ClassVar[bool] = True  # with t requiring grad, every step is a tensor function of t
    options: ClassVar[frozenset[str]] = FIXED_GRID_OPTIONS
    tensor_times: ClassVar[bool] = False  # see the module docstring

    def __init__(self, func, y0, rtol, atol, step_size=None, grid_constructor=None, interp="linear", perturb=False,
                 max_num_steps=DEFAULT_MAX_NUM_STEPS, **options: Any):  # fmt: skip
        super().__init__(func, y0, rtol, atol, **options)
        self.max_num_steps = parse_max_num_steps(max_num_steps)
        if step_size is not None and grid_constructor is not None:
            raise InvalidInputError("options step_size and grid_constructor are mutually exclusive; pass one of them.")
        if interp not in ("linear", "cubic"):
            raise InvalidInputError(f"options['interp'] must be 'linear' or 'cubic', got {interp!r}.")
        if step_size is not None and not float(step_size) > 0:
            raise InvalidInputError(f"options['step_size'] must be positive, got {step_size}.")
        self.step_size = None if step_size is None else float(step_size)
        if grid_constructor is not None:
            self.grid_constructor = grid_constructor
        elif step_size is not None:
            self.grid_constructor = grid_from_step_size(self.step_size, self.max_num_steps)
        else:
            self.grid_constructor = lambda func, y0, t: t
        self.interp = interp
        self.perturb = bool(perturb)
        self.callback_step = getattr(func, "callback_step", None)

    # -- what a method supplies -------------------------------------------------------------------

    @abc.abstractmethod
    def first_slope(self, t0, t1, y: torch.Tensor) -> torch.Tensor:
        """``f(t0, y)`` for the first step ``t0 → t1`` of a solve (flat)."""

    @abc.abstractmethod
    def step(self, t0, t1, y: torch.Tensor, f0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step ``t0 → t1`` from the flat state ``y``: ``(y1, f(t0, y))``."""

    # -- shared by every method -------------------------------------------------------------------

    def inside(self, t, toward):
        """The time ``func`` sees for the grid time ``t`` of a step toward ``toward``: one ulp inside with ``perturb``."""
        return nudge_time(t, toward, self.time_dtype) if self.perturb else t

    def end_slope(self, t0, t1, y1: torch.Tensor) -> torch.Tensor:
        """``f(t1, y1)`` seen from inside the step ``t0 → t1``, for the cubic interpolant."""
        return self.evaluate(self.inside(t1, t0), y1)

    def interpolate(self, t0, y0: torch.Tensor, f0: torch.Tensor, t1, y1: torch.Tensor, t) -> torch.Tensor:
        if self.interp == "linear":
            return linear(t0, y0, t1, y1, t)
        # torchdiffeq evaluates f(t1, y1) for every output, even one on a grid point; so do we (equal NFE).
        return cubic_hermite(t0, y0, f0, t1, y1, self.end_slope(t0, t1, y1), t)

    def grid(self, t: torch.Tensor, keep_graph: bool = False) -> torch.Tensor:
        """The checked grid for the output times ``t`` (with ``t``'s graph when ``keep_graph``)."""
        grid = self.grid_constructor(self.func, self.y0, t)
        if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or len(grid) < 1:
            raise InvalidInputError("grid_constructor must return a 1-D tensor of times.")
        if not (bool(grid[0] == t[0]) and bool(grid[-1] == t[-1])):
            raise InvalidInputError("grid_constructor must return a grid that starts at t[0] and ends at t[-1].")
        return grid if keep_graph else grid.detach()

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        times = t.detach().tolist()
        n_out = len(times)
        if n_out == 1:
            return self.y0.unsqueeze(0).clone()
        differentiable = t.requires_grad and torch.is_grad_enabled()
        grid = self.grid(t, keep_graph=differentiable)
        outputs_at = t if differentiable or self.tensor_times else times
        grid_tensors = grid if differentiable or self.tensor_times else None
        direction = 1.0 if times[1] > times[0] else -1.0
        self.check_initial_state(times[0])
        y = self.y0.reshape(self.n)
        outputs = [y]
        f0, j = None, 1
        for k, (t0_value, t1_value) in enumerate(consecutive_pairs(grid)):
            t0, t1 = (grid_tensors[k], grid_tensors[k + 1]) if grid_tensors is not None else (t0_value, t1_value)
            if k == 0:
                f0 = self.first_slope(t0, t1, y)
            if self.callback_step is not None:
                self.callback_step(self.time(t0), y.view(self.shape), self.time(abs(t1_value - t0_value)))
            y1, f0 = self.step(t0, t1, y, f0)
            self.steps_accepted += 1
            first_output = j
            while j < n_out and direction * times[j] <= direction * t1_value:
                outputs.append(self.interpolate(t0, y, f0, t1, y1, outputs_at[j]))
                j += 1
            if self.step_observer is not None:
                self.step_observer(t0_value, t1_value, y, None, range(first_output, j))
            y, f0 = y1, None
            if j == n_out:
                break
        solution = torch.stack(outputs)
        raise_if_not_finite(solution, times)
        return solution.view(n_out, *self.shape)

    def integrate_until_event(self, t0: torch.Tensor, event_fn, direction: float = 1.0):
        """Step by ``step_size`` from ``t0`` until ``event_fn`` changes sign; ``(event_t, [y0, y_event])``."""
        if self.step_size is None:
            raise InvalidInputError("event handling with a fixed-grid method needs options={'step_size': h}.")
        t0_value = float(t0.detach())
        self.check_initial_state(t0_value)
        y = self.y0.reshape(self.n)
        watch = EventWatch(event_fn, self.time(t0_value), self.y0, self.atol)
        if watch.on_start:
            return watch.at_start(self.time(t0_value))
        dt_value = direction * self.step_size
        if self.tensor_times:
            t0, dt = t0.detach(), torch.as_tensor(dt_value, dtype=t0.dtype, device=t0.device)
        else:
            t0, dt = t0_value, dt_value
        f0 = self.first_slope(t0, t0 + dt, y)
        limit = min(MAX_EVENT_STEPS, self.max_num_steps)  # the step budget, when the user set a smaller one
        for _ in range(limit):
            t1 = t0 + dt
            y1, f0 = self.step(t0, t1, y, f0)
            self.steps_accepted += 1
            if watch.crossed(self.time(t1), y1.view(self.shape)):
                f1 = self.end_slope(t0, t1, y1) if self.interp == "cubic" else None  # once, not per bisection

                def interpolant(t, t0=t0, t1=t1, y0=y, y1=y1, f0=f0, f1=f1):
                    if f1 is None:
                        return linear(t0, y0, t1, y1, t).view(self.shape)
                    return cubic_hermite(t0, y0, f0, t1, y1, f1, t).view(self.shape)

                return watch.locate(interpolant, self.time(t0), self.time(t1))
            t0, y, f0 = t1, y1, None
        raise MaxStepsExceeded(float(t0), limit)
