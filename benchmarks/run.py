"""odecli against torchdiffeq and torchode: the same problems, side by side, in one process.

Prints a markdown report and writes it to ``benchmarks/results.md`` (``make bench``)::

    .venv/bin/python benchmarks/run.py                 # the full benchmark (a few minutes)
    .venv/bin/python benchmarks/run.py --quick         # a small subset, one repeat (< 60 s; prints only)
    .venv/bin/python benchmarks/run.py --problems spiral --repeats 9 --threads 2

What is measured, per problem and peer:

* wall time (or, with ``--clock cpu``, this process's CPU time): the median of ``--repeats`` runs
  after one warm-up run; peers take turns within each repeat so that a slow phase of the machine
  hits all of them alike (the fixed-step memory runs are timed once);
* NFE: calls of the vector field counted by the field itself (forward + backward; a direct
  backward pass re-evaluates nothing, so it shows as ``+0``), the same counter for every peer;
* error: the largest absolute difference from a float64 reference by scipy's DOP853 at
  rtol = atol = 1e-12 (an oracle independent of all three peers);
* peak memory: the growth of the process's peak resident set size (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``) over its size just before one extra run, after ``gc.collect()`` and
  ``malloc_trim(0)`` returned freed heap to the system. PyTorch's CPU allocator is plain malloc,
  so this counts every tensor, the autograd graph and allocator slack — what a user's machine
  sees — at page (4 KiB) granularity, though growth below ~1 MiB is allocator slack rather than
  data. The fixed-step runs each get a fresh interpreter and a 100-step warm-up first, so that
  no earlier run's heap shapes their peak. ``n/a`` where ``/proc`` or glibc are unavailable.

The solver overhead is wall time / (NFE × time of one evaluation of ``f`` alone): how many
evaluations' worth of time each solver spends per evaluation it makes. Two measures of "f alone":
the field under ``no_grad`` (issue 4), and the strict one — the field called directly, grad mode as it
is, no ``no_grad`` block (issue 21) — for the spiral at batch 1 and 512 and the 2-50-2 network
forward. The fields count their calls in a list item (~50 ns), not a module attribute (2-3 us).

A peer that is not installed is skipped with a note. torchode runs eagerly (no ``torch.compile``
or JIT), steps every batch element with its own step size, and has no fixed-step rk4, so it is
absent from the fixed-grid memory table.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing odecli
    sys.path.insert(0, str(ROOT))

import odecli  # noqa: E402

PEERS = ("odecli", "torchdiffeq", "torchode")
SPIRAL_A = [[-0.1, 2.0], [-2.0, -0.1]]
REFERENCE_TOL = 1e-12
MEMORY_RESOLUTION_MIB = 1.0  # peak-RSS growth below this is not attributable (a Python arena is 1 MiB)


# --------------------------------------------------------------------------------------------
# Vector fields. Each counts its own calls, so NFE is measured the same way for every peer.


class CountingField(nn.Module):
    """A vector field that counts its calls for ~50 ns each.

    ``self.calls += 1`` on a module goes through ``nn.Module.__setattr__`` (2-3 us a call here): more than a
    third of the spiral's own evaluation, charged to every solver. A list item costs nothing noticeable.
    """

    def __init__(self):
        super().__init__()
        self.call_count = [0]

    @property
    def calls(self) -> int:
        return self.call_count[0]

    @calls.setter
    def calls(self, value: int) -> None:
        self.call_count[0] = value


class Spiral(CountingField):
    """dy/dt = (y**3) @ A: torchdiffeq's ``ode_demo`` spiral."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("A", torch.tensor(SPIRAL_A, dtype=dtype))

    def forward(self, t, y):
        self.call_count[0] += 1
        return torch.mm(y**3, self.A)


class TanhNet(CountingField):
    """``ode_demo``'s ODEFunc: a 2-50-2 tanh network applied to y**3 (weights N(0, 0.1), zero bias)."""

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2)).to(dtype)
        with torch.no_grad():
            for layer in (self.net[0], self.net[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=dtype) * 0.1)
                layer.bias.zero_()

    def forward(self, t, y):
        self.call_count[0] += 1
        return self.net(y**3)


class MLP(CountingField):
    """A 64-256-256-64 tanh MLP: a vector field whose evaluations dominate the solve."""

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 64)).to(dtype)

    def forward(self, t, y):
        self.call_count[0] += 1
        return self.net(y)


