"""Terminal events: solve until ``event_fn(t, y)`` crosses zero, with gradients through the event time.

Semantics are torchdiffeq's (main branch and 0.2.5 agree):

* ``odeint(..., event_fn=g)`` integrates from ``t[0]`` until any component of ``g(t, y)`` changes
  sign and returns ``(event_t, solution)`` with ``solution = [y0, y(event_t)]``. The solvers locate
  the crossing with ``find_event``: bisection on the step's dense output (no extra ``func`` calls)
  down to ``atol`` in time. Several event components are merged by ``combine_event_functions``.
* ``odeint_event(func, y0, t0, event_fn=g, reverse_time=False, odeint_interface=odeint, **kwargs)``
  wraps such a solve so that ``event_t`` is differentiable. By the implicit function theorem,
  ``g(t_e, y(t_e)) = 0`` gives ``dt_e = -(∂g/∂y · dy) / (∂g/∂t + ∂g/∂y · f(t_e, y_e))``; the
  gradient reaching ``t_e`` (and the part of ``dL/dy_e`` that moving ``t_e`` causes) is rerouted into
  the gradient of the final state, which then flows back through the solve (direct or adjoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from odecli.solvers.errors import InvalidInputError


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


class _EventTimeGradient(torch.autograd.Function):
    """Identity on ``(event_t, state)``; backward turns ``dL/dt_e`` into a state gradient."""

    @staticmethod
    def forward(ctx, func, event_fn, event_t, state):
        ctx.func, ctx.event_fn = func, event_fn
        ctx.save_for_backward(event_t, state)
        return event_t.detach(), state.detach()

    @staticmethod
    def backward(ctx, grad_t, grad_state):
        event_t, state = ctx.saved_tensors
        with torch.enable_grad():
            t_ = event_t.detach().clone().requires_grad_(True)
            y_ = state.detach().clone().requires_grad_(True)
            g = ctx.event_fn(t_, y_)
            dg_dt, dg_dy = torch.autograd.grad(g, (t_, y_), allow_unused=True)
        with torch.no_grad():
            f = ctx.func(event_t, state)
        dg_dt = torch.zeros_like(event_t) if dg_dt is None else dg_dt
        dg_dy = torch.zeros_like(state) if dg_dy is None else dg_dy
        grad_t = torch.zeros_like(event_t) if grad_t is None else grad_t
        grad_state = torch.zeros_like(state) if grad_state is None else grad_state
        # Total derivative of g along the trajectory at the event.
        dg_total = dg_dt + (dg_dy * f).sum()
        # dL/dt_e collects the direct gradient and the state moving with the end time (dy = f dt).
        grad_t = grad_t + (grad_state * f).sum()
        # 1e-12 keeps a grazing event (dg_total = 0, the time is ill-defined) finite, as torchdiffeq.
        grad_state = grad_state + dg_dy * (-grad_t / (dg_total + 1e-12))
        return None, None, None, grad_state


def _odeint() -> Callable[..., Any]:
    from odecli.solvers.odeint import odeint

    return odeint


def odeint_event(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t0: torch.Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable | None = None,
    **kwargs: Any,
):
    """Solve from ``t0`` until ``event_fn(t, y) = 0``; returns ``(event_t, solution)``, both differentiable.

    Args:
        func, y0: the vector field and initial state (a tensor or tuple of tensors).
        t0: the start time (a tensor; it may require grad).
        event_fn: ``event_fn(t, y) -> Tensor``; the solve stops when any component crosses zero.
        reverse_time: integrate towards decreasing time.
        odeint_interface: ``odeint`` (default) or ``odeint_adjoint``.
        **kwargs: passed on (rtol, atol, method, options, adjoint_*).

    Returns:
        ``event_t`` (0-d) and ``solution`` of shape ``(2, *y0.shape)``: the states at ``t0`` and ``event_t``.
    """
    if not torch.is_tensor(t0):
        raise InvalidInputError(f"t0 must be a torch.Tensor (a 0-d time), got {type(t0).__name__}.")
    if t0.numel() != 1:
        raise InvalidInputError(f"t0 must hold a single time, got shape {tuple(t0.shape)}.")
    if odeint_interface is None:
        odeint_interface = _odeint()
    direction = -1.0 if reverse_time else 1.0
    # The end time only fixes the direction; the solve runs until the event.
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + direction])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)

    is_tuple = isinstance(y0, (tuple, list))
    if is_tuple:
        shapes = [s.shape[1:] for s in solution]
        sizes = [math.prod(shape) for shape in shapes]
        state = torch.cat([s[-1].reshape(-1) for s in solution])

        def unflatten(flat):
            return tuple(p.reshape(shape) for p, shape in zip(torch.split(flat, sizes), shapes, strict=True))

        def flat_func(t_, y_):
            return torch.cat([o.reshape(-1) for o in func(t_, unflatten(y_))])

        y0_for_signs = tuple(y0)
    else:
        state = solution[-1]
        flat_func, y0_for_signs = func, y0

    combined = combine_event_functions(event_fn, t0.reshape(()).detach(), y0_for_signs)
    if is_tuple:
        combined_flat = lambda t_, y_: combined(t_, unflatten(y_))  # noqa: E731
    else:
        combined_flat = combined
    event_t, state = _EventTimeGradient.apply(flat_func, combined_flat, event_t.reshape(()), state)

    if is_tuple:
        solution = tuple(torch.cat([s[:-1], s_end[None]], dim=0) for s, s_end in zip(solution, unflatten(state), strict=True))
    else:
        solution = torch.cat([solution[:-1], state[None]], dim=0)
    return event_t, solution


__all__ = ["find_event", "combine_event_functions", "odeint_event"]
