"""The paper's adaptive Adams (``adams``) against dopri5 and scipy's LSODA: NFE, error and wall time.

    PYTHONPATH=. .venv/bin/python benchmarks/adams.py [--tols 1e-6 1e-8] [--repeats 5]

Problems (float64, one CPU thread, 101 outputs on t ∈ [0, 25], y0 = [2, 0]): odecli's ``spiral``
``dy/dt = (y**3) @ A``, A = [[-0.1, 2], [-2, -0.1]], and a seeded 2-50-2 tanh MLP field (``torch.manual_seed(0)``).
The error is the largest absolute difference from dopri8 at rtol = atol = 1e-13; NFE counts calls of the field;
time is the median of ``--repeats`` solves under ``no_grad`` after one warm-up (LSODA calls the torch field through
numpy). Prints a markdown table, then NFE and errors summed over ``--seeds`` seeded 2-50-2 fields (seeds 0, 1, ...;
the first table's MLP is seed 0): one field can favour either method.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from odecli import odeint

A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
Y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
T = torch.linspace(0.0, 25.0, 101, dtype=torch.float64)


class Spiral(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = [0]

    def forward(self, t, y):
        self.calls[0] += 1
        return (y**3) @ A


class MLP(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # seeded without resetting the global generator
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2)).double()
        self.calls = [0]

    def forward(self, t, y):
        self.calls[0] += 1
        return self.net(y)


def solve(field, method: str, tol: float) -> torch.Tensor:
    if method == "LSODA":
        sol = solve_ivp(lambda s, z: field(s, torch.from_numpy(z)).numpy(), (0.0, 25.0), Y0.numpy(), method="LSODA", t_eval=T.numpy(), rtol=tol, atol=tol)
        return torch.from_numpy(np.ascontiguousarray(sol.y.T))
    return odeint(field, Y0, T, method=method, rtol=tol, atol=tol)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-6, 1e-8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| field | tol | method | NFE | max error | time (ms) |\n| --- | --- | --- | ---: | ---: | ---: |")
    with torch.no_grad():
        for name, make in (("spiral", Spiral), ("mlp 2-50-2", MLP)):
            reference = odeint(make(), Y0, T, method="dopri8", rtol=1e-13, atol=1e-13)
            for tol in args.tols:
                for method in ("adams", "dopri5", "LSODA"):
                    field = make()
                    y = solve(field, method, tol)  # warm-up, and the NFE and error of one solve
                    nfe = field.calls[0]
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        solve(field, method, tol)
                        times.append(time.perf_counter() - start)
                    error = float((y - reference).abs().max())
                    print(f"| {name} | {tol:g} | {method} | {nfe} | {error:.1e} | {1e3 * statistics.median(times):.1f} |")
        print(f"\n| {args.seeds} seeded 2-50-2 fields | tol | method | NFE (sum) | fields with fewer NFE than dopri5 | max error |")
        print("| --- | --- | --- | ---: | ---: | ---: |")
        references = [odeint(MLP(seed), Y0, T, method="dopri8", rtol=1e-13, atol=1e-13) for seed in range(args.seeds)]
        for tol in args.tols:
            nfe: dict[str, list[int]] = {method: [] for method in ("adams", "dopri5", "LSODA")}
            worst = dict.fromkeys(nfe, 0.0)
            for seed, reference in enumerate(references):
                for method in nfe:
                    field = MLP(seed)
                    y = solve(field, method, tol)
                    nfe[method].append(field.calls[0])
                    worst[method] = max(worst[method], float((y - reference).abs().max()))
            for method, counts in nfe.items():
                fewer = "—" if method == "dopri5" else sum(a < b for a, b in zip(counts, nfe["dopri5"], strict=True))
                print(f"| seeds 0-{args.seeds - 1} | {tol:g} | {method} | {sum(counts)} | {fewer} | {worst[method]:.1e} |")


if __name__ == "__main__":
    main()
