"""What every training loop does around its iterations, whatever it trains.

* Ctrl-C: the last *completed* iteration is checkpointed (unless it already is) and the batch
  samplers are rewound to the state they had after it, so ``resume=true`` redoes the unfinished
  iteration with the same batch and ends with the same numbers as an uninterrupted run.
* Non-finite loss, gradients or solver state: ``nonfinite: stop`` (default) ends the run with
  ``TrainingDiverged`` naming the iteration and the likely causes, leaving the last good checkpoint
  as it is; ``nonfinite: skip`` drops that batch (no update), warns, and goes on — unless
  ``MAX_CONSECUTIVE_SKIPS`` batches in a row were bad, when nothing can be learned any more.
* A solve that exceeds its step budget (``solver.max_num_steps``) or whose step size underflows:
  the run ends with ``SolverGaveUp`` naming the iteration and the fixes, whatever ``nonfinite`` says
  (it is no NaN to skip, and the next batch would spin just as long); the last checkpoint stays.

``odecli.tasks.driver.train`` runs every training task's loop with it, like this::

    with TrainingLoop(run, cfg, start=start, save=checkpoint, samplers=[batches]) as loop:
        for iteration in range(start + 1, iters + 1):
            with loop.iteration(iteration):
                loss = ...
                loop.check_loss(loss)
                loss.backward()
                loop.update(iteration, model.parameters(), optimizer, scheduler)
                ...  # logging, evaluation, checkpoints
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from odecli.solvers.errors import MaxStepsExceeded, NonFiniteState, StepSizeTooSmall
from odecli.tasks.common import SolverGaveUp, TrainingDiverged
from odecli.tasks.distributed import world

MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteLoss(ArithmeticError):
    """The loss or a gradient is NaN or infinite (caught by ``TrainingLoop.iteration``)."""

    def __init__(self, value: float, what: str = "loss"):
        self.value, self.what = value, what
        super().__init__(f"the {what} became {value}")


class GeneratorState:
    """A ``torch.Generator`` seen as a sampler with ``state_dict``/``load_state_dict`` (TrainingLoop wraps them)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def as_sampler(sampler: Any) -> Any:
    """``sampler`` with ``state_dict``/``load_state_dict`` (a ``torch.Generator`` wrapped in ``GeneratorState``)."""
    return GeneratorState(sampler) if isinstance(sampler, torch.Generator) else sampler


def checked_loss(loss: torch.Tensor) -> float:
    """The loss as a float (several processes: its mean over the ranks); raises ``NonFiniteLoss`` when it is NaN or Inf."""
    value = world().mean(loss.item())  # several processes: the mean over ranks, so all of them stop (or go on) together
    if not math.isfinite(value):
        raise NonFiniteLoss(value)
    return value


class TrainingLoop:
    """Interrupt checkpoints and the non-finite policy around one run's training iterations."""

    def __init__(self, run: Any, cfg: DictConfig, *, start: int, save: Callable[[int], None], samplers: Sequence[Any] = ()):
        self.run, self.cfg, self.save = run, cfg, save
        self.samplers = [as_sampler(s) for s in samplers]
        self.start = self.completed = start
        self.policy = str(OmegaConf.select(cfg, "nonfinite", default="stop"))  # stop | skip, checked by the task's schema
        self.skipped = 0
        self._consecutive_skips = 0
        self._after_completed = self._sampler_states()

    def __enter__(self) -> TrainingLoop:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._checkpoint_interrupted()
        return False

    @contextmanager
    def iteration(self, iteration: int) -> Iterator[None]:
        """One training iteration; a non-finite loss, gradient or state inside it stops or skips it,
        a solve over its step budget stops the run."""
        try:
            yield
        except (MaxStepsExceeded, StepSizeTooSmall) as exc:
            raise SolverGaveUp(iteration, exc, self.cfg) from exc
        except (NonFiniteLoss, NonFiniteState) as exc:
            what = exc.what if isinstance(exc, NonFiniteLoss) else f"solver {exc.what} (at t={exc.t:.6g})"
            value = exc.value if isinstance(exc, NonFiniteLoss) else float("nan")
            if self.policy == "stop":
                raise TrainingDiverged(iteration, value, self.cfg, what=what) from exc
            self._consecutive_skips += 1
            if self._consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise TrainingDiverged(iteration, value, self.cfg, what=f"{what} ({MAX_CONSECUTIVE_SKIPS} batches in a row)") from exc
            self.skipped += 1
            self.run.log(f"[yellow]skipped batch:[/] the {what} became {value} at iteration {iteration} (nonfinite=skip); no update made")
            self.done(iteration)
        else:
            self._consecutive_skips = 0

    def check_loss(self, loss: torch.Tensor) -> float:
        """The loss as a float (several processes: its mean over the ranks); raises ``NonFiniteLoss`` (handled by ``iteration``) when it is NaN or Inf."""
        return checked_loss(loss)

    def check_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Raise ``NonFiniteLoss`` before a NaN/Inf gradient can reach the weights."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            total = float(torch.stack([g.detach().abs().sum() for g in grads]).sum())
            if not math.isfinite(total):
                raise NonFiniteLoss(total, "gradient")

    def update(self, iteration: int, parameters: Iterable[torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """End ``iteration`` with the model update: gradients checked, optimizer (and scheduler) stepped, then ``done``."""
        self.check_gradients(parameters)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        self.done(iteration)

    def done(self, iteration: int) -> None:
        """The model was updated (or the batch skipped) for ``iteration``: a checkpoint may now record it."""
        self.completed = iteration
        self._after_completed = self._sampler_states()

    def _sampler_states(self) -> list[Any]:
        return [sampler.state_dict() for sampler in self.samplers]

    def _checkpoint_interrupted(self) -> None:
        if world().distributed:  # the ranks stop at different points: the last periodic checkpoint is the one they agree on
            self.run.log(f"[yellow]interrupted:[/] continue from the last checkpoint with resume=true hydra.run.dir={self.run.dir}")
            return
        for sampler, state in zip(self.samplers, self._after_completed, strict=True):
            sampler.load_state_dict(state)
        if self.completed > self.start and not self.run.checkpoint_path(self.completed).exists():
            self.run.log(
                f"[yellow]interrupted:[/] saving a checkpoint at iteration {self.completed}; "
                f"continue with resume=true hydra.run.dir={self.run.dir}"
            )
            self.save(self.completed)
