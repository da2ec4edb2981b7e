"""Dense output: the solution between the ends of a step, from the step's own stages.

A continuous extension is stored as stage polynomials (see ``ButcherTableau.dense``), so every
requested time inside one step is evaluated at once: the weights ``W[m, i] = b_i(θ_m)`` are a
tiny host-side matrix and the outputs are one matrix product ``y0 + h · W @ K``. Steps with no
requested time inside cost nothing (torchdiffeq fits its interpolant on every step).

Fixed-grid methods interpolate as torchdiffeq does: linearly, or by cubic Hermite with ``f(t1, y1)``.
"""

from __future__ import annotations

import numpy as np
import torch


def dense_weights(dense: np.ndarray, thetas: list[float]) -> np.ndarray | list[list[float]]:
    """``W[m, i] = Σ_p dense[i, p] θ_m^(p+1)``: stage weights of the interpolant at each ``θ`` in ``[0, 1]``."""
    if len(thetas) == 1:  # the common case; plain floats beat numpy's per-call overhead here
        theta = thetas[0]
        powers = [theta ** (p + 1) for p in range(dense.shape[1])]
        return [[sum(c * x for c, x in zip(row, powers)) for row in dense.tolist()]]
    theta = np.asarray(thetas, dtype=np.float64)[:, None]
    powers = theta ** np.arange(1, dense.shape[1] + 1, dtype=np.float64)[None, :]
    return powers @ dense.T


def dense_weights_tensor(dense: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Differentiable ``W[i] = b_i(θ)`` at a 0-d tensor ``θ`` (event location needs gradients in θ)."""
    powers = theta ** torch.arange(1, dense.shape[1] + 1, dtype=theta.dtype, device=theta.device)
    return dense @ powers


def cubic_hermite(t0: float, y0: torch.Tensor, f0: torch.Tensor, t1: float, y1: torch.Tensor, f1: torch.Tensor, t: float) -> torch.Tensor:
    """Cubic through ``(t0, y0)`` and ``(t1, y1)`` with slopes ``f0``, ``f1``."""
    dt = t1 - t0
    s = (t - t0) / dt
    h00 = (1 + 2 * s) * (1 - s) * (1 - s)
    h10 = s * (1 - s) * (1 - s)
    h01 = s * s * (3 - 2 * s)
    h11 = s * s * (s - 1)
    return h00 * y0 + (h10 * dt) * f0 + h01 * y1 + (h11 * dt) * f1


def linear(t0: float, y0: torch.Tensor, t1: float, y1: torch.Tensor, t: float) -> torch.Tensor:
    if t == t0:
        return y0
    if t == t1:
        return y1
    return torch.lerp(y0, y1, (t - t0) / (t1 - t0))
