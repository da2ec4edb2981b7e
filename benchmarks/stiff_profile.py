"""CPU time (best of N after a warm-up) of one odecli stiff solve of ``benchmarks/stiff.py``'s problems, or of scipy's, optionally profiled.

    PYTHONPATH=. .venv/bin/python benchmarks/stiff_profile.py van_der_pol radau5 [--repeat 3] [--profile]
    PYTHONPATH=. .venv/bin/python benchmarks/stiff_profile.py robertson scipy:Radau

Same problems, tolerances and counting as ``stiff.py``; process CPU time rather than wall time, so that on a
shared machine runs of two versions can be compared interleaved. ``--profile`` prints the cumulative share of
odecli's functions (and the field) in a cProfile of one more solve.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stiff  # noqa: E402  (the benchmark's problems)


def solve_once(problem, method: str):
    """``(counted func or None, solution as numpy)``."""
    if method.startswith("scipy:"):
        from scipy.integrate import solve_ivp

        solution = solve_ivp(problem.numpy_func(), (problem.t[0], problem.t[-1]), problem.y0, method=method[6:],
                             rtol=problem.rtol, atol=problem.atol, dense_output=True)  # fmt: skip
        y = solution.sol(problem.t).T
        y[0] = problem.y0
        return None, y
    from odecli import odeint

    func = stiff.Counted(problem.torch_func())
    y0, t = torch.tensor(problem.y0, dtype=stiff.F64), torch.tensor(problem.t, dtype=stiff.F64)
    atol = torch.tensor(problem.atol, dtype=stiff.F64) if isinstance(problem.atol, list) else problem.atol
    with torch.no_grad():
        y = odeint(func, y0, t, rtol=problem.rtol, atol=atol, method=method)
    return func, y.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("problem", choices=[p.name for p in stiff.PROBLEMS])
    parser.add_argument("method", help="an odecli method (radau5, kvaerno5, ...) or scipy:Radau / scipy:BDF")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = next(p for p in stiff.PROBLEMS if p.name == args.problem)
    y = torch.ones(2, dtype=stiff.F64, requires_grad=True)
    torch.autograd.grad(y * y, y, torch.ones(2, dtype=stiff.F64))  # torch's one-time autograd import
    solve_once(problem, args.method)  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.process_time()
        func, y = solve_once(problem, args.method)
        times.append(time.process_time() - start)
    units = stiff.error_in_tolerance_units(y, stiff.reference(problem), problem)
    counts = "" if func is None else f", NFE {func.calls}, Jacobians {func.jacobian_calls}, steps {func.accepted} / {func.rejected}"
    print(f"{problem.name} {args.method}: CPU {min(times):.3f} s (best of {args.repeat}){counts}, error {units:.3g} tolerance units")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(solve_once, problem, args.method)
        stats = pstats.Stats(profiler)
        rows = sorted(stats.stats.items(), key=lambda item: -item[1][3])
        for (path, line, name), (_, calls, _, cumulative, _) in rows:
            if ("odecli" in path or path.endswith("stiff.py")) and cumulative > 0.02 * stats.total_tt:
                print(f"{100 * cumulative / stats.total_tt:5.1f}%  {calls:7d}  {Path(path).name}:{line} {name}")


if __name__ == "__main__":
    main()
