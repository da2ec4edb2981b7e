"""Butcher tableaus: consistency checks on construction, order conditions, dense output ends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from odecli.solvers.tableau import ALL_TABLEAUS, ButcherTableau, InvalidTableau, quartic_dense_from_mid

ORDERS = {"dopri5": 5, "dopri8": 8, "tsit5": 5, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2,
          "euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "rk4_classic": 4}  # fmt: skip


def _arrays(tab: ButcherTableau):
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, : len(row)] = row
    return np.array(tab.c), a, np.array(tab.b)


@pytest.mark.parametrize("tab", ALL_TABLEAUS, ids=lambda t: t.name)
def test_consistency(tab):
    c, a, b = _arrays(tab)
    assert np.allclose(a.sum(axis=1), c, atol=1e-9)
    assert math.isclose(b.sum(), 1.0, abs_tol=1e-9)
    if tab.b_error is not None:
        assert abs(math.fsum(tab.b_error)) < 1e-9


@pytest.mark.parametrize("tab", ALL_TABLEAUS, ids=lambda t: t.name)
def test_order_conditions_up_to_four(tab):
    """The classical order conditions (trees up to order min(p, 4)) hold for the solution weights."""
    c, a, b = _arrays(tab)
    order = ORDERS[tab.name]
    conditions = [(1, b.sum(), 1.0)]
    conditions += [(2, b @ c, 1 / 2)]
    conditions += [(3, b @ c**2, 1 / 3), (3, b @ a @ c, 1 / 6)]
    conditions += [(4, b @ c**3, 1 / 4), (4, (b * c) @ a @ c, 1 / 8), (4, b @ a @ c**2, 1 / 12), (4, b @ a @ a @ c, 1 / 24)]
    for p, value, expected in conditions:
        if p <= min(order, 4):
            assert value == pytest.approx(expected, abs=1e-8), f"{tab.name}: order-{p} condition fails"


@pytest.mark.parametrize("tab", [t for t in ALL_TABLEAUS if t.dense is not None], ids=lambda t: t.name)
def test_dense_output_matches_step_ends(tab):
    dense = np.array(tab.dense)
    assert np.allclose(dense.sum(axis=1), tab.b, atol=1e-7)  # θ = 1 gives y1
    slope0 = dense[:, 0]  # d/dθ at θ = 0 is h·f0
    assert slope0[0] == pytest.approx(1.0, abs=1e-7) and np.allclose(slope0[1:], 0.0, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(c=(0.0, 0.5), a=((), (0.4,)), b=(0.0, 1.0)), "row a\\[1\\] sums"),
        (dict(c=(0.0, 0.5), a=((), (0.5,)), b=(0.2, 0.7)), "sum to 1"),
        (dict(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), b_error=(0.1, 0.1)), "sum to 0"),
        (dict(c=(0.0, 0.5), a=((), (0.5, 0.0)), b=(0.0, 1.0)), "must have 1 entries"),
        (dict(c=(0.1, 0.5), a=((), (0.5,)), b=(0.0, 1.0)), "first node"),
    ],
)
def test_invalid_tableaus_raise_clear_errors(kwargs, message):
    with pytest.raises(InvalidTableau, match=message):
        ButcherTableau(name="broken", **kwargs)


def test_quartic_dense_reproduces_a_quartic():
    """The midpoint quartic is exact when y is a quartic polynomial and the stage data are exact."""
    # y(θ) = θ⁴ on [0, 1] with h = 1: y0 = 0, y1 = 1, y_mid = 1/16, f0 = 0, f1 = 4.
    b, b_mid = (0.75, 0.25), (0.0, 1 / 64)  # with stages k = (f0, f1) = (0, 4): Σ b k = y1 = 1, Σ b_mid k = y_mid = 1/16
    dense = np.array(quartic_dense_from_mid(b, b_mid))
    k = np.array([0.0, 4.0])
    for theta in (0.25, 0.5, 0.8):
        powers = theta ** np.arange(1, 5)
        assert (powers @ dense.T) @ k == pytest.approx(theta**4, abs=1e-12)
