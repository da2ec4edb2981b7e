"""Explicit Runge–Kutta methods, adaptive and fixed-grid, with one generic stepper.

Every method here is a tableau (``odecli.solvers.tableau``) and a four-line class. The stepper is
written for speed at small states, where torchdiffeq spends ~97% of its time in overhead:

* all stages live in one preallocated ``[stages, n]`` buffer and each stage input is one
  ``torch.addmv(y0, K[:i].T, a_i, alpha=h)`` (``torch.addmm`` for a ``[1, n]`` state, which then
  needs no ``view``); the views of the buffer are made once per solve; tableau tensors once per
  dtype/device;
* times and step sizes are Python floats; the error ratio is ``h/rtol · norm(e / (atol/rtol + max|y|))``,
  seven small ops and one ``.item()`` per step; controllers are float arithmetic;
* ``func`` is called directly (a single-tensor state keeps its shape; decreasing time is handled by
  a negative step, not a wrapper), with a fresh tensor for every stage input and time;
* dense output costs nothing on steps without requested times; for small states the outputs of
  many steps are evaluated together in one batched product (``interpolation.DenseOutputs``).

When gradients are needed (``y0`` or the output of ``func`` requires grad) the stages are kept as a
list and stacked instead of written in place, so autograd sees an ordinary graph.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch

from odecli.registry import SOLVERS
from odecli.solvers.base import CALLBACK_NAMES, AbstractSolver, output_dtype_accepted
from odecli.solvers.controllers import (
    DEFAULT_MAX_NUM_STEPS,
    StepLimits,
    flat_tolerance,
    make_controller,
    rms_norm,
    select_initial_step,
)
from odecli.solvers.errors import (
    FuncOutputMismatch,
    InvalidInputError,
    MaxStepsExceeded,
    NonFiniteState,
    StepSizeTooSmall,
)
from odecli.solvers.events import find_event
from odecli.solvers.fixed_grid import AbstractFixedGridSolver
from odecli.solvers.grid import nudge, nudge_time
from odecli.solvers.interpolation import DenseOutputs, dense_weights_tensor
from odecli.solvers.tableau import (
    ADAPTIVE_HEUN,
    BOSH3,
    DOPRI5,
    DOPRI8,
    EULER,
    FEHLBERG2,
    HEUN2,
    HEUN3,
    MIDPOINT,
    RK4_CLASSIC,
    RK4_THREE_EIGHTHS,
    TSIT5,
    ButcherTableau,
    InvalidTableau,
    TableauKind,
    tableau_tensors,
)

ALL_CALLBACKS = frozenset(CALLBACK_NAMES)
ADAPTIVE_OPTIONS = frozenset(
    {"first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "step_t", "jump_t", "norm", "controller"}
)


def combine(y: torch.Tensor, stages: torch.Tensor, weights: torch.Tensor, dt: float | torch.Tensor) -> torch.Tensor:
    """``y + dt · Σ_i weights_i stages_i`` for ``[s, n]`` stages: one ``addmv`` for a float ``dt``, a graph in a tensor ``dt``."""
    if isinstance(dt, torch.Tensor):
        return y + dt.to(y.dtype) * torch.mv(stages.T, weights)
    return torch.addmv(y, stages.T, weights, alpha=dt)


class _NeedsGraph(Exception):
    """Raised inside the in-place fast path when ``func`` turns out to need autograd."""


def _cast_output(func: Callable, dtype: torch.dtype) -> Callable:
    """``func`` with its output cast to ``dtype``."""

    def cast(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return func(t, y).to(dtype)

    return cast


class AbstractRungeKutta(AbstractSolver):
    """Shared set-up of the explicit Runge–Kutta methods; subclasses set ``tableau`` and ``order``."""

    tableau: ClassVar[ButcherTableau]
    native_problem: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse an implicit tableau; FSAL is read from the tableau."""
        super().__init_subclass__(**kwargs)
        tab = getattr(cls, "tableau", None)
        if tab is None:
            return
        if tab.kind is not TableauKind.EXPLICIT:
            raise InvalidTableau(f"{tab.name}: an explicit Runge-Kutta method needs a strictly lower triangular a, this tableau is {tab.kind.value}.")
        cls.fsal = tab.fsal

    def __init__(self, func, y0: torch.Tensor, rtol, atol, norm=None, **options: Any):
        super().__init__(func, y0, rtol, atol, **options)
        # ``view(*ints)`` is ~2.5x cheaper than ``view(torch.Size)``; 1-D states need no view at all.
        self._view_args = None if y0.ndim == 1 else tuple(y0.shape) if y0.ndim else ((),)
        self._row_state = y0.ndim == 2 and y0.shape[0] == 1 and y0.shape[1] > 0
        self.norm = norm
        self.callback_step = getattr(func, "callback_step", None)
        self.callback_accept_step = getattr(func, "callback_accept_step", None)
        self.callback_reject_step = getattr(func, "callback_reject_step", None)
        self.coefficients = tableau_tensors(self.tableau, y0.dtype, y0.device)

    # -- evaluation helpers -------------------------------------------------------------------

    def _eval_first(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """``func(t, y)`` with the output checked once: same shape and dtype as the state."""
        f = self.func(self.time(t), y.view(self.shape))
        self.nfe += 1
        if not isinstance(f, torch.Tensor):
            raise FuncOutputMismatch(f"func(t, y) must return a torch.Tensor like y, got {type(f).__name__}.")
        if f.shape != self.shape:
            raise FuncOutputMismatch(f"func(t, y) returned shape {tuple(f.shape)}, but the state y has shape {tuple(self.shape)}; they must match.")
        if f.dtype != self.dtype:
            if not output_dtype_accepted(f.dtype, self.dtype):
                raise FuncOutputMismatch(f"func(t, y) returned dtype {f.dtype}, but the state y has dtype {self.dtype}; return a floating point tensor (complex only for a complex state).")
            # Cast every evaluation from now on (torchdiffeq writes them into state-dtype buffers); the usual matching func pays nothing.
            self.func = _cast_output(self.func, self.dtype)
            f = f.to(self.dtype)
        return f.reshape(self.n)

    def _callback(self, callback: Callable | None, t0: float, y: torch.Tensor, h: float) -> None:
        if callback is not None:
            callback(self.time(t0), y.view(self.shape), self.time(h))

    def _restartable(self, run: Callable[[bool], Any]) -> Any:
        """Run the in-place fast path; if ``func`` needs autograd after all, redo the solve with a graph."""
        try:
            return run(False)
        except _NeedsGraph:
            self.nfe = self.steps_accepted = self.steps_rejected = 0
            return run(True)

    def stages(self, t0, dt, t1, y: torch.Tensor, k1: torch.Tensor, nudge_end: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The stages ``[s, n]`` of one step from ``y`` with first stage ``k1``, and the last stage's input, with a graph.

        Times are floats, or 0-d tensors (from a ``t`` that requires grad): every stage time and input is
        then a function of t. ``nudge_end``: a ``c = 1`` stage sees ``t1`` one ulp inside the step.
        """
        tab, a_rows, c, dtype = self.tableau, self.coefficients.a_rows, self.tableau.c, self.time_dtype
        ks, yi = [k1], y
        for i in range(1, tab.stages):
            ti = (nudge_time(t1, t0, dtype) if nudge_end else t1) if c[i] == 1.0 else t0 + c[i] * dt
            yi = combine(y, torch.stack(ks), a_rows[i], dt)
            ks.append(self.func(self.time(ti), yi.view(self.shape)).reshape(self.n))
        self.nfe += tab.stages - 1
        return yi, torch.stack(ks)

    def _stages_in_place(self, t0: float, dt: float, t1: float, y: torch.Tensor, buffers, nudge_end: bool):
        """``stages`` without a graph, written into ``buffers`` (from ``_buffers``; stage 0 already in place)."""
        tab = self.tableau
        func, dtype, device = self.func, self.time_dtype, self.device  # dtype: of the times
        buffer, plan, _ = buffers
        yi = y
        t_end = nudge(t1, t0, dtype) if nudge_end else t1
        if self._row_state:
            # A [1, n] state: ``addmm`` of [1, i] weights and the first i stages yields the stage
            # input in the state's own shape, so no per-stage ``view``.
            y_row = y.view(1, self.n)
            for prefix_i, a_i, row_i, ci in plan:
                yi = torch.addmm(y_row, a_i, prefix_i, alpha=dt)
                f = func(torch.scalar_tensor(t_end if ci == 1.0 else t0 + ci * dt, dtype=dtype, device=device), yi)
                if f.requires_grad:
                    raise _NeedsGraph
                row_i.copy_(f)
            self.nfe += tab.stages - 1
            return yi.view(self.n), buffer
        view_args = self._view_args
        for prefix_i, a_i, row_i, ci in plan:
            yi = torch.addmv(y, prefix_i, a_i, alpha=dt)
            ti = torch.scalar_tensor(t_end if ci == 1.0 else t0 + ci * dt, dtype=dtype, device=device)
            f = func(ti, yi) if view_args is None else func(ti, yi.view(*view_args))
            if f.requires_grad:
                raise _NeedsGraph
            row_i.copy_(f)
        self.nfe += tab.stages - 1
        return yi, buffer

    def _buffers(self):
        """The fast path's reused stage buffer ``[s, n]``, its plan, and its rows shaped like the state.

        ``plan`` holds, for stages 1..s-1, ``(K[:i].T, a_i, row i, c_i)``: every view the step loop
        needs, made once per solve instead of once per stage.
        """
        s = self.tableau.stages
        buffer = torch.empty(s, self.n, dtype=self.dtype, device=self.device)
        rows = [buffer[i].view(self.shape) for i in range(s)]
        a_rows, c = self.coefficients.a_rows, self.tableau.c
        if self._row_state:
            plan = [(buffer[:i], a_rows[i].view(1, i), rows[i], float(c[i])) for i in range(1, s)]
        else:
            plan = [(buffer[:i].T, a_rows[i], rows[i], float(c[i])) for i in range(1, s)]
        return buffer, plan, rows


# --------------------------------------------------------------------------------------------
# Adaptive step size.


class AbstractAdaptiveRungeKutta(AbstractRungeKutta):
    """An embedded Runge–Kutta pair with error control; torchdiffeq's options and defaults."""

    adaptive: ClassVar[bool] = True
    # Each output differentiates its dense output in its own time (the front end moves the steps with t[0]).
    differentiates_output_times: ClassVar[bool] = True
    callbacks: ClassVar[frozenset[str]] = ALL_CALLBACKS
    options: ClassVar[frozenset[str]] = ADAPTIVE_OPTIONS

    def __init__(
        self,
        func,
        y0: torch.Tensor,
        rtol,
        atol,
        first_step: float | None = None,
        min_step: float = 0.0,
        max_step: float = math.inf,
        safety: float = 0.9,
        ifactor: float = 10.0,
        dfactor: float = 0.2,
        max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
        step_t=None,
        jump_t=None,
        norm=None,
        controller="i",
        **options: Any,
    ):
        super().__init__(func, y0, rtol, atol, norm=norm)
        self.first_step, self.min_step, self.max_step, self.max_num_steps = StepLimits.parse(first_step, min_step, max_step, max_num_steps)
        self.controller = make_controller(controller, self.order, safety, ifactor, dfactor)
        self.step_t = self._time_list("step_t", step_t)
        self.jump_t = self._time_list("jump_t", jump_t)
        if set(self.step_t) & set(self.jump_t):
            raise InvalidInputError("options step_t and jump_t must not share any time; a time is either a step point or a jump.")
        self.rtol = flat_tolerance(rtol, "rtol", self.n, self.dtype, self.device)
        self.atol = flat_tolerance(atol, "atol", self.n, self.dtype, self.device)
        self.steps_since_output = 0

    @staticmethod
    def _time_list(name: str, values) -> list[float]:
        if values is None:
            return []
        if isinstance(values, torch.Tensor):
            return [float(v) for v in values.detach().reshape(-1).tolist()]
        try:
            return [float(v) for v in values]
        except TypeError:
            raise InvalidInputError(f"options['{name}'] must be a 1-D tensor or a sequence of times, got {type(values).__name__}.") from None

    # -- the step loop --------------------------------------------------------------------------

    def _norm(self, scaled_error: torch.Tensor) -> float:
        return float(self.norm(scaled_error)) if self.norm is not None else float(rms_norm(scaled_error))

    def march(self, tau: float, direction: float, y: torch.Tensor, f: torch.Tensor, h: float, grad: bool) -> Iterator[tuple]:
        """Take adaptive steps forever from ``tau = direction·t``; yield each accepted step.

        Yields ``(tau0, h, y0, y1, K)`` with ``K`` the ``[s, n]`` stages; ``K`` is only valid until
        the generator resumes (the fast path reuses its buffer).
        """
        tab = self.tableau
        s = tab.stages
        b_error = self.coefficients.b_error
        rtol, atol = self.rtol, self.atol
        min_step, max_step = self.min_step, self.max_step
        controller = self.controller
        inv_sqrt_n = 1.0 / math.sqrt(self.n) if self.n else 0.0
        fast_norm = self.norm is None
        norm = self.norm
        # The cheapest error estimate needs scalar tolerances, rtol > 0 and an absolutely homogeneous
        # norm (the RMS, or one that says so, like the adjoint's), so that h/rtol can come out of it.
        homogeneous = fast_norm or getattr(norm, "homogeneous", False)
        scaled_rtol = homogeneous and isinstance(rtol, float) and isinstance(atol, float) and rtol > 0 and self.n > 0
        if scaled_rtol:
            atol_over_rtol, norm_scale = atol / rtol, (inv_sqrt_n if fast_norm else 1.0) / rtol
        carries, fsal, b = tab.carries_last_stage, tab.fsal, self.coefficients.b
        # The step-size control never joins the graph; without a graph there is nothing to switch off.
        no_graph = torch.no_grad if grad else contextlib.nullcontext
        step_taus = sorted(direction * v for v in self.step_t)
        jump_taus = sorted(direction * v for v in self.jump_t)
        next_step = min(bisect.bisect(step_taus, tau), len(step_taus) - 1)
        next_jump = min(bisect.bisect(jump_taus, tau), len(jump_taus) - 1)
        has_jumps = bool(jump_taus)
        callback_step, callback_accept, callback_reject = self.callback_step, self.callback_accept_step, self.callback_reject_step
        if grad:
            K = first_row = last_row = None
        else:
            K = self._buffers()
            first_row, last_row = K[0][0], K[0][s - 1]
            first_row.copy_(f)
        abs_y = y.detach().abs()
        max_num_steps = self.max_num_steps
        while True:
            if not math.isfinite(h):
                h = min_step
            h = min(max(h, min_step), max_step)
            t0 = direction * tau
            if callback_step is not None:
                self._callback(callback_step, t0, y, h)
            self.steps_since_output += 1
            if self.steps_since_output > max_num_steps:
                raise MaxStepsExceeded(t0, max_num_steps)
            tau1 = tau + h
            if not tau1 > tau:
                raise StepSizeTooSmall(t0, h, min_step)
            on_step = on_jump = False
            if step_taus and tau < step_taus[next_step] < tau1:
                tau1, on_step = step_taus[next_step], True
                h = tau1 - tau
            if has_jumps and tau < jump_taus[next_jump] < tau1:
                tau1, on_jump, on_step = jump_taus[next_jump], True, False
                h = tau1 - tau
            dt = direction * h
            t1 = direction * tau1

            y_last, stages = self.stages(t0, dt, t1, y, f, has_jumps) if grad else self._stages_in_place(t0, dt, t1, y, K, has_jumps)
            y1 = y_last if fsal else torch.addmv(y, stages.T, b, alpha=dt)

            if scaled_rtol:
                # norm((h·e) / (atol + rtol·max|y|)) as h/rtol · norm(e / (atol/rtol + max|y|)): ~7 small ops.
                with no_graph():
                    error = torch.mv(stages.T, b_error)
                    abs_y1 = y1.abs()
                    tolerance = torch.maximum(abs_y, abs_y1).add_(atol_over_rtol)
                    error.div_(tolerance)
                    ratio = (torch.linalg.vector_norm(error).item() if fast_norm else float(norm(error))) * (h * norm_scale)
            else:
                with torch.no_grad():
                    error = torch.mv(stages.detach().T, b_error)
                    abs_y1 = y1.detach().abs()
                    tolerance = torch.maximum(abs_y, abs_y1)
                    tolerance.mul_(rtol).add_(atol)
                    error.div_(tolerance)
                    if fast_norm:
                        ratio = h * torch.linalg.vector_norm(error).item() * inv_sqrt_n
                    else:
                        ratio = self._norm(error.mul_(h))
            if not math.isfinite(ratio):
                if not (bool(torch.isfinite(y1).all()) and bool(torch.isfinite(stages).all())):
                    raise NonFiniteState(t0)
            accept = ratio <= 1 or h <= min_step
            if accept:
                if callback_accept is not None:
                    self._callback(callback_accept, t0, y, h)
                self.steps_accepted += 1
                yield tau, h, y, y1, stages
                if on_step and next_step != len(step_taus) - 1:
                    next_step += 1
                tau, y, abs_y = tau1, y1, abs_y1
                if on_jump:
                    if next_jump != len(jump_taus) - 1:
                        next_jump += 1
                    # Past a discontinuity of f: take the slope from the side the next step lies on.
                    f = self.evaluate(nudge(t1, t1 + direction, self.time_dtype), y1)
                    if not grad:
                        first_row.copy_(f)
                elif carries:
                    if grad:
                        f = stages[s - 1]
                    else:
                        first_row.copy_(last_row)
                else:
                    f = self.evaluate(t1, y1)
                    if not grad:
                        first_row.copy_(f)
            else:
                if callback_reject is not None:
                    self._callback(callback_reject, t0, y, h)
                self.steps_rejected += 1
            h = min(max(controller.propose(h, ratio, accept), min_step), max_step)

    def start(self, t0: float, direction: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        self.check_initial_state(t0)
        y = self.y0.reshape(self.n)
        f = self._eval_first(t0, y)
        if self.first_step is not None:
            h = self.first_step
        else:
            norm = self.norm if self.norm is not None else rms_norm
            h = select_initial_step(self.evaluate, t0, direction, y, f, self.order, self.rtol, self.atol, norm)
        return y, f, h

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        times = t.detach().tolist()
        if len(times) == 1:
            return self.y0.unsqueeze(0).clone()
        time_graph = t if t.requires_grad and torch.is_grad_enabled() else None
        return self._restartable(lambda grad: self._integrate(times, grad, time_graph))

    def _integrate(self, times: list[float], grad: bool, time_graph: torch.Tensor | None = None) -> torch.Tensor:
        direction = 1.0 if times[1] > times[0] else -1.0
        taus = [direction * x for x in times]
        n_out = len(times)
        y, f, h = self.start(times[0], direction)
        grad = grad or time_graph is not None or (torch.is_grad_enabled() and (y.requires_grad or f.requires_grad))
        moved: dict[int, torch.Tensor] = {}  # output index -> zero carrying d y(t_m) / d t_m (with ``time_graph``)
        outputs = DenseOutputs(self.coefficients.dense, n_out, self.n, self.dtype, self.device, in_place=not grad)
        outputs.at_end(0, y)
        j = 1
        self.steps_since_output = 0
        observer = self.step_observer
        for tau0, step, y0, y1, stages in self.march(taus[0], direction, y, f, h, grad):
            tau1 = tau0 + step
            if taus[j] > tau1:
                if observer is not None:
                    observer(tau0, step, y0, stages[0], range(0))
                continue
            end = j
            while end < n_out and taus[end] <= tau1:
                end += 1
            last = end
            if taus[end - 1] == tau1:
                last = end - 1
                outputs.at_end(last, y1)
            if last > j:
                outputs.inside(j, [(taus[m] - tau0) / step for m in range(j, last)], y0, stages, direction * step, reused=not grad)
            if time_graph is not None:
                for m in range(j, end):
                    moved[m] = self._dense_output_moved(time_graph[m], direction * tau0, direction * step, stages)
            if observer is not None:
                observer(tau0, step, y0, stages[0], range(j, end))
            j = end
            self.steps_since_output = 0
            if j == n_out:
                break
        solution = outputs.result()
        if moved:
            zero = solution.new_zeros(self.n)
            solution = solution + torch.stack([moved.get(m, zero) for m in range(n_out)])
        return solution.view(n_out, *self.shape)

    def _dense_output_moved(self, time: torch.Tensor, t_start: float, dt: float, stages: torch.Tensor) -> torch.Tensor:
        """Zero in value, with the derivative of the step's dense output at ``time`` with respect to ``time``.

        Added to an output, it gives torchdiffeq's gradient of an output in its own time: the slope of
        the interpolant the output was read from (an output at a step's end included).
        """
        dense = torch.as_tensor(self.coefficients.dense, dtype=self.dtype, device=self.device)
        weights = dense_weights_tensor(dense, ((time - t_start) / dt).to(self.dtype))
        return torch.mv(stages.T, weights - weights.detach()) * dt

    def integrate_until_event(self, t0: torch.Tensor, event_fn, direction: float = 1.0):
        return self._restartable(lambda grad: self._until_event(float(t0.detach()), event_fn, direction, grad))

    def _until_event(self, t0: float, event_fn, direction: float, grad: bool):
        y, f, h = self.start(t0, direction)
        grad = grad or (torch.is_grad_enabled() and (y.requires_grad or f.requires_grad))
        start = self.y0
        with torch.no_grad():
            value0 = event_fn(self.time(t0), start)
        if bool(value0 == 0):
            return self.time(t0), torch.stack([start, start])
        sign0 = torch.sign(value0)
        dense = torch.as_tensor(self.coefficients.dense, dtype=self.dtype, device=self.device)
        self.steps_since_output = 0
        for tau0, step, y0, y1, stages in self.march(direction * t0, direction, y, f, h, grad):
            t_end = direction * (tau0 + step)
            with torch.no_grad():
                crossed = bool(torch.sign(event_fn(self.time(t_end), y1.view(self.shape))) != sign0)
            if not crossed:
                continue
            t_start, dt = direction * tau0, direction * step
            stages_now = stages if grad else stages.clone()

            def interp(t: torch.Tensor, y0=y0, t_start=t_start, dt=dt, stages_now=stages_now) -> torch.Tensor:
                theta = ((t - t_start) / dt).to(self.dtype)
                weights = dense_weights_tensor(dense, theta)
                return torch.addmv(y0, stages_now.T, weights, alpha=dt).view(self.shape)

            atol = self.atol if isinstance(self.atol, float) else float(self.atol.max())
            event_t, y_event = find_event(interp, sign0, self.time(t_start), self.time(t_end), event_fn, atol)
            return event_t, torch.stack([start, y_event])
        raise AssertionError("unreachable: the step loop only ends by raising")


# --------------------------------------------------------------------------------------------
# Fixed grid: the stepper on ``fixed_grid``'s loop.


class AbstractFixedGridRungeKutta(AbstractFixedGridSolver, AbstractRungeKutta):
    """An explicit Runge–Kutta method on a fixed grid (torchdiffeq's FixedGridODESolver semantics)."""

    def __init__(self, func, y0, rtol, atol, **options: Any):
        super().__init__(func, y0, rtol, atol, **options)
        self.force_graph = False  # set after the in-place fast path found that func needs autograd
        self.grad = False
        self.stage_buffers = None

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        return self._restartable(lambda graph: self._on_loop(graph, AbstractFixedGridSolver.integrate, t))

    def integrate_until_event(self, t0: torch.Tensor, event_fn, direction: float = 1.0):
        return self._restartable(lambda graph: self._on_loop(graph, AbstractFixedGridSolver.integrate_until_event, t0, event_fn, direction))

    def _on_loop(self, graph: bool, loop: Callable, *args: Any) -> Any:
        self.force_graph = graph
        return loop(self, *args)

    def first_slope(self, t0, t1, y: torch.Tensor) -> torch.Tensor:
        f0 = self._eval_first(self.inside(t0, t1), y)
        self.grad = self.force_graph or isinstance(t0, torch.Tensor) or (torch.is_grad_enabled() and (y.requires_grad or f0.requires_grad))
        self.stage_buffers = None if self.grad else self._buffers()
        return f0

    def step(self, t0, t1, y: torch.Tensor, f0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        dt = t1 - t0
        if f0 is None:
            f0 = self.evaluate(self.inside(t0, t1), y)
        if self.grad:
            _, stages = self.stages(t0, dt, t1, y, f0, self.perturb)
        else:
            if f0.requires_grad:
                raise _NeedsGraph
            buffers = self.stage_buffers
            buffers[0][0].copy_(f0)
            _, stages = self._stages_in_place(t0, dt, t1, y, buffers, self.perturb)
        if self.tableau.stages == 1 and not isinstance(dt, torch.Tensor):
            return torch.add(y, stages[0], alpha=dt), f0
        return combine(y, stages, self.coefficients.b, dt), f0


# --------------------------------------------------------------------------------------------
# The registered methods: a tableau, an order and a reference each.


@SOLVERS.register("dopri5", description="Dormand-Prince 5(4), adaptive, FSAL, 4th-order dense output (the default).")
class Dopri5(AbstractAdaptiveRungeKutta):
    """Dormand–Prince 5(4): 7 stages (6 evaluations per step with FSAL)."""

    tableau, order = DOPRI5, 5
    reference = "Dormand & Prince 1980, J. Comput. Appl. Math. 6(1); dense output: Shampine 1986"


@SOLVERS.register("dopri8", description="Dormand-Prince 8(7), adaptive, 13 stages + FSAL; for tight tolerances.")
class Dopri8(AbstractAdaptiveRungeKutta):
    """Prince–Dormand RK8(7)13M as torchdiffeq writes it, with an appended FSAL stage."""

    tableau, order = DOPRI8, 8
    reference = "Prince & Dormand 1981, J. Comput. Appl. Math. 7(1)"


@SOLVERS.register("tsit5", description="Tsitouras 5(4), adaptive, FSAL, own 4th-order dense output; often cheaper than dopri5.")
class Tsit5(AbstractAdaptiveRungeKutta):
    """Tsitouras 5(4): 7 stages, FSAL, coefficients optimised for a smaller principal error."""

    tableau, order = TSIT5, 5
    reference = "Tsitouras 2011, Comput. Math. Appl. 62(2)"


@SOLVERS.register("bosh3", description="Bogacki-Shampine 3(2), adaptive, FSAL; for loose tolerances.")
class Bosh3(AbstractAdaptiveRungeKutta):
    """Bogacki–Shampine 3(2): 4 stages (3 evaluations per step with FSAL)."""

    tableau, order = BOSH3, 3
    reference = "Bogacki & Shampine 1989, Appl. Math. Lett. 2(4)"


@SOLVERS.register("fehlberg2", description="Runge-Kutta-Fehlberg 2(1), adaptive, 2 evaluations per step.")
class Fehlberg2(AbstractAdaptiveRungeKutta):
    """Fehlberg's 2(1) pair (torchdiffeq's variant: the last stage is reused as the next first)."""

    tableau, order = FEHLBERG2, 2
    reference = "Fehlberg 1969, NASA TR R-315"


@SOLVERS.register("adaptive_heun", description="Heun-Euler 2(1), adaptive, 1 evaluation per step (torchdiffeq's variant).")
class AdaptiveHeun(AbstractAdaptiveRungeKutta):
    """Heun's method with an Euler error estimate, reusing the predictor's slope as torchdiffeq does."""

    tableau, order = ADAPTIVE_HEUN, 2
    reference = "Heun 1900; torchdiffeq's adaptive_heun"


@SOLVERS.register("euler", description="Forward Euler, order 1, fixed grid.")
class Euler(AbstractFixedGridRungeKutta):
    """Forward Euler: one evaluation per step."""

    tableau, order = EULER, 1
    reference = "Euler 1768"


@SOLVERS.register("midpoint", description="Explicit midpoint, order 2, fixed grid.")
class Midpoint(AbstractFixedGridRungeKutta):
    """Explicit midpoint rule: two evaluations per step."""

    tableau, order = MIDPOINT, 2
    reference = "Runge 1895"


@SOLVERS.register("heun2", description="Heun's method (explicit trapezoid), order 2, fixed grid.")
class Heun2(AbstractFixedGridRungeKutta):
    """Heun's second-order method."""

    tableau, order = HEUN2, 2
    reference = "Heun 1900"


@SOLVERS.register("heun3", description="Heun's third-order method, fixed grid.")
class Heun3(AbstractFixedGridRungeKutta):
    """Heun's third-order method (c = 0, 1/3, 2/3)."""

    tableau, order = HEUN3, 3
    reference = "Heun 1900"


@SOLVERS.register("rk4", description="Runge-Kutta 4 by Kutta's 3/8 rule (what torchdiffeq calls rk4), fixed grid.")
class RK4(AbstractFixedGridRungeKutta):
    """Kutta's 3/8 rule: fourth order, smaller error constant than classic RK4."""

    tableau, order = RK4_THREE_EIGHTHS, 4
    reference = "Kutta 1901 (3/8 rule); torchdiffeq's rk4"


@SOLVERS.register("rk4_classic", description="Classic Runge-Kutta 4 (1/6, 1/3, 1/3, 1/6), fixed grid.")
class RK4Classic(AbstractFixedGridRungeKutta):
    """The classic fourth-order Runge–Kutta method."""

    tableau, order = RK4_CLASSIC, 4
    reference = "Kutta 1901"
