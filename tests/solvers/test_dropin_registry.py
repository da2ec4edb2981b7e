"""torchdiffeq behaviours every registered method must have (issue 17), checked method by method.

``test_dropin.py`` compares odecli with torchdiffeq on the methods both have; the behaviours here
are checked for every method in the registry instead, against an oracle inside odecli: a 0-dim
state behaves exactly like a 1-element state, a float32 state whose ``func`` answers in float64
gives the float32 solution, and ``perturb`` moves every evaluation off the grid points.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from odecli.registry import SOLVERS
from odecli.solvers import (
    FuncOutputMismatch,
    InvalidInputError,
    odeint,
    odeint_adjoint,
    odeint_checkpoint,
    odeint_event,
)
from odecli.solvers.runge_kutta import AbstractRungeKutta

METHODS = SOLVERS.names()
FIXED_GRID = [name for name in METHODS if not SOLVERS.get(name).adaptive]


def _options(method: str, **extra):
    fixed = {"step_size": 0.25} if not SOLVERS.get(method).adaptive else {}
    return {**fixed, **extra} or None


class Decay(torch.nn.Module):
    """dy/dt = a·y + b·t with parameters; works on any state shape."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.5, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.25, dtype=torch.float64))

    def forward(self, t, y):
        return self.a * y + self.b * t


def _outcome(solve, y0):
    """``(outputs, gradients of their sum)`` of ``solve(func, y0)``, or the type of the error it raised."""
    func = Decay()
    y0 = y0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = solve(func, y0)
        except Exception as error:  # noqa: BLE001  (the oracle must raise the same type)
            return type(error)
        outputs = out if isinstance(out, tuple) else (out,)
        differentiable = [o.sum() for o in outputs if o.requires_grad]
        grads = (
            torch.autograd.grad(sum(differentiable), (y0, func.a, func.b), allow_unused=True) if differentiable else ()
        )
    return [o.detach().reshape(-1) for o in outputs], [None if g is None else g.reshape(-1) for g in grads]


T = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
T0 = torch.tensor(0.0, dtype=torch.float64)
TOL = {"rtol": 1e-4, "atol": 1e-6}  # loose: adaptive_heun (order 2) then takes tens of steps, not thousands


def _event(t, y):
    return y.reshape(()) - 2.0  # y falls from 3 through 2


SCALAR_FRONT_ENDS = {
    "odeint": lambda m: lambda f, y0: odeint(f, y0, T, method=m, options=_options(m), **TOL),
    "odeint_adjoint": lambda m: lambda f, y0: odeint_adjoint(f, y0, T, method=m, options=_options(m), **TOL),
    "odeint_adjoint_grid_constructor": lambda m: (
        lambda f, y0: odeint_adjoint(
            f,
            y0,
            T,
            method=m,
            **TOL,
            options=None
            if SOLVERS.get(m).adaptive
            else {"grid_constructor": lambda func, y, t: torch.linspace(float(t[0]), float(t[-1]), 5, dtype=t.dtype)},
        )
    ),
    "odeint_event_fn": lambda m: (
        lambda f, y0: odeint(f, y0, T[[0, 2]] * 4, method=m, options=_options(m), **TOL, event_fn=_event)
    ),
    "odeint_adjoint_event_fn": lambda m: (
        lambda f, y0: odeint_adjoint(f, y0, T[[0, 2]] * 4, method=m, options=_options(m), **TOL, event_fn=_event)[1]
    ),
    "odeint_event": lambda m: (
        lambda f, y0: odeint_event(f, y0, T0, event_fn=_event, method=m, options=_options(m), **TOL)
    ),
    "odeint_event_adjoint": lambda m: (
        lambda f, y0: odeint_event(
            f, y0, T0, event_fn=_event, method=m, options=_options(m), **TOL, odeint_interface=odeint_adjoint
        )
    ),
    "odeint_checkpoint": lambda m: lambda f, y0: odeint_checkpoint(f, y0, T, method=m, options=_options(m), **TOL),
}


