"""The problem front end: one StateLayout for tensor, 0-dim and tuple states; check_problem's named result."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from odecli.solvers.errors import InvalidInputError
from odecli.solvers.problem import Problem, StateLayout, check_problem, resolve_method

STATES = {
    "vector": lambda: torch.randn(3),
    "0-dim": lambda: torch.randn(()),
    "batch": lambda: torch.randn(4, 2, 3),
    "tuple": lambda: (torch.randn(2), torch.randn(()), torch.randn(3, 2)),
    "empty part": lambda: (torch.randn(2), torch.randn(0)),
}


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("kind", sorted(STATES))
def test_flatten_then_unflatten_gives_the_state_back(kind):
    torch.manual_seed(0)
    state = STATES[kind]()
    layout = StateLayout(state)
    flat = layout.flatten(state)
    assert flat.shape == (sum(p.numel() for p in _parts(state)),)
    restored = layout.unflatten(flat)
    assert isinstance(restored, tuple) == isinstance(state, tuple)
    for original, back in zip(_parts(state), _parts(restored), strict=True):
        assert back.shape == original.shape
        torch.testing.assert_close(back, original)


@pytest.mark.parametrize("kind", sorted(STATES))
def test_leading_dims_are_kept(kind):
    """A solution ``(T, *state)`` flattens to ``(T, n)`` and back, as the adjoints store it."""
    torch.manual_seed(0)
    states = [STATES[kind]() for _ in range(5)]
    layout = StateLayout(states[0])
    stacked = tuple(torch.stack(column) for column in zip(*map(_parts, states), strict=True))
    solution = stacked if isinstance(states[0], tuple) else stacked[0]
    flat = layout.flatten(solution, lead=1)
    assert flat.shape == (5, layout.flatten(states[0]).numel())
    torch.testing.assert_close(flat[3], layout.flatten(states[3]))
    for original, back in zip(_parts(solution), _parts(layout.unflatten(flat)), strict=True):
        torch.testing.assert_close(back, original)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ((), "empty tuple"),
        ([1.0], r"y0\[0\] must be a torch.Tensor"),
        (torch.arange(3), "must be floating point"),
        ((torch.zeros(2), torch.zeros(2, dtype=torch.float64)), "share dtype and device"),
    ],
)
def test_a_state_that_cannot_work_is_refused_in_one_line(state, message):
    with pytest.raises(InvalidInputError, match=message):
        StateLayout(state)


def test_check_problem_returns_named_fields():
    name, cls = resolve_method("dopri5")
    y0 = (torch.zeros(2), torch.zeros(3))
    problem = check_problem(name, cls, y0, torch.tensor([0.0, 1.0]), (1e-3, 1e-4), 1e-6, {"first_step": 0.1})
    assert isinstance(problem, Problem) and problem.is_tuple
    assert problem.layout.shapes == [torch.Size([2]), torch.Size([3])]
    assert problem.first is y0[0] and problem.options == {"first_step": 0.1} and problem.atol == 1e-6
    torch.testing.assert_close(problem.rtol, torch.tensor([1e-3] * 2 + [1e-4] * 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.rtol = 1.0
