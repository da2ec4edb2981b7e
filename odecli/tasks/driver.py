"""One training driver: the loop every training task runs, around what the task itself supplies.

A task is a ``TrainingTask``: it builds its models and data from the config (``__init__``), takes one
training step (``train_step``: the loss to minimise and any other scalars), evaluates (``evaluate``),
draws its figures (``plot``), and names the state of its own that a checkpoint must carry
(``state_dict`` / ``load_state_dict``). ``train`` does the rest, the same way for every task:

* seeds, threads and device; the checkpointer and ``resume=true`` (model, optimizer, schedule, NFE history,
  random states, the task's samplers and state, and the last iteration's scalars and final evaluation);
* the iteration: zero the gradients, the task's step under NFE counting, the non-finite check, backward,
  the update (``TrainingLoop``: Ctrl-C, ``nonfinite=stop|skip``, a solver that gives up);
* TensorBoard scalars ``loss/train``, ``nfe/forward``, ``nfe/backward``, ``time/step`` (and the step's own),
  the progress line, the NFE history;
* the cadence: evaluate, plot and checkpoint every N iterations (``Every``), the final evaluation and figures
  at the last iteration, *before* the last checkpoint — so a run killed after that checkpoint and resumed with
  nothing left to train reports the metrics of the run that was killed;
* the metrics every task reports (``loss_train_last``, NFE per iteration, ``skipped_batches``), handed to
  the task's ``metrics``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from odecli.errors import ConfigError
from odecli.solvers import track_stats
from odecli.tasks.common import Checkpointer, NFEHistory, prepare
from odecli.tasks.distributed import World, rank_scalars, world
from odecli.tasks.loop import TrainingLoop, as_sampler
from odecli.tracking import Run

# What the driver adds to every checkpoint (beside Checkpointer's model, optimizer, schedule, NFE history, random states, config).
CHECKPOINT_KEYS = ("samplers", "task", "last_scalars", "final_evaluation")


class Every:
    """A cadence in iterations: due when the iteration is a multiple of any of ``periods`` (0 or None: never)."""

    def __init__(self, *periods: int | None):
        self.periods = tuple(int(p) for p in periods if p)

    def __call__(self, iteration: int) -> bool:
        return any(iteration % period == 0 for period in self.periods)


@dataclass
class Step:
    """What one training step hands the driver."""

    loss: torch.Tensor  # checked for NaN/Inf, backpropagated, and logged as loss/train
    scalars: Mapping[str, float] = field(default_factory=dict)  # more TensorBoard scalars of this iteration
    progress: Mapping[str, float] = field(default_factory=dict)  # more fields of the progress line (after loss=)
    # More training on the same batch once ``loss`` is backpropagated (vae's RNN baseline, on its own parameters):
    # returns its scalars, which are logged and also shown on the progress line under their tag's last part.
    after_backward: Callable[[], Mapping[str, float]] | None = None


@dataclass
class TrainingRecord:
    """What the driver knows at the end, for the task's metrics."""

    last_scalars: Mapping[str, float]  # the last completed iteration's scalars (loss/train, ...; empty before any)
    nfe: Mapping[str, Any]  # NFEHistory.summary(): nfe_forward / nfe_backward per iteration, the last ones, per rank
    skipped_batches: int
    history: NFEHistory  # the per-iteration NFE trace for figures

    @property
    def loss_train_last(self) -> float:
        return float(self.last_scalars.get("loss/train", float("nan")))

    def common_metrics(self) -> dict[str, Any]:
        """The metrics every training task reports: ``loss_train_last``, the NFE summary and ``skipped_batches``."""
        return {"loss_train_last": self.loss_train_last, **self.nfe, "skipped_batches": self.skipped_batches}


class TrainingTask(ABC):
    """What differs between training tasks; ``train`` runs it. ``__init__(cfg, run, device)`` builds everything."""

    description: str  # the progress line's label, e.g. "fit lotka_volterra"
    iterations: int  # training iterations in the whole run
    model: nn.Module  # the trained parameters (a ModuleDict for several models), checkpointed
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # stepped once per iteration
    samplers: Sequence[Any] = ()  # random generators / objects with state_dict: checkpointed, rewound on Ctrl-C
    eval_every: Every = Every()
    plot_every: Every = Every()
    checkpoint_every: Every = Every()
    evaluate_untrained: bool = False  # evaluate at iteration 0 of a fresh run (where loss/val starts)

    @abstractmethod
    def train_step(self, iteration: int) -> Step:
        """Draw this iteration's batch and compute the loss (the driver zeroed the gradients and backpropagates)."""

    def clip_gradients(self) -> None:  # noqa: B027 (optional: nothing by default)
        """Between backward and the optimizer's step (vae's ``grad_clip``); nothing by default."""

    @abstractmethod
    def evaluate(self, iteration: int) -> dict[str, Any]:
        """Evaluate and log at ``iteration`` (rank 0 only); the last call's result is the final evaluation."""

    def plot(self, iteration: int) -> None:  # noqa: B027 (optional: nothing by default)
        """Draw the figures at ``iteration`` (rank 0 only, after ``evaluate`` when both are due)."""

    def state_dict(self) -> dict[str, Any]:
        """The task's own state for checkpoints (plain data: see odecli/tracking.py ``check_plain``)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:  # noqa: B027 (optional: nothing by default)
        """Restore ``state_dict``'s state from the checkpoint of iteration ``step``."""

    @abstractmethod
    def metrics(self, final: Mapping[str, Any], record: TrainingRecord) -> dict[str, Any]:
        """The run's metrics (metrics.json) from the final evaluation and what the driver recorded."""

    def print_summary(self, metrics: Mapping[str, Any]) -> None:  # noqa: B027 (optional: nothing by default)
        """The metrics table on the console."""


