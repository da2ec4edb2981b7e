"""Runge–Kutta tableaus as data, checked on construction: explicit, diagonally implicit, fully implicit.

A tableau ``(c, a, b)`` defines one Runge–Kutta step::

    k_i = f(t0 + c_i h, y0 + h Σ_j a_ij k_j),     y1 = y0 + h Σ_i b_i k_i

Its kind is read from ``a``: *explicit* (strictly lower triangular: each stage uses only earlier
ones), *diagonally implicit* (lower triangular: one implicit equation per stage, solved in turn) or
*fully implicit* (all stages solved together). So are its other properties: FSAL (the first stage is
explicit and the last is ``f(t1, y1)``, so one serves the next step), stiff accuracy (``y1`` is the
last stage), adaptivity (an error estimate exists) and the order of the solution and of the error
estimate, from the Butcher order conditions over rooted trees.

``b_error`` (optional) are the weights of the embedded error estimate ``h Σ_i e_i k_i`` (the
difference of two solutions, so they sum to 0). ``dense`` (optional) is a continuous extension:
row ``i`` holds the coefficients of the polynomial ``b_i(θ) = Σ_p dense[i][p] θ^(p+1)`` with
``y(t0 + θh) = y0 + h Σ_i b_i(θ) k_i``. ``predictor`` (optional, diagonally implicit only) gives
each implicit stage a Newton starting slope ``k_i ≈ Σ_{j<i} predictor[i-1][j] k_j``.

The adaptive explicit tableaus mirror torchdiffeq's exactly, including its trick of appending a
final stage ``f(t1, y1)`` (weights = b) to every adaptive method so each one is FSAL and its dense
output can use ``f1``: this keeps the number of function evaluations identical to torchdiffeq's.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache

import numpy as np
import torch


class InvalidTableau(ValueError):
    """A Butcher tableau whose coefficients violate a consistency condition."""


# Coefficients typed as decimals (dopri8's are rational approximations) only satisfy the
# consistency conditions to roughly this precision.
_CONSISTENCY_TOL = 1e-9
# The order conditions hold to 1.4e-14 or better for every tableau here (tsit5's decimals; dopri8's
# rational approximations to 2e-15) and the first failing order misses by 8e-6 or more (dopri8's
# order 9), so this tolerance separates the two by four orders of magnitude either way.
ORDER_TOL = 1e-10
# The highest order checked (719 trees have 10 vertices); no tableau here comes near it.
MAX_ORDER = 10


class TableauKind(enum.Enum):
    EXPLICIT = "explicit"
    DIAGONALLY_IMPLICIT = "diagonally implicit"
    FULLY_IMPLICIT = "fully implicit"


# --------------------------------------------------------------------------------------------
# Order conditions. A rooted tree is the sorted tuple of its root's subtrees (``()`` is a single
# vertex); a method has order p when b·Φ(τ) = 1/γ(τ) for every tree τ with at most p vertices
# (Hairer, Nørsett & Wanner, Solving ODEs I, II.2).


def _grow(tree: tuple) -> set[tuple]:
    """Every tree made from ``tree`` by adding one leaf (at the root or inside a subtree)."""
    grown = {tuple(sorted((*tree, ())))}
    for i, child in enumerate(tree):
        grown |= {tuple(sorted((*tree[:i], bigger, *tree[i + 1 :]))) for bigger in _grow(child)}
    return grown


@cache
def rooted_trees(order: int) -> tuple[tuple, ...]:
    """The rooted trees with ``order`` vertices (1, 1, 2, 4, 9, 20, 48, 115, 286, … of them)."""
    if order == 1:
        return ((),)
    return tuple(sorted(set().union(*(_grow(tree) for tree in rooted_trees(order - 1)))))


@cache
def tree_vertices(tree: tuple) -> int:
    return 1 + sum(tree_vertices(child) for child in tree)


@cache
def tree_density(tree: tuple) -> int:
    """γ(τ) = |τ| Π γ(subtrees): the exact solution's elementary weight is 1/γ(τ)."""
    return tree_vertices(tree) * math.prod(tree_density(child) for child in tree)


