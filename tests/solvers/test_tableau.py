"""Butcher tableaus: consistency checks on construction, order conditions, derived properties, dense output ends.

Every tableau checked here is one a registered solver uses, so a new method is covered by registering it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from odecli.registry import SOLVERS, load_builtins
from odecli.solvers.esdirk import AbstractESDIRK
from odecli.solvers.runge_kutta import AbstractRungeKutta
from odecli.solvers.tableau import (
    ButcherTableau,
    InvalidTableau,
    TableauKind,
    hermite_dense,
    quartic_dense_from_mid,
    rooted_trees,
    tableau_tensors,
)

load_builtins()

TABLEAU_SOLVERS = [name for name in SOLVERS.names() if getattr(SOLVERS.get(name), "tableau", None) is not None]
DENSE_TABLEAU_SOLVERS = [name for name in TABLEAU_SOLVERS if SOLVERS.get(name).tableau.dense is not None]


def test_every_tableau_family_is_registered():
    """The registry lists explicit, diagonally and fully implicit tableaus (so the tests below see each kind)."""
    kinds = {SOLVERS.get(name).tableau.kind for name in TABLEAU_SOLVERS}
    assert kinds == set(TableauKind)


def _broken_copies(tab: ButcherTableau):
    """``tab`` with one invariant ``__post_init__`` checks broken by 1e-6 in one coefficient, and the error expected.

    1e-6 is far above the round-off of coefficients typed as decimals (the checks allow 1e-9, dense output 1e-7)
    and far below any typo, so every check must be tight and must run on every tableau a solver registers.
    """
    last = tab.stages - 1
    yield "c", dict(c=(*tab.c[:-1], tab.c[-1] + 1e-6)), rf"row a\[{last}\] sums to .*, but c\[{last}\] = "
    yield "b", dict(b=(tab.b[0] + 1e-6, *tab.b[1:])), "solution weights b sum to .*they must sum to 1"
    if tab.b_error is not None:
        yield "b_error", dict(b_error=(tab.b_error[0] + 1e-6, *tab.b_error[1:])), "error weights b_error sum to .*they must sum to 0"
    if tab.dense is not None:
        first = tab.dense[0]
        yield "dense", dict(dense=((first[0] + 1e-6, *first[1:]), *tab.dense[1:])), "dense output at θ=1 differs from b by 1e-06"
    if tab.predictor is not None:
        first = tab.predictor[0]
        yield "predictor", dict(predictor=((first[0] + 1e-6, *first[1:]), *tab.predictor[1:])), "predictor row 1 sums to"


BROKEN_COPIES = [
    pytest.param(name, change, message, id=f"{name}-{invariant}")
    for name in TABLEAU_SOLVERS
    for invariant, change, message in _broken_copies(SOLVERS.get(name).tableau)
]


@pytest.mark.parametrize("name, change, message", BROKEN_COPIES)
def test_a_registered_tableau_with_one_invariant_broken_is_refused_at_definition(name, change, message):
    """Rows sum to c, b to 1, b_error to 0, dense output ends at b, predictor rows sum to 1: each is checked
    when a tableau is defined (a registered one passed, so its copy with one coefficient moved must not)."""
    tab = SOLVERS.get(name).tableau
    assert dataclasses.replace(tab) == tab  # the unchanged copy is accepted
    with pytest.raises(InvalidTableau, match=message):
        dataclasses.replace(tab, **change)


@pytest.mark.parametrize("name", TABLEAU_SOLVERS)
def test_declared_order_is_the_order_of_the_coefficients(name):
    """A solver's order (the literature's, declared by hand) is what the order conditions give; an
    embedded pair's error estimate compares with a solution one order lower."""
    cls = SOLVERS.get(name)
    assert cls.tableau.order == cls.order
    if cls.tableau.adaptive:
        assert cls.tableau.embedded_order == cls.order - 1


@pytest.mark.parametrize("name", TABLEAU_SOLVERS)
def test_order_conditions_up_to_four_written_out(name):
    """The classical order conditions, written by hand, agree with the rooted-tree ones up to order min(p, 4)."""
    tab = SOLVERS.get(name).tableau
    c, a, b = np.array(tab.c), tab.full_a(), np.array(tab.b)
    conditions = [(1, b.sum(), 1.0)]
    conditions += [(2, b @ c, 1 / 2)]
    conditions += [(3, b @ c**2, 1 / 3), (3, b @ a @ c, 1 / 6)]
    conditions += [(4, b @ c**3, 1 / 4), (4, (b * c) @ a @ c, 1 / 8), (4, b @ a @ c**2, 1 / 12), (4, b @ a @ a @ c, 1 / 24)]
    for p, value, expected in conditions:
        if p <= min(tab.order, 4):
            assert value == pytest.approx(expected, abs=1e-8), f"{tab.name}: order-{p} condition fails"
    if tab.order < 4:  # and the order is not higher: some condition of the next order fails
        assert any(abs(value - expected) > 1e-6 for p, value, expected in conditions if p == tab.order + 1)


