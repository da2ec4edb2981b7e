"""radau5: the Radau IIA coefficients derived in ``odecli.solvers.radau``, its linear algebra, and its accuracy.

Order slopes, tolerance proportionality, stiff problems, Newton, options and gradients are in the
registry-parametrized tests (``test_convergence.py``, ``test_stiff.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from odecli import odeint, track_stats
from odecli.solvers import adaptive_implicit, radau
from odecli.solvers.controllers import PredictiveController
from tests.solvers.test_stiff import _trees, van_der_pol

solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp

F64 = torch.float64


def test_collocation_coefficients_have_order_5_and_match_the_literature():
    # A is the collocation matrix of its nodes: A_ij = ∫_0^{c_i} ℓ_j.
    for j in range(3):
        integral = radau._lagrange(radau.NODES, j).integ()
        np.testing.assert_allclose(radau.A[:, j], integral(radau.NODES) - integral(0.0), atol=1e-14)
    np.testing.assert_array_equal(radau.B, radau.A[-1])
    for p, value, expected in _trees(radau.A, radau.B, 5):
        assert value == pytest.approx(expected, abs=1e-12), f"an order-{p} condition fails"
    # Hairer & Wanner II, Table IV.5.6 (first row of A) and IV.8 (the error weights, γ₀·(-13 ∓ 7√6, -1)/3).
    s6 = math.sqrt(6.0)
    np.testing.assert_allclose(radau.A[0], [(88 - 7 * s6) / 360, (296 - 169 * s6) / 1800, (-2 + 3 * s6) / 225], rtol=1e-13)
    np.testing.assert_allclose(radau.ERROR_WEIGHTS, radau.GAMMA0 * np.array([-13 - 7 * s6, -13 + 7 * s6, -1]) / 3, rtol=1e-12)
    assert radau.GAMMA0 == pytest.approx(1 / (3 + 3 ** (2 / 3) - 3 ** (1 / 3)), rel=1e-13)


def test_eigenbasis_reconstructs_the_matrix_with_a_conjugate_pair():
    d = np.diag([radau.GAMMA0, radau.PAIR, np.conj(radau.PAIR)])
    np.testing.assert_allclose(radau.V @ d @ radau.V_INV, radau.A, atol=1e-14)
    np.testing.assert_allclose(radau.V[:, 2], radau.V[:, 1].conj())
    assert np.all(radau.V[:, 0].imag == 0)


def test_l_stable_and_stiffly_accurate():
    ones = np.ones(3)

    def stability(z: complex) -> complex:
        return 1 + z * radau.B @ np.linalg.solve(np.eye(3) - z * radau.A, ones)

    assert abs(stability(-1e12)) < 1e-9
    for y in np.concatenate([np.linspace(-50, 50, 401), [-1e6, 1e6]]):
        assert abs(stability(1j * y)) <= 1 + 1e-12
    # The step's exact value for y' = λy, against R(z) = (1 + 2z/5 + z²/20) / (1 - 3z/5 + 3z²/20 - z³/60).
    z = -2.5
    assert stability(z) == pytest.approx((1 + 2 * z / 5 + z**2 / 20) / (1 - 3 * z / 5 + 3 * z**2 / 20 - z**3 / 60), rel=1e-12)


def test_embedded_quadrature_is_third_order_but_not_fourth():
    weights = radau.embedded_weights(radau.NODES, radau.GAMMA0)
    for power in range(3):
        assert weights @ radau.NODES**power + (radau.GAMMA0 if power == 0 else 0.0) == pytest.approx(1 / (power + 1), abs=1e-13)
    assert abs(weights @ radau.NODES**3 - 1 / 4) > 1e-3  # else the estimate would vanish


def test_dense_output_passes_through_the_stages():
    powers = np.stack([radau.NODES**p for p in (1, 2, 3)], axis=1)  # [node, power]
    np.testing.assert_allclose(powers @ radau.DENSE.T, np.eye(3), atol=1e-13)


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("explicit", [False, True], ids=["eigenbasis", "explicit_inverse"])
def test_eigenbasis_solve_equals_the_dense_3n_system(blocks, transpose, explicit):
    """Both ways of applying P⁻¹ (the eigenbasis LUs; the small-system inverse of the 3n × 3n matrix) solve P."""
    gen = torch.Generator().manual_seed(0)
    d, h = 2, 0.7
    jac = torch.randn(blocks, d, d, generator=gen, dtype=F64) * 3
    _, _, transforms = radau._constants(F64, torch.device("cpu"))
    matrix = radau._CollocationMatrix(jac, h, transforms, explicit=explicit)
    assert (matrix.explicit is not None) == explicit
    rhs = torch.randn(3, blocks * d, generator=gen, dtype=F64)
    full_j = torch.block_diag(*jac)
    dense = torch.eye(3 * blocks * d, dtype=F64) - h * torch.kron(torch.tensor(radau.A, dtype=F64), full_j)
    dense = dense.T if transpose else dense
    expected = torch.linalg.solve(dense, rhs.reshape(-1)).view(3, -1)
    torch.testing.assert_close(matrix.solve(rhs, transpose=transpose), expected, rtol=1e-12, atol=1e-12)
    # The error estimate's filter (I - hγ₀J)⁻¹, either way.
    filtered = torch.linalg.solve(torch.eye(blocks * d, dtype=F64) - h * radau.GAMMA0 * full_j, rhs[0])
    torch.testing.assert_close(matrix.real.solve(rhs[0]), filtered, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [3, adaptive_implicit.SMALL_SYSTEM + 2], ids=["inverse", "lu"])
@pytest.mark.parametrize("shift", [0.3, 0.2 + 0.5j], ids=["real", "complex"])
@pytest.mark.parametrize("transpose", [False, True])
def test_shifted_factorisation_solves_with_an_inverse_or_an_lu(d, shift, transpose):
    """``ShiftedLU`` holds a small block's explicit inverse and factorises a large one: both solve I - sJ (or its plain transpose)."""
    gen = torch.Generator().manual_seed(1)
    blocks = 2
    jac = torch.randn(blocks, d, d, generator=gen, dtype=F64)
    matrix = adaptive_implicit.ShiftedLU(jac, shift)
    assert (matrix.inverse is not None) == (d <= adaptive_implicit.SMALL_SYSTEM)
    rhs = torch.randn(blocks * d, generator=gen, dtype=F64)
    shifted = torch.eye(d, dtype=torch.complex128) - shift * jac.to(torch.complex128)
    shifted = shifted.mT if transpose else shifted
    expected = torch.linalg.solve(shifted, rhs.to(torch.complex128).view(blocks, d, 1)).reshape(-1)
    got = matrix.solve(rhs, transpose=transpose)
    torch.testing.assert_close(got.to(torch.complex128), expected if isinstance(shift, complex) else expected.real.to(torch.complex128), rtol=1e-10, atol=1e-10)


