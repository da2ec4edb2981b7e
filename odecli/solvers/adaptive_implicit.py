"""The machinery shared by the adaptive implicit Runge–Kutta methods (``esdirk.py``, ``radau.py``).

A method subclasses ``AbstractAdaptiveImplicit`` and supplies one step (``_step``) and the
factorisation of its iteration matrix (``_factorise``); this module gives it the rest:

**Jacobian.** ``J = ∂f/∂y`` at the start of a step, by autograd (one VJP per row; batched by vmap
above 32 rows) or by forward differences (``options={'jacobian': 'finite_difference'}``; chosen
automatically when ``func``'s output is not connected to ``y`` in the autograd graph, as in
``odeint_adjoint``'s augmented system). J is kept for later steps and recomputed only after a Newton
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
here; ``'i'`` for torchdiffeq's), with the exponent of the error estimate's order.

**Gradients.** Direct backprop: Newton runs without a graph; the converged ``Y*`` is attached by
the implicit function theorem as ``Y = Y* + (Φ(Y*) - Φ(Y*).detach())`` (its value is exactly ``Y*``;
Φ carries the graph to ``y0``, earlier stages and parameters), with a hook that maps the incoming
gradient g to ``(I - ∂Φ/∂Y(Y*))⁻ᵀ g``, solved by an iteration preconditioned with the step's
factorisation (one VJP of Φ per iteration; a dense solve if it stalls). This is the exact derivative
of the solved stage equations. ``odeint_adjoint`` integrates the adjoint system with these solvers
like any other (its Jacobian by finite differences, see above) — but the adjoint re-solves ``y``
backwards in time, where a stiff decaying mode grows like ``exp(|λ| t)`` and forces tiny steps on any
solver: for stiff problems prefer direct backprop.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from odecli.solvers.base import AbstractSolver
from odecli.solvers.controllers import StepLimits, flat_tolerance, make_controller, rms_norm, select_initial_step
from odecli.solvers.errors import (
    InvalidInputError,
    MaxStepsExceeded,
    NewtonDidNotConverge,
    NonFiniteState,
    StepSizeTooSmall,
)
from odecli.solvers.interpolation import DenseOutputs
from odecli.solvers.jacobian import Jacobian
from odecli.solvers.runge_kutta import ALL_CALLBACKS, DEFAULT_MAX_NUM_STEPS

NEWTON_KAPPA = 0.05  # Newton error target as a fraction of the local error tolerance
SLOW_CONTRACTION = 0.05  # a Newton solve contracting slower than this asks for a fresh Jacobian next step
KEEP_STEP_RATIO = 1.2  # after an accepted step, h is kept when the controller would grow it by less
GRADIENT_ITERS = 50  # iterations of the IFT gradient solve before it falls back to a dense solve


# --------------------------------------------------------------------------------------------
# Linear algebra: iteration matrices and shifted LU factorisations, dense or block diagonal.


class IterationMatrix(abc.ABC):
    """A method's simplified-Newton matrix ``P ≈ ∂G/∂Y``, factorised once per (J, h)."""

    @abc.abstractmethod
    def solve(self, rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``P⁻¹ rhs`` (or ``P⁻ᵀ rhs``), ``rhs`` shaped like the stage unknowns."""


class ShiftedLU(IterationMatrix):
    """The LU factors of ``I - s·J`` for a real or complex shift ``s``, and solves with them (block-batched)."""

    def __init__(self, jac: torch.Tensor, shift: float | complex):
        blocks, d, _ = jac.shape
        self.complex = isinstance(shift, complex)
        if self.complex:
            jac = jac.to(torch.complex128 if jac.dtype == torch.float64 else torch.complex64)
        eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
        self.lu, self.pivots = torch.linalg.lu_factor(eye - shift * jac)
        self.blocks, self.d = blocks, d

    def solve(self, rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``(I - sJ)⁻¹ rhs``, or ``(I - sJ)⁻ᵀ rhs`` (the plain transpose, also for complex s)."""
        shape = rhs.shape
        rhs = rhs.reshape(self.blocks, self.d, 1)
        if self.complex:
            rhs = rhs.to(self.lu.dtype)
            if transpose:  # lu_solve's adjoint is the conjugate transpose: Aᵀx = b  ⇔  Aᴴ x̄ = b̄
                return torch.linalg.lu_solve(self.lu, self.pivots, rhs.conj(), adjoint=True).conj().reshape(shape)
        return torch.linalg.lu_solve(self.lu, self.pivots, rhs, adjoint=transpose).reshape(shape)


# --------------------------------------------------------------------------------------------
# The solver.


class NewtonFailed(Exception):
    def __init__(self, iterations: int, ratio: float):
        self.iterations, self.ratio = iterations, ratio


class AbstractAdaptiveImplicit(AbstractSolver):
    """An adaptive implicit Runge–Kutta method with simplified Newton; subclasses give the step.

    ``error_order``: the power of h in the local error estimate (the controller's exponent is its
    inverse); by default the method's order.
    """

    adaptive: ClassVar[bool] = True
    implicit: ClassVar[bool] = True
    error_order: ClassVar[int | None] = None
    newton_kappa: float = NEWTON_KAPPA  # Newton's error target as a fraction of the tolerance (see the module docstring)
    callbacks: ClassVar[frozenset[str]] = ALL_CALLBACKS
    options: ClassVar[frozenset[str]] = frozenset(
        {"first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "norm", "controller",
         "max_iters", "jacobian", "jacobian_blocks"}
    )  # fmt: skip
    dense: np.ndarray  # [stages, degree]: the continuous extension over the step's ``stages`` (see DenseOutputs)

    def __init__(
        self,
        func,
        y0: torch.Tensor,
        rtol,
        atol,
        first_step: float | None = None,
        min_step: float = 0.0,
        max_step: float = math.inf,
        safety: float = 0.9,
        ifactor: float = 10.0,
        dfactor: float = 0.2,
        max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
        norm=None,
        controller="pi",
        max_iters: int = 10,
        jacobian: str = "autograd",
        jacobian_blocks: int = 1,
        **options: Any,
    ):
        super().__init__(func, y0, rtol, atol)
        self.n = y0.numel()
        self.dtype, self.device = y0.dtype, y0.device
        self.first_step, self.min_step, self.max_step, self.max_num_steps = StepLimits.parse(first_step, min_step, max_step, max_num_steps)
        if int(max_iters) < 1:
            raise InvalidInputError(f"options['max_iters'] must be at least 1, got {max_iters}.")
        if jacobian not in ("autograd", "finite_difference"):
            raise InvalidInputError(f"options['jacobian'] must be 'autograd' or 'finite_difference', got {jacobian!r}.")
        blocks = int(jacobian_blocks)
        if blocks < 1 or (self.n and self.n % blocks):
            raise InvalidInputError(f"options['jacobian_blocks']={jacobian_blocks} must be a positive divisor of the state size {self.n}.")
        self.max_iters = int(max_iters)
        self.norm = norm
        self.controller = make_controller(controller, self.error_order or self.order, safety, ifactor, dfactor)
        self.rtol = flat_tolerance(rtol, "rtol", self.n, self.dtype, self.device)
        self.atol = flat_tolerance(atol, "atol", self.n, self.dtype, self.device)
        eps = torch.finfo(self.dtype).eps
        floor = 100 * eps / self.newton_kappa
        self.newton_rtol = torch.clamp(self.rtol, min=floor) if isinstance(self.rtol, torch.Tensor) else max(self.rtol, floor)
        self.callback_step = getattr(func, "callback_step", None)
        self.callback_accept_step = getattr(func, "callback_accept_step", None)
        self.callback_reject_step = getattr(func, "callback_reject_step", None)
        self.jacobian = Jacobian(func, self.n, blocks if self.n else 1, jacobian, self.dtype, self.device)
        self.n_jacobians = 0  # Jacobian evaluations
        self.n_factorisations = 0  # factorisations of the iteration matrix
        self.n_newton_failures = 0
        self._eta = 1.0  # Hairer's η carried between Newton solves
        self.previous_rejected = True  # the step being taken is the first or follows a rejection

    def _time(self, t: float) -> torch.Tensor:
        # func gets t in the state's real dtype, as torchdiffeq passes it
        return torch.scalar_tensor(t, dtype=self.dtype.to_real(), device=self.device)

    def _eval(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.func(self._time(t), y)

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

    # -- the step loop ------------------------------------------------------------------------

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        times = t.detach().tolist()
        n_out = len(times)
        if n_out == 1 or self.n == 0:
            return self.y0.unsqueeze(0).expand(n_out, self.n).clone() if self.n == 0 else self.y0.unsqueeze(0).clone()
        y = self.y0.reshape(self.n)
        if not math.isfinite(float(y.detach().abs().max())):
            raise NonFiniteState(times[0], "initial state y0")
        f = self._eval(times[0], y)
        if not math.isfinite(float(f.detach().abs().max())):
            raise NonFiniteState(times[0], "derivative f(t0, y0)")
        grad = torch.is_grad_enabled() and (y.requires_grad or f.requires_grad)
        if not grad:
            y, f = y.detach(), f.detach()
        if self.first_step is not None:
            h = self.first_step
        else:
            norm = self.norm if self.norm is not None else rms_norm

            def eval_float(time: float, state: torch.Tensor) -> torch.Tensor:
                return self._eval(time, state)

            h = select_initial_step(eval_float, times[0], 1.0, y, f, self.order, self.rtol, self.atol, norm)
        outputs = DenseOutputs(self.dense, n_out, self.n, self.dtype, self.device, in_place=not grad)
        outputs.at_end(0, y)
        t_end = times[-1]
        j = 1
        tau = times[0]
        jac, jac_fresh, jac_wanted = None, False, True
        matrix, matrix_h = None, None
        attempts = 0
        self.previous_rejected = True
        while True:
            h = min(max(h, self.min_step), self.max_step)
            if not math.isfinite(h):
                h = self.max_step if math.isfinite(self.max_step) else (t_end - tau)
            forced = h <= self.min_step  # as torchdiffeq: a step of min_step is accepted whatever its error
            remaining = t_end - tau
            if h >= remaining or (1.01 * h > remaining and remaining <= self.max_step):  # land on the last time exactly
                h = remaining
            smallest = max(self.min_step, 10 * (math.nextafter(abs(tau), math.inf) - abs(tau)))
            if h < smallest and h < remaining:
                raise StepSizeTooSmall(tau, h, smallest)
            attempts += 1
            if attempts > self.max_num_steps:
                raise MaxStepsExceeded(tau, self.max_num_steps, t_end)
            if self.callback_step is not None:
                self.callback_step(self._time(tau), y, self._time(h))
            if jac_wanted:
                jac, evaluations = self.jacobian(self._time(tau), y.detach())
                self.nfe += evaluations
                self.n_jacobians += 1
                jac_fresh, jac_wanted, matrix = True, False, None
            if matrix is None or matrix_h != h:
                matrix, matrix_h = self._factorise(jac, h), h
                self.n_factorisations += 1
            try:
                y1, stages, ratio, theta, f1 = self._step(tau, h, y, f, matrix, grad)
            except NewtonFailed as failure:
                self.steps_rejected += 1
                self.n_newton_failures += 1
                self._eta = 1.0
                self.previous_rejected = True
                if self.callback_reject_step is not None:
                    self.callback_reject_step(self._time(tau), y, self._time(h))
                if not jac_fresh:
                    jac_wanted = True  # retry the same h with a Jacobian taken here
                    continue
                if forced or h / 2 < smallest:
                    newton = NewtonDidNotConverge(tau, failure.iterations, failure.ratio, self.newton_kappa)
                    raise StepSizeTooSmall(tau, h / 2, smallest) from newton
                h = h / 2
                continue
            finite = math.isfinite(ratio) or bool(torch.isfinite(y1.detach()).all())
            if not finite and forced:
                raise NonFiniteState(tau)
            accept = finite and (ratio <= 1.0 or forced)
            proposal = self.controller.propose(h, ratio if math.isfinite(ratio) else math.nan, accept)
            if not accept:
                self.steps_rejected += 1
                self.previous_rejected = True
                if self.callback_reject_step is not None:
                    self.callback_reject_step(self._time(tau), y, self._time(h))
                h = proposal
                continue
            if self.callback_accept_step is not None:
                self.callback_accept_step(self._time(tau), y, self._time(h))
            self.steps_accepted += 1
            self.previous_rejected = False
            tau1 = t_end if h == t_end - tau else tau + h
            # Outputs in (tau, tau1].
            if times[j] <= tau1:
                end = j
                while end < n_out and times[end] <= tau1:
                    end += 1
                last = end
                if times[end - 1] == tau1:
                    last = end - 1
                    outputs.at_end(last, y1)
                if last > j:
                    outputs.inside(j, [(times[m] - tau) / h for m in range(j, last)], y, stages, h)
                j = end
                attempts = 0
            if j == n_out:
                break
            tau, y, f = tau1, y1, f1
            jac_fresh = False
            if theta > SLOW_CONTRACTION:
                jac_wanted = True
            h = h if 1.0 <= proposal / h <= KEEP_STEP_RATIO else proposal
        return outputs.result()
