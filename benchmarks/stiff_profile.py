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
    """``(row, solution as numpy)`` of one solve, by ``stiff.py``'s own runners (``row``: its NFE, Jacobians, steps)."""
    if method.startswith("scipy:"):
        return stiff.run_scipy(problem, method[6:])
    return stiff.run_odecli(problem, method, max_steps=10**9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("problem", choices=[p.name for p in stiff.PROBLEMS])
    parser.add_argument("method", help="an odecli method (radau5, kvaerno5, ...) or scipy:Radau / scipy:BDF")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = next(p for p in stiff.PROBLEMS if p.name == args.problem)
    stiff.warm_up_autograd()
    solve_once(problem, args.method)  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.process_time()
        row, y = solve_once(problem, args.method)
        times.append(time.process_time() - start)
    units = stiff.error_in_tolerance_units(y, stiff.reference(problem), problem)
    counts = f", NFE {row.nfe}, Jacobians {row.jacobians}, steps {row.accepted} / {'n/a' if row.rejected is None else row.rejected}"
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