def order_of(a: np.ndarray, b: np.ndarray) -> int:
    """The largest p ≤ ``MAX_ORDER`` for which ``b`` satisfies every order condition of trees with ≤ p vertices."""
    stage_weights: dict[tuple, np.ndarray] = {}

    def weights(tree: tuple) -> np.ndarray:
        """Φ(τ) per stage: the product over subtrees of ``a @ Φ(subtree)``."""
        if tree not in stage_weights:
            product = np.ones(len(b))
            for child in tree:
                product = product * (a @ weights(child))
            stage_weights[tree] = product
        return stage_weights[tree]

    for order in range(1, MAX_ORDER + 1):
        if any(abs(b @ weights(tree) - 1 / tree_density(tree)) > ORDER_TOL for tree in rooted_trees(order)):
            return order - 1
    return MAX_ORDER


# --------------------------------------------------------------------------------------------
# The tableau.


@dataclass(frozen=True)
class ButcherTableau:
    """A Runge–Kutta method's coefficients; properties (kind, FSAL, order, …) are read from them.

    Row ``a[i]`` may be typed short (the omitted entries are 0). It is stored with the ``i`` entries
    left of the diagonal for an explicit tableau, and as a full row of ``stages`` entries otherwise.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    predictor: tuple[tuple[float, ...], ...] | None = None
    # Reuse the last stage as the next step's first even though it is not f(t1, y1): torchdiffeq's
    # adaptive_heun and fehlberg2 do this (their "f1" is the slope at the lower-order solution).
    reuse_last_stage: bool = False

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s:
            raise InvalidTableau(f"{self.name}: c, a and b must all have {s} entries (stages), got {len(self.c)}, {len(self.a)}, {len(self.b)}.")
        for i, row in enumerate(self.a):
            if len(row) > s:
                raise InvalidTableau(f"{self.name}: row a[{i}] has {len(row)} entries, more than the {s} stages.")
            if abs(math.fsum(row) - self.c[i]) > _CONSISTENCY_TOL:
                raise InvalidTableau(f"{self.name}: row a[{i}] sums to {math.fsum(row)!r}, but c[{i}] = {self.c[i]!r}; they must agree.")
        full = tuple(tuple(row) + (0.0,) * (s - len(row)) for row in self.a)
        explicit = all(full[i][j] == 0.0 for i in range(s) for j in range(i, s))
        object.__setattr__(self, "a", tuple(row[:i] for i, row in enumerate(full)) if explicit else full)
        if abs(math.fsum(self.b) - 1.0) > _CONSISTENCY_TOL:
            raise InvalidTableau(f"{self.name}: solution weights b sum to {math.fsum(self.b)!r}, they must sum to 1.")
        if self.b_error is not None:
            if len(self.b_error) != s:
                raise InvalidTableau(f"{self.name}: b_error must have {s} entries, got {len(self.b_error)}.")
            if abs(math.fsum(self.b_error)) > _CONSISTENCY_TOL:
                raise InvalidTableau(f"{self.name}: error weights b_error sum to {math.fsum(self.b_error)!r}, they must sum to 0.")
        if self.dense is not None:
            if len(self.dense) != s:
                raise InvalidTableau(f"{self.name}: dense output needs one polynomial per stage ({s}), got {len(self.dense)}.")
            at_one = [math.fsum(row) for row in self.dense]  # b_i(1) must equal b_i
            worst = max(abs(x - y) for x, y in zip(at_one, self.b, strict=True))
            if worst > 1e-7:
                raise InvalidTableau(f"{self.name}: dense output at θ=1 differs from b by {worst:.3g}; the interpolant must end at y1.")
        if self.predictor is not None:
            self._check_predictor()
        if self.reuse_last_stage and not (self.kind is TableauKind.EXPLICIT and self.c[-1] == 1.0):
            raise InvalidTableau(f"{self.name}: reuse_last_stage needs an explicit tableau whose last node is 1 (a slope at t1).")

    def _check_predictor(self) -> None:
        s = self.stages
        if self.kind is not TableauKind.DIAGONALLY_IMPLICIT:
            raise InvalidTableau(f"{self.name}: a stage predictor (a Newton start per implicit stage) needs a diagonally implicit tableau, this one is {self.kind.value}.")
        if len(self.predictor) != s - 1 or any(len(row) != i for i, row in enumerate(self.predictor, start=1)):
            raise InvalidTableau(f"{self.name}: predictor needs rows of 1..{s - 1} weights for stages 1..{s - 1}.")
        for i, row in enumerate(self.predictor, start=1):
            if abs(math.fsum(row) - 1.0) > _CONSISTENCY_TOL:
                raise InvalidTableau(f"{self.name}: predictor row {i} sums to {math.fsum(row)!r}; an extrapolation of slopes must sum to 1.")

    @property
    def stages(self) -> int:
        return len(self.c)

    def full_a(self) -> np.ndarray:
        """The ``[stages, stages]`` Butcher matrix (a fresh array: callers may modify it)."""
        return self._butcher_matrix.copy()

    @cached_property
    def _butcher_matrix(self) -> np.ndarray:
        a = np.zeros((self.stages, self.stages))
        for i, row in enumerate(self.a):
            a[i, : len(row)] = row
        return a

    @cached_property
    def kind(self) -> TableauKind:
        a = self._butcher_matrix
        if np.triu(a, 1).any():
            return TableauKind.FULLY_IMPLICIT
        return TableauKind.DIAGONALLY_IMPLICIT if np.diag(a).any() else TableauKind.EXPLICIT

    @property
    def diagonally_implicit(self) -> bool:
        """Lower triangular with a non-zero diagonal: the implicit stages are solved one after another."""
        return self.kind is TableauKind.DIAGONALLY_IMPLICIT

    @cached_property
    def gamma(self) -> float | None:
        """The diagonal shared by every implicit stage (a singly diagonally implicit tableau), else None."""
        diagonal = {float(self._butcher_matrix[i, i]) for i in range(self.stages)} - {0.0}
        return diagonal.pop() if self.kind is TableauKind.DIAGONALLY_IMPLICIT and len(diagonal) == 1 else None

    @cached_property
    def stiffly_accurate(self) -> bool:
        """The last stage is the solution (``a[-1] = b``)."""
        return tuple(self._butcher_matrix[-1]) == tuple(self.b)

    @cached_property
    def fsal(self) -> bool:
        """Whether the first stage is ``f(t0, y0)`` and the last ``f(t1, y1)`` (reusable as the next step's first)."""
        return self.c[0] == 0.0 and not any(self.a[0]) and self.c[-1] == 1.0 and self.stiffly_accurate

    @cached_property
    def carries_last_stage(self) -> bool:
        """Whether the last stage becomes the next step's first (saving one evaluation per step)."""
        return self.fsal or self.reuse_last_stage

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @cached_property
    def b_embedded(self) -> tuple[float, ...] | None:
        """Weights of the embedded (error-estimating) solution, ``b - b_error``."""
        return None if self.b_error is None else tuple(b - e for b, e in zip(self.b, self.b_error, strict=True))

    @cached_property
    def order(self) -> int:
        """The order of the solution, from the order conditions."""
        return order_of(self._butcher_matrix, np.array(self.b))

    @cached_property
    def embedded_order(self) -> int | None:
        """The order of the embedded solution the error estimate compares with, or None."""
        return None if self.b_error is None else order_of(self._butcher_matrix, np.array(self.b_embedded))


@dataclass(frozen=True)
class TableauTensors:
    """A tableau's coefficients as tensors of one dtype and device (built once, reused every step)."""

    a_rows: tuple[torch.Tensor, ...]  # a_rows[i]: the i weights of stage i left of the diagonal
    b: torch.Tensor
    b_error: torch.Tensor | None
    dense: np.ndarray | None  # float64 [stages, degree]; combined on the host, tiny
    dense_t: np.ndarray | None  # the same transposed, [degree, stages], contiguous: interpolation.dense_weights' layout
    predictor: tuple[torch.Tensor | None, ...] | None  # predictor[i]: stage i's Newton start (None for stage 0)


@lru_cache(maxsize=256)
def tableau_tensors(tableau: ButcherTableau, dtype: torch.dtype, device: torch.device) -> TableauTensors:
    def tensor(values):
        return torch.tensor(values, dtype=dtype, device=device)

    predictor = None
    if tableau.diagonally_implicit:  # without a predictor, each stage starts from the previous stage's slope
        rows = tableau.predictor or tuple((0.0,) * (i - 1) + (1.0,) for i in range(1, tableau.stages))
        predictor = (None, *(tensor(row) for row in rows))
    return TableauTensors(
        a_rows=tuple(tensor(row[:i]) for i, row in enumerate(tableau.a)),
        b=tensor(tableau.b),
        b_error=None if tableau.b_error is None else tensor(tableau.b_error),
        dense=None if tableau.dense is None else np.array(tableau.dense, dtype=np.float64),
        dense_t=None if tableau.dense is None else np.ascontiguousarray(np.array(tableau.dense, dtype=np.float64).T),
        predictor=predictor,
    )


# --------------------------------------------------------------------------------------------
# Dense output built from a midpoint value: torchdiffeq's quartic through y0, y_mid, y1 with
# slopes f0, f1, rewritten as stage weights so one matrix product evaluates it.


def quartic_dense_from_mid(b: tuple[float, ...], b_mid: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    """Stage polynomials of the quartic interpolant fitted to ``y0, y1, y_mid = y(t0 + h/2), f0, f1``.

    ``y_mid = y0 + h Σ b_mid_i k_i``; ``f0 = k_0`` and ``f1 = k_last`` (the tableau must be FSAL).
    With ``S = Σ b_i k_i`` and ``M = Σ b_mid_i k_i`` the quartic is
    ``y0 + h[θ f0 + θ²(f1 - 4f0 - 5S + 16M) + θ³(5f0 - 3f1 + 14S - 32M) + θ⁴(2f1 - 2f0 - 8S + 16M)]``.
    """
    s = len(b)
    rows = []
    for i in range(s):
        f0 = 1.0 if i == 0 else 0.0
        f1 = 1.0 if i == s - 1 else 0.0
        big_s, mid = b[i], b_mid[i]
        rows.append(
            (
                f0,
                f1 - 4 * f0 - 5 * big_s + 16 * mid,
                5 * f0 - 3 * f1 + 14 * big_s - 32 * mid,
                2 * f1 - 2 * f0 - 8 * big_s + 16 * mid,
            )
        )
    return tuple(rows)


def hermite_dense(b: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    """Stage polynomials of the cubic Hermite interpolant through ``y0, y1`` with slopes ``f0 = k_0, f1 = k_last``.

    ``y(θ) = y0 + h01(θ)(y1 - y0) + h·h10(θ) f0 + h·h11(θ) f1`` with the Hermite basis
    ``h10 = θ - 2θ² + θ³``, ``h01 = 3θ² - 2θ³``, ``h11 = θ³ - θ²``; needs an FSAL tableau.
    """
    s = len(b)
    rows = []
    for i in range(s):
        row = [0.0, 3 * b[i], -2 * b[i]]
        if i == 0:
            row = [row[0] + 1.0, row[1] - 2.0, row[2] + 1.0]
        if i == s - 1:
            row = [row[0], row[1] - 1.0, row[2] + 1.0]
        rows.append(tuple(row))
    return tuple(rows)


def _expand(*factors: tuple[float, ...], scale: float = 1.0) -> tuple[float, ...]:
    """Coefficients (θ¹..θ^d, no constant term) of ``scale · Π factors``; factors in increasing powers."""
    poly = np.array([scale])
    for factor in factors:
        poly = np.convolve(poly, np.array(factor, dtype=np.float64))
    if abs(poly[0]) > 0:
        raise InvalidTableau("a stage polynomial of a continuous extension must vanish at θ = 0")
    return tuple(float(x) for x in poly[1:])


def _pad(rows: list[tuple[float, ...]]) -> tuple[tuple[float, ...], ...]:
    degree = max(len(r) for r in rows)
    return tuple(tuple(r) + (0.0,) * (degree - len(r)) for r in rows)


# --------------------------------------------------------------------------------------------
# Adaptive methods (with an error estimate). Coefficients as torchdiffeq 0.2.5 has them.

_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_MID = (
    6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2,
)  # fmt: skip
DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:-1],
    ),
    b=_DOPRI5_B,
    b_error=(
        35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
        -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300, -1.0 / 60.0,
    ),  # fmt: skip
    dense=quartic_dense_from_mid(_DOPRI5_B, _DOPRI5_MID),
)

_BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
BOSH3 = ButcherTableau(
    name="bosh3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _BOSH3_B[:-1]),
    b=_BOSH3_B,
    b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    # Bogacki & Shampine's own dense output (cubic Hermite, third order). torchdiffeq fits its
    # quartic through y0 + h/2·k1, a midpoint only second-order accurate, and loses accuracy between steps.
    dense=hermite_dense(_BOSH3_B),
)

_FEHLBERG2_B = (1 / 512, 255 / 256, 1 / 512)
FEHLBERG2 = ButcherTableau(
    name="fehlberg2",
    c=(0.0, 1 / 2, 1.0),
    a=((), (1 / 2,), (1 / 256, 255 / 256)),
    b=_FEHLBERG2_B,
    b_error=(-1 / 512, 0.0, 1 / 512),
    # Cubic Hermite, as for bosh3: torchdiffeq's quartic through y0 + h/2·k2 (a midpoint only first-order
    # accurate) has a slope O(h) wrong between steps, which finite differences w.r.t. t see (1.5e-3 at rtol 1e-8).
    dense=hermite_dense(_FEHLBERG2_B),
    reuse_last_stage=True,  # as torchdiffeq: its last stage is the first-order solution's slope
)

# torchdiffeq writes adaptive Heun as a 2-stage tableau whose last stage (c = 1) is f(t0 + h, y0 + h k0)
# and uses it as "f1"; kept so results and evaluation counts match.
_ADAPTIVE_HEUN_B = (0.5, 0.5)
ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun",
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=_ADAPTIVE_HEUN_B,
    b_error=(0.5, -0.5),
    dense=quartic_dense_from_mid(_ADAPTIVE_HEUN_B, (0.5, 0.0)),
    reuse_last_stage=True,
)

