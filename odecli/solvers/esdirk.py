"""Adaptive, L-stable ESDIRK methods for stiff problems: ``kvaerno5`` and ``kvaerno3`` (Kværnø 2004).

An ESDIRK step (explicit first stage, singly diagonally implicit Runge–Kutta) solves its stages in turn::

    k_1 = f(t0, y0),    Y_i = known_i + hγ f(t0 + c_i h, Y_i),    known_i = y0 + h Σ_{j<i} a_ij k_j,
    k_i = (Y_i - known_i) / (hγ)

Both methods are stiffly accurate (``y1 = Y_s``, so ``k_s = f(t1, y1)`` is the next step's ``k_1``)
and L-stable; the embedded solution ``Y_{s-1}`` (also at ``c = 1``) is one order lower.

**Newton, Jacobian, step control, gradients**: ``adaptive_implicit.py``. The stages are solved in turn,
each by simplified Newton on ``G(Y) = Y - known_i - hγ f(t_i, Y)`` with the iteration matrix
``M = I - hγJ`` — one matrix for all stages, since γ is shared — from the tableau's stage predictor (an
extrapolation of the earlier stages' slopes) and, should that fail, once more from the previous stage
value (safer on stiff nonlinear stages, where extrapolation overshoots). Each converged stage gets its
exact derivative by the implicit function theorem, for one extra evaluation per stage.

**Error.** ``err = h Σ (b_i - b̂_i) k_i``, the plain embedded difference (as diffrax does). The embedded
method is itself stiffly accurate, so the difference stays bounded on stiff components without
Shampine's filter ``M⁻¹ err`` (which Hairer's RADAU5 needs, see ``radau.py``): measured on Van der Pol μ = 1000 the filter *under*-estimates the local error by up to 100× near the
fold (x → 1), where the stiff eigenvalue passes through zero, and on both problems of
``benchmarks/stiff.py`` the plain difference gives the smaller global error (``benchmarks/stiff.md``).
Output times inside a step are interpolated by the cubic Hermite through ``y0, y1, k_1, k_s``
(third order, no extra evaluation); the last step ends exactly on ``t[-1]``.

Reference: A. Kværnø, Singly diagonally implicit Runge–Kutta methods with an explicit first stage,
BIT 44(3), 2004; the coefficients, stage predictors and dense output are data in ``tableau.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from odecli.registry import SOLVERS
from odecli.solvers.adaptive_implicit import AbstractAdaptiveImplicit, NewtonFailed, ShiftedLU
from odecli.solvers.tableau import KVAERNO3, KVAERNO5, ButcherTableau, InvalidTableau, TableauKind, tableau_tensors

KVAERNO_2004 = "Kvaerno 2004, BIT 44(3), 'Singly diagonally implicit Runge-Kutta methods with an explicit first stage'"


# --------------------------------------------------------------------------------------------
# The solver.


class AbstractESDIRK(AbstractAdaptiveImplicit):
    """An adaptive stiffly accurate ESDIRK method; subclasses set ``tableau``, ``order`` and ``reference``."""

    tableau: ClassVar[ButcherTableau]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a tableau this stepper cannot run; FSAL is read from it."""
        super().__init_subclass__(**kwargs)
        tab = getattr(cls, "tableau", None)
        if tab is None:
            return
        shaped = tab.kind is TableauKind.DIAGONALLY_IMPLICIT and not any(tab.a[0]) and tab.gamma is not None and 0.0 < tab.gamma < 1.0
        if not (shaped and tab.stiffly_accurate and tab.adaptive and tab.dense is not None):
            raise InvalidTableau(
                f"{tab.name}: an ESDIRK method needs an explicit first stage, one diagonal γ in (0, 1) for the other stages, "
                "b equal to the last row (stiffly accurate), error weights and a dense output."
            )
        cls.fsal = tab.fsal

    def __init__(self, func, y0: torch.Tensor, rtol, atol, **options: Any):
        super().__init__(func, y0, rtol, atol, **options)
        coefficients = tableau_tensors(self.tableau, self.dtype, self.device)
        self.a_rows, self.predictor, self.b_error = coefficients.a_rows, coefficients.predictor, coefficients.b_error
        self.dense = coefficients.dense

    def _factorise(self, jac: torch.Tensor, h: float) -> ShiftedLU:
        """``I - hγJ``: one LU serves every stage, since the diagonal γ is shared."""
        return ShiftedLU(jac, h * self.tableau.gamma)

    def _step(self, t0: float, h: float, y0: torch.Tensor, f0: torch.Tensor, matrix: ShiftedLU, grad: bool):
        tab = self.tableau
        h_gamma = h * tab.gamma
        y0_d = y0.detach()
        scale = self.atol + self.newton_rtol * y0_d.abs()
        ks = [f0]
        # The stages without graph, written row by row into a fresh [s, n] buffer (the dense output may keep it).
        stages_d = torch.empty(tab.stages, self.n, dtype=self.dtype, device=self.device)
        stages_d[0] = f0.detach()
        theta_max = 0.0
        stage = previous_stage = y0_d
        for i in range(1, tab.stages):
            t_i = self.time(t0 + tab.c[i] * h if tab.c[i] != 1.0 else t0 + h)
            previous = stages_d[:i].T
            known_d = torch.addmv(y0_d, previous, self.a_rows[i], alpha=h)
            guess = torch.addmv(known_d, previous, self.predictor[i], alpha=h_gamma)

            def residual(y, t_i=t_i, known_d=known_d):
                self.nfe += 1
                return y - known_d - h_gamma * self.func(t_i, y)

            with torch.no_grad():
                try:
                    y_star, theta = self._newton(residual, guess, matrix, scale)
                except NewtonFailed:
                    # The extrapolated slope can overshoot badly on stiff nonlinear stages; the previous
                    # stage value is a safer (if slower) start. Only if that fails too is the step rejected.
                    self._eta = 1.0
                    y_star, theta = self._newton(residual, previous_stage, matrix, scale)
            previous_stage = y_star
            theta_max = max(theta_max, theta)
            torch.sub(y_star, known_d, out=stages_d[i]).div_(h_gamma)
            if grad:
                known = torch.addmv(y0, torch.stack(ks).T, self.a_rows[i], alpha=h)
                self.nfe += 1
                mapped = known + h_gamma * self.func(t_i, y_star)

                def local_map(y, t_i=t_i):
                    return h_gamma * self.func(t_i, y)

                stage = self._attach(y_star, mapped, local_map, matrix)
                ks.append((stage - known) / h_gamma)
            else:
                stage = y_star
        y1 = stage  # stiffly accurate: the solution is the last stage
        with torch.no_grad():
            error = torch.mv(stages_d.T, self.b_error).mul_(h)
            ratio = self._error_ratio(error, y0_d, y1)
        stages = torch.stack(ks) if grad else stages_d
        return y1, stages, ratio, theta_max, stages[-1]


# --------------------------------------------------------------------------------------------
# The registered methods.


@SOLVERS.register(
    "kvaerno5",
    description="Kvaerno ESDIRK 5(4), 7 stages, L-stable, stiffly accurate; adaptive, Newton + autograd Jacobian; for stiff problems.",
)
class Kvaerno5(AbstractESDIRK):
    """Kværnø's ESDIRK 5(4): 7 stages (6 implicit, FSAL), L-stable, stiffly accurate, cubic Hermite dense output."""

    tableau, order = KVAERNO5, 5
    reference = KVAERNO_2004


@SOLVERS.register(
    "kvaerno3",
    description="Kvaerno ESDIRK 3(2), 4 stages, L-stable, stiffly accurate; adaptive, Newton + autograd Jacobian; loose tolerances.",
)
class Kvaerno3(AbstractESDIRK):
    """Kværnø's ESDIRK 3(2): 4 stages (3 implicit, FSAL), L-stable, stiffly accurate, cubic Hermite dense output."""

    tableau, order = KVAERNO3, 3
    reference = KVAERNO_2004
