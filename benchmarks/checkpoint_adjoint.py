"""Memory, time and gradient error of direct backprop, the checkpoint adjoint and the continuous adjoint.

    .venv/bin/python benchmarks/checkpoint_adjoint.py [--out benchmarks/checkpoint_adjoint.md] [--steps 100 1000 10000]

Problem: an MLP vector field (2 → 32 → 2, tanh, float64) on a batch of 32 states, loss = a weighted
sum of the solution at 11 output times. Fixed-grid rows use rk4 with ``step_size = 1/steps`` on
[0, 1] (so the step count is forced); the adaptive row uses dopri5 at rtol = atol = 1e-8 on [0, 10].

Each mode runs in its own fresh interpreter (one thread) over the problems in increasing size: per
problem a warm-up solve, then one forward+backward whose wall time is taken and whose memory is the
growth of the process's peak resident set size over its size just before (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``,
after ``gc.collect()`` and ``malloc_trim(0)``; ``benchmarks/run.py``'s ``PeakMemory``). PyTorch's CPU
allocator is plain malloc, so this counts the autograd graph, the checkpoint tape and every
temporary, as a user's machine sees it. Gradient error: ``max |g - g_direct| / max |g_direct|`` over
the gradients of y0 and every parameter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("direct", "checkpoint", "checkpoint_sqrt", "adjoint")
MODE_LABELS = {
    "direct": "direct backprop (`odeint`)",
    "checkpoint": "checkpoint, every step (`odeint_checkpoint`)",
    "checkpoint_sqrt": "checkpoint, √N checkpoints",
    "adjoint": "continuous adjoint (`odeint_adjoint`)",
}


def _build(steps: int | None):
    import torch

    torch.manual_seed(0)
    field = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = field

        def forward(self, t, y):
            return self.net(y)

    y0 = torch.randn(32, 2, dtype=torch.float64)
    if steps is None:
        t = torch.linspace(0, 10, 11, dtype=torch.float64)
        kwargs = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-8}
    else:
        t = torch.linspace(0, 1, 11, dtype=torch.float64)
        kwargs = {"method": "rk4", "options": {"step_size": 1.0 / steps}}
    return Field(), y0, t, kwargs


def _run_one(steps: int | None, mode: str, grad_file: str) -> dict:
    """One measured forward+backward in this interpreter (called in a subprocess)."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from run import PeakMemory  # noqa: E402

    from odecli.solvers import odeint, odeint_adjoint, odeint_checkpoint, track_stats

    torch.set_num_threads(1)
    func, y0, t, kwargs = _build(steps)
    weights = torch.linspace(-1, 1, 11 * 32 * 2, dtype=torch.float64).reshape(11, 32, 2)

    def solve(y0_, n_steps_hint: int):
        if mode == "direct":
            return odeint(func, y0_, t, **kwargs)
        if mode == "checkpoint":
            return odeint_checkpoint(func, y0_, t, **kwargs)
        if mode == "checkpoint_sqrt":
            return odeint_checkpoint(func, y0_, t, checkpoints=max(1, math.isqrt(n_steps_hint)), **kwargs)
        return odeint_adjoint(func, y0_, t, **kwargs)

    def forward_backward(n_steps_hint: int):
        y0_ = y0.clone().requires_grad_(True)
        loss = (solve(y0_, n_steps_hint) * weights).sum()
        grads = torch.autograd.grad(loss, (y0_, *func.parameters()))
        return grads

    # Warm-up: one short forward+backward of the same mode; then the step count that sizes √N checkpoints.
    short_t = t[:2] if steps is None else t[:2] * (20 / steps)
    y_warm = y0.clone().requires_grad_(True)
    warm_solution = {"direct": odeint, "adjoint": odeint_adjoint}.get(mode, odeint_checkpoint)(func, y_warm, short_t, **kwargs)
    torch.autograd.grad(warm_solution.sum(), (y_warm, *func.parameters()))
    if steps is None:
        with torch.no_grad(), track_stats() as counted:
            odeint(func, y0, t, **kwargs)
        n_steps = counted.steps_accepted
    else:
        n_steps = steps
    memory = PeakMemory()
    out = {}

    def measured():
        start = time.perf_counter()
        with track_stats() as tracked:
            out["grads"] = forward_backward(n_steps)
        out["wall"] = time.perf_counter() - start
        out["stats"] = tracked.as_dict()

    peak = memory.measure(measured)
    torch.save([g.detach() for g in out["grads"]], grad_file)
    return {"peak_mib": peak, "wall_s": out["wall"], "steps": n_steps, **out["stats"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "checkpoint_adjoint.md")
    parser.add_argument("--steps", type=int, nargs="*", default=[100, 1000, 10000])
    parser.add_argument("--no-adaptive", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("PROBLEMS", "MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        problems, mode, directory = args.child
        results = []
        for problem in problems.split(","):
            steps = None if problem == "adaptive" else int(problem)
            results.append(_run_one(steps, mode, os.path.join(directory, f"{problem}-{mode}.pt")))
        print(json.dumps(results))
        return

    import torch

    began = time.perf_counter()
    problems = [*(str(s) for s in args.steps), *([] if args.no_adaptive else ["adaptive"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        by_mode = {}
        for mode in MODES:
            done = subprocess.run([sys.executable, __file__, "--child", ",".join(problems), mode, tmp], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
            if done.returncode != 0:
                raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
            by_mode[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(mode, json.dumps(by_mode[mode]), flush=True)
        for index, problem in enumerate(problems):
            reference = torch.load(os.path.join(tmp, f"{problem}-direct.pt"))
            scale = max(float(g.abs().max()) for g in reference)
            for mode in MODES:
                grads = torch.load(os.path.join(tmp, f"{problem}-{mode}.pt"))
                error = max(float((a - b).abs().max()) for a, b in zip(grads, reference, strict=True)) / scale
                rows.append({**by_mode[mode][index], "problem": problem, "mode": mode, "error": error})
    total = time.perf_counter() - began

    def fmt_mem(value):
        return "n/a" if value is None else f"{value:.1f}"

    lines = [
        f"Checkpoint adjoint vs direct backprop vs continuous adjoint — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (1 thread), torch {torch.__version__}, {datetime.now():%Y-%m-%d}; "
        f"command: `.venv/bin/python benchmarks/checkpoint_adjoint.py` ({total:.0f} s in all).",
        "",
        "MLP field 2→32→2 (tanh, float64), batch 32, loss on 11 output times. rk4 rows: `step_size=1/N` on [0, 1]; "
        "dopri5 row: rtol = atol = 1e-8 on [0, 10]. Peak memory: growth of peak RSS during one forward+backward in a "
        "fresh interpreter per mode. Gradient error: max |g − g_direct| / max |g_direct| over y0 and the parameters.",
        "",
        "| problem | steps | mode | peak memory (MiB) | forward+backward (s) | NFE fwd | NFE bwd | gradient error vs direct |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        problem = "dopri5 (adaptive)" if row["problem"] == "adaptive" else "rk4"
        lines.append(
            f"| {problem} | {row['steps']} | {MODE_LABELS[row['mode']]} | {fmt_mem(row['peak_mib'])} | {row['wall_s']:.2f} | "
            f"{row['nfe_forward']} | {row['nfe_backward']} | {row['error']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
