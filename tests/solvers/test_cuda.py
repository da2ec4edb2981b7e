"""On a CUDA device every solver gives the CPU's solution and gradients (skipped where there is none).

Runs with the rest wherever ``torch.cuda.is_available()``; ``pytest -m gpu`` selects only these.
"""

from __future__ import annotations

import pytest
import torch

from odecli import odeint, odeint_adjoint
from odecli.registry import SOLVERS, load_builtins
from odecli.solvers import odeint_checkpoint, odeint_independent

load_builtins()

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

F64 = torch.float64
CPU_ONLY = {"scipy_solver"}  # scipy integrates on the host by design


def _spiral(device: str):
    weight = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64, device=device, requires_grad=True)
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=F64, device=device, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64, device=device)
    return weight, y0, t


def _on_both_devices(solve):
    """``solve(device) -> tensors``, moved to the CPU, for CPU and CUDA."""
    return [tuple(x.detach().cpu() for x in solve(device)) for device in ("cpu", "cuda")]


@pytest.mark.parametrize("name", [n for n in SOLVERS.names() if n not in CPU_ONLY])
def test_every_solver_on_cuda_matches_the_cpu(name):
    options = {} if SOLVERS.get(name).adaptive else {"step_size": 0.05}

    def solve(device):
        weight, y0, t = _spiral(device)
        y = odeint(lambda t, y: y @ weight, y0, t, method=name, rtol=1e-8, atol=1e-10, options=options)
        return (y, *torch.autograd.grad(y.square().sum(), (y0, weight)))

    cpu, cuda = _on_both_devices(solve)
    torch.testing.assert_close(cuda, cpu, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", ["adjoint", "checkpoint", "independent"])
def test_gradient_modes_on_cuda_match_the_cpu(mode):
    def solve(device):
        weight, y0, t = _spiral(device)

        def field(t, y):
            return torch.tanh(y @ weight)

        if mode == "adjoint":
            y = odeint_adjoint(field, y0, t, adjoint_params=(weight,), rtol=1e-8, atol=1e-10)
        elif mode == "checkpoint":
            y = odeint_checkpoint(field, y0, t, adjoint_params=(weight,), rtol=1e-8, atol=1e-10)
        else:
            y = odeint_independent(field, y0, t, rtol=1e-8, atol=1e-10)
        return (y, *torch.autograd.grad(y.square().sum(), (y0, weight)))

    cpu, cuda = _on_both_devices(solve)
    torch.testing.assert_close(cuda, cpu, rtol=1e-6, atol=1e-8)
