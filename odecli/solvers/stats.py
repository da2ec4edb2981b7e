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
from collections.abc import Iterator
from dataclasses import asdict, dataclass


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


def record_forward(nfe: int, accepted: int = 0, rejected: int = 0) -> None:
    """Called by a solver once at the end of a forward solve."""
    with _lock:
        for stats in _active:
            stats.nfe_forward += nfe
            stats.steps_accepted += accepted
            stats.steps_rejected += rejected
            stats.solves += 1


def record_backward(nfe: int, steps: int = 0) -> None:
    """Called once per backward pass (adjoint solve, or the VJPs of direct backprop)."""
    with _lock:
        for stats in _active:
            stats.nfe_backward += nfe
            stats.steps_backward += steps