def test_rooted_trees_are_counted_as_in_the_literature():
    """1, 1, 2, 4, 9, 20, 48, 115, 286 rooted trees with 1..9 vertices (OEIS A000081), no duplicates."""
    assert [len(rooted_trees(p)) for p in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]
    assert all(len(set(rooted_trees(p))) == len(rooted_trees(p)) for p in range(1, 10))


def test_a_perturbed_coefficient_lowers_the_order():
    """The order is read from the data: nudging one of rk4's weights by 1e-6 leaves order 1."""
    rk4 = SOLVERS.get("rk4").tableau
    nudged = ButcherTableau(name="nudged", c=rk4.c, a=rk4.a, b=(rk4.b[0] + 1e-6, rk4.b[1] - 1e-6, *rk4.b[2:]))
    assert (rk4.order, nudged.order) == (4, 1)


@pytest.mark.parametrize(
    "name, kind, fsal, stiffly_accurate",
    [
        ("dopri5", TableauKind.EXPLICIT, True, True),
        ("rk4", TableauKind.EXPLICIT, False, False),
        ("fehlberg2", TableauKind.EXPLICIT, False, False),
        ("trapezoid", TableauKind.DIAGONALLY_IMPLICIT, True, True),
        ("sdirk2", TableauKind.DIAGONALLY_IMPLICIT, False, True),
        ("kvaerno5", TableauKind.DIAGONALLY_IMPLICIT, True, True),
        ("gl4", TableauKind.FULLY_IMPLICIT, False, False),
        ("radauIIA5", TableauKind.FULLY_IMPLICIT, False, True),
    ],
)
def test_kind_fsal_and_stiff_accuracy_are_read_from_the_coefficients(name, kind, fsal, stiffly_accurate):
    tab = SOLVERS.get(name).tableau
    assert (tab.kind, tab.fsal, tab.stiffly_accurate) == (kind, fsal, stiffly_accurate)


@pytest.mark.parametrize("name", TABLEAU_SOLVERS)
def test_solver_fsal_flag_comes_from_its_tableau(name):
    cls = SOLVERS.get(name)
    if issubclass(cls, AbstractRungeKutta | AbstractESDIRK):
        assert cls.fsal == cls.tableau.fsal


def test_explicit_rows_are_stored_left_of_the_diagonal_however_typed():
    padded = ButcherTableau(name="midpoint", c=(0.0, 0.5), a=((0.0, 0.0), (0.5, 0.0)), b=(0.0, 1.0))
    assert padded.kind is TableauKind.EXPLICIT and padded.a == ((), (0.5,))
    assert padded == SOLVERS.get("midpoint").tableau


@pytest.mark.parametrize("name", DENSE_TABLEAU_SOLVERS)
def test_dense_output_matches_step_ends(name):
    tab = SOLVERS.get(name).tableau
    dense = np.array(tab.dense)  # that θ = 1 gives y1 is checked on definition (above)
    slope0 = dense[:, 0]  # d/dθ at θ = 0 is h·f0
    assert slope0[0] == pytest.approx(1.0, abs=1e-7) and np.allclose(slope0[1:], 0.0, atol=1e-7)


@pytest.mark.parametrize("name", TABLEAU_SOLVERS)
def test_tensors_are_built_once_per_dtype_and_device(name):
    tab = SOLVERS.get(name).tableau
    tensors = tableau_tensors(tab, torch.float64, torch.device("cpu"))
    assert tableau_tensors(tab, torch.float64, torch.device("cpu")) is tensors
    assert [len(row) for row in tensors.a_rows] == list(range(tab.stages))  # the weights left of the diagonal
    assert torch.equal(tensors.b, torch.tensor(tab.b, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# A broken tableau of each kind is refused, with a message naming the broken condition.

EXPLICIT = dict(name="broken", c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))
DIAGONALLY_IMPLICIT = dict(
    name="broken", c=(0.0, 0.6, 1.0), a=((), (0.3, 0.3), (0.35, 0.35, 0.3)), b=(0.35, 0.35, 0.3), b_error=(0.1, -0.1, 0.0),
    dense=hermite_dense((0.35, 0.35, 0.3)), predictor=((1.0,), (0.5, 0.5)),
)  # fmt: skip
FULLY_IMPLICIT = dict(name="broken", c=(1 / 3, 1.0), a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)), b=(3 / 4, 1 / 4))


