"""The contract every registered solver fulfils.

The front end (``odecli.solvers.odeint``, with the checks and the ``StateLayout`` of
``odecli.solvers.problem``) turns whatever the user passed — tuple states, decreasing time,
options — into one flat problem: a 1-D state ``y0`` and a strictly increasing
1-D time grid ``t`` on the state's device and dtype, and a ``func(t, y)`` that maps a 0-d time
tensor and a flat state to a flat derivative. A solver integrates that problem and returns the
solution stacked at every time in ``t`` (``out[0] == y0``), counting its own evaluations.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from odecli.solvers.errors import InvalidInputError, NonFiniteState

FlatFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Step callbacks a vector field may define (torchdiffeq's); the ``*_adjoint`` variants are called during
# an adjoint's backward solve.
CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT_CALLBACK_NAMES = tuple(f"{name}_adjoint" for name in CALLBACK_NAMES)


def output_dtype_accepted(output: torch.dtype, state: torch.dtype) -> bool:
    """Whether ``func`` may return ``output`` for a state of dtype ``state``; solvers then cast it to ``state``.

    torchdiffeq casts whatever ``func`` returns into the state's dtype, so a float32 state whose
    ``func`` answers in float64 (say through a float64 ``t``) gives a float32 solution; odecli does
    the same for floating outputs. It refuses the casts that would lose information silently: an
    integer output, or a complex one for a real state (torchdiffeq truncates those).
    """
    return output.is_floating_point or (output.is_complex and state.is_complex)


class AbstractSolver(abc.ABC):
    """One solve of a flat problem. Subclasses are registered in ``odecli.registry.SOLVERS``."""

    order: ClassVar[int]
    adaptive: ClassVar[bool]
    implicit: ClassVar[bool] = False
    fsal: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    # Option names this method understands (beyond rtol/atol); the front end warns about others.
    options: ClassVar[frozenset[str]] = frozenset()
    # Step callbacks (attributes of ``func``) this method calls; the front end warns about others.
    callbacks: ClassVar[frozenset[str]] = frozenset({"callback_step"})
    # If True the front end skips its generic wrapping: a single-tensor state keeps its own shape
    # (``func`` receives and returns that shape) and ``t`` may be decreasing, with ``func`` unchanged.
    # The solver then handles both itself (the explicit Runge–Kutta family does, to avoid a Python
    # wrapper around every evaluation). Tuple states are always flattened.
    native_problem: ClassVar[bool] = False
    # True if ``integrate`` builds the autograd graph from a ``t`` that requires grad by itself (the
    # fixed-grid methods: their steps are functions of ``t``, as in torchdiffeq). Otherwise the front
    # end passes a detached ``t``, moves every step with ``t[0]`` and every output with its own time.
    differentiates_times: ClassVar[bool] = False
    # With ``differentiates_times`` False: True if ``integrate`` differentiates each output in its own
    # time when given such a ``t`` (the front end still moves the steps with ``t[0]``).
    differentiates_output_times: ClassVar[bool] = False
    # False for a method that integrates outside autograd (no gradient reaches y0, t or parameters).
    differentiable: ClassVar[bool] = True

    def __init__(self, func: FlatFunc, y0: torch.Tensor, rtol: float, atol: float, **options: Any):
        self.func = func
        self.y0 = y0
        self.rtol = rtol
        self.atol = atol
        self.nfe = 0
        self.steps_accepted = 0
        self.steps_rejected = 0
        self.shape, self.n = y0.shape, y0.numel()
        self.dtype, self.device = y0.dtype, y0.device
        self.time_dtype = y0.real.dtype  # func gets t in the state's real dtype, as torchdiffeq passes it
        # Set by a front end that records the solve (``odeint_checkpoint``); ``integrate`` calls it after every
        # accepted step with ``(start, end, y_start, k1, output indices)``: ``start``/``end`` are the step's
        # float times (adaptive explicit RK: ``direction·t0`` and the step size), ``k1`` its first stage (or None).
        self.step_observer: Callable[[float, float, torch.Tensor, torch.Tensor | None, range], None] | None = None

    def time(self, t: float | torch.Tensor) -> torch.Tensor:
        """A 0-d time in the time dtype; a tensor time (from a ``t`` that requires grad) keeps its graph."""
        if isinstance(t, torch.Tensor):
            return t.to(self.time_dtype)
        return torch.scalar_tensor(t, dtype=self.time_dtype, device=self.device)

    def evaluate(self, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``func(t, y)`` for a flat ``y`` (viewed in the state's shape), flat and counted."""
        self.nfe += 1
        return self.func(self.time(t), y.view(self.shape)).reshape(self.n)

    def check_initial_state(self, t0: float) -> None:
        """``NonFiniteState`` when ``y0`` holds NaN or Inf."""
        # max |y0| is NaN or Inf exactly when some element is (3 cheap ops; isfinite().all() is ~4x dearer).
        if self.n and not math.isfinite(float(self.y0.detach().abs().max())):
            raise NonFiniteState(t0, "initial state y0")

    @abc.abstractmethod
    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        """Solution at every time in ``t`` (shape ``(len(t), *y0.shape)``)."""

    def integrate_until_event(self, t0: torch.Tensor, event_fn: FlatFunc, direction: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve from ``t0`` until ``event_fn(t, y)`` (a scalar) changes sign: ``(event_t, stack([y0, y(event_t)]))``.

        ``event_fn`` is already combined into one scalar that starts positive (see ``events.combine_event_functions``);
        ``direction`` is -1.0 for a native-problem method solving backwards in time (others always get +1.0).
        """
        raise InvalidInputError(f"method {type(self).__name__} does not support event_fn; use an explicit Runge-Kutta method such as 'dopri5'.")


def raise_if_not_finite(solution: torch.Tensor, times: Sequence[float]) -> None:
    """``NonFiniteState`` at the first output time whose state holds NaN or Inf."""
    if not bool(torch.isfinite(solution.detach()).all()):
        bad = int((~torch.isfinite(solution.detach())).reshape(len(solution), -1).any(dim=1).nonzero()[0])
        raise NonFiniteState(times[bad])
