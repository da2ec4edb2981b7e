"""Stiff problems side by side: odecli's radau5, kvaerno5/kvaerno3 and dopri5, torchdiffeq's dopri5, scipy's Radau and BDF.

scipy runs twice: on a numpy field, and on the torch field odecli solves (called through numpy, as a torch
user would call scipy). Below each table: one direct call of each field, and NFE × that per solver.

    .venv/bin/python benchmarks/stiff.py [--out benchmarks/stiff.md] [--max-steps 10000]

Problems (float64, one CPU thread):

* Robertson's chemical kinetics on t ∈ [0, 1e5] (outputs at 0 and 1e-5 … 1e5, log-spaced),
  rtol = 1e-6, atol = (1e-8, 1e-12, 1e-8) — y2 peaks at 3.6e-5, so it needs its own atol;
* Van der Pol with μ = 1000 on t ∈ [0, 3000] (about two relaxation periods; 31 outputs),
  rtol = 1e-6, atol = 1e-8.

References: scipy ``solve_ivp(method="Radau")`` at rtol = 1e-10 (atol 1e-10 for Van der Pol,
1e-16 for Robertson). NFE counts every call of the vector field (scipy's finite-difference
Jacobian columns included; odecli's autograd Jacobian is one call plus one VJP per state
element, reported under "Jacobians"). Explicit methods get ``max_num_steps`` (per output
interval, torchdiffeq's meaning); one that runs out is reported as "exceeded N steps at t=…".
The error is the largest ``|y - ref| / max_t |ref|`` over outputs and components (each component
relative to its own scale, since Van der Pol's components cross zero). "In tolerance units" is the
largest ``|y - ref| / (atol + rtol·|ref|)``: at most about 1 means the solution reached the reference
within the tolerance that was asked for.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64


HAND_WRITTEN = "<!-- hand-written below: kept when this file is regenerated -->"


@dataclass
class Problem:
    name: str
    title: str
    y0: list[float]
    t: np.ndarray
    rtol: float
    atol: list[float] | float
    reference_atol: float

    def torch_func(self):
        raise NotImplementedError

    def numpy_func(self):
        raise NotImplementedError


class Robertson(Problem):
    def torch_func(self):
        def f(t, y):
            y1, y2, y3 = y.unbind(-1)
            return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 * y2, 3e7 * y2 * y2], dim=-1)

        return f

    def numpy_func(self):
        def f(t, y):
            y1, y2, y3 = y
            return np.array([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 * y2, 3e7 * y2 * y2])

        return f


class VanDerPol(Problem):
    mu = 1000.0

    def torch_func(self):
        mu = self.mu

        def f(t, y):
            return torch.stack([y[1], mu * (1 - y[0] * y[0]) * y[1] - y[0]])

        return f

    def numpy_func(self):
        mu = self.mu

        def f(t, y):
            return np.array([y[1], mu * (1 - y[0] * y[0]) * y[1] - y[0]])

        return f


PROBLEMS = (
    Robertson("robertson", "Robertson, t ∈ [0, 1e5]", [1.0, 0.0, 0.0], np.concatenate([[0.0], np.logspace(-5, 5, 11)]),
              1e-6, [1e-8, 1e-12, 1e-8], 1e-16),
    VanDerPol("van_der_pol", "Van der Pol μ = 1000, t ∈ [0, 3000]", [2.0, 0.0], np.linspace(0.0, 3000.0, 31), 1e-6, 1e-8, 1e-10),
)  # fmt: skip


@dataclass
class Row:
    solver: str
    nfe: int
    jacobians: str
    accepted: int | None
    rejected: int | None
    error: float | None
    seconds: float
    note: str = ""
    in_tolerance: float | None = None


def reference(problem: Problem) -> np.ndarray:
    from scipy.integrate import solve_ivp

    solution = solve_ivp(problem.numpy_func(), (problem.t[0], problem.t[-1]), problem.y0, method="Radau", rtol=1e-10,
                         atol=problem.reference_atol, t_eval=problem.t)  # fmt: skip
    return solution.y.T


def error_of(y: np.ndarray, ref: np.ndarray) -> float:
    scale = np.abs(ref[1:]).max(axis=0)
    return float((np.abs(y[1:] - ref[1:]) / scale).max())


def error_in_tolerance_units(y: np.ndarray, ref: np.ndarray, problem: Problem) -> float:
    atol = np.asarray(problem.atol, dtype=np.float64)
    return float((np.abs(y - ref) / (atol + problem.rtol * np.abs(ref))).max())


class Counted:
    """A vector field that counts its calls and the adaptive steps a torch solver reports through callbacks."""

    def __init__(self, func):
        self.func, self.calls, self.accepted, self.rejected, self.t_reached = func, 0, 0, 0, 0.0
        self.jacobian_calls = 0  # in a graph-free solve, only an autograd Jacobian asks for gradients in y

    def __call__(self, t, y):
        self.calls += 1
        self.jacobian_calls += bool(y.requires_grad)
        return self.func(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1
        self.t_reached = float(t0 + dt)

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def warm_up_autograd() -> None:
    """torch's first ``autograd.grad`` with explicit grad_outputs imports sympy (~1 s, once per process): not the solver's time."""
    y = torch.ones(2, dtype=F64, requires_grad=True)
    torch.autograd.grad(y * y, y, torch.ones(2, dtype=F64))


def run_odecli(problem: Problem, method: str, max_steps: int, tighten: float = 1.0):
    from odecli import odeint
    from odecli.solvers.errors import MaxStepsExceeded

    func = Counted(problem.torch_func())
    y0, t = torch.tensor(problem.y0, dtype=F64), torch.tensor(problem.t, dtype=F64)
    atol = (torch.tensor(problem.atol, dtype=F64) if isinstance(problem.atol, list) else problem.atol) / tighten
    label = f"odecli {method}" + (f" (rtol, atol / {tighten:g})" if tighten != 1.0 else "")
    start = time.perf_counter()
    try:
        with torch.no_grad():
            y = odeint(func, y0, t, rtol=problem.rtol / tighten, atol=atol, method=method, options={"max_num_steps": max_steps})
    except MaxStepsExceeded as exc:
        return Row(label, func.calls, "—", func.accepted, func.rejected, None, time.perf_counter() - start,
                   f"exceeded {max_steps} steps at t={exc.t:.3g}")  # fmt: skip
    seconds = time.perf_counter() - start
    jacobians = str(func.jacobian_calls) if method.startswith(("kvaerno", "radau")) else "—"
    return Row(label, func.calls, jacobians, func.accepted, func.rejected, None, seconds), y.numpy()


def run_torchdiffeq(problem: Problem, max_steps: int):
    import torchdiffeq

    func = Counted(problem.torch_func())
    y0, t = torch.tensor(problem.y0, dtype=F64), torch.tensor(problem.t, dtype=F64)
    atol = torch.tensor(problem.atol, dtype=F64) if isinstance(problem.atol, list) else problem.atol
    start = time.perf_counter()
    try:
        with torch.no_grad():
            y = torchdiffeq.odeint(func, y0, t, rtol=problem.rtol, atol=atol, method="dopri5", options={"max_num_steps": max_steps})
    except AssertionError as exc:
        if "max_num_steps" not in str(exc):
            raise
        return Row("torchdiffeq dopri5", func.calls, "—", func.accepted, func.rejected, None, time.perf_counter() - start,
                   f"exceeded {max_steps} steps at t={func.t_reached:.3g}")  # fmt: skip
    return Row("torchdiffeq dopri5", func.calls, "—", func.accepted, func.rejected, None, time.perf_counter() - start), y.numpy()


def run_scipy(problem: Problem, method: str, field: str = "numpy"):
    """scipy's ``method`` on the problem's numpy field, or (``field="torch"``) on the torch field odecli solves."""
    from scipy.integrate import solve_ivp

    calls = [0]
    if field == "torch":
        torch_func = problem.torch_func()

        def inner(t, y):
            return torch_func(t, torch.from_numpy(y)).numpy()
    else:
        inner = problem.numpy_func()

    def func(t, y):
        calls[0] += 1
        return inner(t, y)

    start = time.perf_counter()
    solution = solve_ivp(func, (problem.t[0], problem.t[-1]), problem.y0, method=method, rtol=problem.rtol, atol=problem.atol, dense_output=True)
    y = solution.sol(problem.t).T
    seconds = time.perf_counter() - start
    y[0] = problem.y0
    # scipy reports accepted steps only (solution.t holds every step's end).
    label = f"scipy {method}" + (" (torch field)" if field == "torch" else "")
    return Row(label, calls[0], str(solution.njev), len(solution.t) - 1, None, None, seconds), y


def seconds_per_call(func, y: np.ndarray | torch.Tensor, calls: int = 3000) -> float:
    """The median over 5 rounds of one direct call of ``func(0.0, y)``: no wrapper, no counting."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            func(0.0, y)
        rounds.append((time.perf_counter() - start) / calls)
    return sorted(rounds)[2]