# Dormand & Prince's RK8(7)13M as torchdiffeq 0.2.5 types it (rational approximations), with its appended FSAL stage.
_DOPRI8_B = (
    14005451 / 335480064, 0.0, 0.0, 0.0, 0.0, -59238493 / 1068277825, 181606767 / 758867731, 561292985 / 797845732,
    -1041891430 / 1371343529, 760417239 / 1151165299, 118820643 / 751138087, -528747749 / 2220607170, 1 / 4, 0.0,
)  # fmt: skip
_DOPRI8_B_LOW = (
    13451932 / 455176623, 0.0, 0.0, 0.0, 0.0, -808719846 / 976000145, 1757004468 / 5645159321, 656045339 / 265891186,
    -3867574721 / 1518517206, 465885868 / 322736535, 53011238 / 667516719, 2 / 45, 0.0, 0.0,
)  # fmt: skip


def _dopri8_mid() -> tuple[float, ...]:
    h = 0.5
    poly = {
        0: (-6.3448349392860401388, 22.1396504998094068976, -30.0610568289666450593, 19.9990069333683970610, -6.6910181737837595697, 1.0),
        5: (-39.6107919852202505218, 116.4422149550342161651, -121.4999627731334642623, 52.2273532792945524050, -7.6142658045872677172, 0.0),
        6: (20.3761213808791436958, -67.1451318825957197185, 83.1721004639847717481, -46.8919164181093621583, 10.7281392630428866124, 0.0),
        7: (7.3347098826795362023, -16.5672243527496524646, 9.5724507555993664382, -0.1890893225010595467, 0.5526637063753648783, 0.0),
        8: (32.8801774352459155182, -89.9916014847245016028, 87.8406057677205645007, -35.7075975946222072821, 4.2186562625665153803, 0.0),
        9: (-10.1588990526426760954, 22.6237489648532849093, -17.4152107770762969005, 6.2736448083240352160, -0.6627209125361597559, 0.0),
        10: (-12.5401268098782561200, 32.2362340167355370113, -28.5903289514790976966, 10.3160881272450748458, -1.2636789001135462218, 0.0),
        11: (29.5553001484516038033, -82.1020315488359848644, 81.6630950584341412934, -34.7650769866611817349, 5.4106037898590422230, 0.0),
        12: (-41.7923486424390588923, 116.2662185791119533462, -114.9375291377009418170, 47.7457971078225540396, -7.0321379067945741781, 0.0),
        13: (20.3006925822100825485, -53.9020777466385396792, 50.2558364226176017553, -19.0082099341608028453, 2.3537586759714983486, 0.0),
    }  # fmt: skip
    mid = [0.0] * 14
    for i, (p5, p4, p3, p2, p1, p0) in poly.items():
        mid[i] = (p5 * h**5 + p4 * h**4 + p3 * h**3 + p2 * h**2 + p1 * h + (p0 if i == 0 else 0.0)) * h
    return tuple(mid)