@pytest.mark.parametrize("front_end", sorted(SCALAR_FRONT_ENDS))
@pytest.mark.parametrize("method", METHODS)
def test_a_scalar_state_behaves_like_a_one_element_state(method, front_end):
    solve = SCALAR_FRONT_ENDS[front_end](method)
    scalar = _outcome(solve, torch.tensor(3.0, dtype=torch.float64))
    one_element = _outcome(solve, torch.tensor([3.0], dtype=torch.float64))
    if isinstance(one_element, type):  # the method cannot do this at all (e.g. events with scipy): same error
        assert scalar is one_element
        return
    assert not isinstance(scalar, type), f"a 0-dim state raised {scalar.__name__}; a 1-element state works"
    (scalar_out, scalar_grads), (ref_out, ref_grads) = scalar, one_element
    for ours, ref in zip(scalar_out, ref_out, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for ours, ref in zip(scalar_grads, ref_grads, strict=True):
        assert (ours is None) == (ref is None)
        if ref is not None:
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


ADAPTIVE_WITH_NORM = [
    name for name in METHODS if "norm" in getattr(SOLVERS.get(name), "options", ()) and name != "scipy_solver"
]


@pytest.mark.parametrize("method", ADAPTIVE_WITH_NORM)
@pytest.mark.parametrize("shape", [(), (2, 3)], ids=["0-dim", "2-D"])
def test_a_user_norm_sees_the_state_in_the_users_shape(method, shape):
    seen = set()

    def norm(y):
        seen.add(tuple(y.shape))
        return y.abs().max()

    def tuple_norm(y):
        seen.add(tuple(tuple(part.shape) for part in y))
        return max(part.abs().max() for part in y)

    y0 = torch.full(shape, 3.0, dtype=torch.float64)
    odeint(lambda t, y: -y, y0, T, method=method, options={"norm": norm}, rtol=1e-4, atol=1e-6)
    assert seen == {shape}
    seen.clear()
    odeint(lambda t, y: (-y[0],), (y0,), T, method=method, options={"norm": tuple_norm}, rtol=1e-4, atol=1e-6)
    assert seen == {(shape,)}
    seen.clear()
    if issubclass(SOLVERS.get(method), AbstractRungeKutta):
        odeint_checkpoint(
            lambda t, y: -y, y0, T, method=method, options={"norm": norm}, adjoint_params=(), rtol=1e-4, atol=1e-6
        )
        assert seen == {shape}


# --------------------------------------------------------------------------------------------
# A func answering in another floating dtype (torchdiffeq casts it into the state's dtype).


@pytest.mark.parametrize(
    "front_end, state_dtype, output_dtype",
    [
        ("odeint", torch.float32, torch.float64),
        ("odeint", torch.float64, torch.float32),
        ("odeint_adjoint", torch.float32, torch.float64),
    ],
    ids=["odeint-float32-state", "odeint-float64-state", "odeint_adjoint-float32-state"],
)
@pytest.mark.parametrize("method", METHODS)
def test_a_func_answering_in_another_floating_dtype_solves_in_the_state_dtype(
    method, front_end, state_dtype, output_dtype
):
    results = []
    for cast_by_user in (False, True):  # the oracle: the same func, its answer cast to the state's dtype by the user
        field = Decay()

        def func(t, y, field=field, cast_by_user=cast_by_user):
            answer = field(t, y).to(output_dtype)
            return answer.to(state_dtype) if cast_by_user else answer

        y0 = torch.tensor([3.0, 1.0], dtype=state_dtype, requires_grad=True)
        adjoint = {"adjoint_params": tuple(field.parameters())} if front_end == "odeint_adjoint" else {}
        solve = odeint_adjoint if adjoint else odeint
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = solve(func, y0, T, method=method, options=_options(method), **TOL, **adjoint)
            grads = torch.autograd.grad(out.sum(), (y0, field.a), allow_unused=True) if out.requires_grad else ()
        results.append((out, grads))
    (out, grads), (expected, expected_grads) = results
    assert out.dtype == state_dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


@pytest.mark.parametrize("front_end", [odeint, odeint_adjoint], ids=["odeint", "odeint_adjoint"])
@pytest.mark.parametrize(
    "state_dtype, time_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32)],
    ids=["float32-state", "float64-state"],
)
@pytest.mark.parametrize("method", METHODS)
def test_func_receives_t_in_the_state_dtype(method, state_dtype, time_dtype, front_end):
    seen = set()
    field = Decay()

    def func(t, y):
        seen.add(t.dtype)
        return field(t, y).to(y.dtype)

    y0 = torch.tensor([3.0, 1.0], dtype=state_dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = (
            front_end(
                func,
                y0,
                T.to(time_dtype),
                method=method,
                options=_options(method),
                adjoint_params=tuple(field.parameters()),
                **TOL,
            )
            if front_end is odeint_adjoint
            else front_end(func, y0, T.to(time_dtype), method=method, options=_options(method), **TOL)
        )
        if out.requires_grad:
            out.sum().backward()
    assert seen == {state_dtype}


@pytest.mark.parametrize(
    "answer",
    [lambda y: y.to(torch.complex128), lambda y: y.to(torch.int64), lambda y: y[:1]],
    ids=["complex-for-a-real-state", "integer", "wrong-shape"],
)
@pytest.mark.parametrize("method", METHODS)
def test_a_func_answer_that_cannot_stand_for_the_state_is_refused(method, answer):
    y0 = torch.tensor([3.0, 1.0], dtype=torch.float64)
    with pytest.raises(FuncOutputMismatch, match="shape" if answer(y0).shape != y0.shape else "dtype"):
        odeint(lambda t, y: answer(y), y0, T, method=method, options=_options(method))


# --------------------------------------------------------------------------------------------
# options={'perturb': True}: no evaluation exactly at a grid point (torchdiffeq's semantics).


class RecordingGrid:
    """A grid constructor with steps of about 0.25 in either direction that records every grid it builds."""

    def __init__(self):
        self.grids: list[list[float]] = []

    def __call__(self, func, y0, t):
        points = int(torch.ceil((t[-1] - t[0]).abs() / 0.25)) + 1
        grid = torch.linspace(float(t[0]), float(t[-1]), points, dtype=t.dtype)
        self.grids.append(grid.tolist())
        return grid


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("perturb", [False, True], ids=["plain", "perturb"])
@pytest.mark.parametrize("method", FIXED_GRID)
def test_perturb_moves_every_evaluation_at_a_grid_point_into_its_step(method, perturb, reverse, adjoint):
    calls: list[float] = []
    field = Decay()

    def func(t, y):
        calls.append(float(t))
        return field(t, y)

    grid = RecordingGrid()
    t = torch.tensor(
        [0.0, 0.3, 1.0], dtype=torch.float64
    )  # 0.3 lies inside a step: cubic interpolation evaluates f at the step's end
    t = t.flip(0) if reverse else t
    y0 = torch.tensor([3.0, 1.0], dtype=torch.float64, requires_grad=adjoint)
    options = {"grid_constructor": grid, "interp": "cubic", "perturb": perturb}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if adjoint:
            out = odeint_adjoint(func, y0, t, method=method, options=options, adjoint_params=tuple(field.parameters()))
            calls.clear()
            grid.grids.clear()
            out.sum().backward()  # the backward solve builds its own grids, with the same constructor
        else:
            odeint(func, y0, t, method=method, options=options)
    assert grid.grids and calls
    on_grid = sorted({point for g in grid.grids for point in g} & set(calls))
    step_starts = [(a, b) for g in grid.grids for a, b in zip(g[:-1], g[1:], strict=True)]
    if perturb:
        assert not on_grid, f"f was called exactly at grid points {on_grid}"
        missing = [
            a
            for a, b in step_starts
            if float(torch.nextafter(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))
            not in calls
        ]
        assert not missing, f"no evaluation just inside the steps starting at {missing}"
    else:
        missing = [a for a, _ in step_starts if a not in calls]
        assert not missing, f"no evaluation at the step starts {missing}"


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("perturb", [False, True], ids=["plain", "perturb"])
@pytest.mark.parametrize("method", FIXED_GRID)
def test_perturb_holds_in_an_event_solve(method, perturb, reverse):
    calls: list[float] = []

    def func(t, y):
        calls.append(float(t))
        return -0.5 * y

    direction = -1.0 if reverse else 1.0
    t = torch.tensor([0.0, direction], dtype=torch.float64)
    level = 4.0 if reverse else 2.0  # y = 3 exp(-t/2) reaches it after about 3 steps of 0.25 in either direction
    options = {"step_size": 0.25, "interp": "cubic", "perturb": perturb}
    odeint(
        func,
        torch.tensor([3.0], dtype=torch.float64),
        t,
        method=method,
        options=options,
        event_fn=lambda t, y: y[0] - level,
    )
    grid_points = {direction * 0.25 * k for k in range(8)}
    on_grid = sorted(grid_points & set(calls))
    if perturb:
        assert not on_grid, f"f was called exactly at grid points {on_grid}"
    else:
        assert {0.0, direction * 0.25, direction * 0.5} <= set(calls)


@pytest.mark.filterwarnings("ignore:implicit_adams")  # its corrector at rtol 1e-7 with step 0.25, as in torchdiffeq
@pytest.mark.parametrize("method", METHODS)
def test_a_complex_state_is_solved_or_refused_in_one_clear_line(method):
    # The oracle: the same method on the equivalent real system (a, b) = (Re y, Im y).
    y0 = torch.tensor([1.0 + 0.5j, -0.5j], dtype=torch.complex128)
    try:
        out = odeint(
            lambda t, y: -1j * y * (1 + t), y0, T, method=method, options=_options(method), rtol=1e-7, atol=1e-9
        )
    except InvalidInputError as error:
        assert "complex" in str(error) and "\n" not in str(error)
        return
    real = odeint(
        lambda t, ab: torch.cat([ab[2:], -ab[:2]]) * (1 + t),
        torch.cat([y0.real, y0.imag]),
        T,
        method=method,
        options=_options(method),
        rtol=1e-7,
        atol=1e-9,
    )
    assert out.dtype == y0.dtype
    # The same arithmetic on a fixed grid; adaptive steps differ (a complex RMS is not the RMS of its parts).
    close = 1e-9 if not SOLVERS.get(method).adaptive else 1e-4
    torch.testing.assert_close(torch.cat([out.real, out.imag], dim=1), real, rtol=close, atol=close)