# --------------------------------------------------------------------------------------------
# Problems.


@dataclass
class Problem:
    """One benchmark case: a vector field, a start, output times, a method, tolerances and a mode."""

    name: str
    description: str
    make_field: Callable[[], nn.Module]
    y0: torch.Tensor  # (batch, features)
    t: torch.Tensor
    method: str = "dopri5"
    rtol: float = 1e-7
    atol: float = 1e-9
    mode: str = "forward"  # forward | direct (forward+backward through the solver) | adjoint
    options: dict[str, Any] = field(default_factory=dict)
    group: str = "speed"  # speed | memory
    quick: bool = False
    overhead: bool = False  # report the solver overhead on this problem

    @property
    def batch(self) -> int:
        return self.y0.shape[0]


def spiral_trajectory_points(count: int, seed: int) -> torch.Tensor:
    """``count`` points of the true spiral (float64), a realistic batch of starting states."""
    import numpy as np
    from scipy.integrate import solve_ivp

    a = np.array(SPIRAL_A)
    t = np.linspace(0.0, 25.0, 1000)
    sol = solve_ivp(lambda _, y: (y**3) @ a, (0.0, 25.0), [2.0, 0.0], t_eval=t, method="DOP853", rtol=1e-10, atol=1e-12)
    rng = np.random.default_rng(seed)
    index = rng.choice(990, size=count, replace=False)
    return torch.tensor(sol.y.T[index], dtype=torch.float64)


def build_problems() -> list[Problem]:
    """Every problem the issue lists, in the order of the report."""
    f64, f32 = torch.float64, torch.float32
    spiral_t = torch.linspace(0.0, 25.0, 1000, dtype=f64)
    problems = []
    for batch in (1, 512):
        y0 = torch.tensor([[2.0, 0.0]], dtype=f64) if batch == 1 else spiral_trajectory_points(batch, seed=1)
        for rtol, atol in ((1e-7, 1e-9), (1e-3, 1e-4)):
            problems.append(Problem(
                name=f"spiral_b{batch}_rtol{rtol:g}",
                description=f"spiral y**3@A, batch {batch}, float64, 1000 outputs on [0, 25]",
                make_field=lambda: Spiral(f64), y0=y0, t=spiral_t, rtol=rtol, atol=atol,
                quick=(rtol == 1e-3), overhead=True,
            ))
    # ode_demo's training setting: batch 20 of 10-point windows (batch_time 10 of the spiral grid).
    net_y0 = spiral_trajectory_points(20, seed=2).to(f32)
    net_t = torch.linspace(0.0, 25.0, 1000, dtype=f32)[:10]
    for mode in ("forward", "direct", "adjoint"):
        problems.append(Problem(
            name=f"tanh_2_50_2_{mode}", description="2-50-2 tanh net on y**3, batch 20, float32, 10 outputs on [0, 0.225]",
            make_field=lambda: TanhNet(f32), y0=net_y0, t=net_t, mode=mode, quick=(mode != "adjoint"),
            overhead=(mode == "forward"),
        ))
    mlp_y0 = torch.randn(256, 64, generator=torch.Generator().manual_seed(3), dtype=f32)
    mlp_t = torch.linspace(0.0, 1.0, 10, dtype=f32)
    for mode in ("forward", "direct"):
        problems.append(Problem(
            name=f"mlp_64_256_256_64_{mode}", description="64-256-256-64 tanh MLP, batch 256, float32, 10 outputs on [0, 1]",
            make_field=lambda: MLP(f32), y0=mlp_y0, t=mlp_t, rtol=1e-5, atol=1e-6, mode=mode,
        ))
    for steps in (100, 1000, 10000):
        for mode in ("direct", "adjoint"):
            problems.append(Problem(
                name=f"rk4_{steps}_steps_{mode}", description="rk4 (3/8 rule), fixed step, 2-50-2 tanh net, batch 20, float32, t in [0, 1]",
                make_field=lambda: TanhNet(f32), y0=net_y0, t=torch.tensor([0.0, 1.0], dtype=f32),
                method="rk4", options={"step_size": 1.0 / steps}, mode=mode, group="memory", quick=(steps == 100),
            ))
    return problems


# --------------------------------------------------------------------------------------------
# Peers: each solves a problem with its own API and returns the solution as (len(t), batch, features).


