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
BIT 44(3), 2004; coefficients and stage predictors as diffrax and OrdinaryDiffEq.jl ship them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch

from odecli.registry import SOLVERS
from odecli.solvers.adaptive_implicit import AbstractAdaptiveImplicit, NewtonFailed, ShiftedLU
from odecli.solvers.tableau import InvalidTableau, hermite_dense

_CONSISTENCY_TOL = 1e-12

# --------------------------------------------------------------------------------------------
# Tableaus as data.


@dataclass(frozen=True)
class ESDIRKTableau:
    """A stiffly accurate ESDIRK method: ``a[i]`` holds the ``i`` sub-diagonal weights of stage ``i``.

    Stage 0 is explicit; stages ``1..s-1`` have the diagonal ``gamma``. The solution weights are the
    last row (``b = a[s-1] + (γ,)``, stiffly accurate); ``b_error`` = solution minus embedded weights.
    ``predictor[i]`` (optional) extrapolates a Newton starting guess ``k_i ≈ Σ_j predictor[i][j] k_j``.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    gamma: float
    b_error: tuple[float, ...]
    predictor: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b_error) != s:
            raise InvalidTableau(f"{self.name}: c, a and b_error must all have {s} entries (stages).")
        if self.c[0] != 0.0 or self.a[0] != ():
            raise InvalidTableau(f"{self.name}: an ESDIRK's first stage is explicit: c[0] = 0 and a[0] = ().")
        if not 0.0 < self.gamma < 1.0:
            raise InvalidTableau(f"{self.name}: the diagonal γ must lie in (0, 1), got {self.gamma}.")
        for i, row in enumerate(self.a[1:], start=1):
            if len(row) != i:
                raise InvalidTableau(f"{self.name}: row a[{i}] must have {i} sub-diagonal entries, got {len(row)}.")
            total = math.fsum(row) + self.gamma
            if abs(total - self.c[i]) > _CONSISTENCY_TOL:
                raise InvalidTableau(f"{self.name}: row a[{i}] plus γ sums to {total!r}, but c[{i}] = {self.c[i]!r}; they must agree.")
        if self.c[-1] != 1.0:
            raise InvalidTableau(f"{self.name}: a stiffly accurate method's last node must be 1, got {self.c[-1]}.")
        if abs(math.fsum(self.b_error)) > _CONSISTENCY_TOL:
            raise InvalidTableau(f"{self.name}: error weights b_error sum to {math.fsum(self.b_error)!r}, they must sum to 0.")
        if self.predictor is not None:
            if len(self.predictor) != s - 1 or any(len(row) != i for i, row in enumerate(self.predictor, start=1)):
                raise InvalidTableau(f"{self.name}: predictor needs rows of 1..{s - 1} weights for stages 1..{s - 1}.")
            for i, row in enumerate(self.predictor, start=1):
                if abs(math.fsum(row) - 1.0) > 1e-9:
                    raise InvalidTableau(f"{self.name}: predictor row {i} sums to {math.fsum(row)!r}; an extrapolation of slopes must sum to 1.")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def b(self) -> tuple[float, ...]:
        """Solution weights: the last stage's row (stiffly accurate)."""
        return (*self.a[-1], self.gamma)

    @property
    def b_embedded(self) -> tuple[float, ...]:
        return tuple(b - e for b, e in zip(self.b, self.b_error, strict=True))

    def full_a(self) -> np.ndarray:
        """The ``[s, s]`` Butcher matrix, diagonal included."""
        s = self.stages
        a = np.zeros((s, s))
        for i, row in enumerate(self.a):
            a[i, :i] = row
            if i:
                a[i, i] = self.gamma
        return a