DOPRI8 = ButcherTableau(
    name="dopri8",
    c=(0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200, 5490023248 / 9719169821, 13 / 20, 1201146811 / 1299019798, 1.0, 1.0, 1.0),
    a=(
        (),
        (1 / 18,),
        (1 / 48, 1 / 16),
        (1 / 32, 0.0, 3 / 32),
        (5 / 16, 0.0, -75 / 64, 75 / 64),
        (3 / 80, 0.0, 0.0, 3 / 16, 3 / 20),
        (29443841 / 614563906, 0.0, 0.0, 77736538 / 692538347, -28693883 / 1125000000, 23124283 / 1800000000),
        (16016141 / 946692911, 0.0, 0.0, 61564180 / 158732637, 22789713 / 633445777, 545815736 / 2771057229, -180193667 / 1043307555),
        (39632708 / 573591083, 0.0, 0.0, -433636366 / 683701615, -421739975 / 2616292301, 100302831 / 723423059, 790204164 / 839813087,
         800635310 / 3783071287),
        (246121993 / 1340847787, 0.0, 0.0, -37695042795 / 15268766246, -309121744 / 1061227803, -12992083 / 490766935,
         6005943493 / 2108947869, 393006217 / 1396673457, 123872331 / 1001029789),
        (-1028468189 / 846180014, 0.0, 0.0, 8478235783 / 508512852, 1311729495 / 1432422823, -10304129995 / 1701304382,
         -48777925059 / 3047939560, 15336726248 / 1032824649, -45442868181 / 3398467696, 3065993473 / 597172653),
        (185892177 / 718116043, 0.0, 0.0, -3185094517 / 667107341, -477755414 / 1098053517, -703635378 / 230739211,
         5731566787 / 1027545527, 5232866602 / 850066563, -4093664535 / 808688257, 3962137247 / 1805957418, 65686358 / 487910083),
        (403863854 / 491063109, 0.0, 0.0, -5068492393 / 434740067, -411421997 / 543043805, 652783627 / 914296604,
         11173962825 / 925320556, -13158990841 / 6184727034, 3936647629 / 1978049680, -160528059 / 685178525, 248638103 / 1413531060, 0.0),
        _DOPRI8_B[:-1],
    ),  # fmt: skip
    b=_DOPRI8_B,
    b_error=tuple(hi - lo for hi, lo in zip(_DOPRI8_B, _DOPRI8_B_LOW, strict=True)),
    dense=quartic_dense_from_mid(_DOPRI8_B, _dopri8_mid()),
)

