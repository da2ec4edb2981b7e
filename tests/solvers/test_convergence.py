"""Every registered method converges at its stated order on dy/dt = A y (oracle: matrix_exp).

Parametrized over ``SOLVERS.names()``, so a newly registered method is tested by registering it.
Fixed-grid methods run with ``step_size``; adaptive methods are forced onto a fixed step with
``first_step = max_step = h`` and a tolerance loose enough that every step is accepted.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from odecli import odeint, track_stats
from odecli.registry import SOLVERS
from tests.solvers.conftest import DIVERGES_WITH_DEFAULTS, LINEAR_Y0, LinearField, exact_linear

# Methods whose convergence cannot be measured this way, each with its reason.
SKIP = {
    "scipy_solver": "wraps scipy's own adaptive solvers; it has no fixed step to refine",
    "adams": "variable order: its order rises from 1 as history accumulates; each pinned order is measured in test_adaptive_adams.py",
}
# Methods whose error constant on this problem is so small that round-off arrives before the
# asymptotic regime: the observed slope is checked to be at least the order (never below it).
AT_LEAST = {
    "dopri8": "errors reach round-off (1e-15) at h = 1/8 while the slope is still pre-asymptotic (~9)",
}


def _params():
    params = []
    for name in SOLVERS.names():
        marks = []
        if name in SKIP:
            marks.append(pytest.mark.skip(reason=SKIP[name]))
        if name in DIVERGES_WITH_DEFAULTS:
            marks.append(pytest.mark.xfail(reason=DIVERGES_WITH_DEFAULTS[name], strict=False))
        params.append(pytest.param(name, marks=marks))
    return params


def _steps_for(name: str, order: int) -> list[float]:
    # High orders reach round-off quickly; keep errors well above 1e-13.
    if order >= 6:
        return [1 / 2, 1 / 4, 1 / 8]
    if name == "tsit5":  # superconvergent on linear problems until h ~ 1/16
        return [1 / 16, 1 / 32, 1 / 64]
    if order >= 4:
        return [1 / 4, 1 / 8, 1 / 16]
    return [1 / 16, 1 / 32, 1 / 64]


def _error(name: str, h: float, t_end: float = 2.0) -> float:
    cls = SOLVERS.get(name)
    t = torch.tensor([0.0, t_end], dtype=torch.float64)
    if cls.adaptive:
        options = {"first_step": h, "max_step": h}
        rtol = atol = 1e6  # accept every step
    else:
        options = {"step_size": h}
        rtol = atol = 1e-13  # only the Newton/corrector tolerance of implicit methods
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = odeint(LinearField(), LINEAR_Y0, t, method=name, rtol=rtol, atol=atol, options=options)
    return float((y[-1] - exact_linear(t)[-1]).abs().max())


@pytest.mark.parametrize("name", _params())
def test_order_of_convergence(name):
    order = SOLVERS.get(name).order
    steps = _steps_for(name, order)
    errors = [_error(name, h) for h in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    if name in AT_LEAST:
        assert slope >= order - 0.3, f"{name}: observed order {slope:.2f}, expected at least {order} ({AT_LEAST[name]})"
        return
    assert abs(slope - order) <= 0.3, f"{name}: observed order {slope:.2f}, expected {order} (errors {errors})"


ADAPTIVE = [n for n in SOLVERS.names() if SOLVERS.get(n).adaptive]


@pytest.mark.parametrize("name", ADAPTIVE)
def test_tighter_tolerance_means_smaller_error_and_more_work(name):
    t = torch.linspace(0.0, 3.0, 4, dtype=torch.float64)
    exact = exact_linear(t)
    results = []
    for tol in (1e-4, 1e-8):
        with track_stats() as stats:
            y = odeint(LinearField(), LINEAR_Y0, t, method=name, rtol=tol, atol=tol)
        results.append(((y - exact).abs().max().item(), stats.nfe_forward))
    (loose_error, loose_nfe), (tight_error, tight_nfe) = results
    assert tight_error < loose_error
    assert tight_nfe > loose_nfe
    assert tight_error < 1e-5
