"""The one adaptive loop: every adaptive method (explicit Runge–Kutta pairs, ESDIRK, Radau) steps through it.

The loop owns what does not depend on how a step is computed: the step limits (``first_step``,
``min_step``, ``max_step``, ``max_num_steps``), the controller (``controller='i'|'pi'|'predictive'``, ``safety``,
``ifactor``, ``dfactor``), Hairer's initial step, the step callbacks, points the steps must hit
(``step_t``) or restart at (``jump_t``: a discontinuity of ``f``), acceptance (``ratio ≤ 1``, or a step
of ``min_step``, as torchdiffeq), the outputs read from each accepted step's dense output, the step
observer, and the event search. A method supplies one attempted step behind a few hooks (the adaptive
part of the stepper protocol):

* ``first_evaluation(t0, y)`` — ``f(t0, y0)``, checked as the method wants;
* ``begin(y, f, grad)`` — per-solve state (buffers, Jacobians) before the first attempt; returns the
  ``(attempt, next_slope)`` callables the loop uses for this solve (by default the two methods below; a
  method may return closures specialised to the solve, as the explicit pairs do for speed);
* ``attempt(t0, dt, t1, h, y, f, grad, nudge_end)`` — ``(y1, stages, error ratio, f(t1, y1) or None)``, or
  ``StepFailed`` when the step could not even be computed (Newton did not converge);
* ``after_failure(t0, h, forced, smallest, failure)`` — the step size to retry with, or raise;
* ``next_slope(t1, y1, stages, f1, jumped, direction)`` — after an accepted step: ``f(t1, y1)`` for the next
  one (FSAL, a jump), and the method's own bookkeeping (a Jacobian to refresh).

Times in the loop are ``tau = direction·t`` (increasing) and Python floats: one number per step. The
loop's step-size arithmetic comes from ``step_rules`` (limit, judge, propose, advance); per-sample
control (``independent.py``) gives the same rules on ``(B,)`` tensors and runs through this loop too.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from odecli.solvers.base import CALLBACK_NAMES, AbstractSolver
from odecli.solvers.controllers import (
    DEFAULT_MAX_NUM_STEPS,
    StepLimits,
    flat_tolerance,
    make_controller,
    rms_norm,
    select_initial_step,
)
from odecli.solvers.errors import InvalidInputError, MaxStepsExceeded, NonFiniteState, StepSizeTooSmall
from odecli.solvers.events import EventWatch
from odecli.solvers.grid import nudge
from odecli.solvers.interpolation import DenseOutputs, dense_weights_tensor

ALL_CALLBACKS = frozenset(CALLBACK_NAMES)
ADAPTIVE_OPTIONS = frozenset(
    {"first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "step_t", "jump_t", "norm", "controller"}
)


class StepFailed(Exception):
    """An attempted step that produced no solution to judge (its Newton iteration failed): it is rejected."""


def time_list(name: str, values) -> list[float]:
    """``step_t``/``jump_t`` as floats."""
    if values is None:
        return []
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.detach().reshape(-1).tolist()]
    try:
        return [float(v) for v in values]
    except TypeError:
        raise InvalidInputError(f"options['{name}'] must be a 1-D tensor or a sequence of times, got {type(values).__name__}.") from None


class AbstractAdaptiveSolver(AbstractSolver):
    """Adaptive steps with error control through one loop; subclasses give the step (see the module docstring)."""

    adaptive: ClassVar[bool] = True
    callbacks: ClassVar[frozenset[str]] = ALL_CALLBACKS
    options: ClassVar[frozenset[str]] = ADAPTIVE_OPTIONS
    default_controller: ClassVar[str] = "i"
    # The exponent of the error estimate (the controller's is its inverse); by default the method's order.
    error_order: ClassVar[int | None] = None
    # Step exactly onto the last output time instead of past it (torchdiffeq's explicit methods step past and
    # interpolate; an implicit method avoids a refactorisation for the overshoot and a step beyond the data).
    lands_on_last_time: ClassVar[bool] = False
    # After an accepted step, keep h when the controller would grow it by less than this (1: always follow it):
    # an implicit method then reuses its factorised iteration matrix.
    keep_step_ratio: ClassVar[float] = 1.0
    # The stage buffer is overwritten by the next attempt (dense outputs then keep a copy when they defer).
    reuses_stage_buffer: ClassVar[bool] = False
    # The order Hairer's initial step is sized for; by default the method's (a variable-order method starts lower).
    initial_step_order: ClassVar[int | None] = None

    def __init__(self, func, y0: torch.Tensor, rtol, atol, first_step: float | None = None, min_step: float = 0.0,
                 max_step: float = math.inf, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2,
                 max_num_steps: int = DEFAULT_MAX_NUM_STEPS, step_t=None, jump_t=None, norm=None, controller=None,
                 **options: Any):  # fmt: skip
        super().__init__(func, y0, rtol, atol, **options)
        self.first_step, self.min_step, self.max_step, self.max_num_steps = StepLimits.parse(first_step, min_step, max_step, max_num_steps)
        controller = self.default_controller if controller is None else controller
        self.controller = make_controller(controller, self.error_order or self.order, safety, ifactor, dfactor)
        self.step_t = time_list("step_t", step_t)
        self.jump_t = time_list("jump_t", jump_t)
        if set(self.step_t) & set(self.jump_t):
            raise InvalidInputError("options step_t and jump_t must not share any time; a time is either a step point or a jump.")
        self.norm = norm
        self.rtol = flat_tolerance(rtol, "rtol", self.n, self.dtype, self.device)
        self.atol = flat_tolerance(atol, "atol", self.n, self.dtype, self.device)
        self.callback_step = getattr(func, "callback_step", None)
        self.callback_accept_step = getattr(func, "callback_accept_step", None)
        self.callback_reject_step = getattr(func, "callback_reject_step", None)
        self.steps_since_output = 0  # attempts since the last output: the step budget counts these
        self.previous_rejected = True  # the step being attempted is the first or follows a rejection
        self.force_graph = False

    # -- what a method supplies -------------------------------------------------------------------

    dense: np.ndarray  # [stages, degree]: the continuous extension of a step over its stages (see DenseOutputs)

    def first_evaluation(self, t0: float, y: torch.Tensor) -> torch.Tensor:
        return self.evaluate(t0, y)

    def begin(self, y: torch.Tensor, f: torch.Tensor, grad: bool) -> tuple[Callable, Callable]:
        """Per-solve state, before the first attempt; the ``(attempt, next_slope)`` this solve uses."""
        return self.attempt, self.next_slope

    def attempt(self, t0: float, dt: float, t1: float, h: float, y: torch.Tensor, f: torch.Tensor, grad: bool, nudge_end: bool):
        """One attempted step ``t0 → t1`` (``dt = t1 - t0``, ``h = |dt|``): ``(y1, stages [s, n], error ratio, f(t1, y1) or None)``."""
        raise NotImplementedError(f"{type(self).__name__} attempts no step: define attempt(), or return one from begin().")

    def after_failure(self, t0: float, h: float, forced: bool, smallest: float, failure: StepFailed) -> float:
        """The step size to retry a failed attempt with (raise to give up)."""
        if forced or h / 2 < smallest:
            raise StepSizeTooSmall(t0, h / 2, smallest) from failure
        return h / 2

    def next_slope(self, t1: float, y1: torch.Tensor, stages: torch.Tensor, f1: torch.Tensor | None, jumped: bool, direction: float) -> torch.Tensor:
        """After an accepted step, ``f(t1, y1)`` for the next: ``f1`` when the attempt computed it; past a jump, from the next step's side."""
        if jumped:
            return self.evaluate(nudge(t1, t1 + direction, self.time_dtype), y1)
        return f1 if f1 is not None else self.evaluate(t1, y1)

    # -- the loop -----------------------------------------------------------------------------------

    def start(self, t0: float, direction: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(y0 flat, f(t0, y0), first step size)``."""
        self.check_initial_state(t0)
        y = self.y0.reshape(self.n)
        f = self.first_evaluation(t0, y)
        if self.first_step is not None:
            return y, f, self.first_step
        norm = self.norm if self.norm is not None else rms_norm
        return y, f, select_initial_step(self.evaluate, t0, direction, y, f, self.initial_step_order or self.order, self.rtol, self.atol, norm)

    def step_rules(self, direction: float, end: float | None) -> tuple[Callable, Callable, Callable, Callable]:
        """This solve's ``(limit, judge, propose, advance)``: the loop's step-size arithmetic, as closures.

        One problem (here): floats, one decision per attempt. Per-sample control (``independent.py``) gives the
        same four on tensors of one step size per sample, so both run through ``march``:

        * ``limit(tau, h)`` -> ``(h, forced, landed)``: ``h`` clamped to the step limits (and onto the last
          output for methods that land there); ``forced``: a step of ``min_step``, accepted whatever its error;
        * ``judge(t0, tau, tau1, h, y1, ratio, forced)`` -> ``(accept, ratio, go_on)``: acceptance, counted;
          ``go_on`` when some step was accepted (the loop then yields it);
        * ``propose(h, ratio, accept)``: the controller's next step size;
        * ``advance(tau, tau1, y, y1, h, proposal)`` -> ``(tau, y, h)`` after an accepted step.
        """
        min_step, max_step = self.min_step, self.max_step
        landing = self.lands_on_last_time and end is not None
        keep_step_ratio = self.keep_step_ratio

        def limit(tau: float, h: float) -> tuple[float, bool, bool]:
            h = min(max(h, min_step), max_step)
            if not math.isfinite(h):
                h = max_step if math.isfinite(max_step) else (end - tau if landing else min_step)
            forced = h <= min_step  # as torchdiffeq: a step of min_step is accepted whatever its error
            landed = False
            if landing:
                remaining = end - tau
                if h >= remaining or (1.01 * h > remaining and remaining <= max_step):
                    h, landed = remaining, True
            # Below ~10 ulps of t a step makes no progress the error estimate can see (10 ulps < 2.3e-15·|t|).
            if h < 2.3e-15 * abs(tau) or h <= min_step:
                smallest = max(min_step, 10 * (math.nextafter(abs(tau), math.inf) - abs(tau)))
                if h < smallest and not landed:
                    raise StepSizeTooSmall(direction * tau, h, smallest)
            return h, forced, landed

        def judge(t0: float, tau: float, tau1: float, h: float, y1: torch.Tensor, ratio: float, forced: bool) -> tuple[bool, float, bool]:
            if math.isfinite(ratio):
                accept = ratio <= 1 or forced
            else:
                if not bool(torch.isfinite(y1.detach()).all()):
                    if forced:
                        raise NonFiniteState(t0)
                    accept = False
                else:
                    accept = forced
                ratio = math.nan
            if accept:
                self.steps_accepted += 1
            else:
                self.steps_rejected += 1
            return accept, ratio, accept

        def advance(tau: float, tau1: float, y: torch.Tensor, y1: torch.Tensor, h: float, proposal: float):
            return tau1, y1, (h if 1.0 <= proposal / h <= keep_step_ratio else proposal)

        return limit, judge, self.controller.propose, advance

    def budget_exceeded(self, tau, direction, end) -> MaxStepsExceeded:
        """The error for a step budget spent between two outputs, at the time the loop reached."""
        return MaxStepsExceeded(direction * tau, self.max_num_steps, None if end is None else direction * end)

    def march(self, tau: float, direction: float, y: torch.Tensor, f: torch.Tensor, h: float, grad: bool, end: float | None = None) -> Iterator[tuple]:
        """Take adaptive steps from ``tau = direction·t``; yield each accepted step ``(tau0, h, y0, y1, stages)``.

        ``end`` (in tau) is the last output, for the step budget's message and for methods that land on it.
        ``stages`` is only valid until the generator resumes when the method reuses its buffer.
        """
        min_step, max_num_steps = self.min_step, self.max_num_steps
        step_taus = sorted(direction * v for v in self.step_t)
        jump_taus = sorted(direction * v for v in self.jump_t)
        next_step = min(bisect.bisect(step_taus, tau), len(step_taus) - 1) if step_taus else 0
        next_jump = min(bisect.bisect(jump_taus, tau), len(jump_taus) - 1) if jump_taus else 0
        has_jumps = bool(jump_taus)
        callback_step, callback_accept, callback_reject = self.callback_step, self.callback_accept_step, self.callback_reject_step
        attempt, next_slope = self.begin(y, f, grad)
        limit, judge, propose, advance = self.step_rules(direction, end)
        self.previous_rejected = True
        while True:
            h, forced, landed = limit(tau, h)
            t0 = direction * tau
            if callback_step is not None:
                callback_step(self.time(t0), y.view(self.shape), self.time(h))
            self.steps_since_output += 1
            if self.steps_since_output > max_num_steps:
                raise self.budget_exceeded(tau, direction, end)
            tau1 = end if landed else tau + h
            on_step = on_jump = False
            if step_taus and tau < step_taus[next_step] < tau1:
                tau1, on_step = step_taus[next_step], True
                h = tau1 - tau
            if has_jumps and tau < jump_taus[next_jump] < tau1:
                tau1, on_jump, on_step = jump_taus[next_jump], True, False
                h = tau1 - tau
            dt, t1 = direction * h, direction * tau1
            try:
                y1, stages, ratio, f1 = attempt(t0, dt, t1, h, y, f, grad, has_jumps)
            except StepFailed as failure:
                self.steps_rejected += 1
                self.previous_rejected = True
                if callback_reject is not None:
                    callback_reject(self.time(t0), y.view(self.shape), self.time(h))
                smallest = max(min_step, 10 * (math.nextafter(abs(tau), math.inf) - abs(tau)))
                h = self.after_failure(t0, h, forced, smallest, failure)
                continue
            accept, ratio, go_on = judge(t0, tau, tau1, h, y1, ratio, forced)
            proposal = propose(h, ratio, accept)
            if not go_on:
                self.previous_rejected = True
                if callback_reject is not None:
                    callback_reject(self.time(t0), y.view(self.shape), self.time(h))
                h = proposal
                continue
            if callback_accept is not None:
                callback_accept(self.time(t0), y.view(self.shape), self.time(h))
            self.previous_rejected = False
            yield tau, h, y, y1, stages
            if on_step and next_step != len(step_taus) - 1:
                next_step += 1
            if on_jump and next_jump != len(jump_taus) - 1:
                next_jump += 1
            f = next_slope(t1, y1, stages, f1, on_jump, direction)
            tau, y, h = advance(tau, tau1, y, y1, h, proposal)

    def _needs_graph(self, y: torch.Tensor, f: torch.Tensor) -> bool:
        return self.force_graph or (torch.is_grad_enabled() and (y.requires_grad or f.requires_grad))

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        times = t.detach().tolist()
        n_out = len(times)
        if n_out == 1:
            return self.y0.unsqueeze(0).clone()
        # Each output differentiates the dense output it was read from in its own time (differentiates_output_times).
        time_graph = t if self.differentiates_output_times and t.requires_grad and torch.is_grad_enabled() else None
        direction = 1.0 if times[1] > times[0] else -1.0
        taus = [direction * x for x in times]
        y, f, h = self.start(times[0], direction)
        grad = time_graph is not None or self._needs_graph(y, f)
        if not grad:
            y, f = y.detach(), f.detach()
        moved: dict[int, torch.Tensor] = {}  # output index -> zero carrying d y(t_m) / d t_m (with ``time_graph``)
        outputs = DenseOutputs(self.dense, n_out, self.n, self.dtype, self.device, in_place=not grad)
        outputs.at_end(0, y)
        reused = self.reuses_stage_buffer and not grad
        j = 1
        self.steps_since_output = 0
        observer = self.step_observer
        for tau0, step, y0, y1, stages in self.march(taus[0], direction, y, f, h, grad, taus[-1]):
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
                outputs.inside(j, [(taus[m] - tau0) / step for m in range(j, last)], y0, stages, direction * step, reused=reused)
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
        dense = torch.as_tensor(self.dense, dtype=self.dtype, device=self.device)
        weights = dense_weights_tensor(dense, ((time - t_start) / dt).to(self.dtype))
        return torch.mv(stages.T, weights - weights.detach()) * dt

    def integrate_until_event(self, t0: torch.Tensor, event_fn, direction: float = 1.0):
        t0 = float(t0.detach())
        y, f, h = self.start(t0, direction)
        grad = self._needs_graph(y, f)
        watch = EventWatch(event_fn, self.time(t0), self.y0, self.atol)
        if watch.on_start:
            return watch.at_start(self.time(t0))
        dense = torch.as_tensor(self.dense, dtype=self.dtype, device=self.device)
        self.steps_since_output = 0
        for tau0, step, y0, y1, stages in self.march(direction * t0, direction, y, f, h, grad):
            t_end = direction * (tau0 + step)
            if not watch.crossed(self.time(t_end), y1.view(self.shape)):
                continue
            t_start, dt = direction * tau0, direction * step
            stages_now = stages.clone() if self.reuses_stage_buffer and not grad else stages

            def interp(t: torch.Tensor, y0=y0, t_start=t_start, dt=dt, stages_now=stages_now) -> torch.Tensor:
                theta = ((t - t_start) / dt).to(self.dtype)
                weights = dense_weights_tensor(dense, theta)
                return torch.addmv(y0, stages_now.T, weights, alpha=dt).view(self.shape)

            return watch.locate(interp, self.time(t_start), self.time(t_end))
        raise AssertionError("unreachable: the step loop only ends by raising")
