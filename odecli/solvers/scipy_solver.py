"""``scipy_solver``: any ``scipy.integrate.solve_ivp`` method behind the odecli solver contract.

Useful as an oracle and for stiff problems (``solver='Radau'``, ``'BDF'``, ``'LSODA'``). The solve
runs in NumPy on the CPU in float64, so no gradient flows through it (as in torchdiffeq); the
result is cast back to the state's dtype and device.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from odecli.registry import SOLVERS
from odecli.solvers.base import AbstractSolver, FlatFunc
from odecli.solvers.errors import InvalidInputError, MissingDependency, SolverError

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def _solve_ivp():
    try:
        from scipy.integrate import solve_ivp
    except ImportError as exc:  # scipy is an optional dependency
        raise MissingDependency(
            "method='scipy_solver' needs scipy, which is not installed. Install it with "
            "`pip install scipy` (or `pip install odecli[bench]`), or choose another method."
        ) from exc
    return solve_ivp


def _numpy_dtype(y0: torch.Tensor) -> torch.dtype:
    """The dtype scipy integrates in: complex128 for a complex state (a cast to float64 would drop its imaginary part)."""
    return torch.complex128 if y0.is_complex() else torch.float64


class ScipyFailed(SolverError):
    """``solve_ivp`` reported failure (its message is included)."""

    hint = "Try another scipy method (options={'solver': 'Radau'}), or loosen rtol/atol."


@SOLVERS.register(
    "scipy_solver",
    description="Wraps scipy.integrate.solve_ivp (options: solver='LSODA'|'RK45'|'Radau'|'BDF'|...); no gradients.",
)
class ScipySolver(AbstractSolver):
    """scipy.integrate.solve_ivp; the order and adaptivity are those of the chosen scipy method."""

    order: ClassVar[int] = 5  # of the default-ish RK45; LSODA and BDF vary their order
    adaptive: ClassVar[bool] = True
    reference: ClassVar[str] = "Virtanen et al. 2020, SciPy 1.0 (scipy.integrate.solve_ivp)"
    options: ClassVar[frozenset[str]] = frozenset({"solver", "min_step", "max_step", "first_step", "norm", "grid_points", "eps"})
    callbacks: ClassVar[frozenset[str]] = frozenset()  # scipy steps on its own; no step callbacks
    differentiable: ClassVar[bool] = False  # NumPy integrates outside autograd

    def __init__(
        self,
        func: FlatFunc,
        y0: torch.Tensor,
        rtol: float,
        atol: float,
        solver: str = "LSODA",
        min_step: float = 0.0,
        max_step: float = float("inf"),
        first_step: float | None = None,
        **options: Any,
    ):
        super().__init__(func, y0, rtol, atol)
        self._solve_ivp = _solve_ivp()
        if solver not in SCIPY_METHODS:
            raise InvalidInputError(f"Unknown scipy solver {solver!r}; choose one of {', '.join(SCIPY_METHODS)}.")
        self.solver = solver
        if y0.is_complex() and solver == "LSODA":
            raise InvalidInputError("scipy's LSODA (scipy_solver's default) cannot integrate a complex state; pass options={'solver': 'RK45'} or another solve_ivp method.")
        self.min_step = min_step
        self.max_step = max_step
        self.first_step = first_step

    def _numpy_func(self):
        dtype, device, shape = self.y0.dtype, self.y0.device, self.y0.shape
        numpy_dtype = _numpy_dtype(self.y0)

        def f(t, y):
            t_ = torch.as_tensor(t, dtype=dtype, device=device)
            y_ = torch.as_tensor(y, dtype=dtype, device=device).reshape(shape)
            with torch.no_grad():
                return self.func(t_, y_).detach().cpu().to(numpy_dtype).numpy().reshape(-1)

        return f

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        y0 = self.y0.detach().cpu().to(_numpy_dtype(self.y0)).numpy().reshape(-1)
        if t.numel() == 1:
            return self.y0.detach()[None].clone()
        times = t.detach().cpu().double().numpy()
        extra = {"min_step": self.min_step} if self.solver == "LSODA" else {}
        if self.first_step is not None:
            extra["first_step"] = self.first_step
        sol = self._solve_ivp(
            self._numpy_func(),
            t_span=(times[0], times[-1]),
            y0=y0,
            t_eval=times,
            method=self.solver,
            rtol=float(self.rtol),
            atol=float(self.atol),
            max_step=self.max_step,
            **extra,
        )
        self.nfe = int(sol.nfev)
        # solve_ivp does not report rejected steps; it reports its accepted ones through len(sol.t) only with
        # dense output, so the count of accepted steps stays 0 rather than a guess.
        if not sol.success or sol.y.shape[1] != len(times):
            raise ScipyFailed(f"scipy.integrate.solve_ivp (method {self.solver}) failed: {sol.message}", float(sol.t[-1]) if len(sol.t) else None)
        out = torch.as_tensor(sol.y.T.copy()).to(device=self.y0.device, dtype=self.y0.dtype)
        return out.reshape(len(times), *self.y0.shape)
