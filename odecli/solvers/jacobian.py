"""``∂f/∂y`` for the implicit solvers: supplied by ``func``, autograd rows, or forward differences when f has no graph to y.

``func.jacobian_matrix(t, y) -> [n, n]``, when ``func`` has it, gives the (possibly approximate) Jacobian of the
flat state directly: ``odeint_adjoint`` attaches one to its augmented dynamics, whose ``y`` enters
autograd detached (so autograd rows would find no graph and differences would be the fallback).
A simplified Newton iteration only needs an approximation of ``∂f/∂y``: its fixed point is the same.
"""

from __future__ import annotations

import math

import torch

BATCHED_JACOBIAN_ROWS = 32  # above this many rows per block, the autograd Jacobian uses one batched VJP


def jacobian_rows(f: torch.Tensor, inputs: tuple[torch.Tensor, ...], seeds: torch.Tensor, batched: bool):
    """``([seeds·∂f/∂x for x in inputs], batched)``: each ``[rows, *x.shape]`` (``None`` where f does not use x).

    One VJP per seed row, or one batched VJP (vmap) when ``batched``; an operation without a batching rule
    turns batching off (the returned flag) and the rows are taken one by one.
    """
    if batched:
        try:
            return list(torch.autograd.grad(f, inputs, seeds, retain_graph=True, allow_unused=True, is_grads_batched=True)), True
        except RuntimeError:
            pass
    grads = [torch.autograd.grad(f, inputs, seed, retain_graph=True, allow_unused=True) for seed in seeds]
    return [None if grads[0][k] is None else torch.stack([g[k] for g in grads]) for k in range(len(inputs))], False


class Jacobian:
    """``∂f/∂y`` as ``[blocks, d, d]`` diagonal blocks (one block of ``n × n`` when dense)."""

    def __init__(self, func, n: int, blocks: int, method: str, dtype: torch.dtype, device: torch.device):
        self.func, self.n, self.blocks, self.d = func, n, blocks, n // blocks
        # ``func.jacobian_columns = (start, stop)``: f reads only those state elements; the other columns are 0.
        columns = getattr(func, "jacobian_columns", None)
        self.columns = range(*columns) if columns is not None and blocks == 1 else range(self.d)
        self.finite_difference = method == "finite_difference"
        provided = getattr(func, "jacobian_matrix", None)
        self.provided = provided if provided is not None and blocks == 1 and not self.finite_difference else None
        self.dtype, self.device = dtype, device
        eye = torch.eye(self.d, dtype=dtype, device=device)
        # Row i of every block at once: the one-hot e_i repeated over the blocks.
        self.seeds = eye.unsqueeze(1).expand(self.d, blocks, self.d).reshape(self.d, n)
        # One batched VJP pass (vmap) for many rows; a loop of VJPs for few, which also spares the
        # ~1 s one-time import that torch's vmap machinery costs.
        self.batched = self.d > BATCHED_JACOBIAN_ROWS

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(J, evaluations of func used)``."""
        if self.provided is not None:
            jac = self.provided(t.detach(), y.detach())
            return jac.detach().reshape(1, self.n, self.n).to(self.dtype), 1
        if not self.finite_difference:
            jac = self._autograd(t, y)
            if jac is not None:
                return jac, 1
            self.finite_difference = True  # not connected in the graph: use differences from now on
            jac, evaluations = self._differences(t, y)
            return jac, 1 + evaluations
        return self._differences(t, y)

    def _autograd(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            f = self.func(t.detach(), y_)
            if not f.requires_grad:
                return None
            rows, self.batched = jacobian_rows(f, (y_,), self.seeds, self.batched)
        if rows[0] is None:
            return None
        return rows[0].detach().view(self.d, self.blocks, self.d).transpose(0, 1).contiguous()

    def _differences(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        with torch.no_grad():
            y = y.detach()
            f0 = self.func(t, y)
            eps = torch.finfo(self.dtype).eps
            steps = math.sqrt(eps) * torch.clamp(y.abs(), min=1.0)
            jac = torch.zeros(self.blocks, self.d, self.d, dtype=self.dtype, device=self.device)  # [blocks, row, column]
            for i in self.columns:
                delta = (y + steps * self.seeds[i]) - y  # component i of every block; as represented in floating point
                change = (self.func(t, y + delta) - f0).view(self.blocks, self.d)
                jac[:, :, i] = change / delta.view(self.blocks, self.d)[:, i : i + 1]
        return jac, len(self.columns) + 1
