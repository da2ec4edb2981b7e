"""A task brought by a plugin (tests/test_task_plugin.py): learn the rate k of dy/dt = −k·y from noisy samples of its solution.

All that a new task takes: this module (its model and data, one training step, its evaluation, and its config's
schema) and its config beside it (decay.yaml), registered with ``config=``. Loaded like any plugin file
(``ODECLI_PLUGINS=<this dir>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from odecli.registry import TASKS
from odecli.schemas import TaskConfig, doc, integer, number, register_schema
from odecli.tasks.common import build_optimizer, make_solve
from odecli.tasks.driver import Every, Step, TrainingRecord, TrainingTask, train
from odecli.tracking import Run


class Decay(torch.nn.Module):
    """dy/dt = −k·y with a learned k."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.rate * y


class DecayTask(TrainingTask):
    description = "decay"

    def __init__(self, cfg: DictConfig, run: Run, device: torch.device):
        self.cfg, self.run = cfg, run
        self.model = Decay().to(device)
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())
        self.solve = make_solve(cfg.solver)
        self.t = torch.linspace(0.0, 2.0, 9, device=device)
        self.truth = torch.exp(-float(cfg.rate) * self.t)[:, None]
        self.noise = torch.Generator().manual_seed(int(cfg.seed))
        self.samplers = [self.noise]
        self.iterations = int(cfg.iters)
        self.eval_every, self.checkpoint_every = Every(cfg.eval_every), Every(cfg.checkpoint_every)

    def train_step(self, iteration: int) -> Step:
        observed = self.truth + float(self.cfg.noise) * torch.randn(self.truth.shape, generator=self.noise)
        predicted = self.solve(self.model, torch.ones(1), self.t)
        return Step(((predicted - observed) ** 2).mean(), scalars={"train/rate": self.model.rate.item()})

    def evaluate(self, iteration: int) -> dict[str, Any]:
        error = abs(self.model.rate.item() - float(self.cfg.rate))
        self.run.scalar("metrics/rate_error", error, iteration)
        return {"rate_error": error}

    def metrics(self, final: Mapping[str, Any], record: TrainingRecord) -> dict[str, Any]:
        return {**final, **record.common_metrics(), "rate": self.model.rate.item()}


@dataclass
class DecayConfig(TaskConfig):
    """odecli decay: learn the rate k of dy/dt = -k·y from noisy samples of its solution."""

    rate: float = doc("the true k of dy/dt = -k·y")
    noise: float = doc("standard deviation of the observation noise")
    iters: int = doc("training iterations")
    eval_every: int = doc("evaluate the rate error every N iterations")
    checkpoint_every: int = doc("checkpoint every N iterations (and at the end)")

    def __post_init__(self) -> None:
        super().__post_init__()
        number(self, "rate", 0.5, above=0, requirement="positive (the decay's k)")
        number(self, "noise", 0.01, at_least=0, requirement=">= 0")
        integer(self, "iters", 1, 6)
        integer(self, "eval_every", 1, 2)
        integer(self, "checkpoint_every", 1, 2)


register_schema("decay", DecayConfig)


@TASKS.register("decay", config=Path(__file__).with_name("decay.yaml"),
                description="Learn the rate of an exponential decay (a plugin's task).", examples=("odecli decay", "odecli decay rate=2"))  # fmt: skip
def decay(cfg: DictConfig, run: Run) -> dict[str, Any]:
    return train(DecayTask, cfg, run)
