"""The compiled step (``options={'compile': True}``) against eager odecli, torchode (eager and compiled) and torchdiffeq.

Writes ``benchmarks/compile.md``::

    .venv/bin/python benchmarks/compile.py              # inductor (minutes: the compiles dominate)
    .venv/bin/python benchmarks/compile.py --repeats 3  # fewer steady-state solves

One problem, the one the compiled step is for: the spiral ``y**3 @ A``, batch 1, float64, 1000 outputs on
[0, 25], dopri5 at rtol 1e-7 / atol 1e-9, under ``no_grad``, one thread. For each peer:

* first solve: the wall time of the first call in a process (for a compiled peer: tracing, the backend's
  compile and the solve), in two processes sharing one fresh inductor cache: cold (the first) and warm (the
  second finds the first's compiled code on disk);
* steady state: the median of ``--repeats`` further solves, the peers taking turns;
* compile wait: first solve - steady state;
* break-even: the solves after which compiling has paid for itself, compile wait / (eager steady - compiled
  steady), against the same library's eager solve ("never" when the compiled solve is not faster);
* NFE: odecli's own count (``track_stats``), torchode's ``n_f_evals``, a counter in the field for torchdiffeq.

torchode is compiled as its README suggests compiling a solver, but through its ``solve`` method:
``torch.compile(solver).solve(...)`` would call the uncompiled method of the wrapped module.
A peer that is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing odecli
    sys.path.insert(0, str(ROOT))

import odecli  # noqa: E402

SPIRAL_A = [[-0.1, 2.0], [-2.0, -0.1]]
RTOL, ATOL = 1e-7, 1e-9


class Spiral(nn.Module):
    """dy/dt = (y**3) @ A (no call counter: a counter is Python state a compiler would specialise on)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("A", torch.tensor(SPIRAL_A, dtype=torch.float64))

    def forward(self, t, y):
        return torch.mm(y**3, self.A)


class CountingSpiral(Spiral):
    def __init__(self):
        super().__init__()
        self.call_count = [0]

    def forward(self, t, y):
        self.call_count[0] += 1
        return super().forward(t, y)


def peers(backend: str):
    """``(name, library, make) ``: ``make()`` returns ``solve() -> (solution, nfe)``."""
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 25.0, 1000, dtype=torch.float64)

    def odecli_peer(compiled: bool):
        field = Spiral()
        options = {"compile": True, "compile_backend": backend} if compiled else None

        def solve():
            with odecli.track_stats() as stats:
                solution = odecli.odeint(field, y0, t, rtol=RTOL, atol=ATOL, method="dopri5", options=options)
            return solution, stats.nfe_forward

        return solve

    def torchode_peer(compiled: bool):
        import torchode as to

        term = to.ODETerm(Spiral())
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
        run = torch.compile(solver.solve, backend=backend) if compiled else solver.solve
        problem = to.InitialValueProblem(y0=y0, t_eval=t.unsqueeze(0))

        def solve():
            solution = run(problem)
            return solution.ys.transpose(0, 1), int(solution.stats["n_f_evals"].sum())

        return solve

    def torchdiffeq_peer():
        import torchdiffeq

        field = CountingSpiral()

        def solve():
            field.call_count[0] = 0
            return torchdiffeq.odeint(field, y0, t, rtol=RTOL, atol=ATOL, method="dopri5"), field.call_count[0]

        return solve

    return [
        ("odecli eager", "odecli", lambda: odecli_peer(False)),
        (f"odecli compiled ({backend})", "odecli", lambda: odecli_peer(True)),
        ("torchode eager", "torchode", lambda: torchode_peer(False)),
        (f"torchode compiled ({backend})", "torchode", lambda: torchode_peer(True)),
        ("torchdiffeq eager", "torchdiffeq", torchdiffeq_peer),
    ]