@pytest.mark.parametrize(
    "fields, change, message",
    [
        (EXPLICIT, dict(a=((), (0.4,))), r"row a\[1\] sums to 0.4, but c\[1\] = 0.5"),
        (EXPLICIT, dict(c=(0.1, 0.5)), r"row a\[0\] sums to 0.0, but c\[0\] = 0.1"),
        (EXPLICIT, dict(b=(0.2, 0.7)), "weights b sum to 0.89.*must sum to 1"),
        (EXPLICIT, dict(b_error=(0.1, 0.1)), "b_error sum to 0.2.*must sum to 0"),
        (EXPLICIT, dict(b_error=(0.1, -0.1, 0.0)), "b_error must have 2 entries"),
        (EXPLICIT, dict(a=((), (0.5, 0.0, 0.0))), r"row a\[1\] has 3 entries, more than the 2 stages"),
        (EXPLICIT, dict(dense=((1.0, -0.5), (0.0, 0.4))), "dense output at θ=1 differs from b"),
        (EXPLICIT, dict(predictor=((1.0,),)), "predictor .* needs a diagonally implicit tableau, this one is explicit"),
        (DIAGONALLY_IMPLICIT, dict(c=(0.0, 0.5, 1.0)), r"row a\[1\] sums to 0.6, but c\[1\] = 0.5"),
        (DIAGONALLY_IMPLICIT, dict(b_error=(0.1, 0.1, 0.1)), "b_error sum to .*must sum to 0"),
        (DIAGONALLY_IMPLICIT, dict(predictor=((1.0,), (0.5, 0.2))), "predictor row 2 sums to 0.7"),
        (DIAGONALLY_IMPLICIT, dict(predictor=((1.0,),)), "predictor needs rows of 1..2 weights"),
        (DIAGONALLY_IMPLICIT, dict(reuse_last_stage=True), "reuse_last_stage needs an explicit tableau"),
        (FULLY_IMPLICIT, dict(a=((0.5, -0.1), (3 / 4, 1 / 4))), r"row a\[0\] sums to 0.4, but c\[0\] = 0.333"),
        (FULLY_IMPLICIT, dict(b=(3 / 4, 0.2)), "weights b sum to 0.95.*must sum to 1"),
        (FULLY_IMPLICIT, dict(b=(1.0,)), "c, a and b must all have 2 entries"),
        (FULLY_IMPLICIT, dict(predictor=((1.0,),)), "this one is fully implicit"),
    ],
)
def test_invalid_tableaus_raise_clear_errors(fields, change, message):
    ButcherTableau(**fields)  # the unchanged one is valid
    with pytest.raises(InvalidTableau, match=message):
        ButcherTableau(**{**fields, **change})


def test_an_explicit_solver_refuses_an_implicit_tableau():
    with pytest.raises(InvalidTableau, match="strictly lower triangular a, this tableau is fully implicit"):

        class Broken(AbstractRungeKutta):
            tableau = ButcherTableau(**FULLY_IMPLICIT)


@pytest.mark.parametrize(
    "change",
    [
        dict(c=(0.3, 0.6, 1.0), a=((0.3,), (0.3, 0.3), (0.35, 0.35, 0.3)), predictor=None),  # an implicit first stage
        dict(c=(0.0, 0.6, 1.0), a=((), (0.2, 0.4), (0.35, 0.35, 0.3)), predictor=None),  # two diagonals
        dict(c=(0.0, 3.0, 1.0), a=((), (1.5, 1.5), (-0.85, 0.35, 1.5)), b=(-0.85, 0.35, 1.5), dense=hermite_dense((-0.85, 0.35, 1.5))),  # γ > 1
        dict(b=(0.3, 0.4, 0.3), dense=hermite_dense((0.3, 0.4, 0.3))),  # not stiffly accurate
        dict(b_error=None),  # no error estimate
    ],
)
def test_an_esdirk_solver_refuses_a_tableau_of_another_shape(change):
    class Valid(AbstractESDIRK):
        tableau = ButcherTableau(**DIAGONALLY_IMPLICIT)

    assert Valid.fsal
    with pytest.raises(InvalidTableau, match="an ESDIRK method needs an explicit first stage, one diagonal γ in"):

        class Broken(AbstractESDIRK):
            tableau = ButcherTableau(**{**DIAGONALLY_IMPLICIT, **change})


def test_quartic_dense_reproduces_a_quartic():
    """The midpoint quartic is exact when y is a quartic polynomial and the stage data are exact."""
    # y(θ) = θ⁴ on [0, 1] with h = 1: y0 = 0, y1 = 1, y_mid = 1/16, f0 = 0, f1 = 4.
    b, b_mid = (0.75, 0.25), (0.0, 1 / 64)  # with stages k = (f0, f1) = (0, 4): Σ b k = y1 = 1, Σ b_mid k = y_mid = 1/16
    dense = np.array(quartic_dense_from_mid(b, b_mid))
    k = np.array([0.0, 4.0])
    for theta in (0.25, 0.5, 0.8):
        powers = theta ** np.arange(1, 5)
        assert (powers @ dense.T) @ k == pytest.approx(theta**4, abs=1e-12)