# Tsitouras 5(4) (2011), FSAL, with its own 4th-order continuous extension (not in torchdiffeq 0.2.5).
_TSIT5_B = (
    0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774, 0.0,
)  # fmt: skip
TSIT5 = ButcherTableau(
    name="tsit5",
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
        _TSIT5_B[:-1],
    ),
    b=_TSIT5_B,
    b_error=(
        0.001780011052226, 0.000816434459657, -0.007880878010262, 0.144711007173263,
        -0.582357165452555, 0.458082105929187, -1 / 66,
    ),  # fmt: skip
    dense=_pad(
        [
            _expand((0.0, 1.0), (-1.3299890189751412, 1.0), (0.7139816917074209, -1.4364028541716351, 1.0), scale=-1.0530884977290216),
            _expand((0.0, 0.0, 1.0), (1.2949852507374631, -2.1966568338249754, 1.0), scale=0.1017),
            _expand((0.0, 0.0, 1.0), (1.57803468208092486, -2.38535645472061657, 1.0), scale=2.490627285651252793),
            _expand((0.0, 0.0, 1.0), (-1.21712927295533244, 1.0), (-0.61620406037800089, 1.0), scale=-16.54810288924490272),
            _expand((0.0, 0.0, 1.0), (-1.203071208372362603, 1.0), (-0.658047292653547382, 1.0), scale=47.37952196281928122),
            _expand((0.0, 0.0, 1.0), (-1.2, 1.0), (-2 / 3, 1.0), scale=-34.87065786149660974),
            _expand((0.0, 0.0, 1.0), (-1.0, 1.0), (-0.6, 1.0), scale=2.5),
        ]
    ),
)

