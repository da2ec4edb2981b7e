"""The machinery shared by the adaptive implicit Runge–Kutta methods (``esdirk.py``, ``radau.py``).

A method subclasses ``AbstractAdaptiveImplicit`` and supplies one step (``_step``) and the
factorisation of its iteration matrix (``_factorise``); this module gives it the rest:

**Jacobian.** ``J = ∂f/∂y`` at the start of a step: ``func.jacobian_matrix(t, y)`` when ``func`` supplies
it (``odeint_adjoint``'s augmented system does), else by autograd (one VJP per row; batched by vmap
above 32 rows) or by forward differences (``options={'jacobian': 'finite_difference'}``; chosen
automatically when ``func``'s output is not connected to ``y`` in the autograd graph). J is kept for later steps and recomputed only after a Newton
failure with it or when its last solve contracted slowly (``max θ > 0.05``). The iteration matrix is
refactorised only when J or h changes; after an accepted step h is left as it is when the controller
would raise it by less than 20%, so the factorisation is reused as well. ``options={'jacobian_blocks': B}``
declares the flat state to be B equal, independent samples (a batch whose samples do not interact):
J is then B diagonal blocks from n/B VJPs and every factorisation a batch of B small LUs, so cost
grows linearly with the batch, not cubically.

**Newton.** Simplified Newton on the stage equations ``G(Y) = Y - Φ(Y) = 0`` with the method's
iteration matrix. Convergence test (Hairer & Wanner, Solving ODEs II, IV.8): with ``‖·‖`` the RMS of
``ΔY / (atol + rtol·|y0|)`` and the contraction rate ``θ_k = ‖ΔY_k‖ / ‖ΔY_{k-1}‖``, the solve has
converged once ``η_k ‖ΔY_k‖ ≤ κ`` (``newton_kappa``, 0.05 unless a method sets its own) with ``η_k = θ_k / (1 - θ_k)`` (``η_1 = max(η_previous, ε)^0.8``):
the remaining Newton error is about κ times the local error tolerance (``rtol`` floored so that this is
never below ~100 ulps). It has failed when ``θ_k ≥ 1``, an iterate is not finite, or after
``max_iters`` (default 10) iterations. A failure never raises: it rejects the step, and the step is
retried with a fresh Jacobian (same h) if the Jacobian was reused from an earlier step, otherwise
with h halved. Giving up raises the library's typed errors: ``StepSizeTooSmall`` (h below
``min_step`` or ~10 ulps of t), ``MaxStepsExceeded``. As in torchdiffeq, a step of ``min_step`` is
accepted whatever its error estimate.

**Step size.** A step is accepted when ``norm(err / (atol + rtol·max(|y0|, |y1|))) ≤ 1`` (RMS, or
the ``norm`` option); the next h comes from the shared controllers (``controller='pi'`` by default
here, ``'predictive'`` — Gustafsson's, as RADAU5 and scipy — for radau5; ``'i'`` for torchdiffeq's), with the exponent of the error estimate's order.

**Gradients.** Direct backprop: Newton runs without a graph; the converged ``Y*`` is attached by
the implicit function theorem as ``Y = Y* + (Φ(Y*) - Φ(Y*).detach())`` (its value is exactly ``Y*``;
Φ carries the graph to ``y0``, earlier stages and parameters), with a hook that maps the incoming
gradient g to ``(I - ∂Φ/∂Y(Y*))⁻ᵀ g``, solved by an iteration preconditioned with the step's
factorisation (one VJP of Φ per iteration; a dense solve if it stalls). This is the exact derivative
of the solved stage equations. ``odeint_adjoint`` integrates the adjoint system with these solvers
like any other (its Jacobian from the blocks J, -Jᵀ, -(∂f/∂θ)ᵀ, see ``adjoint.py``) — but the adjoint re-solves ``y``
backwards in time, where a stiff decaying mode grows like ``exp(|λ| t)`` and forces tiny steps on any
solver: for stiff problems prefer direct backprop.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from odecli.solvers.adaptive import ADAPTIVE_OPTIONS, AbstractAdaptiveSolver, StepFailed
from odecli.solvers.controllers import rms_norm
from odecli.solvers.errors import InvalidInputError, NewtonDidNotConverge, NonFiniteState, StepSizeTooSmall
from odecli.solvers.jacobian import Jacobian

NEWTON_KAPPA = 0.05  # Newton error target as a fraction of the local error tolerance
SLOW_CONTRACTION = 0.05  # a Newton solve contracting slower than this asks for a fresh Jacobian next step
KEEP_STEP_RATIO = 1.2  # after an accepted step, h is kept when the controller would grow it by less
GRADIENT_ITERS = 50  # iterations of the IFT gradient solve before it falls back to a dense solve
SMALL_SYSTEM = 48  # iteration matrices up to this many rows are inverted explicitly (InverseMatrix)


# --------------------------------------------------------------------------------------------
# Linear algebra: iteration matrices and shifted LU factorisations, dense or block diagonal.


class IterationMatrix(abc.ABC):
    """A method's simplified-Newton matrix ``P ≈ ∂G/∂Y``, factorised once per (J, h)."""

    @abc.abstractmethod
    def solve(self, rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``P⁻¹ rhs`` (or ``P⁻ᵀ rhs``), ``rhs`` shaped like the stage unknowns."""


class InverseMatrix(IterationMatrix):
    """A small matrix ``M`` (``[blocks, k, k]``) held as its explicit inverse: a solve is one matrix–vector product.

    Below ``SMALL_SYSTEM`` rows the dispatch of a torch call, not arithmetic, is the cost: ``lu_solve`` of a
    6 × 6 system takes ~15 µs on one CPU thread, ``mv`` ~2 µs, while ``inv`` costs one ``lu_factor`` plus one
    ``lu_solve`` (~21 µs, once per factorisation). A simplified Newton iteration and the preconditioned
    gradient iteration only need ``M⁻¹`` approximately, and both converge to the exact solution anyway.
    """

    def __init__(self, matrix: torch.Tensor):
        inverse = torch.linalg.inv(matrix)
        self.blocks, self.k = matrix.shape[0], matrix.shape[-1]
        self.forward = inverse[0] if self.blocks == 1 else inverse
        self.backward = self.forward.mT  # (Mᵀ)⁻¹ = (M⁻¹)ᵀ, the plain transpose also for a complex M
        self.complex = matrix.is_complex()

    def solve(self, rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``M⁻¹ rhs`` (or ``M⁻ᵀ rhs``), ``rhs`` of any shape with ``blocks·k`` elements; complex for a complex ``M``."""
        inverse = self.backward if transpose else self.forward
        if self.complex:
            rhs = rhs.to(inverse.dtype)
        if self.blocks == 1:
            return torch.mv(inverse, rhs.reshape(self.k)).view(rhs.shape)
        return torch.matmul(inverse, rhs.reshape(self.blocks, self.k, 1)).view(rhs.shape)


class ShiftedLU(IterationMatrix):
    """The factorisation of ``I - s·J`` for a real or complex shift ``s``, and solves with it (block-batched).

    Blocks of at most ``SMALL_SYSTEM`` rows are inverted explicitly (``InverseMatrix``), larger ones LU-factorised.
    """

    def __init__(self, jac: torch.Tensor, shift: float | complex):
        blocks, d, _ = jac.shape
        self.complex = isinstance(shift, complex)
        if self.complex:
            jac = jac.to(torch.complex128 if jac.dtype == torch.float64 else torch.complex64)
        shifted = torch.eye(d, dtype=jac.dtype, device=jac.device).sub(jac, alpha=shift)
        self.blocks, self.d = blocks, d
        self.inverse = InverseMatrix(shifted) if d <= SMALL_SYSTEM else None
        if self.inverse is None:
            self.lu, self.pivots = torch.linalg.lu_factor(shifted)

    def solve(self, rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``(I - sJ)⁻¹ rhs``, or ``(I - sJ)⁻ᵀ rhs`` (the plain transpose, also for complex s)."""
        if self.inverse is not None:
            return self.inverse.solve(rhs, transpose)
        shape = rhs.shape
        rhs = rhs.reshape(self.blocks, self.d, 1)
        if self.complex:
            rhs = rhs.to(self.lu.dtype)
            if transpose:  # lu_solve's adjoint is the conjugate transpose: Aᵀx = b  ⇔  Aᴴ x̄ = b̄
                return torch.linalg.lu_solve(self.lu, self.pivots, rhs.conj(), adjoint=True).conj().reshape(shape)
        return torch.linalg.lu_solve(self.lu, self.pivots, rhs, adjoint=transpose).reshape(shape)


# --------------------------------------------------------------------------------------------
# The solver.


class NewtonFailed(StepFailed):
    def __init__(self, iterations: int, ratio: float):
        super().__init__(iterations, ratio)
        self.iterations, self.ratio = iterations, ratio


class AbstractAdaptiveImplicit(AbstractAdaptiveSolver):
    """An adaptive implicit Runge–Kutta method with simplified Newton, on ``adaptive``'s loop; subclasses give the step.

    ``error_order``: the power of h in the local error estimate (the controller's exponent is its
    inverse); by default the method's order.
    """

    implicit: ClassVar[bool] = True
    default_controller: ClassVar[str] = "pi"
    lands_on_last_time: ClassVar[bool] = True
    keep_step_ratio: ClassVar[float] = KEEP_STEP_RATIO
    newton_kappa: float = NEWTON_KAPPA  # Newton's error target as a fraction of the tolerance (see the module docstring)
    # step_t/jump_t need a step's c = 1 stage seen from inside the step, which the Newton steps do not do (yet).
    options: ClassVar[frozenset[str]] = (ADAPTIVE_OPTIONS - {"step_t", "jump_t"}) | {"max_iters", "jacobian", "jacobian_blocks"}

    def __init__(self, func, y0: torch.Tensor, rtol, atol, max_iters: int = 10, jacobian: str = "autograd", jacobian_blocks: int = 1,
                 **options: Any):  # fmt: skip
        super().__init__(func, y0, rtol, atol, **options)
        if int(max_iters) < 1:
            raise InvalidInputError(f"options['max_iters'] must be at least 1, got {max_iters}.")
        if jacobian not in ("autograd", "finite_difference"):
            raise InvalidInputError(f"options['jacobian'] must be 'autograd' or 'finite_difference', got {jacobian!r}.")
        blocks = int(jacobian_blocks)
        if blocks < 1 or (self.n and self.n % blocks):
            raise InvalidInputError(f"options['jacobian_blocks']={jacobian_blocks} must be a positive divisor of the state size {self.n}.")
        self.max_iters = int(max_iters)
        eps = torch.finfo(self.dtype).eps
        floor = 100 * eps / self.newton_kappa
        self.newton_rtol = torch.clamp(self.rtol, min=floor) if isinstance(self.rtol, torch.Tensor) else max(self.rtol, floor)
        self.jacobian = Jacobian(func, self.n, blocks if self.n else 1, jacobian, self.dtype, self.device)
        self.n_jacobians = 0  # Jacobian evaluations
        self.n_factorisations = 0  # factorisations of the iteration matrix
        self.n_newton_failures = 0
        self._eta = 1.0  # Hairer's η carried between Newton solves

    def _error_ratio(self, error: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> float:
        """``norm(error / (atol + rtol·max(|y0|, |y1|)))``; may overwrite ``error``."""
        tolerance = torch.maximum(y0.abs(), y1.detach().abs()).mul_(self.rtol).add_(self.atol)
        scaled = error.div_(tolerance)
        return float(self.norm(scaled)) if self.norm is not None else float(rms_norm(scaled))

    # -- what a method supplies -------------------------------------------------------------------

    @abc.abstractmethod
    def _factorise(self, jac: torch.Tensor, h: float) -> IterationMatrix:
        """The iteration matrix for steps of size ``h`` with Jacobian blocks ``jac``."""

    @abc.abstractmethod
    def _step(self, t0: float, h: float, y0: torch.Tensor, f0: torch.Tensor, matrix: IterationMatrix, grad: bool):
        """``(y1, stages for the dense output, error ratio, slowest Newton contraction, f(t1, y1))``.

        Raises ``NewtonFailed``. With ``grad``, ``y1`` and ``stages`` carry the graph.
        """

    # -- Newton and the implicit-function-theorem gradient ----------------------------------------

    def _newton(self, residual: Callable[[torch.Tensor], torch.Tensor], guess: torch.Tensor, matrix: IterationMatrix,
                scale: torch.Tensor) -> tuple[torch.Tensor, float]:  # fmt: skip
        """Solve ``residual(Y) = 0`` from ``Y = guess``; ``(Y, slowest contraction rate)``. ``scale`` broadcasts over Y."""
        y = guess
        previous, theta_max = math.inf, 0.0
        eta = max(self._eta, torch.finfo(self.dtype).eps) ** 0.8
        inv_sqrt_n = 1.0 / math.sqrt(guess.numel())
        for iteration in range(1, self.max_iters + 1):
            delta = matrix.solve(residual(y))
            y = y - delta
            size = float(torch.linalg.vector_norm(delta / scale)) * inv_sqrt_n
            if not math.isfinite(size):
                raise NewtonFailed(iteration, size)
            if iteration > 1:
                theta = size / previous if previous > 0 else 0.0
                theta_max = max(theta_max, theta)
                if theta >= 1.0:
                    raise NewtonFailed(iteration, size)
                eta = theta / (1.0 - theta)
            if eta * size <= self.newton_kappa or size == 0.0:
                self._eta = eta
                return y, theta_max
            previous = size
        raise NewtonFailed(self.max_iters, size)

    def _attach(self, y_star: torch.Tensor, mapped: torch.Tensor, local_map: Callable[[torch.Tensor], torch.Tensor],
                matrix: IterationMatrix) -> torch.Tensor:  # fmt: skip
        """The solution ``y_star`` of ``Y = Φ(Y)`` with the graph the implicit function theorem gives it.

        ``mapped`` is ``Φ(y_star)`` with its graph; ``local_map(Y)`` is Φ's dependence on ``Y`` alone
        (the rest held fixed), used for ``∂Φ/∂Y`` in the backward pass.
        """
        if not mapped.requires_grad:
            return y_star
        solution = y_star + (mapped - mapped.detach())
        solution.register_hook(self._gradient_hook(y_star, local_map, matrix))
        return solution

    def _gradient_hook(self, y_star: torch.Tensor, local_map: Callable[[torch.Tensor], torch.Tensor], matrix: IterationMatrix):
        tol = 10 * torch.finfo(self.dtype).eps

        def hook(grad: torch.Tensor | None) -> torch.Tensor | None:
            """``(I - ∂Φ/∂Y)⁻ᵀ grad``: Richardson iteration preconditioned by the step's factorisation."""
            if grad is None:
                return None
            with torch.enable_grad():
                probe = y_star.detach().requires_grad_(True)
                out = local_map(probe)
            if not out.requires_grad:
                return grad

            def vjp(u):
                (g,) = torch.autograd.grad(out, probe, u, retain_graph=True, allow_unused=True)
                return torch.zeros_like(u) if g is None else g

            u = matrix.solve(grad, transpose=True)
            for _ in range(GRADIENT_ITERS):
                du = matrix.solve(grad - u + vjp(u), transpose=True)
                u = u + du
                if float(du.abs().max()) <= tol * float(u.abs().max()) or not bool(torch.isfinite(du).all()):
                    break
            else:  # stalled: build I - ∂Φ/∂Y column by column and solve densely
                eye = torch.eye(grad.numel(), dtype=grad.dtype, device=grad.device)
                columns = torch.stack([e - vjp(e.view_as(grad)).reshape(-1) for e in eye], dim=1)  # Mᵀ e_i, M = I - ∂Φ/∂Y
                u = torch.linalg.solve(columns, grad.reshape(-1, 1)).view_as(grad)
            return u

        return hook

    # -- the adaptive loop's hooks: the Jacobian and the iteration matrix, kept while they serve -------

    def first_evaluation(self, t0: float, y: torch.Tensor) -> torch.Tensor:
        f = self.evaluate(t0, y)
        if not math.isfinite(float(f.detach().abs().max())):
            raise NonFiniteState(t0, "derivative f(t0, y0)")
        return f

    def begin(self, y: torch.Tensor, f: torch.Tensor, grad: bool):
        self._jac, self._jac_fresh, self._jac_wanted = None, False, True
        self._matrix, self._matrix_h, self._theta = None, None, 0.0
        return super().begin(y, f, grad)

    def attempt(self, t0: float, dt: float, t1: float, h: float, y: torch.Tensor, f: torch.Tensor, grad: bool, nudge_end: bool):
        if self._jac_wanted:
            self._jac, evaluations = self.jacobian(self.time(t0), y.detach())
            self.nfe += evaluations
            self.n_jacobians += 1
            self._jac_fresh, self._jac_wanted, self._matrix = True, False, None
        if self._matrix is None or self._matrix_h != h:
            self._matrix, self._matrix_h = self._factorise(self._jac, h), h
            self.n_factorisations += 1
        y1, stages, ratio, self._theta, f1 = self._step(t0, h, y, f, self._matrix, grad)
        return y1, stages, ratio, f1

    def after_failure(self, t0: float, h: float, forced: bool, smallest: float, failure: StepFailed) -> float:
        """Retry the same h with a Jacobian taken here if the one used was older; else halve h."""
        self.n_newton_failures += 1
        self._eta = 1.0
        if not self._jac_fresh:
            self._jac_wanted = True
            return h
        if forced or h / 2 < smallest:
            newton = NewtonDidNotConverge(t0, failure.iterations, failure.ratio, self.newton_kappa)
            raise StepSizeTooSmall(t0, h / 2, smallest) from newton
        return h / 2

    def next_slope(self, t1: float, y1: torch.Tensor, stages: torch.Tensor, f1: torch.Tensor | None, jumped: bool, direction: float) -> torch.Tensor:
        self._jac_fresh = False
        if self._theta > SLOW_CONTRACTION:
            self._jac_wanted = True  # the last solve contracted slowly: a Jacobian taken where the next step starts
        return super().next_slope(t1, y1, stages, f1, jumped, direction)
