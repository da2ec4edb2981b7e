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

import contextlib
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from odecli.registry import SOLVERS
from odecli.solvers.adaptive import AbstractAdaptiveSolver
from odecli.solvers.base import AbstractSolver, output_dtype_accepted
from odecli.solvers.compiled import COMPILE_OPTIONS, check_compile_options, compiled_step
from odecli.solvers.controllers import error_ratio
from odecli.solvers.errors import (
    FuncOutputMismatch,
    NonFiniteState,
)
from odecli.solvers.fixed_grid import AbstractFixedGridSolver
from odecli.solvers.grid import nudge, nudge_time
from odecli.solvers.stats import count_backward_of
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


def raise_if_not_finite(t0: float, y1: torch.Tensor, stages: torch.Tensor) -> None:
    """For a step whose error ratio is not finite: ``NonFiniteState`` when its solution or a stage is not finite
    either (an overflow in the state, not only in the error estimate, which the loop answers by rejecting)."""
    if not (bool(torch.isfinite(y1).all()) and bool(torch.isfinite(stages).all())):
        raise NonFiniteState(t0)


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

    def _restartable(self, loop: Callable, *args: Any) -> Any:
        """``loop(self, *args)`` on the in-place fast path; if ``func`` needs autograd after all, redone with a graph."""
        try:
            self.force_graph = False
            return loop(self, *args)
        except _NeedsGraph:
            self.nfe = self.steps_accepted = self.steps_rejected = 0
            self.force_graph = True
            return loop(self, *args)

    def stages(self, t0, dt, t1, y: torch.Tensor, k1: torch.Tensor, nudge_end: bool = False, stage_times=None, stage_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The stages ``[s, n]`` of one step from ``y`` with first stage ``k1``, and the last stage's input, with a graph.

        Times are floats, or 0-d tensors (from a ``t`` that requires grad): every stage time and input is
        then a function of t. ``nudge_end``: a ``c = 1`` stage sees ``t1`` one ulp inside the step.
        ``stage_times``: the times f sees at stages 1..s-1, given as they are (per-sample mode's times of
        its θ-rescaled step) instead of computed from ``t0``, ``dt`` and ``c``; ``stage_scale``: a factor
        every stage derivative is multiplied by as it is stored (that step's per-sample ``dt``).
        """
        result = self.stage_values(t0, dt, t1, y, k1, nudge_end, stage_times, stage_scale)
        self.nfe += self.tableau.stages - 1
        return result

    def stage_values(self, t0, dt, t1, y: torch.Tensor, k1: torch.Tensor, nudge_end: bool = False, stage_times=None, stage_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``stages`` without counting the evaluations: a function of its arguments only, so ``torch.compile`` can trace it."""
        tab, a_rows, c, dtype = self.tableau, self.coefficients.a_rows, self.tableau.c, self.time_dtype
        ks, yi = [k1], y
        for i in range(1, tab.stages):
            if stage_times is None:
                ti = self.time((nudge_time(t1, t0, dtype) if nudge_end else t1) if c[i] == 1.0 else t0 + c[i] * dt)
            else:
                ti = stage_times[i - 1]
            yi = combine(y, torch.stack(ks), a_rows[i], dt)
            ki = self.func(ti, yi.view(self.shape))
            ks.append((ki if stage_scale is None else ki * stage_scale).reshape(self.n))
        return yi, torch.stack(ks)

    def stages_in_place(self, t0: float, dt: float, t1: float, y: torch.Tensor, buffers, nudge_end: bool, stage_times=None, stage_scale=None):
        """``stages`` without a graph, written into ``buffers`` (from ``stage_buffers_for_solve``; stage 0 already in place)."""
        tab = self.tableau
        func, dtype, device = self.func, self.time_dtype, self.device  # dtype: of the times
        buffer, plan, _ = buffers
        yi = y
        t_end = nudge(t1, t0, dtype) if nudge_end else t1
        if self._row_state:
            # A [1, n] state: ``addmm`` of [1, i] weights and the first i stages yields the stage
            # input in the state's own shape, so no per-stage ``view``.
            y_row = y.view(1, self.n)
            for i, (prefix_i, a_i, row_i, ci) in enumerate(plan):
                yi = torch.addmm(y_row, a_i, prefix_i, alpha=dt)
                ti = torch.scalar_tensor(t_end if ci == 1.0 else t0 + ci * dt, dtype=dtype, device=device) if stage_times is None else stage_times[i]
                f = func(ti, yi)
                if f.requires_grad:
                    raise _NeedsGraph
                if stage_scale is None:
                    row_i.copy_(f)
                else:
                    torch.mul(f, stage_scale, out=row_i)
            self.nfe += tab.stages - 1
            return yi.view(self.n), buffer
        view_args = self._view_args
        for i, (prefix_i, a_i, row_i, ci) in enumerate(plan):
            yi = torch.addmv(y, prefix_i, a_i, alpha=dt)
            ti = torch.scalar_tensor(t_end if ci == 1.0 else t0 + ci * dt, dtype=dtype, device=device) if stage_times is None else stage_times[i]
            f = func(ti, yi) if view_args is None else func(ti, yi.view(*view_args))
            if f.requires_grad:
                raise _NeedsGraph
            if stage_scale is None:
                row_i.copy_(f)
            else:
                torch.mul(f, stage_scale, out=row_i)
        self.nfe += tab.stages - 1
        return yi, buffer

    def stage_buffers_for_solve(self):
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


class AbstractAdaptiveRungeKutta(AbstractAdaptiveSolver, AbstractRungeKutta):
    """An embedded Runge–Kutta pair with error control, on ``adaptive``'s loop; torchdiffeq's options and defaults."""

    # Each output differentiates its dense output in its own time (the front end moves the steps with t[0]).
    differentiates_output_times: ClassVar[bool] = True
    reuses_stage_buffer: ClassVar[bool] = True

    options: ClassVar[frozenset[str]] = AbstractAdaptiveSolver.options | COMPILE_OPTIONS

    def __init__(self, func, y0: torch.Tensor, rtol, atol, compile: bool = False, compile_backend=None, **options: Any):
        self.compile, self.compile_backend = check_compile_options(compile, compile_backend)
        super().__init__(func, y0, rtol, atol, **options)
        # Compiled unless this func already failed to compile (then the eager path from the start, and one warning in all).
        self.compiled_step = compiled_step(AbstractAdaptiveRungeKutta.attempt_values, self.compile_backend) if self.compile else None
        if self.compiled_step is not None and not self.compiled_step.traceable(func):
            self.compiled_step = None
        if self.compiled_step is not None:
            self.reuses_stage_buffer = False  # the compiled step returns new stages every attempt: dense outputs need no copy
        self.dense = self.coefficients.dense

    def attempt_values(self, times: torch.Tensor, y: torch.Tensor, f: torch.Tensor, abs_y: torch.Tensor, rtol, atol, nudge_end: bool):
        """One attempted step as a function of tensors only (what ``options={'compile': True}`` compiles; see ``compiled.py``).

        ``times`` holds ``(t0, dt, t1, h)``; ``rtol``/``atol`` are tensors. Returns ``(y1, stages, error ratio (0-d), |y1|)``;
        evaluations are not counted here.
        """
        t0, dt, t1, h = times.unbind()
        y_last, stages = self.stage_values(t0, dt, t1, y, f, nudge_end)
        y1 = y_last if self.fsal else combine(y, stages, self.coefficients.b, dt)
        with torch.no_grad():
            abs_y1 = y1.detach().abs()
            ratio = error_ratio(torch.mv(stages.detach().T, self.coefficients.b_error), abs_y, abs_y1, rtol, atol, h.to(abs_y1.dtype), self.norm)
        return y1, stages, ratio, abs_y1

    def compiled_begin(self, y: torch.Tensor, f: torch.Tensor):
        """This solve's ``(attempt, next_slope)`` through the compiled ``attempt_values`` (``options={'compile': True}``)."""
        step = self.compiled_step
        # One tolerance per element, scalar or not: a 0-d tensor would reach the graph as a float with a guard in Python.
        rtol, atol = (torch.as_tensor(tol, dtype=y.real.dtype, device=self.device).expand(self.n) for tol in (self.rtol, self.atol))
        field, time_dtype, device, evaluations = self.func, self.time_dtype, self.device, self.tableau.stages - 1
        # A field wrapped to count backward evaluations registers a hook per call, which dynamo cannot trace: the
        # compiled step calls the field itself and counts its evaluations with one hook on the stages, outside.
        uncounted = getattr(field, "uncounted", None)
        if uncounted is not None:
            self.func = field = uncounted
        carries, evaluate_next = self.tableau.carries_last_stage, super().next_slope
        abs_y = abs_y1 = y.detach().abs()

        def attempt(t0: float, dt: float, t1: float, h: float, y: torch.Tensor, f: torch.Tensor, grad: bool, nudge_end: bool):
            nonlocal abs_y1
            times = torch.tensor((t0, dt, t1, h), dtype=time_dtype, device=device)
            y1, stages, ratio, abs_y1 = step(field, self, times, y, f, abs_y, rtol, atol, nudge_end)
            self.nfe += evaluations
            if uncounted is not None:
                count_backward_of(stages, evaluations)
            ratio = ratio.item()
            if not math.isfinite(ratio):
                raise_if_not_finite(t0, y1, stages)
            return y1, stages, ratio, None

        def next_slope(t1: float, y1: torch.Tensor, stages: torch.Tensor, f1, jumped: bool, direction: float) -> torch.Tensor:
            nonlocal abs_y
            abs_y = abs_y1
            return evaluate_next(t1, y1, stages, f1, jumped, direction) if jumped or not carries else stages[-1]

        return attempt, next_slope

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        return self._restartable(AbstractAdaptiveSolver.integrate, t)

    def integrate_until_event(self, t0: torch.Tensor, event_fn, direction: float = 1.0):
        return self._restartable(AbstractAdaptiveSolver.integrate_until_event, t0, event_fn, direction)

    def first_evaluation(self, t0: float, y: torch.Tensor) -> torch.Tensor:
        return self._eval_first(t0, y)

    def begin(self, y: torch.Tensor, f: torch.Tensor, grad: bool):
        """This solve's ``attempt`` and ``next_slope``, as closures over its constants (the loop calls them per step).

        They hold the error estimate's constants, the fast path's stage buffer (``f`` as its first stage) and
        ``|y|`` of the step's start, so that a step costs no attribute lookups and no tensor indexing.
        """
        if self.compiled_step is not None:
            return self.compiled_begin(y, f)
        rtol, atol, norm, n = self.rtol, self.atol, self.norm, self.n
        fast_norm = norm is None
        inv_sqrt_n = 1.0 / math.sqrt(n) if n else 0.0
        # The cheapest error estimate needs scalar tolerances, rtol > 0 and an absolutely homogeneous
        # norm (the RMS, or one that says so, like the adjoint's), so that h/rtol can come out of it.
        homogeneous = fast_norm or getattr(norm, "homogeneous", False)
        scaled_rtol = homogeneous and isinstance(rtol, float) and isinstance(atol, float) and rtol > 0 and n > 0
        atol_over_rtol, norm_scale = (atol / rtol, (inv_sqrt_n if fast_norm else 1.0) / rtol) if scaled_rtol else (None, None)
        # The step-size control never joins the graph; without a graph there is nothing to switch off.
        no_graph = torch.no_grad if grad else contextlib.nullcontext
        fsal, carries = self.fsal, self.tableau.carries_last_stage  # derived by the tableau: read once
        b, b_error = self.coefficients.b, self.coefficients.b_error
        stages_with_graph, stages_in_place, evaluate_next = self.stages, self.stages_in_place, super().next_slope
        buffers = None if grad else self.stage_buffers_for_solve()
        first_row = last_row = None
        if buffers is not None:
            first_row, last_row = buffers[0][0], buffers[0][-1]
            first_row.copy_(f)
        abs_y = abs_y1 = y.detach().abs()

        def attempt(t0: float, dt: float, t1: float, h: float, y: torch.Tensor, f: torch.Tensor, grad: bool, nudge_end: bool):
            nonlocal abs_y1
            if buffers is None:
                y_last, stages = stages_with_graph(t0, dt, t1, y, f, nudge_end)
            else:
                y_last, stages = stages_in_place(t0, dt, t1, y, buffers, nudge_end)
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
                    abs_y1 = y1.detach().abs()
                    ratio = float(error_ratio(torch.mv(stages.detach().T, b_error), abs_y, abs_y1, rtol, atol, h, norm))
            if not math.isfinite(ratio):
                raise_if_not_finite(t0, y1, stages)
            return y1, stages, ratio, None

        def next_slope(t1: float, y1: torch.Tensor, stages: torch.Tensor, f1, jumped: bool, direction: float) -> torch.Tensor:
            nonlocal abs_y
            abs_y = abs_y1
            if jumped or not carries:
                f = evaluate_next(t1, y1, stages, f1, jumped, direction)
                if first_row is not None:
                    first_row.copy_(f)
                return f
            if first_row is None:
                return stages[-1]
            return first_row.copy_(last_row)  # FSAL: the last stage is the next step's first, in place

        return attempt, next_slope

    def attempt(self, t0, dt, t1, h, y, f, grad, nudge_end):
        raise NotImplementedError("explicit Runge-Kutta steps are attempted through the closures begin() returns")


# --------------------------------------------------------------------------------------------
# Fixed grid: the stepper on ``fixed_grid``'s loop.


class AbstractFixedGridRungeKutta(AbstractFixedGridSolver, AbstractRungeKutta):
    """An explicit Runge–Kutta method on a fixed grid (torchdiffeq's FixedGridODESolver semantics)."""

    def __init__(self, func, y0, rtol, atol, **options: Any):
        super().__init__(func, y0, rtol, atol, **options)
        self.grad = self.force_graph = False
        self.stage_buffers = None

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        return self._restartable(AbstractFixedGridSolver.integrate, t)

    def integrate_until_event(self, t0: torch.Tensor, event_fn, direction: float = 1.0):
        return self._restartable(AbstractFixedGridSolver.integrate_until_event, t0, event_fn, direction)

    def first_slope(self, t0, t1, y: torch.Tensor) -> torch.Tensor:
        f0 = self._eval_first(self.inside(t0, t1), y)
        self.prepare(t0, y, f0)
        return f0

    def prepare(self, t0, y: torch.Tensor, f0: torch.Tensor) -> None:
        """Choose this solve's stage path (with a graph, or in place into reused buffers) from its first state and slope."""
        self.grad = self.force_graph or isinstance(t0, torch.Tensor) or (torch.is_grad_enabled() and (y.requires_grad or f0.requires_grad))
        self.stage_buffers = None if self.grad else self.stage_buffers_for_solve()

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
            _, stages = self.stages_in_place(t0, dt, t1, y, buffers, self.perturb)
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