def available_peers(requested: list[str]) -> tuple[list[str], list[str]]:
    """The requested peers that import, and a note for each one that does not."""
    peers, notes = [], []
    for peer in requested:
        if peer == "odecli":
            peers.append(peer)
            continue
        try:
            __import__(peer)
        except ImportError as exc:
            notes.append(f"{peer} is not installed ({exc}); its columns are empty.")
        else:
            peers.append(peer)
    return peers, notes


class Runner:
    """One peer on one problem: built once (a torchode solver is a module), then called repeatedly."""

    def __init__(self, peer: str, problem: Problem):
        self.peer, self.problem = peer, problem
        self.func = problem.make_field()
        self.y0, self.t = problem.y0.to(problem.t.dtype), problem.t
        if problem.mode != "forward":
            self.y0 = self.y0.clone().requires_grad_(True)
        self.solve = getattr(self, f"_build_{peer}")()

    def supported(self) -> bool:
        return self.solve is not None

    def run(self) -> torch.Tensor:
        """One solve (and backward pass, by the problem's mode); the solution, detached."""
        if self.problem.mode == "forward":
            with torch.no_grad():
                return self.solve()
        for p in self.func.parameters():
            p.grad = None
        self.y0.grad = None
        solution = self.solve()
        solution.pow(2).sum().backward()
        return solution.detach()

    def _build_odecli(self):
        p = self.problem
        solve = odecli.odeint_adjoint if p.mode == "adjoint" else odecli.odeint
        return lambda: solve(self.func, self.y0, self.t, rtol=p.rtol, atol=p.atol, method=p.method, options=p.options or None)

    def _build_torchdiffeq(self):
        import torchdiffeq

        p = self.problem
        solve = torchdiffeq.odeint_adjoint if p.mode == "adjoint" else torchdiffeq.odeint
        return lambda: solve(self.func, self.y0, self.t, rtol=p.rtol, atol=p.atol, method=p.method, options=p.options or None)

    def _build_torchode(self):
        import torchode as to

        p = self.problem
        if p.method != "dopri5":
            return None  # torchode has no rk4
        term = to.ODETerm(self.func)
        step_method = to.Dopri5(term=term)
        controller = to.IntegralController(atol=p.atol, rtol=p.rtol, term=term)
        if p.mode == "adjoint":
            solver = to.BacksolveAdjoint(term, step_method, controller)
        else:
            solver = to.AutoDiffAdjoint(step_method, controller)
        t_eval = self.t.unsqueeze(0).expand(p.batch, -1)

        def solve():
            solution = solver.solve(to.InitialValueProblem(y0=self.y0, t_eval=t_eval))
            return solution.ys.transpose(0, 1)

        return solve


# --------------------------------------------------------------------------------------------
# Measurements.


