"""Fixed-step Adams methods: ``explicit_adams`` (Adams–Bashforth) and ``implicit_adams`` (ABM).

These mean what torchdiffeq's main branch means by the same names (``fixed_adams`` is its old
alias of ``implicit_adams``): on a fixed grid, the first steps are taken with RK4 (3/8 rule: the ``rk4``
method's own stepper) until
three past derivatives are known, then the order rises by one per step up to ``max_order - 1``
(default 11) as the history fills. ``explicit_adams`` uses the Adams–Bashforth formula alone;
``implicit_adams`` uses it as predictor and corrects with Adams–Moulton by functional iteration
(PECE repeated up to ``max_iters`` = 4 times) until successive corrections agree to ``rtol``/``atol``
in the max norm. A corrector that has not converged warns (``CorrectorDidNotConverge``) and drops
the oldest derivative from the history, exactly as torchdiffeq does. On an evenly spaced grid results match
torchdiffeq to rounding (the Adams steps bit for bit; the RK4 start sums its stages as every Runge–Kutta
step here does, where torchdiffeq writes the 3/8 rule out by hand); where the step changes (an uneven ``grid_constructor`` grid, the short last step of
a ``step_size`` that does not divide the span) the history restarts from RK4, where torchdiffeq reuses it at
the wrong nodes and loses two orders of accuracy.

The coefficients are derived here (exact rational integrals of Lagrange polynomials) rather than
tabulated: ``y_{n+1} = y_n + h Σ_j β_j f_{n-j}``, ``β_j = ∫_0^1 ℓ_j(s) ds`` over the nodes
``0, -1, -2, ...`` (Bashforth) or ``1, 0, -1, ...`` (Moulton). Reference: Hairer, Nørsett & Wanner,
Solving ODEs I, III.1.
"""

from __future__ import annotations

import collections
import warnings
from fractions import Fraction
from functools import cache
from typing import ClassVar

import torch

from odecli.registry import SOLVERS
from odecli.solvers.errors import InvalidInputError
from odecli.solvers.fixed_grid import FIXED_GRID_OPTIONS, AbstractFixedGridSolver
from odecli.solvers.runge_kutta import RK4

MIN_ORDER = 4  # below this many history terms (+1), steps are taken with RK4
MAX_ORDER = 12
DEFAULT_CORRECTOR_ITERS = 4


class CorrectorDidNotConverge(UserWarning):
    """The Adams–Moulton corrector did not settle within ``max_iters``; the step is used anyway."""


@cache
def adams_coefficients(n_terms: int, implicit: bool) -> tuple[Fraction, ...]:
    """Exact weights ``β_0..β_{n-1}`` of the Adams formula with ``n_terms`` derivative values.

    Bashforth: derivatives at ``t_n, t_{n-1}, ...``; Moulton: at ``t_{n+1}, t_n, ...`` (in units of h).
    """
    nodes = [Fraction(1 - j) if implicit else Fraction(-j) for j in range(n_terms)]
    weights = []
    for j, node_j in enumerate(nodes):
        # Lagrange basis polynomial ℓ_j as coefficients in increasing powers of s.
        poly = [Fraction(1)]
        for m, node_m in enumerate(nodes):
            if m == j:
                continue
            scale = node_j - node_m
            # multiply by (s - node_m) / scale
            shifted = [Fraction(0)] + poly
            poly = [(shifted[k] - node_m * (poly[k] if k < len(poly) else 0)) / scale for k in range(len(shifted))]
        weights.append(sum(c / (k + 1) for k, c in enumerate(poly)))
    return tuple(weights)


def _coefficient_tensors(implicit: bool, device: torch.device) -> list[torch.Tensor]:
    """Float64 weights indexed by number of terms (index 0 unused), as torchdiffeq stores them."""
    table = [torch.zeros(0, dtype=torch.float64, device=device)]
    table += [torch.tensor([float(c) for c in adams_coefficients(k, implicit)], dtype=torch.float64, device=device) for k in range(1, MAX_ORDER + 1)]
    return table


