"""``odeint_adjoint``: gradients of an ODE solve by solving the adjoint ODE backwards in time.

Chen et al. 2018 (Neural Ordinary Differential Equations), Section 2 and Appendix B: the forward
solve keeps no graph; the backward pass integrates the augmented system

    d/dt [ t_adj, y, a, a_params ] = [ -a·∂f/∂t, f(t, y), -a·∂f/∂y, -a·∂f/∂θ ]

from each output time to the previous one, so memory is O(1) in the number of solver steps. At
every output time the state is reset to its stored forward value (so errors in re-solving ``y``
backwards do not accumulate) and the incoming gradient ``dL/dy(t_i)`` is added to ``a``.

**Implicit backward solves.** The augmented dynamics detach ``y`` before their VJP, so autograd finds no
graph from them to the augmented state; instead they carry ``jacobian_matrix``, which an implicit
solver's Newton iteration takes (``jacobian.py``): from the ``n`` VJPs of f that give the rows of
``∂f/∂y``, ``∂f/∂θ`` (and ``∂f/∂t``) at once it assembles ``∂ẏ/∂y = J``, ``∂ȧ/∂a = -Jᵀ``,
``∂ȧ_θ/∂a = -(∂f/∂θ)ᵀ`` (and ``∂ȧ_t/∂a = -(∂f/∂t)ᵀ``), leaving out only the second-derivative block
``∂(ȧ, ȧ_θ, ȧ_t)/∂y = -aᵀ ∂²f/∂y·`` — what CVODES's adjoint does: a simplified Newton iteration only needs
an approximation of the Jacobian (its fixed point is the same), and the dropped block is proportional
to ``a``. Before, the Jacobian was taken by forward differences (``2n + 1`` evaluations, step √ε).

``adjoint_options={'norm': 'seminorm'}`` (Kidger, Chen and Lyons 2021, "Hey, that's not an ODE")
leaves the parameter adjoint ``a_params`` out of the step-size error norm: it is a pure integral
that feeds back into nothing, so its local error need not limit the step, and backward NFE drops.

Semantics follow ``torchdiffeq.odeint_adjoint`` (keyword names, defaults, tuple states, decreasing
``t``, ``adjoint_params``, ``callback_*_adjoint``) so existing Neural-ODE code runs unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from odecli.registry import SOLVERS
from odecli.solvers import stats
from odecli.solvers.base import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES
from odecli.solvers.compiled import COMPILE_OPTIONS
from odecli.solvers.controllers import SegmentedRMS, mixed_rms_norm, rms_norm
from odecli.solvers.errors import InvalidInputError
from odecli.solvers.jacobian import BATCHED_JACOBIAN_ROWS, jacobian_rows
from odecli.solvers.odeint import odeint
from odecli.solvers.problem import DEFAULT_METHOD, StateLayout, find_parameters

# --------------------------------------------------------------------------------------------
# The autograd Function.


class _AdjointSolve(torch.autograd.Function):
    """Forward: odeint without a graph. Backward: the augmented adjoint ODE between output times."""

    @staticmethod
    def forward(ctx, setup: _AdjointSetup, y0_flat: torch.Tensor, t: torch.Tensor, *params: torch.Tensor):
        structure = setup.structure
        with torch.no_grad():
            y0 = structure.unflatten(y0_flat)
            answer = odeint(setup.func, y0, t, rtol=setup.rtol, atol=setup.atol, method=setup.method,
                            options=setup.options, event_fn=setup.event_fn)
        if setup.event_fn is None:
            y_flat = structure.flatten(answer, lead=1)
            ctx.save_for_backward(t, y_flat, *params)
            ctx.setup = setup
            return y_flat
        event_t, solution = answer
        y_flat = structure.flatten(solution, lead=1)
        event_t = event_t.to(t)
        ctx.save_for_backward(t, y_flat, event_t, *params)
        ctx.setup = setup
        ctx.mark_non_differentiable(event_t)  # the event time's gradient is odeint_event's job
        return event_t, y_flat

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        setup: _AdjointSetup = ctx.setup
        if setup.event_fn is None:
            t, y, *params = ctx.saved_tensors
            grad_y = grads[0]
            times = t
        else:
            t, y, event_t, *params = ctx.saved_tensors
            grad_y = grads[1]
            # Backpropagate as if the solve had been asked for the event time (not through it).
            times = torch.cat([t[0].reshape(1), event_t.reshape(1)])
        with torch.no_grad(), stats.collected_apart() as inner:
            grad_y0, time_vjps, grad_params, direct_nfe = _solve_adjoint(setup, times, y, grad_y, tuple(params))
        stats.record_backward(inner.nfe_forward + direct_nfe, inner.steps_accepted)
        if time_vjps is not None and setup.event_fn is not None:
            time_vjps = torch.cat([time_vjps[0].reshape(1), torch.zeros_like(t[1:])])
        return (None, grad_y0, time_vjps, *grad_params)


class _AdjointSetup:
    """Everything the Function needs besides tensors (autograd cannot save non-tensors in ctx otherwise)."""

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)


def _solve_adjoint(setup, t, y, grad_y, params):
    """Integrate the augmented system from t[-1] back to t[0]; returns (dL/dy0, dL/dt, dL/dparams, nfe)."""
    structure, func = setup.structure, setup.func
    n = y.shape[-1]
    param_sizes = [p.numel() for p in params]
    t_requires_grad = setup.t_requires_grad
    direct_nfe = 0

    def flat_func(time: torch.Tensor, y_flat: torch.Tensor) -> torch.Tensor:
        return structure.flatten(func(time, structure.unflatten(y_flat)))

    dtype, device = y.dtype, y.device
    zero_time = torch.zeros(1, dtype=dtype, device=device)
    cast = any(p.dtype != dtype or p.device != device for p in params)

    # Called once per backward evaluation, so it does as little as it can: a single-tensor state is only
    # reshaped (views, no copy), no detach of the solver's (graph-free) time, one cat at the end. The
    # backward pass runs under no_grad, so that cat is graph-free although ``f`` carries a graph.
    def augmented_dynamics(time: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            y_now = aug[1 : 1 + n].detach().requires_grad_(True)
            minus_adj_y = aug[1 + n : 1 + 2 * n].neg()
            if t_requires_grad:
                time_ = time.detach().requires_grad_(True)
                f = flat_func(time_, y_now)
                vjp_t, vjp_y, *vjp_params = torch.autograd.grad(f, (time_, y_now, *params), minus_adj_y, allow_unused=True)
                vjp_t = zero_time if vjp_t is None else vjp_t.reshape(1).to(aug)
            else:
                f = flat_func(time, y_now)
                vjp_y, *vjp_params = torch.autograd.grad(f, (y_now, *params), minus_adj_y, allow_unused=True)
                vjp_t = zero_time
        # Parameters the vector field does not use get zero (not None) gradients, as in torchdiffeq.
        pieces = [vjp_t, f, minus_adj_y.new_zeros(n) if vjp_y is None else vjp_y]
        pieces += [torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1) for g, p in zip(vjp_params, params, strict=True)]
        if cast:
            pieces = [piece.to(aug) for piece in pieces]
        return torch.cat(pieces)

    size = 1 + 2 * n + sum(param_sizes)
    seeds = torch.eye(n, dtype=dtype, device=device)
    batched = [n > BATCHED_JACOBIAN_ROWS]

    def augmented_jacobian(time: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        """∂(augmented dynamics)/∂aug for an implicit solver's Newton iteration, from n VJPs of f — no differences.

        Exact but for the second-derivative block ∂(-aᵀ∂f/∂y, -aᵀ∂f/∂θ, -aᵀ∂f/∂t)/∂y, which is dropped
        (as CVODES's adjoint does): the rows of f's Jacobian in y, θ and t give ∂ẏ/∂y = J, ∂ȧ/∂a = -Jᵀ,
        ∂(ȧ_θ)/∂a = -(∂f/∂θ)ᵀ and ∂(ȧ_t)/∂a = -(∂f/∂t)ᵀ.
        """
        with torch.enable_grad():
            y_now = aug[1 : 1 + n].detach().requires_grad_(True)
            time_ = time.detach().requires_grad_(True) if t_requires_grad else time
            f = flat_func(time_, y_now)
            inputs = (y_now, *params, time_) if t_requires_grad else (y_now, *params)
            if f.requires_grad:
                rows, batched[0] = jacobian_rows(f, inputs, seeds, batched[0])
            else:
                rows = [None] * len(inputs)
        jac = aug.new_zeros(size, size)
        if rows[0] is not None:
            jac[1 : 1 + n, 1 : 1 + n] = rows[0]
            jac[1 + n : 1 + 2 * n, 1 + n : 1 + 2 * n] = -rows[0].T
        offset = 1 + 2 * n
        for p_rows, p_size in zip(rows[1 : 1 + len(params)], param_sizes, strict=True):
            if p_rows is not None:
                jac[offset : offset + p_size, 1 + n : 1 + 2 * n] = -p_rows.reshape(n, p_size).T.to(jac)
            offset += p_size
        if t_requires_grad and rows[-1] is not None:
            jac[0, 1 + n : 1 + 2 * n] = -rows[-1].reshape(n).to(jac)
        return jac

    _attach_adjoint_callbacks(augmented_dynamics, func, setup, n, param_sizes)
    # An implicit solver takes the augmented system's Jacobian from its blocks (no finite differences).
    augmented_dynamics.jacobian_matrix = augmented_jacobian
    # The dynamics read only y and its adjoint: with options={'jacobian': 'finite_difference'} an implicit
    # solver need not perturb the time and parameter adjoints (for a 252-parameter field: 5 evaluations, not 257).
    augmented_dynamics.jacobian_columns = (1, 1 + 2 * n)

    options = dict(setup.adjoint_options)
    if setup.adjoint_norm is not None:
        options["norm"] = _adjoint_norm(setup, n, param_sizes)

    aug = torch.cat([
        torch.zeros(1, dtype=dtype, device=device),
        y[-1],
        grad_y[-1],
        torch.zeros(sum(param_sizes), dtype=dtype, device=device),
    ])
    time_vjps = torch.empty(len(t), dtype=t.dtype, device=t.device) if t_requires_grad else None
    for i in range(len(t) - 1, 0, -1):
        if t_requires_grad:
            # Moving the output time t_i moves y(t_i) by f(t_i, y_i): dL/dt_i = <dL/dy_i, f>.
            f_i = flat_func(t[i], y[i])
            direct_nfe += 1
            dL_dti = (f_i.reshape(-1) * grad_y[i].reshape(-1)).sum()
            aug[0] -= dL_dti
            time_vjps[i] = dL_dti
        aug = odeint(augmented_dynamics, aug, t[i - 1 : i + 1].flip(0), rtol=setup.adjoint_rtol,
                     atol=setup.adjoint_atol, method=setup.adjoint_method, options=options)[1]
        aug = aug.clone()
        aug[1 : 1 + n] = y[i - 1]  # restart from the stored forward state, not the re-solved one
        aug[1 + n : 1 + 2 * n] += grad_y[i - 1]
    if t_requires_grad:
        time_vjps[0] = aug[0]
    grad_y0 = aug[1 + n : 1 + 2 * n]
    grad_params = [g.reshape(p.shape).to(p) for g, p in zip(torch.split(aug[1 + 2 * n :], param_sizes), params, strict=True)]
    return grad_y0, time_vjps, grad_params, direct_nfe


def _split_augmented(aug: torch.Tensor, n: int, param_sizes: list[int], param_shapes: Sequence[torch.Size]):
    """``(t_adj, y, a, a_params)`` of the flat augmented state, the parameter adjoints shaped like the parameters."""
    adj_params = [p.reshape(s) for p, s in zip(torch.split(aug[1 + 2 * n :], param_sizes), param_shapes, strict=True)]
    return aug[0], aug[1 : 1 + n], aug[1 + n : 1 + 2 * n], adj_params


def _attach_adjoint_callbacks(augmented_dynamics: Callable, func: Any, setup, n: int, param_sizes: list[int]) -> None:
    """``func.callback_step_adjoint`` etc. become the augmented system's ``callback_step`` etc.

    As in torchdiffeq they receive the augmented state as a tuple ``(t_adj, y, a, *a_params)``:
    ``y`` and ``a`` shaped like a tensor state (flat for a tuple state, as torchdiffeq flattens it).
    """
    structure = setup.structure

    def as_tuple(aug: torch.Tensor) -> tuple[torch.Tensor, ...]:
        adj_t, y_part, adj_y, adj_params = _split_augmented(aug, n, param_sizes, setup.param_shapes)
        if not structure.is_tuple:
            y_part, adj_y = structure.unflatten(y_part), structure.unflatten(adj_y)
        return (adj_t, y_part, adj_y, *adj_params)

    for name, adjoint_name in zip(CALLBACK_NAMES, ADJOINT_CALLBACK_NAMES, strict=True):
        callback = getattr(func, adjoint_name, None)
        if callback is not None:
            setattr(augmented_dynamics, name, lambda t0, aug, dt, _callback=callback: _callback(t0, as_tuple(aug), dt))


def _adjoint_norm(setup, n: int, param_sizes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The error norm of the backward solve on the flat augmented state ``[t_adj, y, a, a_params]``."""
    structure = setup.structure
    state_norm = setup.state_norm

    def split(aug: torch.Tensor):
        return _split_augmented(aug, n, param_sizes, setup.param_shapes)

    if setup.adjoint_norm in ("default", "seminorm") and (state_norm is rms_norm or isinstance(state_norm, SegmentedRMS)):
        # Every piece is an RMS: |t_adj|, then y's and a's (per tuple part), then each a_param.
        parts = structure.sizes if structure.is_tuple else [n]
        if setup.adjoint_norm == "seminorm":
            return SegmentedRMS([1, *parts, *parts], ignored=sum(param_sizes))
        return SegmentedRMS([1, *parts, *parts, *param_sizes])

    if setup.adjoint_norm == "seminorm":

        def seminorm(aug: torch.Tensor) -> torch.Tensor:
            adj_t, y_part, adj_y, _ = split(aug)
            return torch.stack([adj_t.abs(), state_norm(y_part), state_norm(adj_y)]).max()

        return seminorm

    if setup.adjoint_norm == "default":

        def default_norm(aug: torch.Tensor) -> torch.Tensor:
            adj_t, y_part, adj_y, adj_params = split(aug)
            return torch.stack([adj_t.abs(), state_norm(y_part), state_norm(adj_y), mixed_rms_norm(adj_params).to(aug)]).max()

        return default_norm

    user_norm = setup.adjoint_norm

    def custom_norm(aug: torch.Tensor) -> torch.Tensor:
        # The user's norm sees the augmented state in the user's structure: (t, *y, *a, *a_params).
        adj_t, y_part, adj_y, adj_params = split(aug)
        return user_norm((adj_t, *structure.tensors(structure.unflatten(y_part)), *structure.tensors(structure.unflatten(adj_y)), *adj_params))

    return custom_norm


def _state_norm(structure: StateLayout, forward_norm: Callable | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward solve's norm applied to a flat piece of the augmented state."""
    if forward_norm is not None:
        return lambda flat: forward_norm(structure.unflatten(flat))
    if structure.is_tuple:
        return SegmentedRMS(structure.sizes)
    return rms_norm


def _strictest(tol):
    """The backward solve's default tolerance: a tuple or per-element one (which does not fit the augmented
    state) becomes its smallest value; torchdiffeq fails there instead."""
    if isinstance(tol, (tuple, list)):
        return min(float(torch.as_tensor(part).min()) for part in tol)
    if torch.is_tensor(tol) and tol.numel() > 1:
        return float(tol.min())
    return tol


def _is_adaptive(method: str | None) -> bool:
    try:
        return bool(getattr(SOLVERS.get(method or DEFAULT_METHOD), "adaptive", True))
    except KeyError:
        return True  # an unknown name: odeint raises the helpful error itself


def odeint_adjoint(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
):
    """Like ``odeint``, but backpropagates by solving the adjoint ODE (O(1) memory in solver steps).

    Args:
        func: the vector field ``func(t, y)``; an ``nn.Module`` unless ``adjoint_params`` is given.
        y0, t, rtol, atol, method, options, event_fn: as for ``odeint``.
        adjoint_rtol, adjoint_atol, adjoint_method: for the backward solve; default to the forward ones
            (the smallest value of a tuple or per-element tolerance).
        adjoint_options: options of the backward solve; ``{'norm': 'seminorm'}`` excludes the parameter
            adjoint from the error norm (fewer backward steps). Defaults to ``options`` minus ``norm`` and
            ``compile``/``compile_backend`` (the backward field cannot be compiled).
        adjoint_params: tensors to differentiate with respect to; default ``func.parameters()``.
            Pass ``()`` for a func without parameters.

    Returns:
        As ``odeint``: the solution at every time in ``t``, or ``(event_t, solution)`` with ``event_fn``.
    """
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise InvalidInputError(
            "func must be an nn.Module so odeint_adjoint can find its parameters; otherwise pass them "
            "explicitly with adjoint_params=(...) (use adjoint_params=() if there are none)."
        )
    if not torch.is_tensor(t):
        raise InvalidInputError(f"t must be a 1-D torch.Tensor of times, got {type(t).__name__}.")
    if isinstance(options, dict) and options.get("batch_mode", "joint") != "joint":
        raise InvalidInputError(
            f"odeint_adjoint supports batch_mode='joint' only, got {options['batch_mode']!r}; "
            "use direct backprop (odeint) with batch_mode='independent'."
        )

    adjoint_rtol = _strictest(rtol) if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = _strictest(atol) if adjoint_atol is None else adjoint_atol
    if adjoint_method is None:
        adjoint_method = method
    if adjoint_method != method and options is not None and adjoint_options is None:
        raise InvalidInputError(
            "adjoint_method differs from method, so adjoint_options cannot be inferred from options; "
            "pass adjoint_options as well (adjoint_options={} for the method's defaults)."
        )
    if adjoint_options is None:
        # Not the compiled step either: the backward field calls torch.autograd.grad, which cannot be traced into one graph.
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm" and k not in COMPILE_OPTIONS}
    else:
        adjoint_options = dict(adjoint_options)  # never modify the caller's dict
    adjoint_norm = adjoint_options.pop("norm", "default")
    if not _is_adaptive(adjoint_method):
        adjoint_norm = None  # fixed-grid methods take no norm

    params = tuple(find_parameters(func)) if adjoint_params is None else tuple(adjoint_params)
    for i, p in enumerate(params):
        if not torch.is_tensor(p):
            raise InvalidInputError(f"adjoint_params[{i}] must be a torch.Tensor, got {type(p).__name__}.")
    used = tuple(p for p in params if p.requires_grad)
    if len(used) != len(params) and callable(adjoint_norm):
        warnings.warn(
            "Some adjoint_params do not require grad; they are left out of the backward solve and of the "
            "tensors your adjoint norm receives.",
            stacklevel=2,
        )

    structure = StateLayout(y0)
    y0_flat = structure.flatten(y0)
    setup = _AdjointSetup(
        func=func,
        structure=structure,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        event_fn=event_fn,
        adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol,
        adjoint_method=adjoint_method,
        adjoint_options=adjoint_options,
        adjoint_norm=adjoint_norm,
        state_norm=_state_norm(structure, (options or {}).get("norm")),
        param_shapes=[p.shape for p in used],
        t_requires_grad=t.requires_grad,
    )
    answer = _AdjointSolve.apply(setup, y0_flat, t, *used)
    if event_fn is None:
        return structure.unflatten(answer)
    event_t, solution = answer
    return event_t, structure.unflatten(solution)


__all__ = ["odeint_adjoint"]
