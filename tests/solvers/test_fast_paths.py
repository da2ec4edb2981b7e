"""The solver's speed devices give the same answers as the plain computation they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odecli import odeint, odeint_adjoint, track_stats
from odecli.solvers.controllers import SegmentedRMS, mixed_rms_norm
from odecli.solvers.fixed_grid import consecutive_pairs
from odecli.solvers.interpolation import DenseOutputs
from odecli.solvers.tableau import DOPRI5, tableau_tensors

SPIRAL_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)


def spiral(t, y):
    return (y**3) @ SPIRAL_A


@pytest.mark.parametrize("defer_limit, in_place", [(0, False), (0, True), (10**9, False), (10**9, True)], ids=["at-once", "in-place", "deferred", "deferred-small"])
def test_dense_outputs_match_direct_interpolation(defer_limit, in_place):
    """Deferred (batched) and per-step interpolation both give y0 + dt Σ b_i(θ) k_i, in output order."""
    torch.manual_seed(0)
    dense = tableau_tensors(DOPRI5, torch.float64, torch.device("cpu")).dense
    outputs = DenseOutputs(dense, 6, 5, torch.float64, torch.device("cpu"), in_place=in_place, budget=40, defer_limit=defer_limit)
    y_start = torch.randn(5, dtype=torch.float64)
    outputs.at_end(0, y_start)
    expected = {0: y_start}
    steps = [(torch.randn(5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64), 0.3) for _ in range(3)]
    # Step 1 holds outputs 1, 2; step 2 ends exactly at output 3; step 3 holds 4 and ends at 5.
    plan = [([0.25, 0.5], None), ([], 3), ([0.1], 5)]
    index = 1
    for (y0, stages, dt), (thetas, end_index) in zip(steps, plan, strict=True):
        if thetas:
            outputs.inside(index, thetas, y0, stages, dt, reused=True)
            for theta in thetas:
                weights = torch.tensor([sum(c * theta ** (p + 1) for p, c in enumerate(row)) for row in dense], dtype=torch.float64)
                expected[index] = y0 + dt * weights @ stages
                index += 1
            stages.mul_(0.0)  # the solver reuses its buffer: the outputs must not see this
        if end_index is not None:
            y1 = torch.randn(5, dtype=torch.float64)
            outputs.at_end(end_index, y1)
            expected[end_index] = y1
            index = end_index + 1
    result = outputs.result()
    assert result.shape == (6, 5)
    for i in range(6):
        torch.testing.assert_close(result[i], expected[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes", [[1, 3, 3, 4, 2], [1, 2, 0, 2, 5], [1, 0, 0]])
def test_segmented_rms_is_the_max_of_piecewise_rms(sizes):
    torch.manual_seed(1)
    flat = torch.randn(sum(sizes), dtype=torch.float64)
    pieces = [p for p in torch.split(flat, sizes)]
    expected = mixed_rms_norm(pieces)
    torch.testing.assert_close(SegmentedRMS(sizes)(flat), expected.to(flat))
    # The seminorm leaves the trailing (parameter) pieces out.
    head = sizes[:2]
    torch.testing.assert_close(SegmentedRMS(head, ignored=sum(sizes[2:]))(flat), mixed_rms_norm(pieces[:2]).to(flat))
    assert float(SegmentedRMS(sizes)(3.0 * flat)) == pytest.approx(3.0 * float(expected))


def test_consecutive_pairs_cross_chunk_boundaries():
    grid = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    values = grid.tolist()
    assert list(consecutive_pairs(grid, chunk=3)) == list(zip(values[:-1], values[1:], strict=True))
    assert list(consecutive_pairs(grid[:1], chunk=3)) == []


@pytest.mark.parametrize("rtol, atol", [(1e-7, 1e-9), (1e-3, 1e-4)])
def test_row_state_takes_the_same_steps_as_a_flat_state(rtol, atol):
    """A [1, n] state (stage inputs by addmm, no view) solves like the same state as a vector."""
    t = torch.linspace(0.0, 5.0, 50, dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    with track_stats() as row_stats:
        row = odeint(spiral, y0, t, rtol=rtol, atol=atol)
    with track_stats() as flat_stats:
        flat = odeint(lambda t, y: spiral(t, y.view(1, 2)).view(2), y0.view(2), t, rtol=rtol, atol=atol)
    assert row.shape == (50, 1, 2)
    torch.testing.assert_close(row.view(50, 2), flat, rtol=1e-10, atol=1e-12)
    assert abs(row_stats.nfe_forward - flat_stats.nfe_forward) <= 0.02 * flat_stats.nfe_forward


def test_fast_and_graph_paths_agree_with_many_outputs():
    """The no-grad fast path (deferred outputs, scaled error ratio) and the graph path match."""
    t = torch.linspace(0.0, 10.0, 300, dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    with_graph = odeint(spiral, y0, t)
    with torch.no_grad():
        without = odeint(spiral, y0, t)
    torch.testing.assert_close(with_graph.detach(), without, rtol=1e-9, atol=1e-11)


def test_adjoint_segmented_norm_matches_torchdiffeq_nfe():
    torchdiffeq = pytest.importorskip("torchdiffeq")

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.lin = torch.nn.Linear(2, 2).double()
            with torch.no_grad():
                self.lin.weight.copy_(torch.randn(2, 2, generator=generator, dtype=torch.float64) * 0.5)
                self.lin.bias.copy_(torch.randn(2, generator=generator, dtype=torch.float64) * 0.1)

        def forward(self, t, y):
            self.calls = getattr(self, "calls", 0) + 1
            return torch.tanh(self.lin(y))

    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.2]], dtype=torch.float64)
    grads, calls = [], []
    for solve in (odeint_adjoint, torchdiffeq.odeint_adjoint):
        field = Field()
        start = y0.clone().requires_grad_(True)
        solve(field, start, t, rtol=1e-6, atol=1e-8).pow(2).sum().backward()
        grads.append(np.concatenate([start.grad.numpy().ravel(), field.lin.weight.grad.numpy().ravel()]))
        calls.append(field.calls)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert abs(calls[0] - calls[1]) <= 0.1 * calls[1]
