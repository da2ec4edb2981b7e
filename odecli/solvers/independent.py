"""Per-sample step control for a batch of independent problems (``options={'batch_mode': 'independent'}``).

torchdiffeq (and ``batch_mode='joint'``, the default) treats a batch ``y0[b]`` as one big system:
one step size, one error norm over every element, one accept/reject decision. A single stiff or
fast sample then forces tiny steps on all of them. Here, as in torchode (Lienen & Günnemann 2022,
"torchode: A Parallel ODE Solver for PyTorch", arXiv:2210.12375), each sample ``b`` (the first
dimension of ``y0``) has its own current time, step size, error norm (RMS over its own elements)
and acceptance; the vector field is still called once per stage on the whole batch. Samples that
have produced all their outputs are masked (step size 0) until the slowest one finishes.

The step-size rules are the joint solver's (``odecli.solvers.controllers``: Hairer's initial step,
torchdiffeq's I controller and defaults), applied per sample, so sample ``b`` takes the same steps
as ``odeint(func_b, y0[b:b+1], t)`` solving it alone, up to rounding in accept/reject ties.

Conventions:

* ``t`` is shared, shape ``(T,)``, or per sample, shape ``(B, T)`` (each row strictly monotone,
  in either direction). The result has shape ``(T, *y0.shape)`` as in joint mode:
  ``out[k, b]`` is sample ``b`` at its ``k``-th time.
* ``func(t, y)`` receives the batch's current times as a tensor of shape ``(B, 1, ..., 1)`` (as
  many dims as ``y``), so elementwise time dependence (``y * t``) and ``t.expand(*y.shape[:-1], 1)``
  work unchanged (torchode passes shape ``(B,)``).
* NFE counts batched calls of ``func``; ``steps_accepted``/``steps_rejected`` in
  ``odecli.solvers.stats`` sum the per-sample counts, and ``odeint_independent(..., return_stats=True)``
  also returns them per sample.
* Gradients: direct backprop only (the controller is outside the graph, as in joint mode).
  Adaptive explicit Runge–Kutta methods only; anything else raises ``InvalidInputError`` naming the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from odecli.solvers import stats
from odecli.solvers.controllers import (
    DEFAULT_MAX_NUM_STEPS,
    StepLimits,
    initial_step_sizes,
    make_controller,
    per_sample_rms_norm,
)
from odecli.solvers.errors import (
    FuncOutputMismatch,
    InvalidInputError,
    InvalidTimeGrid,
    MaxStepsExceeded,
    NonFiniteState,
    StepSizeTooSmall,
)
from odecli.solvers.interpolation import dense_weights
from odecli.solvers.problem import check_tolerance, resolve_method
from odecli.solvers.runge_kutta import AbstractAdaptiveRungeKutta, AbstractRungeKutta

BATCH_MODES = ("joint", "independent")
SUPPORTED_OPTIONS = frozenset({"first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "controller"})


def check_batch_mode(value: Any) -> str:
    """``value`` if it names a batch mode, else ``InvalidInputError`` listing the allowed ones."""
    if not isinstance(value, str) or value not in BATCH_MODES:
        raise InvalidInputError(f"batch_mode must be one of {', '.join(repr(m) for m in BATCH_MODES)}, got {value!r}.")
    return value


@dataclass
class BatchStats:
    """Counts of one independent-batch solve: batched evaluations and per-sample steps."""

    nfe: int
    steps_accepted: torch.Tensor  # (B,) long
    steps_rejected: torch.Tensor  # (B,) long


def _check_method(method: str | None):
    name, cls = resolve_method(method)
    if not (isinstance(cls, type) and issubclass(cls, AbstractAdaptiveRungeKutta)):
        if isinstance(cls, type) and issubclass(cls, AbstractRungeKutta):
            why = f"method '{name}' steps on a fixed grid, which is the same for every sample already"
        else:
            why = f"method '{name}' is not an explicit Runge-Kutta method"
        raise InvalidInputError(
            f"batch_mode='independent' needs an adaptive explicit Runge-Kutta method (dopri5, tsit5, bosh3, ...); {why}. "
            "Use batch_mode='joint' with it, or choose an adaptive explicit method."
        )
    return name, cls


def _check_times(t: Any, batch: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise InvalidTimeGrid("t must be a floating point torch.Tensor of shape (T,) or (batch, T).")
    if t.device != like.device:
        raise InvalidTimeGrid(f"t is on {t.device} but y0 is on {like.device}; move t with t.to(y0.device).")
    if t.ndim == 1:
        t = t.unsqueeze(0).expand(batch, -1)
    elif t.ndim != 2 or t.shape[0] != batch:
        raise InvalidTimeGrid(f"with batch_mode='independent', t must have shape (T,) or (batch={batch}, T), got {tuple(t.shape)}.")
    if t.shape[1] == 0:
        raise InvalidTimeGrid("t is empty; it needs at least the initial time.")
    with torch.no_grad():
        times = t.detach().to(torch.float64)
        if not bool(torch.isfinite(times).all()):
            raise InvalidTimeGrid("t contains NaN or Inf.")
        steps = times[:, 1:] - times[:, :-1]
        monotone = (steps > 0).all(dim=1) | (steps < 0).all(dim=1)
        if not bool(monotone.all()):
            bad = int((~monotone).nonzero()[0])
            raise InvalidTimeGrid(f"t must be strictly increasing or strictly decreasing for every sample; row {bad} is not.")
    return times


def odeint_independent(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable | None = None,
    return_stats: bool = False,
):
    """Solve a batch of independent problems, each with its own adaptive steps (see the module docstring).

    Args:
        func: ``func(t, y)`` on the whole batch; ``t`` has shape ``(B, 1, ..., 1)``.
        y0: ``(B, ...)``, the batch along the first dimension.
        t: ``(T,)`` shared or ``(B, T)`` per-sample output times.
        rtol, atol: numbers, or tensors broadcastable to ``y0`` (e.g. per sample, shape ``(B, 1)``).
        method: an adaptive explicit Runge–Kutta method (default ``dopri5``).
        options: ``first_step, min_step, max_step, safety, ifactor, dfactor, max_num_steps``,
            ``controller`` (``'i'`` or ``'pi'``, each sample with its own controller state); ``batch_mode`` is accepted and ignored.
        return_stats: also return a ``BatchStats`` with per-sample step counts.

    Returns:
        ``(T, *y0.shape)``; with ``return_stats``, ``(solution, BatchStats)``.
    """
    name, cls = _check_method(method)
    if event_fn is not None:
        raise InvalidInputError("event_fn is not supported with batch_mode='independent'; use batch_mode='joint'.")
    if not isinstance(y0, torch.Tensor):
        raise InvalidInputError(
            f"batch_mode='independent' needs y0 to be one tensor of shape (batch, ...), got {type(y0).__name__}; "
            "concatenate a tuple state along its last dimension, or use batch_mode='joint'."
        )
    if y0.ndim < 1 or y0.shape[0] == 0 or not y0.is_floating_point():
        raise InvalidInputError(f"batch_mode='independent' needs a floating y0 of shape (batch, ...) with batch >= 1, got shape {tuple(y0.shape)} and dtype {y0.dtype}.")
    options = dict(options or {})
    options.pop("batch_mode", None)
    unknown = sorted(set(options) - SUPPORTED_OPTIONS)
    if unknown:
        raise InvalidInputError(
            f"options {unknown} are not supported with batch_mode='independent' (supported: {', '.join(sorted(SUPPORTED_OPTIONS))}); use batch_mode='joint' for them."
        )
    batch = y0.shape[0]
    times = _check_times(t, batch, y0)
    if stats.tracking() and torch.is_grad_enabled():
        func = stats.count_direct_backward(func)  # one backward NFE per batched evaluation in the graph
    solver = _IndependentRK(cls, func, y0, rtol, atol, **options)
    solution = solver.integrate(times)
    stats.record_forward(solver.nfe, int(solver.steps_accepted.sum()), int(solver.steps_rejected.sum()))
    if return_stats:
        return solution, BatchStats(solver.nfe, solver.steps_accepted, solver.steps_rejected)
    return solution


class _IndependentRK:
    """The vectorised step loop: per-sample ``tau = direction·t``, ``h``, error ratio and acceptance."""

    def __init__(self, cls, func, y0: torch.Tensor, rtol, atol, first_step=None, min_step=0.0, max_step=math.inf,
                 safety=0.9, ifactor=10.0, dfactor=0.2, max_num_steps=DEFAULT_MAX_NUM_STEPS, controller="i"):
        self.tableau, self.order = cls.tableau, cls.order
        self.func, self.y0 = func, y0
        self.batch, self.shape = y0.shape[0], y0.shape
        self.n = y0[0].numel()
        self.dtype, self.device = y0.dtype, y0.device
        self.rtol, self.atol = self._tolerance(rtol, "rtol"), self._tolerance(atol, "atol")
        self.first_step, self.min_step, self.max_step, self.max_num_steps = StepLimits.parse(first_step, min_step, max_step, max_num_steps)
        self.controller = make_controller(controller, self.order, safety, ifactor, dfactor)
        self.time_view = (self.batch,) + (1,) * (y0.ndim - 1)
        self.nfe = 0
        self.steps_accepted = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.steps_rejected = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        tab = self.tableau
        self.a = [[float(v) for v in row] for row in tab.a]
        self.b = [float(v) for v in tab.b]
        self.b_error = [float(v) for v in tab.b_error]
        self.c = [float(v) for v in tab.c]
        self.dense_t = np.ascontiguousarray(np.asarray(tab.dense, dtype=np.float64).T)  # [degree, stages]

    def _tolerance(self, tol, name: str):
        """A checked tolerance (``problem.check_tolerance``): a float, or one value per sample and element ``(B, n)``."""
        tol = check_tolerance(name, tol, [self.shape], False, self.device, self.dtype)
        if isinstance(tol, float):
            return tol
        try:
            return torch.broadcast_to(tol, self.shape).reshape(self.batch, self.n)
        except RuntimeError:
            raise InvalidInputError(f"{name} of shape {tuple(tol.shape)} does not broadcast to y0's shape {tuple(self.shape)}.") from None

    def _eval(self, time: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``func`` on the batch at per-sample times ``time`` (B,) float64; returns ``(B, n)``."""
        self.nfe += 1
        out = self.func(time.to(self.dtype).view(self.time_view), y.view(self.shape))
        if not isinstance(out, torch.Tensor) or out.shape != self.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise FuncOutputMismatch(f"func(t, y) returned {got}, but the state y has shape {tuple(self.shape)}; they must match.")
        return out.reshape(self.batch, self.n)

    def _eval_at(self, time: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``func`` at per-sample times already in the state's dtype; the output was checked by ``_eval``."""
        self.nfe += 1
        return self.func(time.view(self.time_view), y.view(self.shape)).reshape(self.batch, self.n)

    def _initial_step(self, tau: torch.Tensor, direction: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if self.first_step is not None:
            return torch.full_like(tau, self.first_step)
        # Hairer's rule per sample: the same function as joint mode's, with one norm per sample and (B,) times.
        return initial_step_sizes(self._eval, direction * tau, direction, y, f, self.order, self.rtol, self.atol, per_sample_rms_norm)

    def integrate(self, taus_t: torch.Tensor) -> torch.Tensor:
        batch, n, n_out = self.batch, self.n, taus_t.shape[1]
        y = self.y0.reshape(batch, n)
        if n_out == 1:
            return self.y0.unsqueeze(0)
        device, dtype = self.device, self.dtype
        direction = torch.sign(taus_t[:, 1] - taus_t[:, 0])  # float64 (B,)
        taus = (taus_t * direction[:, None]).contiguous()  # increasing per row
        tau = taus[:, 0].clone()
        if not bool(torch.isfinite(y.detach()).all()):
            raise NonFiniteState(float(taus_t[0, 0]), "initial state y0")
        f = self._eval(direction * tau, y)
        h = self._initial_step(tau, direction, y, f)
        tab, carries, fsal = self.tableau, self.tableau.carries_last_stage, self.tableau.fsal
        a_rows = [torch.tensor(row, dtype=dtype, device=device) for row in self.a]
        b = torch.tensor(self.b, dtype=dtype, device=device)
        b_error = torch.tensor(self.b_error, dtype=dtype, device=device)
        columns = torch.arange(n_out, device=device)
        c_column = torch.tensor(self.c, dtype=torch.float64, device=device)[:, None]
        c_is_one = c_column == 1.0
        j = torch.ones(batch, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        rows, cols, values = [torch.arange(batch, device=device)], [torch.zeros(batch, dtype=torch.long, device=device)], [y]
        attempts = 0
        while True:
            h = torch.where(torch.isfinite(h), h, torch.full_like(h, self.min_step)).clamp(self.min_step, self.max_step)
            h = torch.where(done, torch.zeros_like(h), h)
            attempts += 1
            if attempts > self.max_num_steps:
                worst = int(torch.where(done, -1, self.steps_accepted + self.steps_rejected).argmax())
                raise MaxStepsExceeded(float(direction[worst] * tau[worst]), self.max_num_steps)
            tau1 = tau + h
            dt = (direction * h).to(dtype)[:, None]
            # Every stage's time at once, (s, B): direction·(tau + c_i h), with tau1 itself where c_i = 1.
            stage_times = torch.where(c_is_one, tau1, torch.addcmul(tau, c_column, h)).mul_(direction).to(dtype)
            ks, yi = [f], y
            for i in range(1, tab.stages):
                # y + dt · Σ_j a_ij k_j for the whole batch: one stack, one matmul, one addcmul.
                yi = torch.addcmul(y, dt, torch.matmul(a_rows[i], torch.stack(ks, dim=1)))
                ks.append(self._eval_at(stage_times[i], yi))
            stages = torch.stack(ks, dim=1)  # (B, s, n)
            y1 = yi if fsal else torch.addcmul(y, dt, torch.matmul(b, stages))
            with torch.no_grad():
                error = dt * torch.matmul(b_error, stages.detach())
                tolerance = torch.maximum(y.detach().abs(), y1.detach().abs()).mul_(self.rtol).add_(self.atol)
                ratio = per_sample_rms_norm(error.div_(tolerance)).double()
                accept = ((ratio <= 1) | (h <= self.min_step)) & ~done
                # Outputs this step reaches, per sample: columns j .. reached-1 of its time row.
                reached = torch.searchsorted(taus, tau1[:, None], right=True)[:, 0]
                hits = (columns >= j[:, None]) & (columns < reached[:, None]) & accept[:, None]
                stuck = (tau1 <= tau) & ~done
                trouble = ~torch.isfinite(ratio) & ~done
                flags = torch.stack([stuck.any(), trouble.any(), hits.any(), accept.any()]).tolist()
            if flags[0]:
                bad = int(stuck.nonzero()[0])
                raise StepSizeTooSmall(float(direction[bad] * tau[bad]), float(h[bad]), self.min_step)
            if flags[1]:
                bad = trouble.nonzero()[:, 0]
                if not bool(torch.isfinite(y1.detach()[bad]).all()):
                    raise NonFiniteState(float(direction[bad[0]] * tau[bad[0]]))
            self.steps_accepted += accept
            self.steps_rejected += ~accept & ~done
            if flags[2]:
                idx, col = hits.nonzero(as_tuple=True)
                target = taus[idx, col]
                weights = dense_weights(self.dense_t, ((target - tau[idx]) / h[idx]).cpu().numpy(), 1.0, dtype, device)  # (k, s)
                inside = torch.addcmul(y[idx], dt[idx], torch.matmul(weights.unsqueeze(1), stages[idx]).squeeze(1))
                at_end = (target == tau1[idx])[:, None]
                rows.append(idx)
                cols.append(col)
                values.append(torch.where(at_end, y1[idx], inside))
                j = torch.maximum(j, torch.where(accept, reached, j))
            if flags[3]:
                keep = accept[:, None]
                y = torch.where(keep, y1, y)
                f_next = ks[-1] if carries else self._eval(direction * tau1, y1)
                f = torch.where(keep, f_next, f)
                tau = torch.where(accept, tau1, tau)
                done = j >= n_out
                if flags[2] and bool(done.all()):
                    break
            with torch.no_grad():
                h = self.controller.propose_per_sample(h, ratio, accept).clamp(self.min_step, self.max_step)
        flat = torch.cat(values)
        solution = flat.new_zeros(batch, n_out, n).index_put((torch.cat(rows), torch.cat(cols)), flat)
        return solution.transpose(0, 1).reshape(n_out, *self.shape)


__all__ = ["odeint_independent", "check_batch_mode", "BatchStats", "BATCH_MODES"]