def field_floor(problem: Problem, rows: list[Row]) -> str:
    """What evaluating each field costs a solver that calls it as often as each row did."""
    torch_call = seconds_per_call(problem.torch_func(), torch.tensor(problem.y0, dtype=F64))
    numpy_call = seconds_per_call(problem.numpy_func(), np.array(problem.y0))
    floors = ", ".join(
        f"{row.solver} {1e3 * row.nfe * (numpy_call if row.solver in ('scipy Radau', 'scipy BDF') else torch_call):.0f} ms"
        for row in rows
        if row.solver in ("odecli radau5", "odecli kvaerno5", "scipy Radau", "scipy BDF")
    )
    return (
        f"One direct call of the field: torch {1e6 * torch_call:.1f} µs, numpy {1e6 * numpy_call:.1f} µs. NFE × that "
        f"(the time in f alone; the rest of each row's time is the solver's): {floors}."
    )


def fmt_row(row: Row) -> str:
    steps = "—" if row.accepted is None else f"{row.accepted} / {'n/a' if row.rejected is None else row.rejected}"
    error = row.note if row.error is None else f"{row.error:.1e}"
    units = "—" if row.in_tolerance is None else f"{row.in_tolerance:.2g}"
    return f"| {row.solver} | {row.nfe:,} | {row.jacobians} | {steps} | {error} | {units} | {row.seconds:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "stiff.md")
    parser.add_argument("--max-steps", type=int, default=10000, help="max_num_steps for the explicit methods")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import odecli.solvers  # noqa: F401  (registers the solvers)

    warm_up_autograd()

    total = time.perf_counter()
    sections = []
    for problem in PROBLEMS:
        ref = reference(problem)
        rows = []
        runs = (
            (run_odecli, "radau5", args.max_steps),
            (run_odecli, "radau5", args.max_steps, 100.0),
            (run_odecli, "kvaerno5", args.max_steps),
            (run_odecli, "kvaerno5", args.max_steps, 100.0),
            (run_odecli, "kvaerno3", args.max_steps),
            (run_scipy, "Radau"),
            (run_scipy, "BDF"),
            (run_scipy, "Radau", "torch"),
            (run_scipy, "BDF", "torch"),
            (run_odecli, "dopri5", args.max_steps),
            (run_torchdiffeq, args.max_steps),
        )
        for run, *run_args in runs:
            result = run(problem, *run_args)
            if isinstance(result, tuple):
                row, y = result
                row.error = error_of(y, ref)
                row.in_tolerance = error_in_tolerance_units(y, ref, problem)
            else:
                row = result
            rows.append(row)
            print(fmt_row(row), flush=True)
        atol = problem.atol if isinstance(problem.atol, float) else tuple(problem.atol)
        sections += [
            f"### {problem.title} — rtol = {problem.rtol:g}, atol = {atol}",
            "",
            "| solver | NFE | Jacobians | steps accepted / rejected | max error vs reference | in tolerance units | wall time (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *map(fmt_row, rows),
            "",
            field_floor(problem, rows),
            "",
        ]
    elapsed = time.perf_counter() - total
    header = [
        f"# Stiff problems — {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
        f"{datetime.now():%Y-%m-%d}",
        "",
        f"Command: `.venv/bin/python benchmarks/stiff.py --max-steps {args.max_steps}` (total {elapsed:.0f} s). "
        "Error: max over outputs and components of |y − ref| / max_t |ref| (reference: scipy Radau, rtol 1e-10); "
        "in tolerance units: max of |y − ref| / (atol + rtol·|ref|), ≲ 1 when the reference is reached within tolerance. "
        "NFE counts calls of f; odecli's Jacobians are autograd (1 call + VJPs each), scipy's are finite differences "
        "(their calls are in NFE). scipy does not report rejected steps. The explicit solvers stop at "
        f"{args.max_steps} steps per output interval. The '/ 100' rows repeat a method at 100× tighter "
        "tolerances (the tolerance units stay those of the base row): the error falls with the tolerance.",
        "",
    ]
    text = "\n".join(header + sections)
    previous = args.out.read_text() if args.out.exists() else ""
    if HAND_WRITTEN in previous:  # notes written below the generated tables survive a regeneration
        text += "\n" + previous[previous.index(HAND_WRITTEN) :]
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
