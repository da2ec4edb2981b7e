"""A pytest plugin that registers one more explicit Runge–Kutta method, the way a contributor adds one.

``pytest -p tests.solvers.extra_method`` registers it (in ``pytest_configure``) before collection, so every test parametrized over
the registry includes it; ``test_new_method_is_tested_by_registering_it`` runs them that way.
"""

from __future__ import annotations

from odecli.registry import SOLVERS
from odecli.solvers.runge_kutta import AbstractFixedGridRungeKutta
from odecli.solvers.tableau import ButcherTableau

NAME = "ssprk3"

# Shu & Osher's strong-stability-preserving third-order method (J. Comput. Phys. 77, 1988).
SSPRK3_TABLEAU = ButcherTableau(name=NAME, c=(0.0, 1.0, 0.5), a=((), (1.0,), (0.25, 0.25)), b=(1 / 6, 1 / 6, 2 / 3))


class StrongStabilityPreservingRK3(AbstractFixedGridRungeKutta):
    """Three stages, third order, strong-stability preserving."""

    tableau, order = SSPRK3_TABLEAU, 3
    reference = "Shu & Osher 1988, J. Comput. Phys. 77(2)"


def pytest_configure(config):
    # Registered only where this plugin is loaded (-p), not wherever the module is imported: the registry is
    # global, and the CLI tests compare it with what a fresh `odecli list` prints.
    SOLVERS.register(NAME, description="Shu-Osher SSP Runge-Kutta 3, fixed grid (registered by a test plugin).")(StrongStabilityPreservingRK3)