def measure(makers: dict, repeats: int) -> dict:
    """Each peer's first solve, then ``repeats`` rounds in which the peers take turns (a slow phase of a shared
    machine then hits all of them alike); the median and range of each peer's solves."""
    solves, results = {}, {}
    with torch.no_grad():
        for name, make in makers.items():
            solves[name] = make()
            start = time.perf_counter()
            solution, nfe = solves[name]()
            results[name] = {"first": time.perf_counter() - start, "nfe": nfe, "solution": solution, "times": []}
            print(f"{name}: first {results[name]['first']:.2f} s, NFE {nfe}", file=sys.stderr, flush=True)
        for _ in range(repeats):
            for name, solve in solves.items():
                start = time.perf_counter()
                solve()
                results[name]["times"].append(time.perf_counter() - start)
    for result in results.values():
        times = result.pop("times")
        result["steady"], result["spread"] = statistics.median(times), (min(times), max(times))
    return results


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def table(repeats: int, backend: str) -> tuple[list[str], list[str]]:
    """Every peer measured in this process: the table's rows, and notes on skipped peers."""
    torch.set_num_threads(1)
    makers, notes = {}, []
    for name, library, make in peers(backend):
        try:
            __import__(library)
        except ImportError as exc:
            notes.append(f"{library} is not installed ({exc}): {name} skipped.")
            continue
        makers[name] = make
    results = measure(makers, repeats)
    reference = results.get("odecli eager", {}).get("solution")
    rows = []
    for name, result in results.items():
        library = name.split()[0]
        eager = results.get(f"{library} eager")
        wait = result["first"] - result["steady"]
        break_even = "-"
        if "compiled" in name and eager is not None:
            gain = eager["steady"] - result["steady"]
            break_even = f"{max(wait - (eager['first'] - eager['steady']), 0.0) / gain:.0f} solves" if gain > 0 else "never (not faster)"
        difference = "-" if reference is None else f"{(result['solution'] - reference).abs().max().item():.1e}"
        low, high = result["spread"]
        rows.append(
            f"| {name} | {result['first']:.2f} | {wait:.2f} | {result['steady'] * 1e3:.1f} ({low * 1e3:.1f}-{high * 1e3:.1f}) | "
            f"{break_even} | {result['nfe']} | {difference} |"
        )
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="steady-state solves after the first (median reported)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for both compiled peers")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "compile.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one process's measurements, as JSON
    args = parser.parse_args(argv)
    if args.child:
        rows, notes = table(args.repeats, args.backend)
        print(json.dumps({"rows": rows, "notes": notes}))
        return

    # Two processes on one inductor cache: the first compiles cold (as a user's first run), the second finds the
    # first's compiled code on disk (as every later run on that machine) but still traces and loads it.
    cache = tempfile.mkdtemp(prefix="odecli-compile-bench-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    load_before = load_average()
    runs = []
    for _ in ("cold", "warm"):
        child = [sys.executable, str(Path(__file__).resolve()), "--child", "--repeats", str(args.repeats), "--backend", args.backend]
        output = subprocess.run(child, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    load_after = load_average()
    header = ["| peer | first solve (s) | compile wait (s) | steady (ms) | break-even | NFE | difference |", "|---|---|---|---|---|---|---|"]
    lines = [
        "# The compiled step: odecli and torchode, eager and compiled, and torchdiffeq",
        "",
        f"Command: `.venv/bin/python benchmarks/compile.py --repeats {args.repeats} --backend {args.backend}` "
        f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, 1 thread; load average before {load_before}, after {load_after}: "
        "a 2-core machine shared with other jobs, so the times carry its noise).",
        "",
        "Problem: the spiral `y**3 @ A`, batch 1, float64, 1000 outputs on [0, 25], dopri5, rtol 1e-7 / atol 1e-9, "
        "no_grad. First solve: the first call in the process (compiling included); steady: the median (range) of the "
        f"{args.repeats} solves after it, the peers taking turns; compile wait: first - steady; break-even: the number of solves after which the "
        "compiled peer has caught up with the same library's eager one, (its extra first-solve wait) / (steady-state gain); "
        "difference: max |y - y(odecli eager)|.",
        "",
        "## Cold: a fresh process, inductor's on-disk cache empty (a user's first run)",
        "",
        *header,
        *runs[0]["rows"],
        "",
        "## Warm: a second process on the first one's inductor cache (every later run on the machine)",
        "",
        *header,
        *runs[1]["rows"],
        "",
        *[f"- {note}" for note in runs[0]["notes"]],
    ]
    args.output.write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