def reference_solution(problem: Problem) -> torch.Tensor:
    """The problem's solution by scipy's DOP853 in float64 at rtol = atol = 1e-12."""
    import numpy as np
    from scipy.integrate import solve_ivp

    func = problem.make_field().to(torch.float64)
    shape = problem.y0.shape
    t = problem.t.to(torch.float64).numpy()

    def rhs(time, y):
        with torch.no_grad():
            return func(torch.tensor(time), torch.from_numpy(y).view(shape)).reshape(-1).numpy()

    y0 = problem.y0.to(torch.float64).reshape(-1).numpy()
    sol = solve_ivp(rhs, (t[0], t[-1]), y0, t_eval=t, method="DOP853", rtol=REFERENCE_TOL, atol=REFERENCE_TOL)
    if not sol.success:
        raise RuntimeError(f"reference solve failed for {problem.name}: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y.T)).view(len(t), *shape)


class PeakMemory:
    """Peak resident-set growth during a block (Linux VmHWM, reset via /proc/self/clear_refs)."""

    def __init__(self):
        self.available = True
        try:
            self._trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._status_kib("VmHWM")
        except (OSError, AttributeError, ValueError):
            self.available = False

    @staticmethod
    def _status_kib(key: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise ValueError(key)

    def measure(self, run: Callable[[], Any]) -> float | None:
        """MiB by which the peak RSS during ``run()`` exceeds the RSS just before it."""
        if not self.available:
            run()
            return None
        gc.collect()
        self._trim(0)
        before = self._status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        run()
        peak = self._status_kib("VmHWM")
        return max(peak - before, 0) / 1024.0


@dataclass
class Result:
    """One peer on one problem."""

    wall_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    nfe_forward: int | None = None
    nfe_backward: int | None = None
    error: float | None = None
    peak_mib: float | None = None
    note: str = ""


class BareEvaluation:
    """Times ``f(t0, y0)`` alone (no solver), in blocks taken between the solver runs, two ways.

    * ``counted``: the field the solvers call (its call counter included), the block under
      ``no_grad`` (issue 4's measure);
    * ``strict``: the same field called directly with grad mode as it is, no block around the calls
      (issue 21's measure: 1.0 is a solver that adds nothing to f).
    """

    def __init__(self, problem: Problem, calls: int = 500):
        self.counted_func = problem.make_field()
        self.strict_func = problem.make_field()
        self.y0, self.t0 = problem.y0.to(problem.t.dtype), problem.t[0]
        self.calls = calls
        self.counted_s: list[float] = []
        self.strict_s: list[float] = []
        self.block(clock=time.perf_counter, keep=False)  # warm-up

    def block(self, clock: Callable[[], float], keep: bool = True) -> None:
        t0, y0, calls = self.t0, self.y0, self.calls
        func = self.counted_func
        with torch.no_grad():
            start = clock()
            for _ in range(calls):
                func(t0, y0)
            counted = clock() - start
        func = self.strict_func
        start = clock()
        for _ in range(calls):
            func(t0, y0)
        strict = clock() - start
        if keep:
            self.counted_s.append(counted / calls)
            self.strict_s.append(strict / calls)

    def median_s(self, strict: bool) -> float:
        return statistics.median(self.strict_s if strict else self.counted_s)


def _count_run(runner: Runner, result: Result) -> torch.Tensor:
    """One solve (and backward) counting forward and backward NFE; the detached solution."""
    func = runner.func
    func.calls = 0
    if runner.problem.mode == "forward":
        with torch.no_grad():
            solution = runner.solve()
        result.nfe_forward = func.calls
        return solution
    for p in func.parameters():
        p.grad = None
    runner.y0.grad = None
    answer = runner.solve()
    result.nfe_forward, func.calls = func.calls, 0
    answer.pow(2).sum().backward()
    result.nfe_backward = func.calls
    return answer.detach()


def measure_memory_run(problem: Problem, peer: str, memory: PeakMemory, clock: Callable[[], float]) -> Result:
    """One counted, timed and weighed run, after a 100-step warm-up of the same peer and mode."""
    result = Result()
    _count_run(Runner(peer, dataclasses.replace(problem, options={"step_size": 0.01})), Result())
    runner = Runner(peer, problem)
    start = clock()
    result.peak_mib = memory.measure(lambda: _count_run(runner, result))
    result.times_s.append(clock() - start)
    result.wall_s = result.times_s[0]
    return result


def measure_memory_isolated(problem: Problem, peer: str, args: list[str]) -> Result:
    """``measure_memory_run`` in a fresh interpreter, so no earlier run's heap shapes the peak."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure-memory", f"{problem.name}:{peer}", *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run {problem.name}:{peer} failed:\n{done.stderr[-2000:]}")
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(**fields)


class _CountTorchCalls(TorchFunctionMode):
    """Counts the calls into torch's Python API (functions, tensor methods and operators) made while active."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def eager_floor(problem: Problem, bare_strict_s: float, clock: Callable[[], float]) -> dict[str, float]:
    """What a solver that only makes odecli's torch calls, each at the cost of one tiny op, would cost per f call.

    ``calls_per_eval``: torch calls odecli makes per evaluation of f, beyond f's own (one counted solve);
    ``op_us``: median time of one tiny op (``torch.add`` of two 2-element tensors), in blocks of 1000;
    ``floor``: ``1 + calls_per_eval × op_us / f``, the overhead of eager dispatch alone.
    """
    runner = Runner("odecli", problem)
    with _CountTorchCalls() as in_f:
        with torch.no_grad():
            runner.func(problem.t[0], runner.y0)
    runner.func.calls = 0
    with _CountTorchCalls() as in_solve:
        runner.run()
    evaluations = runner.func.calls
    calls_per_eval = (in_solve.calls - evaluations * in_f.calls) / evaluations
    x = torch.ones(2, dtype=torch.float64)
    blocks = []
    for _ in range(7):
        start = clock()
        for _ in range(1000):
            torch.add(x, x)
        blocks.append((clock() - start) / 1000)
    op_s = statistics.median(blocks)
    return {"calls_per_eval": calls_per_eval, "op_us": op_s * 1e6, "floor": 1 + calls_per_eval * op_s / bare_strict_s}


def measure_problem(problem: Problem, peers: list[str], repeats: int, memory: PeakMemory, reference: torch.Tensor | None,
                    clock: Callable[[], float] = time.perf_counter, bare: BareEvaluation | None = None,
                    isolate: list[str] | None = None) -> dict[str, Result]:
    """Time, count, check and weigh every peer on one problem.

    Speed problems: one counted warm-up run per peer, then ``repeats`` rounds in which the peers
    (and the bare-evaluation timer, if given) take turns, then one run for peak memory. Memory
    problems (long fixed-step runs): one counted run per peer that is also timed and weighed, after a
    100-step warm-up of the same peer and mode so first-call allocations stay out of the peak; with
    ``isolate`` (the arguments to pass on), each such run gets a fresh interpreter of its own.
    """
    runners, results = {}, {}
    for peer in peers:
        runner = Runner(peer, problem)
        if not runner.supported():
            results[peer] = Result(note="no such method")
            continue
        runners[peer], results[peer] = runner, Result()
    if problem.group == "memory":
        for peer in runners:
            results[peer] = measure_memory_isolated(problem, peer, isolate) if isolate is not None else measure_memory_run(problem, peer, memory, clock)
        return results
    for peer, runner in runners.items():
        solution = _count_run(runner, results[peer])
        if reference is not None:
            results[peer].error = float((solution.to(torch.float64) - reference).abs().max())
    for _ in range(repeats):
        if bare is not None:
            bare.block(clock)
        for peer, runner in runners.items():
            start = clock()
            runner.run()
            results[peer].times_s.append(clock() - start)
    for peer, runner in runners.items():
        results[peer].wall_s = statistics.median(results[peer].times_s)
        results[peer].peak_mib = memory.measure(runner.run)
    return results


# --------------------------------------------------------------------------------------------
# Targets (issue 4, "Performance").


@dataclass
class Target:
    what: str
    threshold: str
    measured: str
    passed: bool | None  # None: not measured (a peer missing)


def _ratio(results: dict[str, Result], peer: str) -> float | None:
    mine, theirs = results.get("odecli"), results.get(peer)
    if mine is None or theirs is None or mine.wall_s is None or theirs.wall_s is None:
        return None
    return theirs.wall_s / mine.wall_s


def speed_targets(problem: Problem, results: dict[str, Result]) -> list[Target]:
    """The speed-up targets that apply to one problem."""
    targets = []
    name = problem.name
    wanted = None
    if name.startswith("spiral_b1_"):
        wanted = 5.0
    elif name.startswith("spiral_b512_"):
        wanted = 2.0
    elif name.startswith("tanh_2_50_2_") and problem.mode != "forward":
        wanted = 1.5
    elif name.startswith("mlp_"):
        wanted = 1.0
    if wanted is not None:
        ratio = _ratio(results, "torchdiffeq")
        targets.append(Target(f"{name}: speed-up vs torchdiffeq", f">= {wanted:g}x", "-" if ratio is None else f"{ratio:.2f}x", None if ratio is None else ratio >= wanted))
    if problem.group == "speed":
        ratio = _ratio(results, "torchode")
        targets.append(Target(f"{name}: faster than torchode", "> 1x", "-" if ratio is None else f"{ratio:.2f}x", None if ratio is None else ratio > 1.0))
        mine, theirs = results.get("odecli"), results.get("torchdiffeq")
        if mine and theirs and mine.nfe_forward and theirs.nfe_forward:
            nfe_ratio = mine.nfe_forward / theirs.nfe_forward
            error_ok = mine.error is None or theirs.error is None or mine.error <= 1.1 * theirs.error + 1e-15
            measured = f"NFE {nfe_ratio:.2f}x, error {mine.error:.1e} vs {theirs.error:.1e}" if mine.error is not None and theirs.error is not None else f"NFE {nfe_ratio:.2f}x"
            targets.append(Target(f"{name}: parity with torchdiffeq", "NFE within 10%, error <= 1.1x", measured, abs(nfe_ratio - 1) <= 0.1 and error_ok))
    return targets


# --------------------------------------------------------------------------------------------
# Report.


def _fmt_time(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def _fmt_nfe(result: Result) -> str:
    if result.nfe_forward is None:
        return "-"
    return f"{result.nfe_forward}" if result.nfe_backward is None else f"{result.nfe_forward}+{result.nfe_backward}"


def _fmt_error(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _fmt_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _getter(results: dict[str, Result]) -> Callable[[str], Result]:
    return lambda peer: results.get(peer, Result())


def render(report: dict[str, Any]) -> str:
    """The markdown report."""
    peers: list[str] = report["peers"]
    lines = [
        "# Solver benchmark: odecli vs torchdiffeq vs torchode",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; {report['machine']}; torch {report['versions'].get('torch')}, "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "torch")
        + f"; {report['threads']} thread(s); median of {report['repeats']} repeat(s) after one warm-up.",
        "",
        ("Wall time" if report["clock"] == "wall" else "CPU time of this process (`--clock cpu`)")
        + " in ms (forward, or forward + `loss.backward()` for direct/adjoint rows). NFE: calls of "
        "the vector field, forward+backward. Error: max |y - y_ref| over all outputs, y_ref from scipy DOP853 "
        "in float64 at rtol = atol = 1e-12. Peak: growth of the process's peak RSS during one run, in MiB "
        "(`VmHWM` after `malloc_trim`; fixed-step rows: each run in a fresh interpreter after a 100-step warm-up; growth below ~1 MiB is allocator slack rather than data). `Nx` = odecli's "
        "speed-up (peer time / odecli time). All peers run eagerly; torchode steps each batch element with its "
        "own step size.",
        "",
    ]
    for note in report["notes"]:
        lines.append(f"> {note}")
    if report["notes"]:
        lines.append("")
    speed = [row for row in report["rows"] if row["group"] == "speed"]
    memory_rows = [row for row in report["rows"] if row["group"] == "memory"]
    if speed:
        header = ["problem", "mode", "rtol/atol"]
        header += [f"{p} ms" for p in peers]
        header += [f"NFE {p}" for p in peers]
        header += [f"error {p}" for p in peers]
        header += [f"peak MiB {p}" for p in peers]
        header += [f"vs {p}" for p in peers if p != "odecli"]
        lines += ["## Adaptive dopri5", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in speed:
            get = _getter(row["results"])
            cells = [row["name"], row["mode"], f"{row['rtol']:g}/{row['atol']:g}"]
            cells += [_fmt_time(get(p).wall_s) for p in peers]
            cells += [_fmt_nfe(get(p)) for p in peers]
            cells += [_fmt_error(get(p).error) for p in peers]
            cells += [_fmt_mib(get(p).peak_mib) if get(p).wall_s is not None else "-" for p in peers]
            cells += [_fmt_ratio(_ratio(row["results"], p)) for p in peers if p != "odecli"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        described = {}
        for row in speed:
            described.setdefault(row["description"], row["name"].rsplit("_", 1)[0])
        lines += [f"- {desc}" for desc in described]
        lines.append("")
    if memory_rows:
        fixed_peers = [p for p in peers if p != "torchode"]
        header = ["steps", "mode"] + [f"peak MiB {p}" for p in fixed_peers] + [f"{p} ms" for p in fixed_peers] + [f"NFE {p}" for p in fixed_peers]
        lines += ["## Fixed-step rk4: peak memory of forward+backward", "", memory_rows[0]["description"] + ".", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in memory_rows:
            get = _getter(row["results"])
            cells = [str(row["steps"]), row["mode"]]
            cells += [_fmt_mib(get(p).peak_mib) if get(p).wall_s is not None else "-" for p in fixed_peers]
            cells += [_fmt_time(get(p).wall_s) for p in fixed_peers]
            cells += [_fmt_nfe(get(p)) for p in fixed_peers]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("overhead"):
        lines += ["## Solver overhead", "",
                  "Overhead = wall time / (NFE x time of one evaluation of f alone): 1 would be a solver that costs nothing "
                  "beyond its evaluations. *counted*: f timed in a block under `no_grad` (issue 4's measure); *strict*: f "
                  "called directly, grad mode as it is (issue 21's measure). f alone is timed in blocks of 500 calls between "
                  "the solver runs (median).", "",
                  "| problem | f alone, counted / strict (us) | " + " | ".join(f"{p} counted | {p} strict" for p in peers) + " |",
                  "|" + "---|" * (2 * len(peers) + 2)]
        for name, kinds in report["overhead"].items():
            bare = report["bare_eval_us"][name]
            cells = [name, f"{bare['counted']:.2f} / {bare['strict']:.2f}"]
            for p in peers:
                cells += ["-" if kinds[kind].get(p) is None else f"{kinds[kind][p]:.2f}" for kind in ("counted", "strict")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("eager_floor"):
        lines += ["Eager floor: each torch call (an op, a view, a tensor method) costs the dispatcher about as much as one tiny "
                  "op, whatever the solver's Python does around it. odecli's torch calls per evaluation of f (counted over one "
                  "solve, f's own calls excluded), times the cost of one tiny op (`torch.add` of two 2-element tensors, "
                  "median of 7 blocks of 1000), give the overhead of dispatch alone: `1 + calls x op / f`. What the strict "
                  "overhead has above this floor is the step's Python (the loop, its step rules and closures) and calls dearer "
                  "than a tiny add (`addmm`, `vector_norm`, `.item()`): docs/solvers.md, \"The hot path\". The compiled step "
                  "(`options={'compile': True}`, benchmarks/compile.md) takes the stages and the error norm out of eager "
                  "dispatch.", "",
                  "| problem | torch calls per f call | one tiny op (us) | bare f (us) | eager floor | odecli strict overhead |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, floor in report["eager_floor"].items():
            strict = report["overhead"][name]["strict"].get("odecli")
            lines.append(f"| {name} | {floor['calls_per_eval']:.1f} | {floor['op_us']:.2f} | {report['bare_eval_us'][name]['strict']:.2f} | "
                         f"{floor['floor']:.2f} | {'-' if strict is None else f'{strict:.2f}'} |")
        lines.append("")
    if report["targets"]:
        lines += ["## Targets (issues 4 and 21)", "", "| target | wanted | measured | result |", "|---|---|---|---|"]
        for target in report["targets"]:
            verdict = "n/a" if target.passed is None else "PASS" if target.passed else "MISS"
            lines.append(f"| {target.what} | {target.threshold} | {target.measured} | {verdict} |")
        passed = sum(1 for t in report["targets"] if t.passed)
        missed = sum(1 for t in report["targets"] if t.passed is False)
        lines += ["", f"{passed} met, {missed} missed."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small subset with one repeat (< 60 s); prints only unless --output is given")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per peer and problem (default 7; 1 with --quick)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter (default); cpu: this process's CPU time, steadier on a busy machine")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: less noisy timings)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers (default: all three)")
    parser.add_argument("--problems", default="", help="only problems whose name contains one of these comma-separated substrings")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write (default benchmarks/results.md; none with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers as JSON")
    parser.add_argument("--shared-process", action="store_true",
                        help="measure the fixed-step memory runs in this process instead of one fresh interpreter each")
    parser.add_argument("--measure-memory", default=None, metavar="PROBLEM:PEER", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_memory is not None:  # the child side of measure_memory_isolated
        name, peer = args.measure_memory.split(":")
        problem = next(p for p in build_problems() if p.name == name)
        result = measure_memory_run(problem, peer, PeakMemory(), time.process_time if args.clock == "cpu" else time.perf_counter)
        print(json.dumps(vars(result)))
        return {}
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    output = args.output if args.output is not None else (None if args.quick else ROOT / "benchmarks" / "results.md")
    requested = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(requested) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    peers, notes = available_peers(requested)
    if "odecli" not in peers:
        raise SystemExit("odecli must be one of the peers: every ratio is against it")

    problems = build_problems()
    if args.quick:
        problems = [p for p in problems if p.quick]
    if args.problems:
        wanted = [w.strip() for w in args.problems.split(",") if w.strip()]
        problems = [p for p in problems if any(w in p.name for w in wanted)]
    memory = PeakMemory()
    if not memory.available:
        notes.append("peak memory is unavailable here (needs Linux /proc and glibc); shown as n/a.")

    rows, targets, overhead, bare_s, floors = [], [], {}, {}, {}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    started = time.perf_counter()
    for problem in problems:
        reference = reference_solution(problem) if problem.group == "speed" else None
        bare = BareEvaluation(problem) if problem.overhead else None
        isolate = None if args.shared_process else ["--threads", str(args.threads), "--clock", args.clock]
        results = measure_problem(problem, peers, repeats, memory, reference, clock=clock, bare=bare, isolate=isolate)
        row = {"name": problem.name, "description": problem.description, "mode": problem.mode, "group": problem.group,
               "rtol": problem.rtol, "atol": problem.atol, "method": problem.method, "results": results}
        if problem.group == "memory":
            row["steps"] = int(round(1.0 / problem.options["step_size"]))
        rows.append(row)
        targets += speed_targets(problem, results)
        if bare is not None and bare.strict_s:
            bare_s[problem.name] = {"counted": bare.median_s(strict=False), "strict": bare.median_s(strict=True)}
            overhead[problem.name] = {
                kind: {p: r.wall_s / (r.nfe_forward * per_call) for p, r in results.items() if r.wall_s is not None and r.nfe_forward}
                for kind, per_call in bare_s[problem.name].items()
            }
            counted, strict = overhead[problem.name]["counted"].get("odecli"), overhead[problem.name]["strict"].get("odecli")
            if counted is not None and problem.name.startswith("spiral_b1_"):
                targets.append(Target(f"{problem.name}: odecli overhead (time / (NFE x counted f under no_grad))", "<= 3", f"{counted:.2f}", counted <= 3.0))
            if strict is not None:
                floor = floors[problem.name] = eager_floor(problem, bare_s[problem.name]["strict"], clock)
                why = "" if strict <= 2.0 else (f" (eager floor {floor['floor']:.2f}: {floor['calls_per_eval']:.1f} torch calls per f call"
                                                f" x {floor['op_us']:.2f} us, f {bare_s[problem.name]['strict'] * 1e6:.2f} us)")
                targets.append(Target(f"{problem.name}: odecli strict overhead (time / (NFE x bare f))", "<= 2", f"{strict:.2f}{why}", strict <= 2.0))
        print(f"[{time.perf_counter() - started:6.1f}s] {problem.name}: " + ", ".join(f"{p} {_fmt_time(r.wall_s)} ms" for p, r in results.items()), file=sys.stderr, flush=True)

    # Adjoint memory flat from the fewest to the most steps (within 20%).
    adjoint_rows = [row for row in rows if row["group"] == "memory" and row["mode"] == "adjoint"]
    if len(adjoint_rows) >= 2:
        low, high = adjoint_rows[0], adjoint_rows[-1]
        a, b = low["results"]["odecli"].peak_mib, high["results"]["odecli"].peak_mib
        if a is not None and b is not None:
            # Peak RSS cannot resolve growth below about 1 MiB (one Python arena; malloc slack).
            flat = b - a <= max(0.2 * a, MEMORY_RESOLUTION_MIB)
            direct = [row for row in rows if row["group"] == "memory" and row["mode"] == "direct"]
            context = f"; direct: {direct[0]['results']['odecli'].peak_mib:.1f} -> {direct[-1]['results']['odecli'].peak_mib:.1f} MiB" if direct else ""
            targets.append(Target(f"odecli adjoint peak memory, {low['steps']} -> {high['steps']} rk4 steps",
                                  f"flat: +20% or less, or below the {MEMORY_RESOLUTION_MIB:g} MiB resolution",
                                  f"{a:.2f} -> {b:.2f} MiB{context}", flat))

    versions = {"torch": torch.__version__, "odecli": odecli.__version__}
    for peer in peers:
        if peer != "odecli":
            versions[peer] = getattr(sys.modules[peer], "__version__", "?")
    command = " ".join([".venv/bin/python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    report = {
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPU(s), {platform.system()}",
        "versions": versions, "threads": args.threads, "repeats": repeats, "peers": peers, "notes": notes,
        "rows": rows, "targets": targets, "overhead": overhead, "bare_eval_us": {name: {kind: x * 1e6 for kind, x in times.items()} for name, times in bare_s.items()}, "clock": args.clock,
        "eager_floor": floors,
    }
    text = render(report)
    print(text)
    if output is not None:
        output.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(_jsonable(report), indent=2))
    return report


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _jsonable(report: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for row in report["rows"]:
        rows.append({**row, "results": {p: vars(r) for p, r in row["results"].items()}})
    return {**report, "rows": rows, "targets": [vars(t) for t in report["targets"]]}


if __name__ == "__main__":
    main()
