"""``odeint_event``: solve until ``event_fn(t, y)`` crosses zero, with gradients through the event time.

Semantics are torchdiffeq's (main branch and 0.2.5 agree). ``odeint_event(func, y0, t0, event_fn=g,
reverse_time=False, odeint_interface=odeint, **kwargs)`` wraps a terminal-event solve
(``odeint(..., event_fn=g)``, located by ``odecli.solvers.events``) so that ``event_t`` is
differentiable. By the implicit function theorem, ``g(t_e, y(t_e)) = 0`` gives
``dt_e = -(∂g/∂y · dy) / (∂g/∂t + ∂g/∂y · f(t_e, y_e))``; the gradient reaching ``t_e`` (and the
part of ``dL/dy_e`` that moving ``t_e`` causes) is rerouted into the gradient of the final state,
which then flows back through the solve (direct or adjoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from odecli.solvers.errors import InvalidInputError
from odecli.solvers.events import combine_event_functions
from odecli.solvers.odeint import odeint
from odecli.solvers.problem import StateLayout


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
        odeint_interface = odeint
    direction = -1.0 if reverse_time else 1.0
    # The end time only fixes the direction; the solve runs until the event.
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + direction])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)

    # Rerouted on the flat state: the gradient of the final state carries the event time's.
    layout = StateLayout(y0)
    flat_solution = layout.flatten(solution, lead=1)
    combined = combine_event_functions(event_fn, t0.reshape(()).detach(), tuple(y0) if layout.is_tuple else y0)

    def flat_func(t_, y_):
        return layout.flatten(func(t_, layout.unflatten(y_)))

    def flat_event(t_, y_):
        return combined(t_, layout.unflatten(y_))

    event_t, state = _EventTimeGradient.apply(flat_func, flat_event, event_t.reshape(()), flat_solution[-1])
    return event_t, layout.unflatten(torch.cat([flat_solution[:-1], state[None]]))


__all__ = ["odeint_event"]
