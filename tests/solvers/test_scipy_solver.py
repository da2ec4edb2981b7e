"""``scipy_solver``: the same numbers as calling scipy.integrate.solve_ivp directly."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from odecli.registry import SOLVERS
from odecli.solvers.errors import InvalidInputError, MissingDependency
from odecli.solvers.scipy_solver import ScipyFailed, ScipySolver

scipy_integrate = pytest.importorskip("scipy.integrate")

F64 = torch.float64


def van_der_pol(t, y):
    return torch.stack([y[1], 2 * (1 - y[0] ** 2) * y[1] - y[0]])


def test_registered_with_its_attributes():
    assert SOLVERS.get("scipy_solver") is ScipySolver
    assert ScipySolver.adaptive and ScipySolver.reference


@pytest.mark.parametrize("method", ["RK45", "Radau", "LSODA", "DOP853"])
def test_matches_solve_ivp(method):
    t = torch.linspace(0, 3, 5, dtype=F64)
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    solver = ScipySolver(van_der_pol, y0, 1e-8, 1e-10, solver=method)
    got = solver.integrate(t)
    ref = scipy_integrate.solve_ivp(
        lambda s, y: van_der_pol(torch.tensor(s), torch.tensor(y)).numpy(), (0, 3), y0.numpy(), t_eval=t.numpy(), method=method, rtol=1e-8, atol=1e-10
    )
    assert got.shape == (5, 2)
    np.testing.assert_allclose(got.numpy(), ref.y.T, rtol=0, atol=1e-12)
    assert solver.nfe == ref.nfev


@pytest.mark.filterwarnings("ignore:The following arguments have no effect")  # torchdiffeq always passes min_step
def test_matches_torchdiffeq_scipy_solver_and_keeps_shape_and_dtype():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.linspace(0, 1, 4)
    y0 = torch.tensor([[1.0, 0.5]])
    func = lambda t, y: -y  # noqa: E731
    got = ScipySolver(func, y0, 1e-6, 1e-8, solver="RK45").integrate(t)
    ref = torchdiffeq.odeint(func, y0, t, method="scipy_solver", options={"solver": "RK45"}, rtol=1e-6, atol=1e-8)
    assert got.dtype == torch.float32 and got.shape == (4, 1, 2)
    assert torch.allclose(got, ref, atol=1e-7)


def test_single_time_returns_initial_state():
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    assert torch.equal(ScipySolver(van_der_pol, y0, 1e-6, 1e-8).integrate(torch.zeros(1, dtype=F64)), y0[None])


def test_unknown_scipy_method_raises():
    with pytest.raises(InvalidInputError, match="RK45"):
        ScipySolver(van_der_pol, torch.zeros(2), 1e-6, 1e-8, solver="Euler")


def test_failure_is_a_typed_solver_error():
    # dy/dt = y² blows up at t = 1 from y0 = 1.
    with pytest.raises(ScipyFailed, match="solve_ivp"):
        ScipySolver(lambda t, y: y**2, torch.ones(1, dtype=F64), 1e-6, 1e-8, solver="RK45").integrate(torch.tensor([0.0, 2.0], dtype=F64))


def test_missing_scipy_raises_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)  # makes `import scipy.integrate` fail
    with pytest.raises(MissingDependency, match="pip install scipy"):
        ScipySolver(van_der_pol, torch.zeros(2), 1e-6, 1e-8)
