"""``radau5``: the 3-stage Radau IIA collocation method (order 5, L-stable, stiffly accurate), adaptive.

The method of Hairer & Wanner's RADAU5 and scipy's ``solve_ivp(method="Radau")``. One step solves all
three stages together, for the increments ``Z_i = Y_i - y0``::

    Z = h (A ⊗ I) F(Z),    F(Z)_i = f(t0 + c_i h, y0 + Z_i),    y1 = y0 + Z_3

with ``c = ((4 - √6)/10, (4 + √6)/10, 1)`` and ``A`` the collocation matrix (``RADAU_IIA_5``, the
tableau the fixed-grid ``radauIIA5`` uses). Radau IIA has stage order 3 (Kværnø's ESDIRKs have 2),
which is what keeps its accuracy on stiff problems, where the stages' errors do not cancel.

**Newton.** Simplified Newton on the ``3n`` system with ``P = I - h (A ⊗ J)``. With ``A = V D V⁻¹``
(one real eigenvalue γ₀ and a complex pair), ``P = (V ⊗ I)(I - h D ⊗ J)(V⁻¹ ⊗ I)``, so a solve is
one real LU of ``I - hγ₀J`` and one complex LU of ``I - h d J`` (the pair's conjugate comes free):
``n × n`` factorisations, not ``3n × 3n``. Newton starts from the previous step's collocation
polynomial extrapolated to the new nodes (from zero when that fails or there is none). The
convergence test (with κ = 0.01: Newton errors are kept to 1% of the tolerance), Jacobian reuse,
failure handling and IFT gradients are those of ``adaptive_implicit.py``; the gradient of a converged step is the exact derivative of its
collocation equations.

**Error.** Hairer's estimate: the embedded third-order solution ``ŷ1 = y0 + h(γ₀ f(t0, y0) + Σ b̂_i F_i)``
(``b̂`` from the order conditions with ``b̂₀ = γ₀``) minus ``y1``, filtered by ``(I - hγ₀J)⁻¹`` (which
bounds it on stiff components); on the first step and after a rejection an estimate above 1 is
refined once with ``f(t0, y0 + err)`` (Hairer & Wanner II, IV.8). It is ``O(h⁴)`` for an ``O(h⁶)``
local error, so the controller's exponent is 1/4 and the actual error sits well below the tolerance —
the global error on Van der Pol μ = 1000 and Robertson reaches the tolerance (``benchmarks/stiff.md``).

**Dense output.** The collocation polynomial through ``y0, Y_1, Y_2, Y_3`` (cubic, no extra evaluation).

Reference: E. Hairer & G. Wanner, Solving Ordinary Differential Equations II, 2nd ed., IV.5 and IV.8.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch

from odecli.registry import SOLVERS
from odecli.solvers.adaptive_implicit import (
    SMALL_SYSTEM,
    AbstractAdaptiveImplicit,
    InverseMatrix,
    IterationMatrix,
    NewtonFailed,
    ShiftedLU,
)
from odecli.solvers.errors import InvalidInputError
from odecli.solvers.tableau import RADAU_IIA_5, ButcherTableau

NODES = np.array(RADAU_IIA_5.c)
A = np.array(RADAU_IIA_5.a)  # the collocation matrix, A_ij = ∫_0^{c_i} ℓ_j (checked in the tests)
B = np.array(RADAU_IIA_5.b)  # = A[-1]: stiffly accurate, y1 is the last stage


def _lagrange(nodes: np.ndarray, j: int) -> np.polynomial.Polynomial:
    """The Lagrange basis polynomial that is 1 at ``nodes[j]`` and 0 at the others."""
    others = np.delete(nodes, j)
    return np.polynomial.Polynomial.fromroots(others) / np.prod(nodes[j] - others)


def _eigenbasis(a: np.ndarray) -> tuple[float, complex, np.ndarray, np.ndarray]:
    """``(γ₀, d, V, V⁻¹)`` with ``A = V diag(γ₀, d, d̄) V⁻¹``, columns ordered real, d, conj(d)."""
    values, vectors = np.linalg.eig(a)
    real = int(np.argmin(np.abs(values.imag)))
    pair = int(next(k for k in range(3) if k != real and values[k].imag > 0))
    gamma0 = float(values[real].real)
    v = np.stack([vectors[:, real].real.astype(complex), vectors[:, pair], vectors[:, pair].conj()], axis=1)
    return gamma0, complex(values[pair]), v, np.linalg.inv(v)


GAMMA0, PAIR, V, V_INV = _eigenbasis(A)


def embedded_weights(c: np.ndarray, gamma0: float) -> np.ndarray:
    """``b̂`` of the third-order embedded quadrature ``γ₀ g(0) + Σ b̂_i g(c_i)``: exact for 1, s, s²."""
    powers = np.vander(c, 3, increasing=True).T  # rows: c⁰, c¹, c²
    targets = np.array([1.0, 1 / 2, 1 / 3]) - np.array([gamma0, 0.0, 0.0])
    return np.linalg.solve(powers, targets)


# ŷ1 - y1 = γ₀ h f0 + h Σ (b̂ - b)_i F_i = γ₀ h f0 + Σ e_i Z_i, since h F = A⁻¹ Z.
ERROR_WEIGHTS = (embedded_weights(NODES, GAMMA0) - B) @ np.linalg.inv(A)


def dense_coefficients(c: np.ndarray) -> np.ndarray:
    """``[3, 3]``: ``u(θ) = y0 + Σ_i ℓ_i(θ) Z_i`` with ℓ the Lagrange basis on ``(0, c)``, powers θ¹..θ³."""
    nodes = np.concatenate([[0.0], c])
    return np.stack([_lagrange(nodes, i + 1).coef[1:] for i in range(len(c))])


DENSE = dense_coefficients(NODES)


def _real_transforms() -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """``{transpose: (into, out_of)}``: the eigenbasis change in real arithmetic.

    ``P⁻¹ r = V (I - hD⊗J)⁻¹ V⁻¹ r``: with the pair conjugate, ``into @ r`` gives ``(w₀, Re w₁, Im w₁)``
    (``w = V⁻¹ r``) and ``out_of @ (w₀', Re w₁', Im w₁')`` gives ``Re(V w')``; for ``P⁻ᵀ`` the roles of
    ``V`` and ``V⁻ᵀ`` swap.
    """
    transforms = {}
    for transpose, (inverse, basis) in ((False, (V_INV, V)), (True, (V.T, V_INV.T))):
        into = np.stack([inverse[0].real, inverse[1].real, inverse[1].imag])
        out_of = np.stack([basis[:, 0].real, 2.0 * basis[:, 1].real, -2.0 * basis[:, 1].imag], axis=1)
        transforms[transpose] = (into, out_of)
    return transforms


REAL_TRANSFORMS = _real_transforms()


@lru_cache(maxsize=16)
def _constants(dtype: torch.dtype, device: torch.device):
    def tensor(values):
        return torch.tensor(values, dtype=dtype, device=device)

    transforms = {transpose: (tensor(into), tensor(out_of)) for transpose, (into, out_of) in REAL_TRANSFORMS.items()}
    return tensor(A), tensor(ERROR_WEIGHTS), transforms


class _CollocationMatrix(IterationMatrix):
    """``P = I - h (A ⊗ J)``: through A's eigenbasis (one real and one complex LU), or, for a small dense
    ``J`` (``3n ≤ SMALL_SYSTEM``), as the explicit inverse of the ``3n × 3n`` matrix itself (one ``mv`` per solve).

    ``real`` is the factorisation of ``I - hγ₀J`` either way (the error estimate's filter).
    """

    def __init__(self, jac: torch.Tensor, h: float, transforms, explicit: bool | None = None):
        blocks, d, _ = jac.shape
        if explicit is None:
            explicit = blocks == 1 and 3 * d <= SMALL_SYSTEM
        self.real = ShiftedLU(jac, h * GAMMA0)
        self.transforms = transforms
        if explicit:
            full_j = jac[0] if blocks == 1 else torch.block_diag(*jac)
            a = _constants(jac.dtype, jac.device)[0]
            eye = torch.eye(3 * full_j.shape[0], dtype=jac.dtype, device=jac.device)
            self.explicit = InverseMatrix(eye.sub_(torch.kron(a, full_j), alpha=h).unsqueeze(0))
        else:
            self.explicit = None
            self.complex = ShiftedLU(jac, h * PAIR)

    def solve(self, rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``P⁻¹ rhs`` or ``P⁻ᵀ rhs`` for ``rhs`` of shape ``[3, n]``."""
        if self.explicit is not None:
            return self.explicit.solve(rhs, transpose)
        into, out_of = self.transforms[transpose]
        w = into @ rhs
        w0 = self.real.solve(w[0], transpose)
        w1 = self.complex.solve(torch.complex(w[1], w[2]), transpose)
        return out_of @ torch.stack([w0, w1.real, w1.imag])


@SOLVERS.register(
    "radau5",
    description="Radau IIA order 5 (3-stage collocation), L-stable, stiffly accurate; adaptive, Newton + autograd Jacobian; stiff problems at tight tolerances.",
)
class Radau5(AbstractAdaptiveImplicit):
    """Radau IIA, 3 stages, order 5 (stage order 3), with Hairer's error estimate and the collocation polynomial as dense output."""

    tableau: ClassVar[ButcherTableau] = RADAU_IIA_5  # its error estimate is Hairer's, not an embedded pair's
    order: ClassVar[int] = 5
    error_order: ClassVar[int] = 4
    # Gustafsson's predictive control, as RADAU5 and scipy's Radau: on Van der Pol μ = 1000 1130 steps for
    # 9,370 NFE against PI's 1455 for 11,215, on Robertson 189 against 329 (benchmarks/stiff.md).
    default_controller: ClassVar[str] = "predictive"
    # Newton to 1% of the tolerance, not 5%: over Robertson's 300+ steps the 5% Newton errors add up to
    # 2× the tolerance at t = 1e5; at 1% they stay at 0.03× for ~10% more evaluations (benchmarks/stiff.py).
    newton_kappa = 0.01
    reference = "Hairer & Wanner, Solving Ordinary Differential Equations II (2nd ed., 1996), IV.5 and IV.8 (RADAU5)"

    def __init__(self, func, y0: torch.Tensor, rtol, atol, **options: Any):
        if y0.is_complex():  # the collocation system is solved in complex arithmetic of its own, for a real state
            raise InvalidInputError(f"method radau5 needs a real state, got {y0.dtype}; use 'kvaerno5' or an explicit method such as 'dopri5' for a complex one.")
        super().__init__(func, y0, rtol, atol, **options)
        self.a, self.error_weights, self.transforms = _constants(self.dtype, self.device)
        self.dense = DENSE
        self.dense_rows = DENSE.tolist()
        self.nodes = NODES.tolist()
        self.zero = torch.zeros(3, self.n, dtype=self.dtype, device=self.device)  # never written to
        self._last_step = None  # (t0, h, y0, Z) of the last solved step: the next Newton start

    def _factorise(self, jac: torch.Tensor, h: float) -> _CollocationMatrix:
        return _CollocationMatrix(jac, h, self.transforms)

    def _extrapolated_guess(self, t0: float, h: float, y0: torch.Tensor) -> torch.Tensor | None:
        """``Z`` at the new nodes from the last step's collocation polynomial (Python floats, then one ``addmm``)."""
        if self._last_step is None:
            return None
        t_last, h_last, y_last, z_last = self._last_step
        weights = []  # [node, stage]: ℓ_stage(θ_node) without its constant term
        for c in self.nodes:
            theta = (t0 + c * h - t_last) / h_last
            powers = (theta, theta * theta, theta * theta * theta)
            weights.append([row[0] * powers[0] + row[1] * powers[1] + row[2] * powers[2] for row in self.dense_rows])
        return torch.addmm(y_last - y0, torch.tensor(weights, dtype=self.dtype, device=self.device), z_last)

    def _step(self, t0: float, h: float, y0: torch.Tensor, f0: torch.Tensor, matrix: _CollocationMatrix, grad: bool):
        y0_d = y0.detach()
        scale = self.atol + self.newton_rtol * y0_d.abs()
        times = [self.time(t0 + c * h if c != 1.0 else t0 + h) for c in self.nodes]
        func, a = self.func, self.a

        def stage_slopes(z: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
            self.nfe += 3
            p0, p1, p2 = (base + z).unbind(0)
            return torch.stack([func(times[0], p0), func(times[1], p1), func(times[2], p2)])

        def residual(z: torch.Tensor) -> torch.Tensor:
            return torch.addmm(z, a, stage_slopes(z, y0_d), alpha=-h)  # Z - h A F(Z)

        guess = self._extrapolated_guess(t0, h, y0_d)
        with torch.no_grad():
            try:
                z_star, theta = self._newton(residual, self.zero if guess is None else guess, matrix, scale)
            except NewtonFailed:
                if guess is None:
                    raise
                self._eta = 1.0
                z_star, theta = self._newton(residual, self.zero, matrix, scale)
        self._last_step = (t0, h, y0_d, z_star)
        if grad:
            a_h = a * h
            slopes = stage_slopes(z_star, y0)
            z = self._attach(z_star, a_h @ slopes, lambda z: a_h @ stage_slopes(z, y0_d), matrix)
            f1 = slopes[-1].detach()
        else:
            z = z_star
        y1 = y0 + z[-1]
        with torch.no_grad():
            if not grad:
                self.nfe += 1
                f1 = func(times[2], y1)
            # ŷ1 - y1 = γ₀h f0 + Σ e_i Z_i, filtered by (I - hγ₀J)⁻¹
            raw = torch.addmv(f0.detach(), z_star.T, self.error_weights, beta=GAMMA0 * h)
            error = matrix.real.solve(raw)
            ratio = self._error_ratio(error.clone(), y0_d, y1)
            if ratio > 1.0 and self.previous_rejected:
                # Stiff components can inflate the first estimate; one refinement (Hairer's RADAU5).
                refined = torch.addmv(self.evaluate(t0, y0_d + error), z_star.T, self.error_weights, beta=GAMMA0 * h)
                ratio = self._error_ratio(matrix.real.solve(refined), y0_d, y1)
        return y1, z / h, ratio, theta, f1