# --------------------------------------------------------------------------------------------
# Fixed-step methods (no error estimate); output between grid points is interpolated linearly or
# by cubic Hermite, as torchdiffeq does.

EULER = ButcherTableau(name="euler", c=(0.0,), a=((),), b=(1.0,))
MIDPOINT = ButcherTableau(name="midpoint", c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))
HEUN2 = ButcherTableau(name="heun2", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))
HEUN3 = ButcherTableau(name="heun3", c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(1 / 4, 0.0, 3 / 4))
# Kutta's 3/8 rule: what torchdiffeq calls 'rk4' (smaller error constant than the classic scheme).
RK4_THREE_EIGHTHS = ButcherTableau(
    name="rk4",
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
)
RK4_CLASSIC = ButcherTableau(
    name="rk4_classic",
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)

# --------------------------------------------------------------------------------------------
# Implicit methods on a fixed grid (solved by Newton in ``implicit.py``).

_S2, _S3, _S6, _S15 = math.sqrt(2), math.sqrt(3), math.sqrt(6), math.sqrt(15)

IMPLICIT_EULER = ButcherTableau(name="implicit_euler", c=(1.0,), a=((1.0,),), b=(1.0,))
IMPLICIT_MIDPOINT = ButcherTableau(name="implicit_midpoint", c=(0.5,), a=((0.5,),), b=(1.0,))
TRAPEZOID = ButcherTableau(name="trapezoid", c=(0.0, 1.0), a=((0.0, 0.0), (0.5, 0.5)), b=(0.5, 0.5))
GAUSS_LEGENDRE_4 = ButcherTableau(
    name="gl4",
    c=(0.5 - _S3 / 6, 0.5 + _S3 / 6),
    a=((0.25, 0.25 - _S3 / 6), (0.25 + _S3 / 6, 0.25)),
    b=(0.5, 0.5),
)
GAUSS_LEGENDRE_6 = ButcherTableau(
    name="gl6",
    c=(0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
    a=(
        (5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
        (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
        (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36),
    ),
    b=(5 / 18, 4 / 9, 5 / 18),
)
RADAU_IIA_3 = ButcherTableau(name="radauIIA3", c=(1 / 3, 1.0), a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)), b=(3 / 4, 1 / 4))
# Also the collocation method of the adaptive ``radau5`` (radau.py).
RADAU_IIA_5 = ButcherTableau(
    name="radauIIA5",
    c=(2 / 5 - _S6 / 10, 2 / 5 + _S6 / 10, 1.0),
    a=(
        (11 / 45 - 7 * _S6 / 360, 37 / 225 - 169 * _S6 / 1800, -2 / 225 + _S6 / 75),
        (37 / 225 + 169 * _S6 / 1800, 11 / 45 + 7 * _S6 / 360, -2 / 225 - _S6 / 75),
        (4 / 9 - _S6 / 36, 4 / 9 + _S6 / 36, 1 / 9),
    ),
    b=(4 / 9 - _S6 / 36, 4 / 9 + _S6 / 36, 1 / 9),
)
# L-stable SDIRK of order 2 (Alexander 1977), gamma = 1 - 1/sqrt(2).
_GAMMA = (2 - _S2) / 2
SDIRK_2 = ButcherTableau(name="sdirk2", c=(_GAMMA, 1.0), a=((_GAMMA, 0.0), (1 - _GAMMA, _GAMMA)), b=(1 - _GAMMA, _GAMMA))
# TR-BDF2 as an ESDIRK (Hosea & Shampine 1996): a trapezoid stage to 2γ, then a BDF2 stage.
_TR_GAMMA = 1 - _S2 / 2
_TR_W = _S2 / 4
TR_BDF2 = ButcherTableau(
    name="trbdf2",
    c=(0.0, 2 * _TR_GAMMA, 1.0),
    a=((0.0, 0.0, 0.0), (_TR_GAMMA, _TR_GAMMA, 0.0), (_TR_W, _TR_W, _TR_GAMMA)),
    b=(_TR_W, _TR_W, _TR_GAMMA),
)

# --------------------------------------------------------------------------------------------
# Adaptive ESDIRK methods (``esdirk.py``): an explicit first stage, one diagonal γ, stiffly accurate
# (b is the last row), so the last stage is the next step's first; cubic Hermite dense output.
# Kværnø 2004, BIT 44(3); coefficients and stage predictors as diffrax and OrdinaryDiffEq.jl ship them.

# ESDIRK 5(4), 7 stages; predictors from OrdinaryDiffEq.jl (α21 = 1, as diffrax corrects it).
_K5_GAMMA = 0.26
_K5_ROW6 = (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, _K5_GAMMA)
_K5_B = (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403, 0.06962479448202728, _K5_GAMMA)
KVAERNO5 = ButcherTableau(
    name="kvaerno5",
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    a=(
        (),
        (_K5_GAMMA, _K5_GAMMA),
        (0.13, 0.84033320996790809, _K5_GAMMA),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615, _K5_GAMMA),
        (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, _K5_GAMMA),
        _K5_ROW6,
        _K5_B,
    ),
    b=_K5_B,
    b_error=(*(b - e for b, e in zip(_K5_B[:-1], _K5_ROW6, strict=True)), _K5_GAMMA),
    dense=hermite_dense(_K5_B),
    predictor=(
        (1.0,),
        (-1.366025403784441, 2.3660254037844357),
        (-0.19650552613122207, 0.8113579546496623, 0.38514757148155954),
        (0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0),
        (-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0),
        _K5_ROW6,
    ),
)

