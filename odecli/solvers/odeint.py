"""``odeint``: torchdiffeq's interface over odecli's registered solvers.

The front end validates everything the user passed (typed errors, never asserts), then hands a
solver one simple problem. Solvers that declare ``native_problem`` (the explicit Runge–Kutta
family) receive a single-tensor state in its own shape, the user's ``func`` untouched and ``t`` in
either direction, so no Python wrapper sits in the hot loop. Every other solver receives a flat
state, a strictly increasing ``t`` and a wrapped ``func`` (``-f(-t, y)`` for decreasing time), as
``odecli.solvers.base`` describes. Tuple states are always flattened into one vector.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from odecli.solvers import stats
from odecli.solvers.base import CALLBACK_NAMES
from odecli.solvers.errors import InvalidInputError, InvalidTimeGrid
from odecli.solvers.events import combine_event_functions
from odecli.solvers.independent import check_batch_mode, odeint_independent
from odecli.solvers.problem import (
    FlatStateFunc,
    StateLayout,
    check_problem,
    forward_func_attributes,
    resolve_method,
    shape_norm_option,
)


class UnsupportedCallbackWarning(UserWarning):
    """``func`` has a step callback the chosen method never calls."""


class _ShiftedTime:
    """``func`` at ``t + shift``, where ``shift`` is zero but carries the gradient of ``t[0]``.

    An adaptive solver's steps start at ``t[0]`` and their sizes are constants, so every step moves
    with ``t[0]`` (torchdiffeq's semantics); the solver itself then works on a detached ``t``.
    """

    def __init__(self, func, shift: torch.Tensor):
        self.func, self.shift = func, shift

    def __call__(self, t: torch.Tensor, y):
        return self.func(t + self.shift, y)

    def __getattr__(self, name: str):
        return getattr(self.func, name)  # step callbacks and hints such as ``jacobian_columns``


def _move_outputs_with_times(func, solution, times: torch.Tensor, offsets: torch.Tensor, layout: StateLayout):
    """``y_i + offset_i · func(t_i, y_i)`` for every output but the first: equal in value (the offsets are zero).

    ``offset_i`` is ``t_i - t_0`` as a zero carrying their gradients: the solve's steps moved with ``t_0``
    (``_ShiftedTime``), so an output moves with its own time relative to them, by ``f(t_i, y_i) dt_i``.
    """
    parts = layout.tensors(solution)
    moved = [[part[0]] for part in parts]
    for i in range(1, len(times)):
        slope = func(times[i], tuple(part[i] for part in parts) if layout.is_tuple else parts[0][i])
        for column, part, f in zip(moved, parts, layout.tensors(slope), strict=True):
            column.append(part[i] + offsets[i] * f.to(part.dtype))
    stacked = tuple(torch.stack(column) for column in moved)
    return stacked if layout.is_tuple else stacked[0]


def _flip_time_options(options: dict[str, Any]) -> None:
    for key in ("step_t", "jump_t"):
        if key in options and options[key] is not None:
            options[key] = -torch.as_tensor(options[key])
    if options.get("grid_constructor") is not None:
        user_grid = options["grid_constructor"]
        options["grid_constructor"] = lambda func, y0, t: -user_grid(func, y0, -t)


# --------------------------------------------------------------------------------------------


def odeint(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable | None = None,
):
    """Solve ``dy/dt = func(t, y), y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    A drop-in for ``torchdiffeq.odeint``. Args:
        func: ``func(t, y)`` with ``t`` a 0-d tensor and ``y`` shaped like ``y0`` (or a tuple like it).
        y0: the initial state, a floating tensor of any shape or a tuple of them.
        t: 1-D strictly increasing or decreasing times on y0's device; ``t[0]`` is the initial time.
        rtol, atol: relative and absolute tolerances (numbers, per-element tensors, or a tuple per tuple state).
        method: a registered solver name (``odecli list solvers``); default ``'dopri5'``.
        options: method options as torchdiffeq's (``step_size``, ``first_step``, ``max_num_steps``, ...)
            plus ``controller='pi'`` or ``'predictive'`` for adaptive methods, and ``batch_mode='independent'``: per-sample
            step control over the first dimension of ``y0`` (``odecli.solvers.independent``).
        event_fn: ``event_fn(t, y) -> Tensor``; solve until any component crosses zero. ``t`` must
            then hold two times (the start, and any later time giving the direction).

    Returns:
        ``(len(t), *y0.shape)`` tensor (a tuple of them for a tuple state); with ``event_fn``,
        ``(event_t, solution)`` where ``solution`` holds the states at ``t[0]`` and ``event_t``.
    """
    if isinstance(options, Mapping) and "batch_mode" in options:
        options = dict(options)
        if check_batch_mode(options.pop("batch_mode")) == "independent":
            return odeint_independent(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn)
    name, cls = resolve_method(method)
    problem = check_problem(name, cls, y0, t, rtol, atol, options)
    layout, options, rtol, atol = problem.layout, problem.options, problem.rtol, problem.atol
    is_tuple, first = layout.is_tuple, problem.first
    if event_fn is not None and len(t) != 2:
        raise InvalidTimeGrid(f"with event_fn, t must hold exactly two times (start and a later time for the direction), got {len(t)}.")
    if event_fn is None and sum(layout.sizes) == 0:
        # A state with no elements stays what it is; the implicit methods' Newton solve has no system to factorise.
        constant = tuple(part.unsqueeze(0).expand(len(t), *part.shape).clone() for part in problem.tensors)
        return constant if is_tuple else constant[0]

    supported = getattr(cls, "callbacks", frozenset())
    unsupported = {n for n in CALLBACK_NAMES if getattr(func, n, None) is not None} - set(supported)
    if unsupported:
        warnings.warn(f"Solver '{name}' does not support callbacks {sorted(unsupported)}.", UnsupportedCallbackWarning, stacklevel=2)

    # Gradients with respect to t, as torchdiffeq's graph gives them; nothing changes when t needs none.
    user_func, user_t, time_shift = func, t, None
    if t.requires_grad and torch.is_grad_enabled():
        if not getattr(cls, "differentiable", True):
            raise InvalidInputError(
                f"method '{name}' integrates outside autograd, so no gradient can reach t; use odeint_adjoint "
                "(it differentiates through the adjoint ODE) or a torch method such as 'dopri5'."
            )
        if event_fn is not None or not getattr(cls, "differentiates_times", False):
            time_shift = (t[0] - t[0].detach()).to(first.dtype)
            func = _ShiftedTime(func, time_shift)
            if event_fn is None and getattr(cls, "differentiates_output_times", False):
                # The solver differentiates each output in its time: t_i as a time after the moved t_0.
                t, time_shift = t.detach() + ((t - t.detach()) - (t[0] - t[0].detach())), None
            else:
                t = t.detach()

    reverse = len(t) > 1 and bool(t[1] < t[0])
    native = getattr(cls, "native_problem", False)
    combined_event = None
    if event_fn is not None:
        combined_event = combine_event_functions(event_fn, t[0], problem.tensors if is_tuple else first)

    if is_tuple or not native:
        wrap_reverse = reverse and not native
        solver_func = FlatStateFunc(func, layout, wrap_reverse)
        forward_func_attributes(solver_func, func, wrap_reverse)
        state = layout.flatten(y0)
        shape_norm_option(options, cls, layout)
        if combined_event is not None:
            event_inner = combined_event
            combined_event = lambda te, ye: event_inner(-te if wrap_reverse else te, layout.unflatten(ye))  # noqa: E731
        times = t
        if wrap_reverse:
            times = -t
            _flip_time_options(options)
    else:
        solver_func, state, times = func, first, t
        shape_norm_option(options, cls, layout)

    if stats.tracking() and torch.is_grad_enabled():
        solver_func = stats.count_direct_backward(solver_func)
    solver = cls(solver_func, state, rtol, atol, **options)
    if combined_event is not None:
        event_t, solution = solver.integrate_until_event(times[0], combined_event, direction=-1.0 if native and reverse else 1.0)
        if reverse and not native:
            event_t = -event_t
        event_t = event_t.to(t)
    else:
        solution = solver.integrate(times)
    stats.record_forward(solver.nfe, solver.steps_accepted, solver.steps_rejected)

    if is_tuple or not native:
        solution = layout.unflatten(solution.reshape(len(solution), -1))
    if time_shift is not None:
        if combined_event is not None:  # odeint_event differentiates the event time itself (implicit function theorem)
            output_times, offsets = torch.stack([t[0], event_t.reshape(())]), torch.stack([-time_shift, -time_shift])
        else:
            output_times, offsets = user_t.detach(), (user_t - user_t.detach()).to(first.dtype) - time_shift
        solution = _move_outputs_with_times(user_func, solution, output_times.to(first.dtype), offsets, layout)
    if combined_event is not None:
        return event_t, solution
    return solution


__all__ = ["odeint", "UnsupportedCallbackWarning"]
