"""Fixed-grid implicit Runge–Kutta methods (torchdiffeq's main-branch family) solved by Newton.

Each method is a Butcher tableau (``tableau.py``: data, checked on construction) and a three-line class. One step
solves the stage equations ``K_i = f(t0 + c_i h, y0 + h Σ_j a_ij K_j)`` with a *simplified Newton*
iteration (Hairer & Wanner, Solving ODEs II, IV.8): the Jacobian ``J = ∂f/∂y(t0, y0)`` is taken
once per step by autograd and the iteration matrix ``I - h A⊗J`` is factorised once. Lower-
triangular tableaus (SDIRK, TR-BDF2) are solved stage by stage with ``I - h a_ii J``.

Convergence test: after each update the change of every stage value ``Y_i = y0 + h Σ_j a_ij K_j``
must satisfy ``rms(ΔY_i / (atol + rtol·|Y_i|)) ≤ 1`` — the step is converged to the solve's own
tolerances (``rtol``/``atol``, floored at a few ulps of the dtype). Otherwise, after ``max_iters``
iterations or on a non-finite iterate, ``NewtonDidNotConverge`` is raised (torchdiffeq only warns
and carries on with an unconverged stage, which silently returns a wrong answer).

``options={'jacobian': 'fixed_point'}`` replaces Newton by functional iteration ``K ← F(K)``: no
Jacobian (cheap for large states), but it converges only for non-stiff steps (h·L·|A| < 1).

The fixed-grid options are torchdiffeq's (``step_size`` or ``grid_constructor``, ``interp``, ``perturb``);
the steps run on ``fixed_grid``'s loop.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from odecli.registry import SOLVERS
from odecli.solvers.errors import InvalidInputError, NewtonDidNotConverge
from odecli.solvers.fixed_grid import FIXED_GRID_OPTIONS, AbstractFixedGridSolver
from odecli.solvers.jacobian import Jacobian
from odecli.solvers.tableau import (
    GAUSS_LEGENDRE_4,
    GAUSS_LEGENDRE_6,
    IMPLICIT_EULER,
    IMPLICIT_MIDPOINT,
    RADAU_IIA_3,
    RADAU_IIA_5,
    SDIRK_2,
    TR_BDF2,
    TRAPEZOID,
    ButcherTableau,
)

# --------------------------------------------------------------------------------------------
# The Newton solve of one step.


class AbstractImplicitRungeKutta(AbstractFixedGridSolver):
    """A fixed-grid implicit Runge–Kutta method; subclasses set ``tableau`` and ``order``."""

    implicit: ClassVar[bool] = True
    tensor_times: ClassVar[bool] = True
    tableau: ClassVar[ButcherTableau]
    options: ClassVar[frozenset[str]] = FIXED_GRID_OPTIONS | {"max_iters", "jacobian"}

    def __init__(self, func, y0, rtol, atol, max_iters: int = 100, jacobian: str = "autograd", **options: Any):
        super().__init__(func, y0, rtol, atol, **options)
        if jacobian not in ("autograd", "fixed_point"):
            raise InvalidInputError(f"options['jacobian'] must be 'autograd' or 'fixed_point', got {jacobian!r}.")
        if int(max_iters) < 1:
            raise InvalidInputError(f"options['max_iters'] must be at least 1, got {max_iters}.")
        if y0.is_complex():  # the Newton iteration and its autograd Jacobian assume a real state
            raise InvalidInputError(f"method {type(self).__name__} needs a real state, got {y0.dtype}; use an explicit method such as 'dopri5' or 'rk4' (or 'kvaerno5') for a complex one.")
        self.max_iters = int(max_iters)
        dtype, device = y0.dtype, y0.device
        self.jacobian = Jacobian(func, y0.numel(), 1, "autograd", dtype, device) if jacobian == "autograd" else None
        self.c = torch.tensor(self.tableau.c, dtype=dtype, device=device)
        self.a = torch.tensor(self.tableau.a, dtype=dtype, device=device)
        self.b = torch.tensor(self.tableau.b, dtype=dtype, device=device)
        # Converging below a few ulps is impossible; floor the tolerances there.
        eps = torch.finfo(dtype).eps
        self.newton_rtol = max(float(rtol), 16 * eps)
        self.newton_atol = max(float(atol), 16 * eps)

    def _stage_time(self, t0, dt, t1, i):
        """The time ``func`` sees at stage ``i``; at a step's ends, from inside the step (``perturb``)."""
        c = self.tableau.c[i]
        return self.inside(t1, t0) if c == 1.0 else self.inside(t0, t1) if c == 0.0 else t0 + c * dt

    def _converged(self, delta_y: torch.Tensor, y: torch.Tensor) -> tuple[bool, float]:
        scale = self.newton_atol + self.newton_rtol * y.detach().abs()
        ratio = (delta_y.detach() / scale).pow(2).mean(dim=-1).sqrt().max()
        ratio = float(ratio)
        return ratio <= 1.0, ratio

    def first_slope(self, t0, t1, y: torch.Tensor) -> torch.Tensor:
        return self.evaluate(self.inside(t0, t1), y)

    def step(self, t0, t1, y0: torch.Tensor, f0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        dt = t1 - t0
        if f0 is None:
            f0 = self.first_slope(t0, t1, y0)
        jac = None
        if self.jacobian is not None:
            jac, evaluations = self.jacobian(self.time(self.inside(t0, t1)), y0)
            jac = jac[0]
            self.nfe += evaluations  # autograd: one evaluation of func (plus one vector-Jacobian product per state element)
        if self.tableau.diagonally_implicit:
            k = self._solve_stages_one_by_one(t0, dt, t1, y0, f0, jac)
        else:
            k = self._solve_stages_together(t0, dt, t1, y0, f0, jac)
        return y0 + dt * (self.b @ k), f0

    def _iterate(self, t0, k, update):
        """Repeat ``k, change, values = update(k)`` until the stage values stop changing.

        Gives up after ``max_iters`` iterations, on a non-finite iterate, or once the change has
        grown two iterations in a row (the iteration diverges; more iterations cannot help).
        """
        previous, growing, ratio = math.inf, 0, math.inf
        for iteration in range(1, self.max_iters + 1):  # noqa: B007  (reported after the loop)
            k, change, values = update(k)
            ok, ratio = self._converged(change, values)
            if ok:
                return k
            if not math.isfinite(ratio):
                break
            growing = growing + 1 if ratio > previous else 0
            if growing >= 2:
                break
            previous = ratio
        raise NewtonDidNotConverge(float(t0), iteration, ratio, 1.0)

    def _solve_stages_together(self, t0, dt, t1, y0, f0, jac):
        s, n = self.tableau.stages, y0.numel()
        times = [self._stage_time(t0, dt, t1, i) for i in range(s)]
        lu = None
        if jac is not None:
            lu = torch.linalg.lu_factor(torch.eye(s * n, dtype=y0.dtype, device=y0.device) - dt.detach() * torch.kron(self.a, jac))

        def update(k):
            stage_y = y0 + dt * (self.a @ k)
            residual = torch.stack([self.evaluate(times[i], stage_y[i]) for i in range(s)]) - k
            delta_k = residual if lu is None else torch.linalg.lu_solve(*lu, residual.reshape(s * n, 1)).reshape(s, n)
            return k + delta_k, dt * (self.a @ delta_k), stage_y

        return self._iterate(t0, f0.expand(s, n), update)

    def _solve_stages_one_by_one(self, t0, dt, t1, y0, f0, jac):
        s, n = self.tableau.stages, y0.numel()
        ks: list[torch.Tensor] = []
        eye = torch.eye(n, dtype=y0.dtype, device=y0.device)
        for i in range(s):
            a_ii = self.tableau.a[i][i]
            known = y0 + dt * sum((self.a[i, j] * ks[j] for j in range(i)), torch.zeros_like(y0))
            t_i = self._stage_time(t0, dt, t1, i)
            if a_ii == 0.0:  # an explicit stage (the first of trapezoid and TR-BDF2: f(t0, y0))
                ks.append(f0 if i == 0 and self.tableau.c[0] == 0.0 else self.evaluate(t_i, known))
                continue
            lu = None if jac is None else torch.linalg.lu_factor(eye - dt.detach() * a_ii * jac)

            def update(k, known=known, t_i=t_i, a_ii=a_ii, lu=lu):
                stage_y = known + dt * a_ii * k
                residual = self.evaluate(t_i, stage_y) - k
                delta_k = residual if lu is None else torch.linalg.lu_solve(*lu, residual.reshape(n, 1)).reshape(n)
                return k + delta_k, (dt * a_ii * delta_k)[None], stage_y[None]

            ks.append(self._iterate(t0, f0, update))
        return torch.stack(ks)


# --------------------------------------------------------------------------------------------
# The registered methods: a tableau, an order and a reference each.


@SOLVERS.register("implicit_euler", description="Implicit (backward) Euler, order 1, L-stable; fixed grid, Newton.")
class ImplicitEuler(AbstractImplicitRungeKutta):
    """Implicit (backward) Euler, order 1, L-stable; fixed grid, Newton."""

    tableau = IMPLICIT_EULER
    order = 1
    reference = "Hairer & Wanner, Solving ODEs II, IV.3"


@SOLVERS.register("implicit_midpoint", description="Implicit midpoint rule, order 2, A-stable, symplectic; fixed grid, Newton.")
class ImplicitMidpoint(AbstractImplicitRungeKutta):
    """Implicit midpoint rule, order 2, A-stable, symplectic; fixed grid, Newton."""

    tableau = IMPLICIT_MIDPOINT
    order = 2
    reference = "Hairer, Lubich & Wanner, Geometric Numerical Integration, II.1"


@SOLVERS.register("trapezoid", description="Trapezoidal rule (Crank-Nicolson), order 2, A-stable; fixed grid, Newton.")
class Trapezoid(AbstractImplicitRungeKutta):
    """Trapezoidal rule (Crank-Nicolson), order 2, A-stable; fixed grid, Newton."""

    tableau = TRAPEZOID
    order = 2
    reference = "Hairer & Wanner, Solving ODEs II, IV.3"


@SOLVERS.register("gl4", description="Gauss-Legendre collocation, 2 stages, order 4, A-stable; fixed grid, Newton.")
class GaussLegendre4(AbstractImplicitRungeKutta):
    """Gauss-Legendre collocation, 2 stages, order 4, A-stable; fixed grid, Newton."""

    tableau = GAUSS_LEGENDRE_4
    order = 4
    reference = "Butcher 1964, Implicit Runge-Kutta processes"


@SOLVERS.register("gl6", description="Gauss-Legendre collocation, 3 stages, order 6, A-stable; fixed grid, Newton.")
class GaussLegendre6(AbstractImplicitRungeKutta):
    """Gauss-Legendre collocation, 3 stages, order 6, A-stable; fixed grid, Newton."""

    tableau = GAUSS_LEGENDRE_6
    order = 6
    reference = "Butcher 1964, Implicit Runge-Kutta processes"


@SOLVERS.register("radauIIA3", description="Radau IIA, 2 stages, order 3, L-stable; fixed grid, Newton.")
class RadauIIA3(AbstractImplicitRungeKutta):
    """Radau IIA, 2 stages, order 3, L-stable; fixed grid, Newton."""

    tableau = RADAU_IIA_3
    order = 3
    reference = "Hairer & Wanner, Solving ODEs II, IV.5"


@SOLVERS.register("radauIIA5", description="Radau IIA, 3 stages, order 5, L-stable; fixed grid, Newton.")
class RadauIIA5(AbstractImplicitRungeKutta):
    """Radau IIA, 3 stages, order 5, L-stable; fixed grid, Newton."""

    tableau = RADAU_IIA_5
    order = 5
    reference = "Hairer & Wanner, Solving ODEs II, IV.5"


@SOLVERS.register("sdirk2", description="Singly diagonally implicit RK, 2 stages, order 2, L-stable; fixed grid, Newton.")
class SDIRK2(AbstractImplicitRungeKutta):
    """Singly diagonally implicit RK, 2 stages, order 2, L-stable; fixed grid, Newton."""

    tableau = SDIRK_2
    order = 2
    reference = "Alexander 1977, SIAM J. Numer. Anal. 14(6)"


@SOLVERS.register("trbdf2", description="TR-BDF2 (trapezoid stage, then BDF2 stage), order 2, L-stable; fixed grid, Newton.")
class TRBDF2(AbstractImplicitRungeKutta):
    """TR-BDF2 (trapezoid stage, then BDF2 stage), order 2, L-stable; fixed grid, Newton."""

    tableau = TR_BDF2
    order = 2
    reference = "Hosea & Shampine 1996, Appl. Numer. Math. 20"
