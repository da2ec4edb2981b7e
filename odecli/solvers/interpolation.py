"""Dense output: the solution between the ends of a step, from the step's own stages.

A continuous extension is stored as stage polynomials (see ``ButcherTableau.dense``), so the
weights ``W[m, i] = b_i(θ_m)`` of any number of requested times are a tiny host-side matrix and
the outputs are one matrix product ``y0 + h · W @ K``. ``DenseOutputs`` gathers them during a
solve: an output at a step's end is the step's ``y1``; outputs inside steps are evaluated per step
for large states and, for small ones, deferred and evaluated for many steps at once. Steps with no
requested time inside cost nothing (torchdiffeq fits its interpolant on every step).

Fixed-grid methods interpolate as torchdiffeq does: linearly, or by cubic Hermite with ``f(t1, y1)``.
"""

from __future__ import annotations

import numpy as np
import torch


class DenseOutputs:
    """The solution at requested times, gathered step by step and evaluated in batches.

    A step adds the outputs it contains: one exactly at its end (the step's ``y1``, no arithmetic)
    or times inside it. For small states (``K`` of at most ``defer_limit`` elements, where the
    cost of an operation is its overhead, not its arithmetic) the step only records ``y0``, a copy
    of ``K`` if the solver reuses its buffer, and the fractions θ; those interpolants are evaluated
    together, ``y0 + W @ K`` as one batched product, when ``result`` is called or the pending stage
    copies pass ``budget`` elements. Larger states are interpolated at once with one ``addmm``
    per step (copying their stages would cost more than it saves) and, when no graph is being
    built (``in_place``), written straight into the preallocated solution, so that memory is the
    solution's alone.
    """

    def __init__(self, dense: np.ndarray, n_out: int, n: int, dtype: torch.dtype, device: torch.device, in_place: bool = False,
                 budget: int = 2**20, defer_limit: int = 512):
        self.dense_t = np.ascontiguousarray(dense.T)  # [degree, stages]
        stages = dense.shape[0]
        self.n_out, self.dtype, self.device, self.budget, self.defer_limit = n_out, dtype, device, budget, defer_limit
        self.solution = torch.empty(n_out, n, dtype=dtype, device=device) if in_place and stages * n > defer_limit else None
        self.exact: list[torch.Tensor] = []
        self.exact_index: list[int] = []
        self.blocks: list[torch.Tensor] = []
        self.block_index: list[int] = []
        self._y0s: list[torch.Tensor] = []
        self._ks: list[torch.Tensor] = []
        self._thetas: list[float] = []
        self._scales: list[float] = []
        self._index: list[int] = []
        self._pending = 0

    def at_end(self, index: int, y1: torch.Tensor) -> None:
        """Output ``index`` is the step's end point ``y1`` (a flat ``[n]`` tensor)."""
        if self.solution is not None:
            self.solution[index].copy_(y1)
            return
        self.exact.append(y1)
        self.exact_index.append(index)

    def _weights(self, thetas: list[float], scales: list[float] | float) -> torch.Tensor:
        return dense_weights(self.dense_t, thetas, scales, self.dtype, self.device)

    def inside(self, first: int, thetas: list[float], y0: torch.Tensor, stages: torch.Tensor, dt: float, reused: bool = False) -> None:
        """Outputs ``first, first+1, ...`` at fractions ``thetas`` of a step ``y0 → y0 + dt·Σ b_i k_i``.

        ``reused``: the solver overwrites ``stages`` in its next step (a copy is kept if deferred).
        """
        count = len(thetas)
        if self.solution is not None:
            torch.addmm(y0.reshape(1, -1), self._weights(thetas, dt), stages, out=self.solution[first : first + count])
            return
        if stages.numel() > self.defer_limit:
            self.blocks.append(torch.addmm(y0.reshape(1, -1), self._weights(thetas, dt), stages))
            self.block_index.extend(range(first, first + count))
            return
        if reused:
            stages = stages.clone()
        self._y0s.extend([y0] * count)
        self._ks.extend([stages] * count)
        self._thetas.extend(thetas)
        self._scales.extend([dt] * count)
        self._index.extend(range(first, first + count))
        self._pending += count * stages.numel()
        if self._pending > self.budget:
            self.flush()

    def flush(self) -> None:
        """Evaluate every pending interpolant: one ``baddbmm`` over all of them."""
        if not self._index:
            return
        weights = self._weights(self._thetas, self._scales).unsqueeze(1)  # [m, 1, stages]
        count = len(self._index)
        y0 = torch.stack(self._y0s).view(count, 1, -1)
        values = torch.baddbmm(y0, weights, torch.stack(self._ks)).view(count, -1)
        self.blocks.append(values)
        self.block_index.extend(self._index)
        self._y0s, self._ks, self._thetas, self._scales, self._index = [], [], [], [], []
        self._pending = 0

    def result(self) -> torch.Tensor:
        """Every output, in order: ``[n_out, n]``."""
        if self.solution is not None:
            return self.solution
        self.flush()
        parts = ([torch.stack(self.exact).view(len(self.exact), -1)] if self.exact else []) + self.blocks
        values = parts[0] if len(parts) == 1 else torch.cat(parts)
        order = self.exact_index + self.block_index
        if len(order) != self.n_out:
            raise RuntimeError(f"internal error: {len(order)} of {self.n_out} outputs were produced")
        if any(a > b for a, b in zip(order, order[1:], strict=False)):
            values = values[torch.tensor(np.argsort(order, kind="stable"), device=values.device)]
        return values


def dense_weights(dense_t: np.ndarray, thetas, scales, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``W[m, i] = scale_m · b_i(θ_m)`` as a tensor ``[len(thetas), stages]``, computed on the host.

    ``dense_t`` is the tableau's ``dense`` transposed, ``[degree, stages]``; ``scales`` is one number
    (the step ``dt``) or one per θ.
    """
    theta = np.asarray(thetas, dtype=np.float64)[:, None]
    powers = theta ** np.arange(1, dense_t.shape[0] + 1, dtype=np.float64)
    weights = (powers @ dense_t) * (np.asarray(scales, dtype=np.float64)[:, None] if isinstance(scales, list) else scales)
    return torch.from_numpy(weights).to(dtype=dtype, device=device)


def dense_values(dense_t: np.ndarray, thetas, y0: torch.Tensor, stages: torch.Tensor, dt: float) -> torch.Tensor:
    """One step's dense output at fractions ``thetas``: ``y0 + dt · W @ K``, ``[len(thetas), n]`` (as ``DenseOutputs``)."""
    return torch.addmm(y0.reshape(1, -1), dense_weights(dense_t, thetas, dt, y0.dtype, y0.device), stages)


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
    """The line through ``(t0, y0)`` and ``(t1, y1)`` at ``t``, in torchdiffeq's order of operations."""
    if t == t0:
        return y0
    if t == t1:
        return y1
    return y0 + ((t - t0) / (t1 - t0)) * (y1 - y0)
