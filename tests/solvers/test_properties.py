"""Property tests (hypothesis) over state shapes, dtypes, time grids and methods."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odecli import odeint

METHODS = ["dopri5", "tsit5", "bosh3", "rk4", "euler", "midpoint"]
shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def time_grids(draw):
    n = draw(st.integers(1, 6))
    start = draw(st.floats(-2.0, 2.0))
    gaps = draw(st.lists(st.floats(0.01, 0.5), min_size=n - 1, max_size=n - 1))
    times = [start]
    for gap in gaps:
        times.append(times[-1] + gap)
    if draw(st.booleans()):
        times = times[::-1]
    return times


def _options(method):
    return {"step_size": 0.01} if method in ("rk4", "euler", "midpoint") else None


@settings(max_examples=25, deadline=None)
@given(shape=shapes, dtype=dtypes, times=time_grids(), method=st.sampled_from(METHODS), rate=st.floats(-1.0, 1.0))
def test_exponential_decay_any_shape_grid_and_dtype(shape, dtype, times, method, rate):
    """dy/dt = rate·y has y(t) = y0·exp(rate (t - t0)) for every shape, dtype and grid direction."""
    torch.manual_seed(0)
    y0 = torch.randn(shape, dtype=dtype)
    t = torch.tensor(times, dtype=dtype)
    y = odeint(lambda t, y: rate * y, y0, t, method=method, options=_options(method), rtol=1e-6, atol=1e-8)
    assert y.shape == (len(times), *shape) and y.dtype == dtype
    assert torch.equal(y[0], y0)
    exact = torch.stack([y0 * math.exp(rate * (ti - times[0])) for ti in times])
    tolerance = {"euler": 3e-2, "midpoint": 1e-3}.get(method, 1e-4 if dtype == torch.float32 else 1e-5)
    torch.testing.assert_close(y, exact, rtol=tolerance, atol=tolerance)


@settings(max_examples=15, deadline=None)
@given(times=time_grids(), method=st.sampled_from(METHODS))
def test_output_at_a_time_does_not_depend_on_other_requested_times(times, method):
    """Asking for extra times changes nothing at the shared end time (beyond interpolation round-off)."""
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    t = torch.tensor(times, dtype=torch.float64)
    f = lambda t, y: torch.stack([y[1], -y[0]])  # noqa: E731
    full = odeint(f, y0, t, method=method, options=_options(method))
    ends = odeint(f, y0, t[[0, -1]] if len(t) > 1 else t, method=method, options=_options(method))
    tolerance = 1e-6 if method not in ("euler", "midpoint") else 1e-2
    torch.testing.assert_close(full[-1], ends[-1], rtol=tolerance, atol=tolerance)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(0, 3), min_size=1, max_size=3), dtype=dtypes)
def test_tuple_states_match_the_concatenated_solve(sizes, dtype):
    parts = tuple(torch.linspace(0.5, 1.5, n, dtype=dtype) for n in sizes)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    out = odeint(lambda t, y: tuple(-p for p in y), parts, t)
    assert isinstance(out, tuple) and len(out) == len(parts)
    for part, solution in zip(parts, out):
        assert solution.shape == (3, *part.shape)
        torch.testing.assert_close(solution, part[None] * torch.exp(-t)[:, None], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_empty_state(method):
    y = odeint(lambda t, y: y, torch.zeros(0), torch.tensor([0.0, 1.0]), method=method, options=_options(method))
    assert y.shape == (2, 0)
