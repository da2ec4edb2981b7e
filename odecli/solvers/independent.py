"""Per-sample step control for a batch of independent problems (``options={'batch_mode': 'independent'}``).

torchdiffeq (and ``batch_mode='joint'``, the default) treats a batch ``y0[b]`` as one big system:
one step size, one error norm over every element, one accept/reject decision. A single stiff or
fast sample then forces tiny steps on all of them. Here, as in torchode (Lienen & Günnemann 2022,
"torchode: A Parallel ODE Solver for PyTorch", arXiv:2210.12375), each sample ``b`` (the first
dimension of ``y0``) has its own current time, step size, error norm (RMS over its own elements)
and acceptance; the vector field is still called once per stage on the whole batch. Samples that
have produced all their outputs are masked (step size 0) until the slowest one finishes.

The loop is the joint solver's (``adaptive.march``: step budget, attempt, acceptance, controller,
yielding accepted steps); per-sample control enters through its step rules (``step_rules``: limits,
acceptance and advance on ``(B,)`` tensors of times and step sizes, with one host read per attempt)
and the controllers' per-sample rules (``controllers``: Hairer's initial step, I or PI control with
torchdiffeq's defaults). Sample ``b`` therefore takes the same steps as ``odeint(func_b, y0[b:b+1], t)``
solving it alone, up to rounding in accept/reject ties. The step budget ``max_num_steps`` counts
attempts between two attempts that produced an output of any sample, as in joint mode.

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

import torch

from odecli.solvers import stats
from odecli.solvers.adaptive import AbstractAdaptiveSolver
from odecli.solvers.controllers import initial_step_sizes, per_sample_rms_norm
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
from odecli.solvers.runge_kutta import AbstractAdaptiveRungeKutta, AbstractRungeKutta, combine

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
            ``controller`` (``'i'``, ``'pi'`` or ``'predictive'``, each sample with its own controller state); ``batch_mode`` is accepted and ignored.
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
    solver = IndependentRungeKutta(cls, func, y0, rtol, atol, **options)
    solution = solver.integrate(times)
    stats.record_forward(solver.nfe, int(solver.steps_accepted.sum()), int(solver.steps_rejected.sum()))
    if return_stats:
        return solution, BatchStats(solver.nfe, solver.steps_accepted, solver.steps_rejected)
    return solution


def per_sample_tolerance(tol, name: str, y0: torch.Tensor) -> float | torch.Tensor:
    """A checked tolerance (``problem.check_tolerance``): a float, or one value per sample and element ``(B, n)``."""
    tol = check_tolerance(name, tol, [y0.shape], False, y0.device, y0.dtype)
    if isinstance(tol, float):
        return tol
    try:
        return torch.broadcast_to(tol, y0.shape).reshape(y0.shape[0], -1)
    except RuntimeError:
        raise InvalidInputError(f"{name} of shape {tuple(tol.shape)} does not broadcast to y0's shape {tuple(y0.shape)}.") from None


class PerSampleProgress:
    """Which outputs each sample has produced; shared by the per-sample step rules and ``integrate``."""

    def __init__(self, taus: torch.Tensor):
        batch, n_out = taus.shape
        self.taus = taus  # (B, T) increasing per row (tau = direction·t)
        # Each row with +inf appended: the time of a sample's next output, inf once it has them all.
        self.taus_then_never = torch.cat([taus, taus.new_full((batch, 1), math.inf)], dim=1)
        self.columns = torch.arange(n_out, device=taus.device)
        self.next_output = torch.ones(batch, dtype=torch.long, device=taus.device)  # per sample: the first output not yet produced
        self.next_tau = self.taus_then_never[:, 1]
        self.done = torch.zeros(batch, dtype=torch.bool, device=taus.device)
        self.active = ~self.done  # samples still stepping
        self.accept = self.done  # the last attempt's acceptance, (B,)
        self.crossed = self.done  # accepted samples whose last step reached their next output, (B,)
        self.any_crossed = False
        self.tau1 = taus[:, 0]  # where the last attempt ended


class PendingOutputs:
    """Accepted steps that produced outputs, kept until ``flush`` reads the outputs off them all at once.

    One dense-output evaluation per chunk of steps instead of one per step: the per-step cost is a
    copy of the (reused) stage buffer, and the chunk is bounded in memory.
    """

    ELEMENTS = 1 << 22  # stage elements kept at most (32 MiB in float64)
    MAX_STEPS = 64

    def __init__(self, taus: torch.Tensor, columns: torch.Tensor, dense_t: torch.Tensor, batch: int, n: int):
        self.taus, self.columns, self.dense_t, self.batch, self.n = taus, columns, dense_t, batch, n
        self.steps: list[tuple] = []
        self.rows: list[torch.Tensor] = []
        self.cols: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.capacity = None

    def add(self, tau0, step, y0, y1, stages, first, last) -> None:
        """An accepted step from ``tau0`` by ``step`` (B,) that produced outputs ``first .. last-1`` of each sample."""
        self.steps.append((tau0, step, y0, y1, stages, first, last))
        if self.capacity is None:
            self.capacity = max(1, min(self.MAX_STEPS, self.ELEMENTS // max(1, stages.numel())))
        if len(self.steps) >= self.capacity:
            self.flush()

    def flush(self) -> None:
        if not self.steps:
            return
        batch, n = self.batch, self.n
        tau0, step, y0, y1, stages, first, last = (torch.stack(column) for column in zip(*self.steps, strict=True))  # (R, B...) each
        self.steps = []
        produced = (self.columns >= first.unsqueeze(2)).logical_and_(self.columns < last.unsqueeze(2))  # (R, B, T)
        r, b, col = produced.nonzero(as_tuple=True)
        start, size = tau0[r, b], step[r, b]
        target = self.taus[b, col]
        weights = dense_weights(self.dense_t, ((target - start) / size).cpu().numpy(), 1.0, stages.dtype, stages.device)  # (k, s)
        sample_stages = stages.view(len(tau0), -1, batch, n)[r, :, b]  # (k, s, n): dt ⊙ k_i (see begin)
        inside = torch.baddbmm(y0.view(-1, batch, 1, n)[r, b], weights.unsqueeze(1), sample_stages).squeeze(1)
        at_end = (target == start + size).unsqueeze(1)
        self.rows.append(b)
        self.cols.append(col)
        self.values.append(torch.where(at_end, y1.view(-1, batch, n)[r, b], inside))


class IndependentRungeKutta(AbstractAdaptiveSolver):
    """An explicit pair with one step size per sample, on the one adaptive loop (``adaptive.march``).

    The loop's times, step sizes and acceptance are ``(B,)`` tensors here: ``step_rules`` gives the
    vectorised limit/judge/propose/advance (one host read per attempt: whether any sample is stuck,
    failed, produced an output or was accepted). A step's stages are the method's own stepper's, on each
    sample's step rescaled to θ ∈ [0, 1] (see ``begin``); the state is flat ``[B·n]`` as in joint mode.
    """

    lands_on_last_time = False

    def __init__(self, cls, func, y0: torch.Tensor, rtol, atol, **options: Any):
        self.tableau, self.order = cls.tableau, cls.order
        self.batch, self.n_sample = y0.shape[0], y0[0].numel()
        rtol, atol = per_sample_tolerance(rtol, "rtol", y0), per_sample_tolerance(atol, "atol", y0)
        super().__init__(func, y0, rtol, atol, **options)
        self.rtol, self.atol = rtol, atol  # (B, n) where given per element: one row per sample
        self.callback_step = self.callback_accept_step = self.callback_reject_step = None  # a joint-mode feature
        self.time_view = (self.batch,) + (1,) * (y0.ndim - 1)
        # The method's stepper computes the stages (of each step rescaled to θ ∈ [0, 1]: see ``begin``).
        self.stepper = cls(func, y0, 0.0, 0.0)
        self.steps_accepted = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.steps_attempted = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.progress: PerSampleProgress | None = None

    def evaluate(self, time: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``func`` on the batch at per-sample times ``time`` (B,) for a flat ``y``; flat, its shape checked."""
        self.nfe += 1
        out = self.func(time.to(self.dtype).view(self.time_view), y.view(self.shape))
        if not isinstance(out, torch.Tensor) or out.shape != self.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise FuncOutputMismatch(f"func(t, y) returned {got}, but the state y has shape {tuple(self.shape)}; they must match.")
        return out.reshape(self.n)

    def start(self, t0: torch.Tensor, direction: torch.Tensor):
        """``(y0 flat, f(t0, y0), first step sizes (B,))``."""
        y = self.y0.reshape(self.n)
        if not bool(torch.isfinite(y.detach()).all()):
            raise NonFiniteState(float(t0[0]), "initial state y0")
        f = self.evaluate(t0, y)
        if self.first_step is not None:
            return y, f, torch.full_like(t0, self.first_step)
        rows = (self.batch, self.n_sample)

        def evaluate_rows(time: torch.Tensor, y_rows: torch.Tensor) -> torch.Tensor:
            return self.evaluate(time, y_rows.reshape(self.n)).view(rows)

        # Hairer's rule per sample: the same function as joint mode's, with one norm per sample and (B,) times.
        return y, f, initial_step_sizes(evaluate_rows, t0, direction, y.view(rows), f.view(rows), self.order, self.rtol, self.atol, per_sample_rms_norm)

    def begin(self, y: torch.Tensor, f: torch.Tensor, grad: bool):
        """The batched ``attempt`` and ``next_slope``.

        Each sample's step ``t0_b → t0_b + dt_b`` is one step of size 1 of the method's own stepper on
        ``z(θ) = y(t0 + θ·dt)``, ``dz/dθ = dt ⊙ f(t0 + θ·dt, z)``, θ ∈ [0, 1]: the stages it computes are
        ``dt ⊙ k_i``, so its in-place fast path (one ``addmv`` per stage, reused buffers) serves every
        sample at once, and the solution, error estimate and dense output need no further ``dt``. The
        stepper is handed each stage's per-sample times, so f sees real times, not θ.
        """
        tab, dtype, rows, shape = self.tableau, self.dtype, (self.batch, self.n_sample), self.shape
        rtol, atol, progress, stepper, func = self.rtol, self.atol, self.progress, self.stepper, self.func
        carries, fsal, count = tab.carries_last_stage, tab.fsal, tab.stages - 1
        b, b_error = stepper.coefficients.b, stepper.coefficients.b_error
        c_column = torch.tensor(tab.c[1:], dtype=torch.float64, device=self.device)[:, None]
        c_is_one = c_column == 1.0
        stage_view, time_view = (count, *self.time_view), self.time_view
        times_in_state_dtype = dtype == torch.float64  # the loop's times are float64
        buffers = None if grad else stepper.stage_buffers_for_solve()
        slope, last_slope = f, None

        def field_keeping_last(stage_time: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            # The last stage's f, unscaled: the next step's first stage (FSAL) is it times the next dt.
            nonlocal last_slope
            last_slope = func(stage_time, z)
            return last_slope

        stepper.func = field_keeping_last

        def attempt(t0: torch.Tensor, dt: torch.Tensor, t1: torch.Tensor, h: torch.Tensor, y: torch.Tensor, f: torch.Tensor, grad: bool, nudge_end: bool):
            stage_times = torch.where(c_is_one, t1, torch.addcmul(t0, c_column, dt))
            if not times_in_state_dtype:
                stage_times, dt = stage_times.to(dtype), dt.to(dtype)
            stage_times = stage_times.view(stage_view).unbind(0)
            scale = dt.view(time_view)  # dt per sample, in the state's dtype and the batch's time shape
            before = stepper.nfe
            if buffers is None:
                y_last, stages = stepper.stages(0.0, 1.0, 1.0, y, (f.view(shape) * scale).reshape(-1), stage_times=stage_times, stage_scale=scale)
            else:
                torch.mul(f.view(shape), scale, out=buffers[2][0])
                y_last, stages = stepper.stages_in_place(0.0, 1.0, 1.0, y, buffers, False, stage_times, scale)
            self.nfe += stepper.nfe - before
            y1 = y_last if fsal else combine(y, stages, b, 1.0)
            with torch.no_grad():
                stages_, y_, y1_ = (stages, y, y1) if buffers is not None else (stages.detach(), y.detach(), y1.detach())
                error = torch.mv(stages_.T, b_error).view(rows)
                tolerance = torch.maximum(y_.abs(), y1_.abs()).view(rows).mul_(rtol).add_(atol)
                ratio = per_sample_rms_norm(error.div_(tolerance))
            return y1, stages, ratio if times_in_state_dtype else ratio.double(), None

        def next_slope(t1: torch.Tensor, y1: torch.Tensor, stages: torch.Tensor, f1, jumped: bool, direction) -> torch.Tensor:
            nonlocal slope
            following = last_slope.reshape(-1) if carries else self.evaluate(t1, y1)
            slope = torch.where(progress.accept[:, None], following.view(rows), slope.view(rows)).view(-1)
            return slope

        return attempt, next_slope

    def step_rules(self, direction: torch.Tensor, end):
        """The loop's arithmetic per sample: masks instead of branches, one host read per attempt."""
        min_step, max_step, progress = self.min_step, self.max_step, self.progress
        propose_per_sample, rows = self.controller.propose_per_sample, (self.batch, self.n_sample)

        # A step size that is not finite becomes max_step where that is finite, else min_step (as in joint mode).
        fallback = max_step if math.isfinite(max_step) else min_step

        def limit(tau: torch.Tensor, h: torch.Tensor):
            h = torch.nan_to_num(h, nan=fallback, posinf=fallback, neginf=fallback).clamp_(min_step, max_step)
            h.masked_fill_(progress.done, 0.0)  # finished samples stand still
            return h, h <= min_step, False

        def judge(t0, tau, tau1, h, y1, ratio, forced):
            active = progress.active
            with torch.no_grad():
                accept = (ratio <= 1).logical_or_(forced).logical_and_(active)
                crossed = (tau1 >= progress.next_tau).logical_and_(accept)
                trouble = (tau1 <= tau).logical_or_(torch.isfinite(ratio).logical_not_()).logical_and_(active)
                any_trouble, any_crossed, any_accepted = torch.stack([trouble, crossed, accept]).any(dim=1).tolist()
            if any_trouble:
                stuck = (tau1 <= tau).logical_and_(active)
                if bool(stuck.any()):
                    bad = int(stuck.nonzero()[0])
                    raise StepSizeTooSmall(float(t0[bad]), float(h[bad]), min_step)
                bad = trouble.nonzero()[:, 0]  # a ratio that is not finite: rejected, unless the state itself is
                if not bool(torch.isfinite(y1.detach().view(rows)[bad]).all()):
                    raise NonFiniteState(float(t0[bad[0]]))
            self.steps_accepted += accept
            self.steps_attempted += active  # rejected = attempted - accepted, counted once at the end
            progress.accept, progress.crossed, progress.any_crossed, progress.tau1 = accept, crossed, any_crossed, tau1
            return accept, ratio, any_accepted

        def propose(h, ratio, accept):
            with torch.no_grad():
                return propose_per_sample(h, ratio, accept)

        def advance(tau, tau1, y, y1, h, proposal):
            accept = progress.accept
            return torch.where(accept, tau1, tau), torch.where(accept[:, None], y1.view(rows), y.view(rows)).view(-1), proposal

        return limit, judge, propose, advance

    def budget_exceeded(self, tau, direction, end) -> MaxStepsExceeded:
        steps = torch.where(self.progress.done, -1, self.steps_attempted)
        worst = int(steps.argmax())
        return MaxStepsExceeded(float(direction[worst] * tau[worst]), self.max_num_steps)

    def integrate(self, taus_t: torch.Tensor) -> torch.Tensor:
        batch, n, n_out = self.batch, self.n_sample, taus_t.shape[1]
        if n_out == 1:
            return self.y0.unsqueeze(0)
        direction = torch.sign(taus_t[:, 1] - taus_t[:, 0])  # float64 (B,)
        taus = (taus_t * direction[:, None]).contiguous()  # increasing per row
        progress = self.progress = PerSampleProgress(taus)
        y, f, h = self.start(taus_t[:, 0], direction)
        grad = self._needs_graph(y, f)
        outputs = PendingOutputs(taus, progress.columns, self.stepper.coefficients.dense_t, batch, n)
        outputs.rows.append(torch.arange(batch, device=self.device))
        outputs.cols.append(torch.zeros(batch, dtype=torch.long, device=self.device))
        outputs.values.append(y.view(batch, n))
        self.steps_since_output = 0
        for tau0, step, y0, y1, stages in self.march(taus[:, 0].clone(), direction, y, f, h, grad):
            if not progress.any_crossed:
                continue
            reached = torch.searchsorted(taus, progress.tau1.unsqueeze(1), right=True).squeeze(1)
            first = progress.next_output
            last = torch.where(progress.crossed, reached, first)
            outputs.add(tau0, step, y0, y1, stages if grad else stages.clone(), first, last)  # the buffer is reused
            progress.next_output = last
            progress.next_tau = progress.taus_then_never.gather(1, last.unsqueeze(1)).squeeze(1)
            progress.done = last >= n_out
            progress.active = ~progress.done
            self.steps_since_output = 0
            if bool(progress.done.all()):
                break
        outputs.flush()
        self.steps_rejected = self.steps_attempted - self.steps_accepted
        flat = torch.cat(outputs.values)
        solution = flat.new_zeros(batch, n_out, n).index_put((torch.cat(outputs.rows), torch.cat(outputs.cols)), flat)
        return solution.transpose(0, 1).reshape(n_out, *self.shape)


__all__ = ["odeint_independent", "check_batch_mode", "BatchStats", "BATCH_MODES"]
