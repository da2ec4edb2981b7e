"""Joint vs per-sample step control on a batch of Van der Pol oscillators with spread stiffness.

    .venv/bin/python benchmarks/batch_mode.py [--out benchmarks/batch_mode.md] [--repeats 2]

Peers, all dopri5 at the same rtol/atol, eager, one thread, float64:

* ours, ``batch_mode='joint'`` (one step size for the batch, torchdiffeq's semantics);
* ours, ``batch_mode='independent'`` (per-sample step size, error norm and acceptance);
* torchode 1.x (``Dopri5`` + ``IntegralController`` + ``AutoDiffAdjoint``: per-sample control, its default);
* torchdiffeq (joint).

NFE: calls of the batched vector field, counted by the field itself (the same counter for every
peer). Wall time: the best of ``--repeats`` forward solves. Error: per sample, the largest absolute
difference over the output times from scipy's DOP853 at rtol = atol = 1e-11 solving that sample
alone; the table gives the median and the worst sample.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PEERS = ("ours joint", "ours independent", "torchode", "torchdiffeq")
REFERENCE_SAMPLES = 16  # samples of a batch checked against scipy (each is its own scipy solve)


class Counted:
    """The batch of Van der Pol fields ``x' = v, v' = μ_b (1 - x²) v - x``, counting batched calls."""

    def __init__(self, mu: torch.Tensor):
        self.mu, self.calls = mu, 0

    def __call__(self, t, y):
        self.calls += 1
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x], dim=-1)


def reference(mu: torch.Tensor, y0: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    from scipy.integrate import solve_ivp

    out = []
    for b in range(len(mu)):
        m = float(mu[b])
        sol = solve_ivp(lambda _, z, m=m: [z[1], m * (1 - z[0] ** 2) * z[1] - z[0]], (float(t[0]), float(t[-1])), y0[b].tolist(),
                        method="DOP853" if m < 30 else "Radau", t_eval=t.tolist(), rtol=1e-11, atol=1e-11)
        out.append(sol.y.T)
    return np.stack(out, axis=1)  # (T, B, 2)


def solve(peer: str, field: Counted, y0: torch.Tensor, t: torch.Tensor, tol: float) -> torch.Tensor:
    if peer.startswith("ours"):
        from odecli.solvers import odeint

        mode = "independent" if peer.endswith("independent") else "joint"
        return odeint(field, y0, t, rtol=tol, atol=tol, method="dopri5", options={"batch_mode": mode})
    if peer == "torchdiffeq":
        import torchdiffeq

        return torchdiffeq.odeint(field, y0, t, rtol=tol, atol=tol, method="dopri5")
    import torchode

    term = torchode.ODETerm(field)
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), torchode.IntegralController(atol=tol, rtol=tol, term=term))
    solution = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t.expand(len(y0), -1)))
    return solution.ys.transpose(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "batch_mode.md")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    problems = [
        (f"{batch} × μ = 1..{top} (log-spaced), t ∈ [0, {t_end:g}]", torch.logspace(0, math.log10(top), batch, dtype=torch.float64), t_end, 1e-6)
        for batch in (16, 512)
        for top, t_end in ((10, 30.0), (100, 10.0))
    ]
    lines = [
        f"Per-sample vs joint step control — {platform.processor() or platform.machine()}, {os.cpu_count()} cores (1 thread), "
        f"torch {torch.__version__}, {datetime.now():%Y-%m-%d}; command: `.venv/bin/python benchmarks/batch_mode.py`",
        "",
        "Van der Pol, batches of 16 and 512 (one μ per sample), y0 = (2, 0), 31 output times, dopri5, float64. NFE = batched "
        f"calls of the field. Error vs scipy (rtol = atol = 1e-11) per sample: median / worst (of {REFERENCE_SAMPLES} evenly "
        "spaced samples where the batch is larger). 'independent vs joint' and 'independent vs torchode' rows: wall-time "
        "ratios from this run (< 1: per-sample control is faster).",
        "",
        "| problem | rtol = atol | peer | NFE | wall time (s) | error median | error worst |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, mu, t_end, tol in problems:
        y0 = torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu)], dim=-1)
        t = torch.linspace(0, t_end, 31, dtype=torch.float64)
        checked = torch.linspace(0, len(mu) - 1, min(len(mu), REFERENCE_SAMPLES)).round().long()
        exact = reference(mu[checked], y0[checked], t)
        times = {}
        for peer in PEERS:
            best, nfe, out = float("inf"), 0, None
            for _ in range(args.repeats):
                field = Counted(mu)
                start = time.perf_counter()
                with torch.no_grad():
                    out = solve(peer, field, y0, t, tol)
                best = min(best, time.perf_counter() - start)
                nfe = field.calls
            times[peer] = best
            errors = np.abs(out[:, checked].numpy() - exact).max(axis=(0, 2))
            lines.append(f"| {label} | {tol:g} | {peer} | {nfe} | {best:.2f} | {np.median(errors):.1e} | {errors.max():.1e} |")
            print(lines[-1], flush=True)
        for peer in ("ours joint", "torchode"):
            lines.append(f"| {label} | {tol:g} | independent vs {peer.removeprefix('ours ')} | | {times['ours independent'] / times[peer]:.2f}× | | |")
            print(lines[-1], flush=True)
    lines.append("")
    lines.append(f"Total benchmark time: {time.perf_counter() - began:.0f} s.")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