# ESDIRK 3(2), 4 stages; every coefficient a function of γ.
_K3_GAMMA = 0.43586652150
_K3_ROW3 = ((-4 * _K3_GAMMA**2 + 6 * _K3_GAMMA - 1) / (4 * _K3_GAMMA), (-2 * _K3_GAMMA + 1) / (4 * _K3_GAMMA), _K3_GAMMA)
_K3_B = (
    (6 * _K3_GAMMA - 1) / (12 * _K3_GAMMA),
    -1 / ((24 * _K3_GAMMA - 12) * _K3_GAMMA),
    (-6 * _K3_GAMMA**2 + 6 * _K3_GAMMA - 1) / (6 * _K3_GAMMA - 3),
    _K3_GAMMA,
)
_K3_THETA = 1 / (2 * _K3_GAMMA)
KVAERNO3 = ButcherTableau(
    name="kvaerno3",
    c=(0.0, 2 * _K3_GAMMA, 1.0, 1.0),
    a=((), (_K3_GAMMA, _K3_GAMMA), _K3_ROW3, _K3_B),
    b=_K3_B,
    b_error=(*(b - e for b, e in zip(_K3_B[:-1], _K3_ROW3, strict=True)), _K3_GAMMA),
    dense=hermite_dense(_K3_B),
    predictor=((1.0,), (1.0 - _K3_THETA, _K3_THETA), _K3_ROW3),
)