def test_global_error_within_tolerance_through_the_van_der_pol_fold():
    """μ = 1000 over the first relaxation jump (t ≈ 807): the error, measured in the tolerance's own units, stays ≲ 1."""
    func, numpy_func = van_der_pol(1000.0)
    t = torch.linspace(0.0, 1000.0, 11, dtype=F64)
    reference = solve_ivp(numpy_func, (0.0, 1000.0), [2.0, 0.0], method="Radau", rtol=1e-11, atol=1e-11, t_eval=t.numpy()).y.T
    rtol, atol = 1e-6, 1e-8
    y = odeint(func, torch.tensor([2.0, 0.0], dtype=F64), t, method="radau5", rtol=rtol, atol=atol).numpy()
    weighted = np.abs(y - reference) / (atol + rtol * np.abs(reference))
    assert weighted.max() < 3.0, weighted.max(axis=0)


def test_predictive_controller_follows_the_error_trend():
    controller = PredictiveController(order=4)
    first = controller.propose(1.0, 1 / 256, accepted=True)  # no history yet: the I controller's 0.9·256^(1/4)
    assert first == pytest.approx(0.9 * 4.0)
    # The error grew 256x over a step twice as long: the trend, (2/1)·(1/256)^(1/4) = 0.5, halves the I step.
    assert controller.propose(2.0, 1.0, accepted=True) == pytest.approx(2.0 * 0.9 * 0.5)
    # The error fell 16x over an equal step: the trend (2x) never raises the I step (0.9·16^(1/4) = 1.8x).
    assert controller.propose(2.0, 1 / 16, accepted=True) == pytest.approx(2.0 * 0.9 * 2.0)
    # A rejection shrinks by the error alone, at least dfactor, and leaves the accepted history alone.
    assert controller.propose(4.0, 16.0, accepted=False) == pytest.approx(4.0 * 0.9 / 2.0)
    assert controller.propose(4.0, 1e12, accepted=False) == pytest.approx(4.0 * 0.2)
    assert controller.last_accepted == (2.0, 0.0625)


def test_radau5_predictive_control_takes_fewer_steps_than_pi_on_van_der_pol():
    """μ = 1000 on [0, 1000], rtol 1e-6, atol 1e-8. Measured: predictive 389 accepted + 5 rejected (3,166 NFE), PI
    487 + 26 (3,845), scipy's Radau (also predictive) 413 accepted (3,434); errors 0.47 and 0.28 tolerance units."""
    func, _ = van_der_pol(1000.0)
    t = torch.linspace(0.0, 1000.0, 11, dtype=F64)
    attempts = {}
    for controller in ("predictive", "pi"):
        with track_stats() as stats:
            odeint(func, torch.tensor([2.0, 0.0], dtype=F64), t, method="radau5", rtol=1e-6, atol=1e-8, options={"controller": controller})
        attempts[controller] = stats.steps_accepted + stats.steps_rejected
    assert attempts["predictive"] < 0.85 * attempts["pi"], attempts
    with track_stats() as default:
        odeint(func, torch.tensor([2.0, 0.0], dtype=F64), t, method="radau5", rtol=1e-6, atol=1e-8)
    assert default.steps_accepted + default.steps_rejected == attempts["predictive"]  # radau5's default