class AbstractAdams(AbstractFixedGridSolver):
    """Adams–Bashforth, optionally corrected by Adams–Moulton, with an RK4 start."""

    order: ClassVar[int] = 4  # the RK4 start and the first AB3 step limit the global order
    tensor_times: ClassVar[bool] = True  # times computed as torchdiffeq computes them: Adams steps equal bit for bit
    correct: ClassVar[bool]
    options: ClassVar[frozenset[str]] = FIXED_GRID_OPTIONS | {"max_iters", "max_order"}

    def __init__(self, func, y0, rtol, atol, max_iters: int = DEFAULT_CORRECTOR_ITERS, max_order: int = MAX_ORDER, **options):
        super().__init__(func, y0, rtol, atol, **options)
        if int(max_order) > MAX_ORDER:
            raise InvalidInputError(f"options['max_order'] must be at most {MAX_ORDER}, got {max_order}.")
        if int(max_order) < MIN_ORDER:
            warnings.warn(f"max_order={max_order} is below {MIN_ORDER}, so every step is an RK4 step.", stacklevel=2)
        self.max_iters = int(max_iters)
        self.max_order = int(max_order)
        self.rtol_t = torch.as_tensor(rtol, dtype=y0.dtype, device=y0.device)
        self.atol_t = torch.as_tensor(atol, dtype=y0.dtype, device=y0.device)
        self.history: collections.deque[torch.Tensor] = collections.deque(maxlen=max(self.max_order - 1, 1))
        self.history_t: torch.Tensor | None = None
        self.restart_steps: frozenset[int] = frozenset()  # indices of the grid's steps where the step size changes
        self._warned = False
        self.bashforth = _coefficient_tensors(False, y0.device)
        self.moulton = _coefficient_tensors(True, y0.device)
        # The start steps are the rk4 method's (RK4_THREE_EIGHTHS through the explicit Runge–Kutta stepper).
        self.starter = RK4(func, y0, rtol, atol, **options)
        self.starter_ready = False

    def _remember(self, t: torch.Tensor, f: torch.Tensor) -> None:
        if self.history_t is None or self.history_t != t:
            self.history.appendleft(f)
            self.history_t = t

    def _corrector_converged(self, previous: torch.Tensor, current: torch.Tensor) -> bool:
        tolerance = self.atol_t + self.rtol_t * torch.max(previous.abs(), current.abs())
        return bool((torch.abs(previous - current) / tolerance).abs().max() < 1)

    def _start_step(self, t0, t1, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """``y1`` of one RK4 step (while the history is too short for an Adams formula)."""
        starter = self.starter
        if not self.starter_ready:
            starter.func = self.func  # the func this solve evaluates (cast to the state's dtype if it had to be)
            starter.prepare(t0, y0, f0)
            self.starter_ready = True
        before = starter.nfe
        y1, _ = starter.step(t0, t1, y0, f0)
        self.nfe += starter.nfe - before
        return y1

    def grid(self, t: torch.Tensor, keep_graph: bool = False) -> torch.Tensor:
        # The weights assume equally spaced history; a step of another size (a grid_constructor's uneven
        # grid, a default grid's short last step) would use them at the wrong nodes, an O(h) local error
        # (2.9e-2 at h = 0.03 where the spacing changes by a third). The history restarts from RK4 there
        # instead. Differences within the rounding of the grid's times (t0 + k h is rounded at the scale of
        # the largest time so far, not of t0) are not a change. Found once per grid, not read per step.
        grid = super().grid(t, keep_graph)
        with torch.no_grad():
            points = grid.detach()
            steps = (points[1:] - points[:-1]).abs()
            if len(steps) > 1:
                largest = torch.maximum(torch.cummax(points.abs(), dim=0).values[2:], steps[1:])
                changed = (steps[1:] - steps[:-1]).abs() > 8 * torch.finfo(points.dtype).eps * largest
                self.restart_steps = frozenset((changed.nonzero()[:, 0] + 1).tolist())
        return grid

    def first_slope(self, t0, t1, y: torch.Tensor) -> torch.Tensor:
        return self.evaluate(self.inside(t0, t1), y)

    def step(self, t0, t1, y0: torch.Tensor, f0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        dt = t1 - t0
        if self.steps_accepted in self.restart_steps:
            self.history.clear()
            self.history_t = None
        if f0 is None:
            f0 = self.first_slope(t0, t1, y0)
        self._remember(t0, f0)
        order = min(len(self.history), self.max_order - 1)
        if order < MIN_ORDER - 1:
            return self._start_step(t0, t1, y0, f0), f0
        return y0 + self._adams_increment(t0, t1, dt, y0, order), f0

    def _adams_increment(self, t0, t1, dt, y0: torch.Tensor, order: int) -> torch.Tensor:
        """``y1 - y0`` by the Adams formulas, written for the increment as torchdiffeq's."""
        # Predictor (Adams–Bashforth with `order` past derivatives).
        dy = _dot(dt * self.bashforth[order], self.history).type_as(y0)
        if self.correct:
            moulton = self.moulton[order + 1]
            known = dt * _dot(moulton[1:], self.history).type_as(y0)
            converged = False
            for _ in range(self.max_iters):
                previous = dy
                f = self.evaluate(self.inside(t1, t0), y0 + dy)
                dy = (dt * moulton[0] * f).type_as(y0) + known
                converged = self._corrector_converged(previous, dy)
                if converged:
                    break
            if not converged:
                if not self._warned:  # once per solve, not once per step
                    self._warned = True
                    warnings.warn(
                        f"implicit_adams: the corrector did not converge in {self.max_iters} iterations at t={float(t0):.6g} "
                        "(and maybe later); those steps are used anyway. Use a smaller step_size or raise "
                        "options={'max_iters': N}.",
                        CorrectorDidNotConverge,
                        stacklevel=2,
                    )
                self.history.pop()  # forget the oldest derivative, lowering the order (as torchdiffeq)
        return dy


def _dot(weights: torch.Tensor, values) -> torch.Tensor:
    # A Python sum over the deque (zip stops at the shorter), in torchdiffeq's order of operations.
    return sum(w * v for w, v in zip(weights, values, strict=False))


@SOLVERS.register(
    "explicit_adams",
    description="Adams-Bashforth on a fixed grid, order rising to 11 after an RK4 start (torchdiffeq's explicit_adams).",
)
class ExplicitAdams(AbstractAdams):
    """Adams–Bashforth on a fixed grid, order rising to ``max_order - 1`` after an RK4 start."""

    correct = False
    reference = "Bashforth & Adams 1883; Hairer, Nørsett & Wanner, Solving ODEs I, III.1"


@SOLVERS.register(
    "implicit_adams",
    aliases=("fixed_adams",),
    description="Adams-Bashforth-Moulton predictor-corrector on a fixed grid (torchdiffeq's implicit_adams/fixed_adams).",
)
class ImplicitAdams(AbstractAdams):
    """Adams–Bashforth predictor, Adams–Moulton corrector by functional iteration, fixed grid."""

    correct = True
    implicit = True
    reference = "Moulton 1926; Hairer, Nørsett & Wanner, Solving ODEs I, III.1"