# Kværnø 2004, ESDIRK 5(4), 7 stages; predictors from OrdinaryDiffEq.jl (α21 = 1, as diffrax corrects it).
_K5_GAMMA = 0.26
_K5_ROW6 = (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676)
_K5_ROW7 = (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403, 0.06962479448202728)
KVAERNO5 = ESDIRKTableau(
    name="kvaerno5",
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    a=(
        (),
        (_K5_GAMMA,),
        (0.13, 0.84033320996790809),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
        (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
        _K5_ROW6,
        _K5_ROW7,
    ),
    gamma=_K5_GAMMA,
    b_error=(*(r7 - r6 for r7, r6 in zip(_K5_ROW7, (*_K5_ROW6, _K5_GAMMA), strict=True)), _K5_GAMMA),
    predictor=(
        (1.0,),
        (-1.366025403784441, 2.3660254037844357),
        (-0.19650552613122207, 0.8113579546496623, 0.38514757148155954),
        (0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0),
        (-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0),
        (*_K5_ROW6, _K5_GAMMA),
    ),
)

# Kværnø 2004, ESDIRK 3(2), 4 stages; every coefficient a function of γ.
_K3_GAMMA = 0.43586652150
_K3_ROW3 = ((-4 * _K3_GAMMA**2 + 6 * _K3_GAMMA - 1) / (4 * _K3_GAMMA), (-2 * _K3_GAMMA + 1) / (4 * _K3_GAMMA))
_K3_ROW4 = (
    (6 * _K3_GAMMA - 1) / (12 * _K3_GAMMA),
    -1 / ((24 * _K3_GAMMA - 12) * _K3_GAMMA),
    (-6 * _K3_GAMMA**2 + 6 * _K3_GAMMA - 1) / (6 * _K3_GAMMA - 3),
)
_K3_THETA = 1 / (2 * _K3_GAMMA)
KVAERNO3 = ESDIRKTableau(
    name="kvaerno3",
    c=(0.0, 2 * _K3_GAMMA, 1.0, 1.0),
    a=((), (_K3_GAMMA,), _K3_ROW3, _K3_ROW4),
    gamma=_K3_GAMMA,
    b_error=(*(r4 - r3 for r4, r3 in zip(_K3_ROW4, (*_K3_ROW3, _K3_GAMMA), strict=True)), _K3_GAMMA),
    predictor=((1.0,), (1.0 - _K3_THETA, _K3_THETA), (*_K3_ROW3, _K3_GAMMA)),
)

ESDIRK_TABLEAUS: tuple[ESDIRKTableau, ...] = (KVAERNO5, KVAERNO3)
KVAERNO_2004 = "Kvaerno 2004, BIT 44(3), 'Singly diagonally implicit Runge-Kutta methods with an explicit first stage'"


@lru_cache(maxsize=64)
def _coefficients(tableau: ESDIRKTableau, dtype: torch.dtype, device: torch.device):
    """``(a rows, predictor rows, b, b_error)`` as tensors of one dtype and device."""

    def tensor(values):
        return torch.tensor(values, dtype=dtype, device=device)

    predictor = tableau.predictor or tuple((0.0,) * (i - 1) + (1.0,) for i in range(1, tableau.stages))
    return (
        tuple(tensor(row) for row in tableau.a),
        (None, *(tensor(row) for row in predictor)),
        tensor(tableau.b),
        tensor(tableau.b_error),
    )


# --------------------------------------------------------------------------------------------
# The solver.


class AbstractESDIRK(AbstractAdaptiveImplicit):
    """An adaptive stiffly accurate ESDIRK method; subclasses set ``tableau``, ``order`` and ``reference``."""

    tableau: ClassVar[ESDIRKTableau]
    fsal: ClassVar[bool] = True

    def __init__(self, func, y0: torch.Tensor, rtol, atol, **options: Any):
        super().__init__(func, y0, rtol, atol, **options)
        self.a_rows, self.predictor, self.b, self.b_error = _coefficients(self.tableau, self.dtype, self.device)
        self.dense = np.array(hermite_dense(self.tableau.b), dtype=np.float64)

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
            t_i = self._time(t0 + tab.c[i] * h if tab.c[i] != 1.0 else t0 + h)
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
