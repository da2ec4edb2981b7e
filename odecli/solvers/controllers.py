"""Step-size control for adaptive Runge–Kutta methods: the initial step and the next step.

Defaults are torchdiffeq's so that the same problem takes the same steps: Hairer's initial step
selection, then an integral (I) controller ``h_new = h · min(ifactor, max(dfactor, safety·err^(-1/order)))``
with ``safety = 0.9, ifactor = 10, dfactor = 0.2`` (``dfactor`` applies after a rejection only; an
accepted step never shrinks the next one). ``err`` is the error ratio: the norm (RMS by default)
of ``error / (atol + rtol·max(|y0|, |y1|))``; a step is accepted when it is at most 1.

``options={'controller': 'pi'}`` selects a proportional-integral controller (Gustafsson 1991;
Hairer & Wanner, Solving ODEs II, IV.2) that also uses the previous accepted step's error, which
smooths step sequences and wastes fewer rejected steps on problems where the I controller oscillates.
For one problem all arithmetic is on Python floats (one number per step, no tensors); for a batch whose
samples are controlled apart (``batch_mode='independent'``) each rule also has a vectorised form, so the
per-sample stepper has no step-size code of its own.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass

import torch

from odecli.solvers.errors import InvalidInputError

Norm = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_MAX_NUM_STEPS = 2**31 - 1  # torchdiffeq's default


def parse_max_num_steps(max_num_steps) -> int:
    """The step budget ``options['max_num_steps']`` as an int; ``InvalidInputError`` unless it is a positive integer."""
    try:
        steps = int(max_num_steps)
        valid = not isinstance(max_num_steps, bool) and steps == max_num_steps and steps >= 1
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise InvalidInputError(f"options['max_num_steps'] must be a positive integer, got {max_num_steps!r}.")
    return steps


@dataclass(frozen=True)
class StepLimits:
    """The step-size options every adaptive solver takes, checked (torchdiffeq's names and defaults)."""

    first_step: float | None
    min_step: float
    max_step: float
    max_num_steps: int

    @classmethod
    def parse(cls, first_step, min_step, max_step, max_num_steps) -> StepLimits:
        """Magnitudes of the steps; ``InvalidInputError`` naming the option when they cannot hold."""
        lower, upper = abs(float(min_step)), abs(float(max_step))
        if lower > upper:
            raise InvalidInputError(f"options min_step={min_step} exceeds max_step={max_step}.")
        return cls(None if first_step is None else abs(float(first_step)), lower, upper, parse_max_num_steps(max_num_steps))

    def __iter__(self):
        return iter(astuple(self))


def flat_tolerance(tol, name: str, n: int, dtype: torch.dtype, device: torch.device) -> float | torch.Tensor:
    """``rtol``/``atol`` as a float, or as a flat ``[n]`` tensor when given one value per state element."""
    if isinstance(tol, torch.Tensor) and tol.numel() > 1:
        if tol.numel() != n:
            raise InvalidInputError(f"{name} has {tol.numel()} elements but the state has {n}; pass a scalar or one per element.")
        return tol.detach().reshape(n).to(dtype=dtype, device=device)
    return float(tol)


def rms_norm(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square over every element (torchdiffeq's default norm)."""
    if tensor.numel() == 0:
        return tensor.new_zeros(())
    return torch.linalg.vector_norm(tensor) / math.sqrt(tensor.numel())


def error_ratio(error: torch.Tensor, abs_y0: torch.Tensor, abs_y1: torch.Tensor, rtol, atol, h, norm: Norm | None = None) -> torch.Tensor:
    """A step's error ratio as a 0-d tensor: ``norm(h·error / (atol + rtol·max(|y0|, |y1|)))``, the RMS when ``norm`` is None.

    ``error`` is the embedded error per unit step (``Σ b_error_i k_i``), left as it is (out-of-place, so that
    ``torch.compile`` can trace it); ``h`` a float or a 0-d tensor.
    """
    tolerance = torch.maximum(abs_y0, abs_y1)
    tolerance = tolerance * rtol + atol
    error = error / tolerance
    if norm is None:
        return h * torch.linalg.vector_norm(error) * (1.0 / math.sqrt(error.numel()) if error.numel() else 0.0)
    return norm(error * h)


def mixed_rms_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The largest RMS over several tensors (torchdiffeq's default norm for a tuple state); 0 for none."""
    return torch.stack([rms_norm(t) for t in tensors]).max() if tensors else torch.zeros(())


class SegmentedRMS:
    """The largest RMS over consecutive pieces of a flat tensor (torchdiffeq's mixed norm), in ~6 ops.

    ``max_k sqrt(mean(x_k²))`` over pieces of the given lengths, summed by one ``index_add_``
    instead of a norm per piece; ``ignored`` trailing elements are left out (the seminorm's
    parameter adjoint). Empty pieces count as 0, as in torchdiffeq. Absolutely homogeneous, so a
    solver may scale the norm instead of its argument.
    """

    homogeneous = True

    def __init__(self, lengths: Sequence[int], ignored: int = 0):
        kept = [int(length) for length in lengths if length > 0]
        self.head, self.ignored, self.count = sum(kept), int(ignored), len(kept)
        self._ids = torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(kept, dtype=torch.long)) if kept else None
        self._inv_lengths = 1.0 / torch.tensor(kept, dtype=torch.float64) if kept else None
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        flat = flat.reshape(-1)
        if flat.numel() != self.head + self.ignored:
            raise ValueError(f"SegmentedRMS expects {self.head + self.ignored} elements, got {flat.numel()}.")
        if not self.count:
            return flat.new_zeros((), dtype=flat.abs().dtype)
        key = (flat.dtype, flat.device)
        if key not in self._cache:
            self._cache[key] = (self._ids.to(flat.device), self._inv_lengths.to(device=flat.device, dtype=flat.abs().dtype))
        ids, inv_lengths = self._cache[key]
        if self.ignored:
            flat = flat[: self.head]
        squares = flat.abs().square_() if flat.is_complex() else flat.square()
        sums = torch.zeros(self.count, dtype=squares.dtype, device=flat.device).index_add_(0, ids, squares)
        return sums.mul_(inv_lengths).max().sqrt()


def select_initial_step(
    func: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    direction: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    norm: Norm,
) -> float:
    """Magnitude of a first step (Hairer, Nørsett & Wanner, Solving ODEs I, II.4), one evaluation of ``func``.

    ``order`` is the method's order as torchdiffeq counts it; the step is sized so that a local
    error ``~h^order`` stays near the tolerance. ``func(t, y)`` takes a float time.
    """
    return float(initial_step_sizes(func, t0, direction, y0, f0, order, rtol, atol, norm))


def initial_step_sizes(func: Callable, t0, direction, y0: torch.Tensor, f0: torch.Tensor, order: int, rtol, atol, norm: Norm) -> torch.Tensor:
    """``select_initial_step`` as float64 tensors: 0-d for one problem, or ``(B,)`` per sample when ``norm`` returns one
    value per sample (``per_sample_rms_norm``), with ``t0``/``direction`` then ``(B,)`` and ``func`` taking ``(B,)`` times."""
    with torch.no_grad():
        y0, f0 = y0.detach(), f0.detach()
        scale = atol + y0.abs() * rtol
        d0, d1 = norm(y0 / scale).double(), norm(f0 / scale).double()
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).abs()
        step = (direction * h0).to(y0.dtype)
        f1 = func(t0 + direction * h0, y0 + (step.view(-1, *(1,) * (y0.ndim - 1)) if step.ndim else step) * f0)
        d2 = (norm((f1.detach() - f0) / scale).double() / h0).abs()
        small = (d1 <= 1e-15) & (d2 <= 1e-15)
        h1 = torch.where(small, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / torch.maximum(d1, d2)) ** (1.0 / order))
        return torch.minimum(100 * h0, h1.abs())


def per_sample_rms_norm(rows: torch.Tensor) -> torch.Tensor:
    """The RMS of each row of a ``(B, n)`` tensor: one error norm per sample (``batch_mode='independent'``)."""
    # The 2-norm over sqrt(n), as the joint norm computes it, so a sample alone and in a batch round alike.
    return torch.linalg.vector_norm(rows, dim=1).mul_(1.0 / math.sqrt(rows.shape[1])) if rows.shape[1] else rows.new_zeros(rows.shape[0])


class AbstractController(abc.ABC):
    """Proposes the next step size from the last one and its error ratio: one rule, for one problem or per sample."""

    @abc.abstractmethod
    def propose(self, h: float, error_ratio: float, accepted: bool) -> float:
        """Magnitude of the next step (before clamping to ``[min_step, max_step]``)."""

    def propose_per_sample(self, h: torch.Tensor, error_ratio: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        """``propose`` for every sample of a batch at once: ``(B,)`` float64 steps and ratios, ``(B,)`` bool."""
        raise InvalidInputError(f"controller {type(self).__name__} has no per-sample rule; implement propose_per_sample, or use batch_mode='joint'.")


class IController(AbstractController):
    """torchdiffeq's controller: ``h · min(ifactor, max(floor, safety · err^(-1/order)))``."""

    def __init__(self, order: int, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2):
        self.exponent = 1.0 / order
        self.safety, self.ifactor, self.dfactor = float(safety), float(ifactor), float(dfactor)
        self.dfactor_tensor: torch.Tensor | None = None

    def propose(self, h: float, error_ratio: float, accepted: bool) -> float:
        if error_ratio == 0:
            return h * self.ifactor
        floor = 1.0 if error_ratio < 1 else self.dfactor
        if math.isnan(error_ratio):
            return h * self.dfactor
        return h * min(self.ifactor, max(self.safety / error_ratio**self.exponent, floor))

    def propose_per_sample(self, h: torch.Tensor, error_ratio: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        # The floor as a float64 0-d tensor: Python scalars in where() make a float32 tensor (0.2 -> 0.20000000298).
        if self.dfactor_tensor is None or self.dfactor_tensor.device != error_ratio.device:
            self.dfactor_tensor = torch.tensor(self.dfactor, dtype=torch.float64, device=error_ratio.device)
        floor = torch.where(error_ratio < 1, 1.0, self.dfactor_tensor)
        # A zero ratio gives 1e-300^(-1/order) > ifactor, clamped to ifactor: propose()'s growth by ifactor.
        factor = torch.maximum(error_ratio.clamp(min=1e-300).pow_(-self.exponent).mul_(self.safety).clamp_(max=self.ifactor), floor)
        return h * factor.nan_to_num_(nan=self.dfactor)


class PIController(AbstractController):
    """``h · safety · err^(-β1) · err_prev^(β2)`` with ``β1 = 0.7/order, β2 = 0.4/order``; no growth right after a rejection."""

    def __init__(self, order: int, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2, beta1: float | None = None, beta2: float | None = None):
        self.beta1 = 0.7 / order if beta1 is None else float(beta1)
        self.beta2 = 0.4 / order if beta2 is None else float(beta2)
        self.safety, self.ifactor, self.dfactor = float(safety), float(ifactor), float(dfactor)
        self.previous = 1.0
        self.rejected_last = False
        self.previous_per_sample: torch.Tensor | None = None
        self.rejected_last_per_sample: torch.Tensor | None = None

    def propose(self, h: float, error_ratio: float, accepted: bool) -> float:
        if math.isnan(error_ratio):
            self.rejected_last = True
            return h * self.dfactor
        ratio = max(error_ratio, 1e-10)
        factor = self.safety * ratio ** (-self.beta1) * self.previous**self.beta2
        factor = min(self.ifactor, max(self.dfactor, factor))
        if accepted:
            if self.rejected_last:
                factor = min(factor, 1.0)
            self.previous = max(ratio, 1e-4)
            self.rejected_last = False
        else:
            factor = min(factor, 1.0)
            self.rejected_last = True
        return h * factor

    def propose_per_sample(self, h: torch.Tensor, error_ratio: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        if self.previous_per_sample is None:
            self.previous_per_sample = torch.ones_like(error_ratio)
            self.rejected_last_per_sample = torch.zeros_like(accepted)
        nan = torch.isnan(error_ratio)
        ratio = error_ratio.clamp(min=1e-10)
        factor = self.safety * ratio ** (-self.beta1) * self.previous_per_sample**self.beta2
        factor = factor.clamp(min=self.dfactor, max=self.ifactor)
        # No growth on a rejection, nor on the step accepted right after one.
        capped = ~accepted | self.rejected_last_per_sample
        factor = torch.where(capped, factor.clamp(max=1.0), factor)
        factor = torch.where(nan, self.dfactor, factor)
        self.previous_per_sample = torch.where(accepted & ~nan, ratio.clamp(min=1e-4), self.previous_per_sample)
        self.rejected_last_per_sample = ~accepted | nan
        return h * factor


class PredictiveController(AbstractController):
    """Gustafsson's predictive controller, as in Hairer's RADAU5 and scipy's ``Radau``.

    After an accepted step ``h`` with error ratio ``err`` (the previous accepted one ``h_old``, ``err_old``):
    ``h · clamp(safety · min(1, (h / h_old) · (err_old / err)^(1/order)) · err^(-1/order), dfactor, ifactor)``:
    the I controller's step, but no larger than the step that the last two errors extrapolate to. On a
    stiff problem the error ratio of an implicit step does not fall steadily with h (the stiff components
    are damped whatever h is), and the I/PI rules overshoot and are rejected, or undershoot; the predictive
    rule follows the error's trend (Gustafsson 1994; Hairer & Wanner, Solving ODEs II, IV.8, (8.21)).
    A rejection: the I controller's ``h · max(dfactor, safety · err^(-1/order))``.
    """

    def __init__(self, order: int, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2):
        self.exponent = 1.0 / order
        self.safety, self.ifactor, self.dfactor = float(safety), float(ifactor), float(dfactor)
        self.last_accepted: tuple[float, float] | None = None  # (h, error ratio) of the last accepted step
        self.last_per_sample: tuple[torch.Tensor, torch.Tensor] | None = None  # the same per sample (h 0: none yet)

    def propose(self, h: float, error_ratio: float, accepted: bool) -> float:
        if math.isnan(error_ratio):
            return h * self.dfactor
        ratio = max(error_ratio, 1e-10)
        factor = self.safety * ratio**-self.exponent
        if accepted:
            if self.last_accepted is not None:
                h_old, ratio_old = self.last_accepted
                factor *= min(1.0, h / h_old * (ratio_old / ratio) ** self.exponent)
            self.last_accepted = (h, ratio)
        return h * min(self.ifactor, max(self.dfactor, factor))

    def propose_per_sample(self, h: torch.Tensor, error_ratio: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        if self.last_per_sample is None:
            self.last_per_sample = (torch.zeros_like(h), torch.ones_like(error_ratio))
        h_old, ratio_old = self.last_per_sample
        nan = torch.isnan(error_ratio)
        ratio = error_ratio.clamp(min=1e-10)
        factor = ratio.pow(-self.exponent).mul_(self.safety)
        # The trend only for an accepted step with an accepted one before it (h_old 0: none yet).
        trend = torch.where(h_old > 0, (h / h_old.clamp(min=1e-300)) * (ratio_old / ratio).pow(self.exponent), 1.0).clamp_(max=1.0)
        update = accepted & ~nan
        factor = torch.where(update, factor * trend, factor).clamp_(min=self.dfactor, max=self.ifactor)
        self.last_per_sample = (torch.where(update, h, h_old), torch.where(update, ratio, ratio_old))
        return h * torch.where(nan, self.dfactor, factor)


CONTROLLERS: dict[str, type[AbstractController]] = {"i": IController, "pi": PIController, "predictive": PredictiveController}


def make_controller(controller: str | AbstractController, order: int, safety: float, ifactor: float, dfactor: float) -> AbstractController:
    """A controller from ``options['controller']``: ``'i'``, ``'pi'``, ``'predictive'``, or an ``AbstractController`` instance."""
    if isinstance(controller, AbstractController):
        return controller
    if not isinstance(controller, str) or controller.lower() not in CONTROLLERS:
        raise InvalidInputError(f"options['controller'] must be one of {sorted(CONTROLLERS)} or an AbstractController instance, got {controller!r}.")
    return CONTROLLERS[controller.lower()](order, safety=safety, ifactor=ifactor, dfactor=dfactor)
