"""Solver statistics (NFE, steps) collected without wrapping the user's function.

Solvers count their own evaluations and report them here once per solve (and the adjoint once
per backward pass). Callers read them through a tracker::

    with track_stats() as stats:
        y = odeint(f, y0, t)
        y.sum().backward()
    stats.nfe_forward, stats.nfe_backward, stats.steps_accepted, stats.steps_rejected

Trackers nest (an outer one sees everything an inner one sees). They live in a process-wide
stack rather than a ContextVar because autograd may run backward passes on its own threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from odecli.solvers.base import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES


@dataclass
class SolveStats:
    """Counts accumulated over every solve recorded while a tracker is active."""

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int = 0
    steps_rejected: int = 0
    steps_backward: int = 0
    solves: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        for key in self.as_dict():
            setattr(self, key, 0)


_lock = threading.Lock()
_active: list[SolveStats] = []


@contextlib.contextmanager
def track_stats(stats: SolveStats | None = None) -> Iterator[SolveStats]:
    """Collect statistics of every solve (and adjoint backward pass) inside the block."""
    stats = stats if stats is not None else SolveStats()
    with _lock:
        _active.append(stats)
    try:
        yield stats
    finally:
        with _lock:
            _active.remove(stats)


def tracking() -> bool:
    """Whether any tracker is active (solvers may skip bookkeeping otherwise)."""
    return bool(_active)


def record_forward(nfe: int, steps_accepted: int = 0, steps_rejected: int = 0) -> None:
    """Called by a solver once at the end of a forward solve."""
    with _lock:
        for stats in _active:
            stats.nfe_forward += nfe
            stats.steps_accepted += steps_accepted
            stats.steps_rejected += steps_rejected
            stats.solves += 1


def record_backward(nfe: int, steps: int = 0) -> None:
    """Called once per backward pass (adjoint solve, or the VJPs of direct backprop)."""
    with _lock:
        for stats in _active:
            stats.nfe_backward += nfe
            stats.steps_backward += steps


@contextlib.contextmanager
def collected_apart() -> Iterator[SolveStats]:
    """Collect the solves run inside the block in the yielded ``SolveStats`` only, hidden from every tracker.

    The adjoint's backward pass reuses ``odeint``, which reports each solve with ``record_forward``;
    it collects those reports here and reports them once more, as backward work, with
    ``record_backward``. Without an active tracker nothing is collected.
    """
    if not tracking():
        yield SolveStats()
        return
    private = SolveStats()
    with _lock:
        saved = list(_active)
        _active[:] = [private]
    try:
        yield private
    finally:
        with _lock:
            _active[:] = saved


def count_direct_backward(func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a vector field so direct backprop through it reports backward NFE.

    For a front end to apply to its ``func`` when a tracker is active. Every evaluation whose output
    takes part in the graph gets one gradient hook; autograd calls it once per backward pass that
    reaches that evaluation, i.e. once per vector-Jacobian product of ``func`` — exactly what a
    backward NFE is. Evaluations cut from the graph (rejected steps under ``no_grad`` step-size
    control) are never counted. Without a tracker it adds nothing.
    """

    def counted(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = func(t, y)
        if torch.is_tensor(out) and out.requires_grad and tracking():
            out.register_hook(_count_one_backward_evaluation)
        return out

    for name in (*CALLBACK_NAMES, *ADJOINT_CALLBACK_NAMES, "jacobian_columns", "jacobian_matrix"):  # callbacks and Jacobian hints
        if hasattr(func, name):
            setattr(counted, name, getattr(func, name))
    counted.uncounted = func  # a compiled step calls this (a hook cannot be traced) and counts with count_backward_of
    return counted


def count_backward_of(output: torch.Tensor, evaluations: int) -> None:
    """Count ``evaluations`` backward NFE each time a backward pass reaches ``output`` (the stages of a compiled step)."""
    if output.requires_grad and tracking():
        output.register_hook(lambda grad: record_backward(evaluations))


def _count_one_backward_evaluation(grad: torch.Tensor) -> None:
    record_backward(1)
