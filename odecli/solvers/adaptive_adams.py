"""``adams``: variable-step, variable-order Adams–Bashforth–Moulton (PECE), the Neural ODE paper's adaptive method.

Shampine & Gordon's DE/STEP in divided-difference form (torchdiffeq's former ``adams``,
``VariableCoefficientAdamsBashforth``): a step of order ``k`` (1 ≤ k ≤ 12) predicts with the variable-step
Adams–Bashforth formula of order ``k``, evaluates, corrects with Adams–Moulton of order ``k + 1`` and evaluates
again (PECE, two evaluations per step). With ``φ_j`` the modified divided differences of ``f`` at
``t_n, t_{n-1}, ...`` and ``ψ_i = t_{n+1} - t_{n-i}``::

    p      = y_n + h Σ_{j<k} g_j β_j φ_j          (predict)
    Δ_k    = f(t_{n+1}, p) - Σ_{j<k} β_j φ_j       (evaluate: the new k-th difference)
    y_{n+1} = p + h g_k Δ_k                         (correct), then f_{n+1} = f(t_{n+1}, y_{n+1})

where ``g_j = ∫_0^1 b_j(θ) dθ`` with ``b_j(θ) = Π_{i<j} (1 - a_i + a_i θ)``, ``a_i = h/ψ_i``, and ``β_j`` the
ratios of ``ψ`` between two steps (all 1 on constant steps). They depend only on the ratios of the last steps
to ``h`` and are cached by them: equal steps and doublings recur.

**Error and order.** DE/STEP's estimates in the mixed norm of the other adaptive methods
(``atol + rtol·max(|y_n|, |y_{n+1}|)``, RMS or the ``norm`` option): the step's local error
``h (g_{k-1} - g_k) ‖Δ_k‖`` decides acceptance; the error the step would have at orders ``k-2, k-1, k``
(and ``k+1`` after ``k+1`` equal steps) lower the order when they fall, raise it when ``k+1`` is smaller.
The first steps double ``h`` and raise the order by one each until a lower order looks better (DE/STEP's
phase 1); the first step is Hairer's initial step for a first-order method. Afterwards ``h`` doubles
when the error allows the doubled step, stays constant when it allows ``h`` (so that the coefficients
stay constant) and otherwise shrinks by ``(0.5/err)^(1/(k+1))`` clipped to ``[0.5, 0.9]``. A rejected step
halves ``h``; the third rejection in a row drops to the lowest order. ``min_order``/``max_order`` pin the
order range (both 1..12; the order rises from 1 through the start-up until it reaches ``min_order``).

**On the one loop.** The order and step decisions are this stepper's own step rule ``propose``
(``step_rules``); the limits, budget, acceptance, callbacks, ``step_t``/``jump_t`` (a jump restarts at
order 1), outputs and the event search are the adaptive loop's. ``attempt`` evaluates ``f(t_{n+1})`` when
the step passes (the order choice needs the new difference), ``propose`` updates the differences.

**Dense output.** The corrector's polynomial: ``y_n`` plus the integral of the polynomial through
``f(t_{n+1}, p), f_n, ..., f_{n-k+1}``, ``y_n + dt Σ_p θ^p c_p`` (``c_1 = f_n``); it equals ``y_{n+1}`` at
``θ = 1``. Its monomial coefficients are the step's "stages" with the identity as the loop's dense matrix,
so outputs between steps are read from the step that covers them, as for every adaptive method.

References: L. F. Shampine & M. K. Gordon, Computer Solution of Ordinary Differential Equations: the
Initial Value Problem (1975), ch. 5 and DE/STEP; Hairer, Nørsett & Wanner, Solving ODEs I, III.5.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from functools import cache
from typing import Any, ClassVar

import numpy as np
import torch

from odecli.registry import SOLVERS
from odecli.solvers.adaptive import ADAPTIVE_OPTIONS, AbstractAdaptiveSolver
from odecli.solvers.errors import InvalidInputError, NonFiniteState
from odecli.solvers.grid import nudge

MAX_ORDER = 12


@cache
def error_constants(count: int) -> tuple[float, ...]:
    """``|γ*_j|``, j < count: the constant-step Adams–Moulton error constants (1, 1/2, 1/12, 1/24, 19/720, ...)."""
    gamma = [Fraction(1)]
    for j in range(1, count):
        gamma.append(-sum(gamma[i] / (j + 1 - i) for i in range(j)))
    return tuple(abs(float(x)) for x in gamma)


GAMMA_STAR = error_constants(MAX_ORDER + 2)


class StepCoefficients:
    """One step's coefficients at order ``k`` (see the module docstring), for past steps ``ratios = h_{n-i}/h``.

    They depend on the step sizes only through these ratios (the error factors ``err``, ``erk``, ... are per
    unit ``h``), so a pattern that recurs — equal steps, a doubling — reuses them. The tensors are views of one
    host buffer moved to the state's dtype and device in one transfer.
    """

    __slots__ = ("k", "g", "predict", "differences", "dense", "update", "err", "erk", "erkm1", "erkm2", "erkp1")

    def __init__(self, ratios: tuple[float, ...], k: int, width: int, dtype: torch.dtype, device: torch.device):
        psi = [1.0]  # ψ_i / h, ψ_i = t_{n+1} - t_{n-i}
        for i in range(k - 1):
            psi.append(psi[-1] + ratios[i])
        a = [1.0 / p for p in psi]
        beta = [1.0]
        old = 0.0
        for j in range(k - 1):
            old += ratios[j]  # (t_n - t_{n-1-j}) / h
            beta.append(beta[-1] * psi[j] / old)
        rows = min(k, 3)
        ends = list(itertools.accumulate((k, rows * k, width * (k + 1), (k + 2) * (k + 4), (k + 1) * (k + 1))))
        buffer = np.zeros(ends[-1])
        predict, differences = buffer[: ends[0]], buffer[ends[0] : ends[1]].reshape(rows, k)
        dense, update = buffer[ends[1] : ends[2]].reshape(width, k + 1), buffer[ends[2] : ends[3]].reshape(k + 2, k + 4)
        integral = buffer[ends[3] :].reshape(k + 1, k + 1)
        # integral[j, p]: the coefficient of θ^(p+1) in ∫_0^θ b_j, b_j(θ) = Π_{i<j} (1 - a_i + a_i θ).
        poly = [1.0]
        for j in range(k + 1):
            integral[j, : j + 1] = poly
            if j < k:
                keep, grow = 1.0 - a[j], a[j]
                poly = [poly[0] * keep] + [poly[p] * keep + poly[p - 1] * grow for p in range(1, j + 1)] + [poly[j] * grow]
        integral /= np.arange(1.0, k + 2.0)
        g = integral.sum(axis=1).tolist()
        sigma = [1.0]  # DE/STEP's σ(m) for m = 1..k+1
        for j in range(k):
            sigma.append(sigma[-1] * (j + 1) * a[j])
        beta_np = np.array(beta)
        predict[:] = g[:k]
        predict *= beta_np
        for r in range(rows):  # Δ_{k-r} = fp - Σ_{j<k-r} β_j φ_j
            differences[r, : k - r] = beta_np[: k - r]
        dense[: k + 1, :k] = integral[:k].T * beta_np  # stages = dense @ [φ_0..φ_{k-1}, Δ_k]
        dense[: k + 1, k] = integral[k]
        # new φ from [φ_0..φ_k (old), Δ_k, f_{n+1}, fp], with e = Δ_k + f_{n+1} - fp = φ_k(n+1):
        # φ_i(n+1) = Σ_{i≤j<k} β_j φ_j + e, φ_k(n+1) = e, φ_{k+1}(n+1) = e - φ_k(n).
        for i in range(k):
            update[i, i:k] = beta_np[i:]
        update[:, k + 1 :] = (1.0, 1.0, -1.0)
        update[k + 1, k] = -1.0
        moved = torch.from_numpy(buffer).to(dtype=dtype, device=device)
        self.k, self.g = k, g
        self.predict, self.differences = moved[: ends[0]], moved[ends[0] : ends[1]].view(rows, k)
        self.dense, self.update = moved[ends[1] : ends[2]].view(width, k + 1), moved[ends[2] : ends[3]].view(k + 2, k + 4)
        self.err = g[k - 1] - g[k]
        self.erk = sigma[k] * GAMMA_STAR[k]
        self.erkm1 = sigma[k - 1] * GAMMA_STAR[k - 1] if k >= 2 else 0.0
        self.erkm2 = sigma[k - 2] * GAMMA_STAR[k - 2] if k >= 3 else 0.0
        self.erkp1 = GAMMA_STAR[k + 1]


@SOLVERS.register("adams")
class AdaptiveAdams(AbstractAdaptiveSolver):
    """Variable-step, variable-order Adams–Bashforth–Moulton PECE, orders 1–12 (Shampine & Gordon's DE/STEP)."""

    order: ClassVar[int] = MAX_ORDER  # the highest order; the order of each step is chosen as it goes
    reference: ClassVar[str] = "Shampine & Gordon 1975 (DE/STEP); Hairer, Nørsett & Wanner I, III.5"
    initial_step_order: ClassVar[int] = 2  # Hairer's initial step for a first-order step (local error ~h²)
    # The step-size rule is DE/STEP's own (double, keep, or shrink with the order): no controller options.
    options: ClassVar[frozenset[str]] = (ADAPTIVE_OPTIONS - {"controller", "safety", "ifactor", "dfactor"}) | {"min_order", "max_order"}

    def __init__(self, func, y0: torch.Tensor, rtol, atol, min_order: int = 1, max_order: int = MAX_ORDER, **options: Any):
        super().__init__(func, y0, rtol, atol, **options)
        for name, value in (("min_order", min_order), ("max_order", max_order)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ORDER:
                raise InvalidInputError(f"options['{name}'] must be an integer from 1 to {MAX_ORDER}, got {value!r}.")
        if min_order > max_order:
            raise InvalidInputError(f"options['min_order']={min_order} must not exceed options['max_order']={max_order}.")
        self.min_order, self.max_order = min_order, max_order
        self.dense = np.eye(max_order + 1)
        self.inv_sqrt_n = 1.0 / math.sqrt(self.n) if self.n else 0.0
        self.orders_used: list[int] = []  # the order of every accepted step (for tests and reports)
        self._cache: dict[tuple, StepCoefficients] = {}  # by order and past step ratios (equal steps, doublings recur)

    # -- per-solve state ----------------------------------------------------------------------------

    def _restart(self, f: torch.Tensor) -> None:
        self._phi = torch.cat([f.unsqueeze(0), f.new_zeros(2, self.n)])
        self._k, self._phase1, self._past, self._failures = 1, True, [], 0

    def begin(self, y: torch.Tensor, f: torch.Tensor, grad: bool):
        self._restart(f)
        self._pending = None
        self._abs_y = y.detach().abs()
        return self.attempt, self.next_slope

    def _coefficients(self, h: float, k: int) -> StepCoefficients:
        key = (k, *[p / h for p in self._past[: k - 1]])
        coefficients = self._cache.get(key)
        if coefficients is None:
            if len(self._cache) >= 512:
                self._cache.clear()
            coefficients = self._cache[key] = StepCoefficients(key[1:], k, self.max_order + 1, self.dtype, self.device)
        return coefficients

    # -- the step -----------------------------------------------------------------------------------

    def attempt(self, t0: float, dt: float, t1: float, h: float, y: torch.Tensor, f: torch.Tensor, grad: bool, nudge_end: bool):
        k = self._k
        c = self._coefficients(h, k)
        history = self._phi[:k]
        t_end = nudge(t1, t0, self.time_dtype) if nudge_end else t1  # f just before a jump at t1
        predicted = torch.addmv(y, history.T, c.predict, alpha=dt)
        fp = self.evaluate(t_end, predicted)
        differences = torch.addmm(fp.expand(c.differences.shape[0], self.n), c.differences, history, alpha=-1.0)
        delta = differences[0]
        y1 = torch.add(predicted, delta, alpha=dt * c.g[k])
        with torch.no_grad():
            abs_y1 = y1.detach().abs()
            tolerance = torch.maximum(self._abs_y, abs_y1).mul_(self.rtol).add_(self.atol)
            scaled = torch.div(differences.detach(), tolerance)
            if self.norm is None:
                norms = [value * (h * self.inv_sqrt_n) for value in torch.linalg.vector_norm(scaled, dim=1).tolist()]
            else:
                norms = [h * float(self.norm(row)) for row in scaled]
        ratio = c.err * norms[0]
        if not math.isfinite(ratio) and not bool(torch.isfinite(y1.detach()).all()) and not bool(torch.isfinite(predicted.detach()).all()):
            raise NonFiniteState(t0)
        stages = torch.mm(c.dense, torch.cat([history, delta.unsqueeze(0)]))
        f1 = self.evaluate(t_end, y1) if ratio <= 1.0 else None
        erk = c.erk * norms[0]
        erkm1 = c.erkm1 * norms[1] if k >= 2 else math.inf
        erkm2 = c.erkm2 * norms[2] if k >= 3 else math.inf
        lower = k > self.min_order and ((k >= 3 and max(erkm1, erkm2) <= erk) or (k == 2 and erkm1 <= 0.5 * erk))
        self._pending = (c, t_end, y1, delta, fp, f1, tolerance, abs_y1, erk, erkm1, lower)
        return y1, stages, ratio, f1

    def step_rules(self, direction: float, end: float | None):
        limit, judge, _, advance = super().step_rules(direction, end)
        return limit, judge, self._propose, advance

    def _propose(self, h: float, ratio: float, accept: bool) -> float:
        """DE/STEP's step size (and order) after an attempt: the stepper's own ``propose`` rule."""
        c, t_end, y1, delta, fp, f1, tolerance, abs_y1, erk, erkm1, lower = self._pending
        k = c.k
        if not accept:
            self._phase1 = False
            self._failures += 1
            factor = 0.5
            if self._failures >= 3:
                if self._failures == 3 and math.isfinite(erk) and 0.5 < 0.25 * erk:
                    factor = math.sqrt(0.5 / erk)
                lower, k = False, min(k, self.min_order)  # DE/STEP drops to order 1; never below min_order
            self._k = max(k - 1, self.min_order) if lower else k
            return factor * h
        self._failures = 0
        if f1 is None:  # a step accepted whatever its error (min_step)
            f1 = self.evaluate(t_end, y1)
            self._pending = (c, t_end, y1, delta, fp, f1, tolerance, abs_y1, erk, erkm1, lower)
        phi = torch.mm(c.update, torch.cat([self._phi[: k + 1], torch.stack([delta, f1, fp])]))
        self._phi, self._abs_y = phi, abs_y1
        self._past.insert(0, h)
        del self._past[MAX_ORDER + 1 :]
        self.orders_used.append(k)
        if lower or k == self.max_order:
            self._phase1 = False
        new_k, error = k, erk
        if k < self.min_order or (self._phase1 and k < self.max_order):
            new_k = k + 1
        elif lower:
            new_k, error = k - 1, erkm1
        elif k < self.max_order and self._past[: k + 1].count(h) == k + 1:  # k+1 equal steps: the order-(k+1) estimate holds
            with torch.no_grad():
                scaled = phi[k + 1].detach() / tolerance
                norm = float(torch.linalg.vector_norm(scaled)) * self.inv_sqrt_n if self.norm is None else float(self.norm(scaled))
            erkp1 = c.erkp1 * h * norm
            if k == 1:
                if erkp1 < 0.5 * erk:
                    new_k, error = 2, erkp1
            elif erkm1 <= min(erk, erkp1) and k > self.min_order:
                new_k, error = k - 1, erkm1
            elif erkp1 < erk:
                new_k, error = k + 1, erkp1
        self._k = new_k
        if self._phase1 or 0.5 >= error * 2.0 ** (new_k + 1):
            return 2.0 * h
        if 0.5 >= error:
            return h
        return h * max(0.5, min(0.9, (0.5 / error) ** (1.0 / (new_k + 1))))

    def next_slope(self, t1: float, y1: torch.Tensor, stages: torch.Tensor, f1: torch.Tensor | None, jumped: bool, direction: float) -> torch.Tensor:
        if jumped:  # f is discontinuous at t1: restart the history from the far side, at order 1
            f = self.evaluate(nudge(t1, t1 + direction, self.time_dtype), y1)
            self._restart(f)
            return f
        return self._pending[5]
