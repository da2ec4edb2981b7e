"""Property tests (hypothesis) over state shapes, dtypes, time grids and methods."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odecli import odeint
from odecli.registry import SOLVERS
from odecli.solvers.errors import InvalidInputError
from tests.solvers.conftest import DIVERGES_WITH_DEFAULTS

# Every registered method but those unstable with their defaults on these problems (see conftest).
METHODS = [name for name in SOLVERS.names() if name not in DIVERGES_WITH_DEFAULTS]
FIXED_STEP = 0.01
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
    return None if SOLVERS.get(method).adaptive else {"step_size": FIXED_STEP}


def _tolerance(method: str, floor: float) -> float:
    """An adaptive method's answer is within ``floor`` here; a fixed grid's within 3 h^order (at least ``floor``)."""
    return floor if SOLVERS.get(method).adaptive else max(floor, 3 * FIXED_STEP ** SOLVERS.get(method).order)


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
    tolerance = _tolerance(method, 1e-4 if dtype == torch.float32 else 1e-5)
    torch.testing.assert_close(y, exact, rtol=tolerance, atol=tolerance)


@settings(max_examples=15, deadline=None)
@given(times=time_grids(), method=st.sampled_from(METHODS))
def test_output_at_a_time_does_not_depend_on_other_requested_times(times, method):
    """Asking for extra times changes nothing at the shared end time: the steps taken do not depend on the
    output times, so the end values agree to round-off (5.6e-16 at most over 300 drawn examples, every method)."""
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    t = torch.tensor(times, dtype=torch.float64)
    f = lambda t, y: torch.stack([y[1], -y[0]])  # noqa: E731
    full = odeint(f, y0, t, method=method, options=_options(method))
    ends = odeint(f, y0, t[[0, -1]] if len(t) > 1 else t, method=method, options=_options(method))
    torch.testing.assert_close(full[-1], ends[-1], rtol=0, atol=1e-14)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(0, 3), min_size=1, max_size=3), dtype=dtypes)
def test_tuple_states_match_the_concatenated_solve(sizes, dtype):
    parts = tuple(torch.linspace(0.5, 1.5, n, dtype=dtype) for n in sizes)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    out = odeint(lambda t, y: tuple(-p for p in y), parts, t)
    assert isinstance(out, tuple) and len(out) == len(parts)
    for part, solution in zip(parts, out, strict=True):
        assert solution.shape == (3, *part.shape)
        torch.testing.assert_close(solution, part[None] * torch.exp(-t)[:, None], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_empty_state(method):
    y = odeint(lambda t, y: y, torch.zeros(0), torch.tensor([0.0, 1.0]), method=method, options=_options(method))
    assert y.shape == (2, 0)


@st.composite
def any_time_grids(draw):
    """Time grids as users mistype them: empty, repeated, unsorted, NaN, integer, 2-D — or fine."""
    values = draw(st.lists(st.one_of(st.floats(-3, 3), st.sampled_from([float("nan"), float("inf")])), min_size=0, max_size=5))
    kind = draw(st.sampled_from(["float", "int", "2d"]))
    if kind == "int":
        return torch.tensor([int(v) if math.isfinite(v) else 0 for v in values], dtype=torch.int64)
    grid = torch.tensor(values, dtype=torch.float64)
    return grid.reshape(1, -1) if kind == "2d" else grid


@settings(max_examples=60, deadline=None)
@given(t=any_time_grids(), method=st.sampled_from(METHODS), tuple_state=st.booleans())
def test_any_time_grid_either_solves_correctly_or_raises_a_documented_error(t, method, tuple_state):
    y0 = (torch.ones(2, dtype=torch.float64), torch.ones(1, dtype=torch.float64)) if tuple_state else torch.ones(2, dtype=torch.float64)
    decay = (lambda s, y: (-y[0], -y[1])) if tuple_state else (lambda s, y: -y)
    try:
        solution = odeint(decay, y0, t, method=method, rtol=1e-8, atol=1e-8, options=_options(method))
    except InvalidInputError:
        valid = t.dim() == 1 and t.is_floating_point() and len(t) > 0 and bool(torch.isfinite(t).all())
        if valid and len(t) > 1:
            diffs = t[1:] - t[:-1]
            valid = bool((diffs > 0).all() or (diffs < 0).all())
        assert not valid, f"a valid grid {t.tolist()} was rejected"
        return
    first = solution[0] if tuple_state else solution
    expected = torch.exp(-(t - t[0]))[:, None].to(first) * torch.ones(2, dtype=torch.float64)
    tolerance = _tolerance(method, 1e-5)
    torch.testing.assert_close(first, expected, atol=tolerance, rtol=tolerance)
