"""``∂f/∂y`` for the implicit solvers: autograd rows, or forward differences when f has no graph to y."""

from __future__ import annotations

import math

import torch

BATCHED_JACOBIAN_ROWS = 32  # above this many rows per block, the autograd Jacobian uses one batched VJP


class Jacobian:
    """``∂f/∂y`` as ``[blocks, d, d]`` diagonal blocks (one block of ``n × n`` when dense)."""

    def __init__(self, func, n: int, blocks: int, method: str, dtype: torch.dtype, device: torch.device):
        self.func, self.n, self.blocks, self.d = func, n, blocks, n // blocks
        # ``func.jacobian_columns = (start, stop)``: f reads only those state elements; the other columns are 0.
        columns = getattr(func, "jacobian_columns", None)
        self.columns = range(*columns) if columns is not None and blocks == 1 else range(self.d)
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
            jac, evaluations = self._differences(t, y)
            return jac, 1 + evaluations
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
            jac = torch.zeros(self.blocks, self.d, self.d, dtype=self.dtype, device=self.device)  # [blocks, row, column]
            for i in self.columns:
                delta = (y + steps * self.seeds[i]) - y  # component i of every block; as represented in floating point
                change = (self.func(t, y + delta) - f0).view(self.blocks, self.d)
                jac[:, :, i] = change / delta.view(self.blocks, self.d)[:, i : i + 1]
        return jac, len(self.columns) + 1
