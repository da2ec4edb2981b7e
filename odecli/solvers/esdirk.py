"""Adaptive, L-stable ESDIRK methods for stiff problems: ``kvaerno5`` and ``kvaerno3`` (Kværnø 2004).

An ESDIRK step (explicit first stage, singly diagonally implicit Runge–Kutta) solves its stages in turn::

    k_1 = f(t0, y0),    Y_i = known_i + hγ f(t0 + c_i h, Y_i),    known_i = y0 + h Σ_{j<i} a_ij k_j,
    k_i = (Y_i - known_i) / (hγ)

Both methods are stiffly accurate (``y1 = Y_s``, so ``k_s = f(t1, y1)`` is the next step's ``k_1``)
and L-stable; the embedded solution ``Y_{s-1}`` (also at ``c = 1``) is one order lower.

**Newton.** Each stage is solved by simplified Newton on ``G(Y) = Y - known_i - hγ f(t_i, Y)`` with
the iteration matrix ``M = I - hγJ`` — one matrix for all stages, since γ is shared — factorised by
``torch.linalg.lu_factor`` and applied by ``lu_solve``; the iteration starts from the tableau's stage
predictor (an extrapolation of the earlier stages' slopes) and, should that fail, once more from the
previous stage value (safer on stiff nonlinear stages, where extrapolation overshoots). Convergence test (Hairer & Wanner, Solving ODEs
II, IV.8): with ``‖·‖`` the RMS of ``ΔY / (atol + rtol·|y0|)`` and the contraction rate
``θ_k = ‖ΔY_k‖ / ‖ΔY_{k-1}‖``, a stage has converged once ``η_k ‖ΔY_k‖ ≤ κ = 0.05`` with
``η_k = θ_k / (1 - θ_k)`` (``η_1 = max(η_previous, ε)^0.8``): the remaining Newton error is about 5%
of the local error tolerance (``rtol`` floored so that this is never below ~100 ulps). It has failed
when ``θ_k ≥ 1``, an iterate is not finite, or after ``max_iters`` (default 10) iterations. A failure
never raises: it rejects the step, and the step is retried with a fresh Jacobian (same h) if the
Jacobian was reused from an earlier step, otherwise with h halved. Giving up raises the library's
typed errors: ``StepSizeTooSmall`` (h below ``min_step`` or ~10 ulps of t), ``MaxStepsExceeded``. As in
torchdiffeq, a step of ``min_step`` is accepted whatever its error estimate.

**Jacobian reuse.** ``J = ∂f/∂y`` at the start of a step, by autograd (one VJP per row; batched by
vmap above 32 rows) or by
forward differences (``options={'jacobian': 'finite_difference'}``; chosen automatically when
``func``'s output is not connected to ``y`` in the autograd graph, as in ``odeint_adjoint``'s
augmented system). J is kept for later steps and recomputed only after a Newton failure with it or
when its last solve contracted slowly (``max θ > 0.05``). ``I - hγJ`` is refactorised only when J or h
changes; after an accepted step h is left as it is when the controller would raise it by less than
20%, so the LU is reused as well. ``options={'jacobian_blocks': B}`` declares the flat state to be B
equal, independent samples (a batch whose samples do not interact): J is then B diagonal blocks
from n/B VJPs and ``M`` a batch of B small LUs, so cost grows linearly with the batch, not cubically.

**Error and step size.** ``err = M⁻¹ · h Σ (b_i - b̂_i) k_i`` — the embedded difference filtered by
``M`` (Shampine's estimate, as in Hairer's RADAU5 and OrdinaryDiffEq's Kvaerno5: bounded on stiff
components); a step is accepted when ``norm(err / (atol + rtol·max(|y0|, |y1|))) ≤ 1`` (RMS, or the
``norm`` option). The next h comes from the shared controllers (``controller='pi'`` by default here;
``'i'`` for torchdiffeq's). Output times inside a step are interpolated by the cubic Hermite through
``y0, y1, k_1, k_s`` (third order, no extra evaluation); the last step ends exactly on ``t[-1]``.

**Gradients.** Direct backprop: Newton runs without a graph; each converged stage ``Y*`` is attached
by the implicit function theorem as ``Y = Y* + (Z - Z.detach())``, ``Z = known_i + hγ f(t_i, Y*)``
(its value is exactly ``Y*``), with a hook that maps the incoming gradient g to
``(I - hγ J(t_i, Y*))⁻ᵀ g``, solved by an iteration preconditioned with M's LU (one VJP of f per
iteration; a dense solve if it stalls). This is the exact derivative of the solved stage equations,
for one extra evaluation per stage. ``odeint_adjoint(..., method='kvaerno5')`` integrates the adjoint
system with this solver like any other (its Jacobian by finite differences, see above) — but note that
the adjoint re-solves ``y`` backwards in time, where a stiff decaying mode grows like ``exp(|λ| t)``
and forces tiny steps on any solver: for stiff problems prefer direct backprop.

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
from odecli.solvers.base import AbstractSolver
from odecli.solvers.controllers import make_controller, rms_norm, select_initial_step
from odecli.solvers.errors import (
    InvalidInputError,
    MaxStepsExceeded,
    NewtonDidNotConverge,
    NonFiniteState,
    StepSizeTooSmall,
)
from odecli.solvers.interpolation import DenseOutputs
from odecli.solvers.runge_kutta import ALL_CALLBACKS, DEFAULT_MAX_NUM_STEPS
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
# Linear algebra on the iteration matrix, dense or block diagonal.


BATCHED_JACOBIAN_ROWS = 32  # above this many rows per block, the autograd Jacobian uses one batched VJP


class _Jacobian:
    """``∂f/∂y`` as ``[blocks, d, d]`` diagonal blocks (one block of ``n × n`` when dense)."""

    def __init__(self, func, n: int, blocks: int, method: str, dtype: torch.dtype, device: torch.device):
        self.func, self.n, self.blocks, self.d = func, n, blocks, n // blocks
        self.finite_difference = method == "finite_difference"
        self.dtype, self.device = dtype, device
        eye = torch.eye(self.d, dtype=dtype, device=device)
        # Row i of every block at once: the one-hot e_i repeated over the blocks.
        self.seeds = eye.unsqueeze(1).expand(self.d, blocks, self.d).reshape(self.d, n)
        # One batched VJP pass (vmap) for many rows; a loop of VJPs for few, which also spares the
        # ~1 s one-time import that torch's vmap machinery costs.
        self.batched = self.d > BATCHED_JACOBIAN_ROWS

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(J, evaluations of func used)``."""
        if not self.finite_difference:
            jac = self._autograd(t, y)
            if jac is not None:
                return jac, 1
            self.finite_difference = True  # not connected in the graph: use differences from now on
            return self._differences(t, y)[0], 1 + self.d + 1
        return self._differences(t, y)

    def _autograd(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            f = self.func(t.detach(), y_)
            if not f.requires_grad:
                return None
            rows = None
            if self.batched:
                try:
                    (rows,) = torch.autograd.grad(f, y_, self.seeds, retain_graph=True, allow_unused=True, is_grads_batched=True)
                except RuntimeError:  # an operation without a batching rule: one VJP per row instead
                    self.batched = False
            if not self.batched:
                grads = [torch.autograd.grad(f, y_, seed, retain_graph=True, allow_unused=True)[0] for seed in self.seeds]
                rows = None if grads[0] is None else torch.stack(grads)
        if rows is None:
            return None
        return rows.detach().view(self.d, self.blocks, self.d).transpose(0, 1).contiguous()

    def _differences(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        with torch.no_grad():
            y = y.detach()
            f0 = self.func(t, y)
            eps = torch.finfo(self.dtype).eps
            steps = math.sqrt(eps) * torch.clamp(y.abs(), min=1.0)
            columns = []
            for i in range(self.d):
                delta = (y + steps * self.seeds[i]) - y  # component i of every block; as represented in floating point
                change = (self.func(t, y + delta) - f0).view(self.blocks, self.d)
                columns.append(change / delta.view(self.blocks, self.d)[:, i : i + 1])
            jac = torch.stack(columns, dim=2)  # [blocks, row, column]
        return jac, self.d + 1


class _IterationMatrix:
    """The LU factors of ``I - hγJ`` and solves with them (block-batched)."""

    def __init__(self, jac: torch.Tensor, h_gamma: float):
        blocks, d, _ = jac.shape
        eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
        self.lu, self.pivots = torch.linalg.lu_factor(eye - h_gamma * jac)
        self.blocks, self.d = blocks, d

    def solve(self, rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        x = torch.linalg.lu_solve(self.lu, self.pivots, rhs.reshape(self.blocks, self.d, 1), adjoint=transpose)
        return x.reshape(rhs.shape)


# --------------------------------------------------------------------------------------------
# The solver.

NEWTON_KAPPA = 0.05  # Newton error target as a fraction of the local error tolerance
SLOW_CONTRACTION = 0.05  # a Newton solve contracting slower than this asks for a fresh Jacobian next step
KEEP_STEP_RATIO = 1.2  # after an accepted step, h is kept when the controller would grow it by less
GRADIENT_ITERS = 50  # iterations of the IFT gradient solve before it falls back to a dense solve


class _NewtonFailed(Exception):
    def __init__(self, iterations: int, ratio: float):
        self.iterations, self.ratio = iterations, ratio


class AbstractESDIRK(AbstractSolver):
    """An adaptive stiffly accurate ESDIRK method; subclasses set ``tableau``, ``order`` and ``reference``."""

    tableau: ClassVar[ESDIRKTableau]
    adaptive: ClassVar[bool] = True
    implicit: ClassVar[bool] = True
    fsal: ClassVar[bool] = True
    # Filter the embedded error estimate by (I - hγJ)⁻¹ (see the module docstring).
    filter_error: ClassVar[bool] = True
    callbacks: ClassVar[frozenset[str]] = ALL_CALLBACKS
    options: ClassVar[frozenset[str]] = frozenset(
        {"first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "norm", "controller",
         "max_iters", "jacobian", "jacobian_blocks"}
    )  # fmt: skip

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
        self.first_step = None if first_step is None else abs(float(first_step))
        self.min_step, self.max_step = abs(float(min_step)), abs(float(max_step))
        if self.min_step > self.max_step:
            raise InvalidInputError(f"options min_step={min_step} exceeds max_step={max_step}.")
        if int(max_num_steps) < 1:
            raise InvalidInputError(f"options['max_num_steps'] must be a positive integer, got {max_num_steps}.")
        if int(max_iters) < 1:
            raise InvalidInputError(f"options['max_iters'] must be at least 1, got {max_iters}.")
        if jacobian not in ("autograd", "finite_difference"):
            raise InvalidInputError(f"options['jacobian'] must be 'autograd' or 'finite_difference', got {jacobian!r}.")
        blocks = int(jacobian_blocks)
        if blocks < 1 or (self.n and self.n % blocks):
            raise InvalidInputError(f"options['jacobian_blocks']={jacobian_blocks} must be a positive divisor of the state size {self.n}.")
        self.max_num_steps, self.max_iters = int(max_num_steps), int(max_iters)
        self.norm = norm
        self.controller = make_controller(controller, self.order, safety, ifactor, dfactor)
        self.rtol, self.atol = self._tolerance(rtol, "rtol"), self._tolerance(atol, "atol")
        eps = torch.finfo(self.dtype).eps
        self.newton_rtol = torch.clamp(self.rtol, min=100 * eps / NEWTON_KAPPA) if isinstance(self.rtol, torch.Tensor) else max(self.rtol, 100 * eps / NEWTON_KAPPA)
        self.callback_step = getattr(func, "callback_step", None)
        self.callback_accept_step = getattr(func, "callback_accept_step", None)
        self.callback_reject_step = getattr(func, "callback_reject_step", None)
        self.a_rows, self.predictor, self.b, self.b_error = _coefficients(self.tableau, self.dtype, self.device)
        self.dense = np.array(hermite_dense(self.tableau.b), dtype=np.float64)
        self.jacobian = _Jacobian(func, self.n, blocks if self.n else 1, jacobian, self.dtype, self.device)
        self.n_jacobians = 0  # Jacobian evaluations
        self.n_factorisations = 0  # LU factorisations of I - hγJ
        self.n_newton_failures = 0
        self._eta = 1.0  # Hairer's η carried between Newton solves

    def _tolerance(self, tol, name: str):
        if isinstance(tol, torch.Tensor) and tol.numel() > 1:
            if tol.numel() != self.n:
                raise InvalidInputError(f"{name} has {tol.numel()} elements but the state has {self.n}; pass a scalar or one per element.")
            return tol.detach().reshape(self.n).to(dtype=self.dtype, device=self.device)
        return float(tol)

    def _time(self, t: float) -> torch.Tensor:
        return torch.scalar_tensor(t, dtype=self.dtype, device=self.device)

    def _eval(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.func(self._time(t), y)

    def _error_norm(self, scaled: torch.Tensor) -> float:
        return float(self.norm(scaled)) if self.norm is not None else float(rms_norm(scaled))

    # -- one step -----------------------------------------------------------------------------

    def _newton(self, t_i: float, known: torch.Tensor, guess: torch.Tensor, h_gamma: float, matrix: _IterationMatrix, scale: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Solve ``Y = known + hγ f(t_i, Y)`` from ``Y = guess``; ``(Y, slowest contraction rate)``."""
        y = guess
        previous, theta_max = math.inf, 0.0
        eta = max(self._eta, torch.finfo(self.dtype).eps) ** 0.8
        inv_sqrt_n = 1.0 / math.sqrt(self.n)
        t = self._time(t_i)
        for iteration in range(1, self.max_iters + 1):
            residual = y - known - h_gamma * self.func(t, y)
            self.nfe += 1
            delta = matrix.solve(residual)
            y = y - delta
            size = float(torch.linalg.vector_norm(delta / scale)) * inv_sqrt_n
            if not math.isfinite(size):
                raise _NewtonFailed(iteration, size)
            if iteration > 1:
                theta = size / previous if previous > 0 else 0.0
                theta_max = max(theta_max, theta)
                if theta >= 1.0:
                    raise _NewtonFailed(iteration, size)
                eta = theta / (1.0 - theta)
            if eta * size <= NEWTON_KAPPA or size == 0.0:
                self._eta = eta
                return y, theta_max
            previous = size
        raise _NewtonFailed(self.max_iters, size)

    def _attach(self, t_i: float, known: torch.Tensor, y_star: torch.Tensor, h_gamma: float, matrix: _IterationMatrix) -> torch.Tensor:
        """The converged stage ``y_star`` with the graph the implicit function theorem gives it."""
        t = self._time(t_i)
        z = known + h_gamma * self.func(t, y_star)
        self.nfe += 1
        if not z.requires_grad:
            return y_star
        stage = y_star + (z - z.detach())
        stage.register_hook(self._gradient_hook(t, y_star, h_gamma, matrix))
        return stage

    def _gradient_hook(self, t: torch.Tensor, y_star: torch.Tensor, h_gamma: float, matrix: _IterationMatrix):
        func, jacobian = self.func, self.jacobian
        tol = 10 * torch.finfo(self.dtype).eps

        def hook(grad: torch.Tensor | None) -> torch.Tensor | None:
            """``(I - hγ J*)⁻ᵀ grad``: Richardson iteration preconditioned by the step's LU."""
            if grad is None:
                return None
            with torch.enable_grad():
                probe = y_star.detach().requires_grad_(True)
                out = func(t, probe)
            if not out.requires_grad:
                return grad

            def vjp(u):
                (g,) = torch.autograd.grad(out, probe, u, retain_graph=True, allow_unused=True)
                return torch.zeros_like(u) if g is None else g

            u = matrix.solve(grad, transpose=True)
            for _ in range(GRADIENT_ITERS):
                du = matrix.solve(grad - u + h_gamma * vjp(u), transpose=True)
                u = u + du
                if float(du.abs().max()) <= tol * float(u.abs().max()) or not bool(torch.isfinite(du).all()):
                    break
            else:
                exact = _IterationMatrix(jacobian(t, y_star)[0], h_gamma)
                u = exact.solve(grad, transpose=True)
            return u

        return hook

    def _step(self, t0: float, h: float, y0: torch.Tensor, f0: torch.Tensor, matrix: _IterationMatrix, grad: bool):
        """``(y1, K [s, n], error ratio, slowest Newton contraction)``; raises ``_NewtonFailed``."""
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
            t_i = t0 + tab.c[i] * h if tab.c[i] != 1.0 else t0 + h
            previous = stages_d[:i].T
            known_d = torch.addmv(y0_d, previous, self.a_rows[i], alpha=h)
            guess = torch.addmv(known_d, previous, self.predictor[i], alpha=h_gamma)
            with torch.no_grad():
                try:
                    y_star, theta = self._newton(t_i, known_d, guess, h_gamma, matrix, scale)
                except _NewtonFailed:
                    # The extrapolated slope can overshoot badly on stiff nonlinear stages; the previous
                    # stage value is a safer (if slower) start. Only if that fails too is the step rejected.
                    self._eta = 1.0
                    y_star, theta = self._newton(t_i, known_d, previous_stage, h_gamma, matrix, scale)
            previous_stage = y_star
            theta_max = max(theta_max, theta)
            torch.sub(y_star, known_d, out=stages_d[i]).div_(h_gamma)
            if grad:
                known = torch.addmv(y0, torch.stack(ks).T, self.a_rows[i], alpha=h)
                stage = self._attach(t_i, known, y_star, h_gamma, matrix)
                ks.append((stage - known) / h_gamma)
            else:
                stage = y_star
        y1 = stage  # stiffly accurate: the solution is the last stage
        with torch.no_grad():
            error = torch.mv(stages_d.T, self.b_error).mul_(h)
            if self.filter_error:
                error = matrix.solve(error)
            tolerance = torch.maximum(y0_d.abs(), y1.detach().abs()).mul_(self.rtol).add_(self.atol)
            ratio = self._error_norm(error.div_(tolerance))
        stages = torch.stack(ks) if grad else stages_d
        return y1, stages, ratio, theta_max

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
                matrix, matrix_h = _IterationMatrix(jac, h * self.tableau.gamma), h
                self.n_factorisations += 1
            try:
                y1, stages, ratio, theta = self._step(tau, h, y, f, matrix, grad)
            except _NewtonFailed as failure:
                self.n_rejected += 1
                self.n_newton_failures += 1
                self._eta = 1.0
                if self.callback_reject_step is not None:
                    self.callback_reject_step(self._time(tau), y, self._time(h))
                if not jac_fresh:
                    jac_wanted = True  # retry the same h with a Jacobian taken here
                    continue
                if forced or h / 2 < smallest:
                    newton = NewtonDidNotConverge(tau, failure.iterations, failure.ratio, NEWTON_KAPPA)
                    raise StepSizeTooSmall(tau, h / 2, smallest) from newton
                h = h / 2
                continue
            finite = math.isfinite(ratio) or bool(torch.isfinite(y1.detach()).all())
            if not finite and forced:
                raise NonFiniteState(tau)
            accept = finite and (ratio <= 1.0 or forced)
            proposal = self.controller.propose(h, ratio if math.isfinite(ratio) else math.nan, accept)
            if not accept:
                self.n_rejected += 1
                if self.callback_reject_step is not None:
                    self.callback_reject_step(self._time(tau), y, self._time(h))
                h = proposal
                continue
            if self.callback_accept_step is not None:
                self.callback_accept_step(self._time(tau), y, self._time(h))
            self.n_accepted += 1
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
            tau, y, f = tau1, y1, stages[-1]
            jac_fresh = False
            if theta > SLOW_CONTRACTION:
                jac_wanted = True
            h = h if 1.0 <= proposal / h <= KEEP_STEP_RATIO else proposal
        solution = outputs.result()
        return solution


# --------------------------------------------------------------------------------------------
# The registered methods.


@SOLVERS.register(
    "kvaerno5",
    description="Kvaerno ESDIRK 5(4), 7 stages, L-stable, stiffly accurate; adaptive, Newton + autograd Jacobian; for stiff problems.",
)
class Kvaerno5(AbstractESDIRK):
    """Kværnø's ESDIRK 5(4): 7 stages (6 implicit, FSAL), L-stable, stiffly accurate, cubic Hermite dense output."""

    tableau, order = KVAERNO5, 5
    reference = "Kvaerno 2004, BIT 44(3), 'Singly diagonally implicit Runge-Kutta methods with an explicit first stage'"


@SOLVERS.register(
    "kvaerno3",
    description="Kvaerno ESDIRK 3(2), 4 stages, L-stable, stiffly accurate; adaptive, Newton + autograd Jacobian; loose tolerances.",
)
class Kvaerno3(AbstractESDIRK):
    """Kværnø's ESDIRK 3(2): 4 stages (3 implicit, FSAL), L-stable, stiffly accurate, cubic Hermite dense output."""

    tableau, order = KVAERNO3, 3
    reference = "Kvaerno 2004, BIT 44(3), 'Singly diagonally implicit Runge-Kutta methods with an explicit first stage'"
