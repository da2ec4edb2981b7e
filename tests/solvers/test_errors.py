"""Every typed error odeint raises, with a message that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from odecli import odeint
from odecli.solvers.errors import (
    FuncOutputMismatch,
    InvalidInputError,
    InvalidTimeGrid,
    MaxStepsExceeded,
    NonFiniteState,
    StepSizeTooSmall,
    UnknownMethod,
    UnknownOption,
)
from tests.solvers.conftest import LINEAR_Y0, LinearField

T = torch.tensor([0.0, 1.0], dtype=torch.float64)


def test_unknown_method_lists_names_and_closest():
    with pytest.raises(UnknownMethod, match="dopri5") as info:
        odeint(LinearField(), LINEAR_Y0, T, method="dopr5")
    assert "Did you mean 'dopri5'" in str(info.value) and "rk4" in str(info.value)
    assert isinstance(info.value, ValueError)  # torchdiffeq raised ValueError; old except clauses still work


def test_unknown_option_lists_valid_names():
    with pytest.raises(UnknownOption, match="Did you mean 'first_step'") as info:
        odeint(LinearField(), LINEAR_Y0, T, options={"frist_step": 0.1})
    assert "max_num_steps" in str(info.value)


@pytest.mark.parametrize(
    "t, match",
    [
        (torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64), "changes direction"),
        (torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), "repeats a time"),
        (torch.tensor([[0.0, 1.0]], dtype=torch.float64), "one-dimensional"),
        (torch.tensor([0, 1]), "floating point"),
        ([0.0, 1.0], "torch.Tensor"),
        (torch.tensor([], dtype=torch.float64), "empty"),
        (torch.tensor([0.0, float("nan")], dtype=torch.float64), "NaN"),
    ],
)
def test_invalid_time_grids(t, match):
    with pytest.raises(InvalidTimeGrid, match=match):
        odeint(LinearField(), LINEAR_Y0, t)


def test_time_on_another_device():
    meta_t = torch.tensor([0.0, 1.0], dtype=torch.float64, device="meta")
    with pytest.raises(InvalidTimeGrid, match="t.to\\(y0.device\\)"):
        odeint(LinearField(), LINEAR_Y0, meta_t)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "implicit_euler"])
@pytest.mark.parametrize(
    "func, match",
    [
        (lambda t, y: torch.zeros(3, dtype=torch.float64), "shape"),
        (lambda t, y: y.to(torch.complex128), "dtype"),  # a float32 answer is cast, as torchdiffeq; a complex one is not
        (lambda t, y: (y,), "torch.Tensor"),
    ],
    ids=["shape", "dtype", "type"],
)
def test_func_output_mismatch(method, func, match):
    options = None if method == "dopri5" else {"step_size": 0.5}
    with pytest.raises(FuncOutputMismatch, match=match):
        odeint(func, LINEAR_Y0, T, method=method, options=options)


def test_func_output_mismatch_for_tuple_state():
    with pytest.raises(FuncOutputMismatch, match="tuple of 2"):
        odeint(lambda t, y: (y[0],), (LINEAR_Y0, LINEAR_Y0), T)


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.1})])
def test_non_finite_state(method, options):
    def f(t, y):
        return -y if t < 0.5 else y * float("nan")

    with pytest.raises(NonFiniteState) as info:
        odeint(f, LINEAR_Y0, T, method=method, options=options)
    assert info.value.t is not None and 0.0 <= info.value.t <= 1.0


def test_non_finite_initial_state():
    with pytest.raises(NonFiniteState, match="initial"):
        odeint(LinearField(), torch.tensor([1.0, float("inf")], dtype=torch.float64), T)


def test_step_size_too_small():
    def blow_up(t, y):
        return y**2  # y(t) = 1 / (1 - t): singular at t = 1

    # As in torchdiffeq, a step at min_step is accepted regardless of its error; the error is raised
    # when the step can no longer advance time (here, approaching the singularity).
    with pytest.raises(StepSizeTooSmall) as info:
        odeint(blow_up, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert info.value.t == pytest.approx(1.0, abs=1e-6) and info.value.dt < 1e-10


def test_max_steps_exceeded():
    with pytest.raises(MaxStepsExceeded, match="max_num_steps=5") as info:
        odeint(LinearField(), LINEAR_Y0, torch.tensor([0.0, 100.0], dtype=torch.float64), options={"max_num_steps": 5})
    assert 0.0 <= info.value.t < 100.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rtol=-1.0), "non-negative"),
        (dict(options={"step_size": 0.1, "grid_constructor": lambda f, y, t: t}, method="rk4"), "mutually exclusive"),
        (dict(options={"interp": "quintic"}, method="rk4"), "interp"),
        (dict(options={"controller": "pid"}), "controller"),
        (dict(options="fast"), "options must be a dict"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        odeint(LinearField(), LINEAR_Y0, T, **kwargs)


def test_integer_state():
    with pytest.raises(InvalidInputError, match="floating point"):
        odeint(LinearField(), torch.tensor([1, 2]), T)


def test_event_needs_two_times():
    with pytest.raises(InvalidTimeGrid, match="exactly two"):
        odeint(LinearField(), LINEAR_Y0, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), event_fn=lambda t, y: y[0])