def train(task_class: Callable[[DictConfig, Run, torch.device], TrainingTask], cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Build ``task_class`` from ``cfg`` and train it in ``run``; return its metrics (``{}`` on ranks other than 0)."""
    ranks = world(cfg)
    device = ranks.device(prepare(cfg))
    task = task_class(cfg, run, device)
    samplers = [as_sampler(s) for s in task.samplers]
    history = NFEHistory()
    checkpointer = Checkpointer(run, cfg, model=task.model, optimizer=task.optimizer, history=history, scheduler=task.scheduler)
    total = task.iterations
    last_scalars: dict[str, float] = {}
    final: dict[str, Any] | None = None

    start = 0
    if (state := checkpointer.resume()) is not None:
        start = int(state["step"])
        missing = [key for key in CHECKPOINT_KEYS if key not in state]
        if missing:
            raise ConfigError(
                f"resume: {run.checkpoint_path(start).name} was written by an older odecli (it has no {', '.join(missing)}); "
                "continue that run with the odecli that started it, or start a new run directory."
            )
        for sampler, saved in zip(samplers, own_sampler_states(state["samplers"], ranks), strict=True):
            sampler.load_state_dict(saved)
        task.load_state_dict(state["task"], start)
        last_scalars = dict(state["last_scalars"])
        final = state["final_evaluation"] if start == total else None  # resumed with more iterations (iters is resume-neutral): evaluated again at the end
    run.resume_at(start + 1)

    def checkpoint(iteration: int) -> None:
        states = [sampler.state_dict() for sampler in samplers]
        checkpointer.save(
            iteration,
            samplers=ranks.gather_objects(states),  # each process's, by rank (one process: a list of one)
            task=task.state_dict(),
            last_scalars=dict(last_scalars),
            final_evaluation=final if iteration == total else None,
        )

    if start == 0 and task.evaluate_untrained and ranks.is_main:
        task.evaluate(0)
    with run.progress(total, start=start, description=task.description) as progress, \
            TrainingLoop(run, cfg, start=start, save=checkpoint, samplers=samplers) as loop:  # fmt: skip
        for iteration in range(start + 1, total + 1):
            with loop.iteration(iteration):
                began = time.perf_counter()
                task.optimizer.zero_grad(set_to_none=True)
                with track_stats() as stats:
                    step = task.train_step(iteration)
                    loss_value = loop.check_loss(step.loss)
                    step.loss.backward()
                scalars = {"loss/train": loss_value, **step.scalars}
                more = dict(step.after_backward()) if step.after_backward is not None else {}
                task.clip_gradients()
                loop.update(iteration, task.model.parameters(), task.optimizer, task.scheduler)
                nfe, per_rank = ranks.nfe(stats)
                history.add(nfe, per_rank, iteration=iteration)
                scalars |= {**more, "nfe/forward": nfe.nfe_forward, "nfe/backward": nfe.nfe_backward,
                            "time/step": time.perf_counter() - began, **rank_scalars(per_rank)}  # fmt: skip
                last_scalars = scalars
                run.scalars(scalars, iteration)
                fields = {"loss": loss_value, **step.progress, **{tag.rsplit("/", 1)[-1]: value for tag, value in more.items()}}
                progress.update(iteration, **fields, nfe_fwd=nfe.nfe_forward, nfe_bwd=nfe.nfe_backward)
                if ranks.is_main and iteration < total:
                    evaluate_and_plot(task, iteration)
            if iteration == total and ranks.is_main:  # before the last checkpoint, which then carries it
                final = evaluate_and_plot(task, iteration, final=True)
            if task.checkpoint_every(iteration) or iteration == total:
                checkpoint(iteration)

    if not ranks.is_main:  # rank 0 evaluates and reports
        return {}
    if final is None:  # resumed from a checkpoint at the end that does not carry the final evaluation (Ctrl-C during it)
        final = evaluate_and_plot(task, total, final=True)
    record = TrainingRecord(last_scalars=last_scalars, nfe=history.summary(), skipped_batches=loop.skipped, history=history)
    metrics = task.metrics(final, record)
    task.print_summary(metrics)
    return metrics


def evaluate_and_plot(task: TrainingTask, iteration: int, *, final: bool = False) -> dict[str, Any] | None:
    """The task's evaluation and figures when their cadence says so (``final``: both, whatever the cadence)."""
    evaluation = task.evaluate(iteration) if final or task.eval_every(iteration) else None
    if final or task.plot_every(iteration):
        task.plot(iteration)
    return evaluation


def own_sampler_states(saved_by_rank: list[Any], ranks: World) -> list[Any]:
    """This rank's sampler states from a checkpoint, which holds every rank's (one list per process)."""
    if len(saved_by_rank) != ranks.size:
        written = f"{len(saved_by_rank)} processes" if len(saved_by_rank) > 1 else "one process"
        raise ConfigError(f"resume: the checkpoint was written by {written}, this run has {ranks.size}; resume with the same distributed.nproc_per_node × nnodes.")
    return saved_by_rank[ranks.rank]


def data_and_noise_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """The two random streams of vae and cnf: one draws the training batches, one the noise of each step
    (latent samples, Hutchinson probes); seeded apart from the model's initialisation and the test data."""
    return torch.Generator().manual_seed(seed + 2), torch.Generator().manual_seed(seed + 3)
