"""Typed solver errors carrying the time and values a user needs to act on them.

Every user-facing failure of ``odeint`` raises one of these, never a bare ``assert``.
``SolverError`` is raised while solving (a runtime failure); ``InvalidInputError`` for
arguments that can never work (it is also a ``ValueError`` so torchdiffeq-style code that
catches ``ValueError`` keeps working).
"""

from __future__ import annotations


class SolverError(RuntimeError):
    """Integration failed part-way; ``t`` is the time reached."""

    hint = ""

    def __init__(self, message: str, t: float | None = None):
        self.t = t
        hint = f" {self.hint}" if self.hint else ""
        super().__init__(f"{message}{hint}")


class StepSizeTooSmall(SolverError):
    """The adaptive step size fell below ``min_step`` (or underflowed)."""

    hint = "The problem may be stiff or singular there: loosen rtol/atol, or try an implicit solver."

    def __init__(self, t: float, dt: float, min_step: float):
        self.dt, self.min_step = dt, min_step
        super().__init__(f"Step size {dt:.3g} fell below the minimum {min_step:.3g} at t={t:.6g}.", t)


class MaxStepsExceeded(SolverError):
    """More than ``max_num_steps`` steps were taken."""

    hint = "Raise options={'max_num_steps': N}, loosen rtol/atol, or use a stiff (implicit) solver."

    def __init__(self, t: float, max_num_steps: int, t_end: float | None = None):
        self.max_num_steps, self.t_end = max_num_steps, t_end
        target = f" of {t_end:.6g}" if t_end is not None else ""
        super().__init__(f"Exceeded max_num_steps={max_num_steps} at t={t:.6g}{target}.", t)


class NonFiniteState(SolverError):
    """The state or its derivative became NaN or infinite."""

    hint = "The solution may blow up here: check the vector field, lower the learning rate, or tighten tolerances."

    def __init__(self, t: float, what: str = "state"):
        self.what = what
        super().__init__(f"Non-finite {what} (NaN or Inf) at t={t:.6g}.", t)


class InvalidInputError(ValueError):
    """Arguments to ``odeint`` that cannot work."""


class InvalidTimeGrid(InvalidInputError):
    """``t`` is not a strictly monotone 1-D floating tensor on the state's device."""


class GridTooLarge(InvalidInputError):
    """A fixed grid (``step_size``) would take more steps than allowed; refused before its points are allocated."""

    def __init__(self, step_size: float, total_steps: int, widest_steps: int, t_start: float, t_end: float, limit: int, *, per_interval: bool):
        self.step_size, self.total_steps, self.widest_steps, self.limit = step_size, total_steps, widest_steps, limit
        self.t_start, self.t_end, self.per_interval = t_start, t_end, per_interval
        if per_interval:
            over = (
                f"{widest_steps:,} of them between the output times t={t_start:.6g} and t={t_end:.6g}: more than "
                f"max_num_steps={limit:,}, so the grid is not built. Use a larger step_size, or raise options={{'max_num_steps': N}}."
            )
        else:
            over = f"more than the {limit:,} a fixed grid may hold, so the grid is not built. Use a larger step_size."
        super().__init__(f"step_size={step_size:.3g} would take {total_steps:,} steps in all, {over}")


class FuncOutputMismatch(InvalidInputError):
    """``func(t, y)`` returned a tensor whose shape, dtype or structure differs from ``y``'s."""


class UnknownMethod(InvalidInputError):
    """A ``method`` name that is not registered."""


class UnknownOption(InvalidInputError):
    """An ``options`` key the chosen method does not accept."""


class NewtonDidNotConverge(SolverError):
    """The nonlinear stage equations of an implicit method were not solved within ``max_iters`` iterations."""

    hint = "Use a smaller step_size, raise options={'max_iters': N}, or loosen rtol/atol (the Newton tolerance)."

    def __init__(self, t: float, iterations: int, residual: float, tol: float):
        self.iterations, self.residual, self.tol = iterations, residual, tol
        super().__init__(
            f"Newton iteration did not converge in {iterations} iterations at t={t:.6g} "
            f"(scaled residual {residual:.3g} > tolerance {tol:.3g}).",
            t,
        )


class MissingDependency(InvalidInputError, ImportError):
    """A method needs an optional package that is not installed."""


class CompileFallback(UserWarning):
    """``options={'compile': True}``: the step could not be compiled with this ``func`` (it runs eagerly; warned once per ``func``)."""
