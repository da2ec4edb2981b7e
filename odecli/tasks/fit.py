"""odecli fit: learn a 2-D system's vector field from its trajectory (torchdiffeq's ode_demo, as a run).

Each iteration draws ``batch_size`` short segments of ``batch_time`` points from the observed
trajectory, solves the model from each segment's first point and fits the rest (L1 or MSE).
Every ``eval_every`` iterations the model is solved over the whole span and compared with the
noise-free truth (``loss/val``, and ``loss/extrapolation`` on a held-out tail when asked).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from odecli.dynamics import System, build_system
from odecli.errors import ConfigError
from odecli.models import build_model, count_parameters
from odecli.registry import TASKS
from odecli.tasks.common import (
    build_optimizer,
    build_scheduler,
    check_fixed_grid,
    check_shared_settings,
    make_solve,
    print_metrics_table,
)
from odecli.tasks.driver import Every, Step, TrainingRecord, TrainingTask, train
from odecli.tracking import Run

LOSSES = {"l1": lambda pred, target: (pred - target).abs().mean(), "mse": lambda pred, target: ((pred - target) ** 2).mean()}


@dataclass
class Observations:
    """The trajectory the model learns from: true states, noisy observations, and the training span."""

    t: torch.Tensor  # (T,)
    true_y: torch.Tensor  # (T, 2), noise-free reference solution
    observed_y: torch.Tensor  # (T, 2), what training sees
    n_train: int  # the first n_train points are for training; the rest are for extrapolation


def observe(system: System, *, noise: float, extrapolate: float, seed: int, device: torch.device) -> Observations:
    true_y = system.trajectory()
    generator = torch.Generator().manual_seed(seed)
    observed = true_y + noise * torch.randn(true_y.shape, generator=generator, dtype=true_y.dtype) if noise > 0 else true_y
    n_train = len(system.t) - int(round(extrapolate * len(system.t)))
    return Observations(system.t.to(device), true_y.to(device), observed.to(device), n_train)


class SegmentBatches:
    """Random segments of the training span from a generator whose state travels in checkpoints."""

    def __init__(self, observations: Observations, batch_time: int, batch_size: int, seed: int):
        self.obs = observations
        self.batch_time = batch_time
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y0 (B, 2), t (batch_time,) relative to each start, start times (B, 1), targets (batch_time, B, 2))``."""
        obs = self.obs
        starts = torch.randint(0, obs.n_train - self.batch_time + 1, (self.batch_size,), generator=self.generator).to(obs.t.device)
        index = starts[None, :] + torch.arange(self.batch_time, device=obs.t.device)[:, None]
        t_relative = obs.t[: self.batch_time] - obs.t[0]
        return obs.observed_y[starts], t_relative, obs.t[starts][:, None], obs.observed_y[index]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class ShiftedTime(nn.Module):
    """``f(start + τ, y)``: one batched solve over segments that start at different times."""

    def __init__(self, field: nn.Module, start: torch.Tensor):
        super().__init__()
        self.field = field
        self.start = start

    def forward(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.field(self.start + tau, y)


def check_segments(cfg: DictConfig, n_points: int) -> None:
    """Training segments fit in the training part of the trajectory (the config's ranges are its schema's business)."""
    n_train = n_points - int(round(float(cfg.data.extrapolate) * n_points))
    if cfg.data.batch_time > n_train:
        raise ConfigError(
            f"data.batch_time={cfg.data.batch_time} is longer than the {n_train} training points; "
            f"lower data.batch_time or raise dynamics.n_points (now {n_points})."
        )


def check_config(cfg: DictConfig) -> None:
    """Everything fit can refuse from its config alone; run before a run directory exists."""
    check_shared_settings(cfg, cfg.solver)
    system = build_system(cfg.dynamics)
    check_segments(cfg, len(system.t))
    check_fixed_grid(cfg.solver, system.t)  # the evaluation solve spans every training segment's grid
    build_model(cfg.model, dim=2)  # the settings the vector field takes (a small network: milliseconds)


class Fit(TrainingTask):
    """A neural vector field trained on one system's observed trajectory."""

    evaluate_untrained = True  # the untrained model's error: where loss/val starts

    def __init__(self, cfg: DictConfig, run: Run, device: torch.device):
        self.cfg, self.run = cfg, run
        self.system = build_system(cfg.dynamics)
        check_segments(cfg, len(self.system.t))
        self.obs = observe(self.system, noise=float(cfg.data.noise), extrapolate=float(cfg.data.extrapolate), seed=int(cfg.seed), device=device)
        self.model = build_model(cfg.model, dim=2).to(device)
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())
        self.scheduler = build_scheduler(cfg.get("scheduler"), self.optimizer)
        self.solve = make_solve(cfg.solver)
        self.loss_fn = LOSSES[str(cfg.loss)]
        self.batches = SegmentBatches(self.obs, int(cfg.data.batch_time), int(cfg.data.batch_size), seed=int(cfg.seed) + 1)
        self.samplers = [self.batches]
        self.shift_time = bool(getattr(self.model, "time_input", False))
        self.frames: list[tuple[int, torch.Tensor]] = []  # the whole-span solve at each figure, for the animation
        self.evaluated: tuple[int, torch.Tensor] | None = None  # the last evaluation's solve, which its figure draws
        self.description = f"fit {self.system.name}"
        self.iterations = int(cfg.iters)
        self.eval_every, self.plot_every, self.checkpoint_every = Every(cfg.eval_every), Every(cfg.plot_every), Every(cfg.checkpoint_every)

    def train_step(self, iteration: int) -> Step:
        y0, t_relative, starts, targets = self.batches.sample()
        field = ShiftedTime(self.model, starts) if self.shift_time else self.model
        return Step(self.loss_fn(self.solve(field, y0, t_relative), targets))

    def evaluate(self, iteration: int) -> dict[str, float]:
        """The model solved over the whole span against the noise-free truth: ``val_mse`` (and ``extrapolation_mse``)."""
        obs = self.obs
        with torch.no_grad():
            predicted = self.solve(self.model, obs.true_y[0], obs.t)
        self.evaluated = (iteration, predicted)
        errors = ((predicted - obs.true_y) ** 2).mean(dim=-1)
        metrics = {"val_mse": float(errors[: obs.n_train].mean())}
        self.run.scalar("loss/val", metrics["val_mse"], iteration)
        if obs.n_train < len(obs.t):
            metrics["extrapolation_mse"] = float(errors[obs.n_train :].mean())
            self.run.scalar("loss/extrapolation", metrics["extrapolation_mse"], iteration)
        return metrics

    def plot(self, iteration: int) -> None:
        if self.evaluated is None or self.evaluated[0] != iteration:  # a figure shows the evaluation solve (and logs its loss/val)
            self.evaluate(iteration)
        predicted = self.evaluated[1]
        self.frames.append((iteration, predicted.detach().cpu()))
        _plot(self.run, self.cfg, self.system, self.obs, self.model, predicted, iteration)
        if iteration == self.iterations and self.cfg.gif and self.frames:
            from odecli.plotting import phase_animation

            path = phase_animation(self.obs.true_y.cpu(), self.frames, self.run.plots_dir / "training.gif")
            self.run.log(f"animation: {path}")

    def state_dict(self) -> dict[str, Any]:
        return {"frames": self.frames}

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        self.frames = list(state["frames"])

    def metrics(self, final: Mapping[str, Any], record: TrainingRecord) -> dict[str, Any]:
        return {
            **final,
            **record.common_metrics(),
            "iters": self.iterations,
            "params": count_parameters(self.model),
            "dynamics": self.system.name,
            "solver": str(self.cfg.solver.method),
        }

    def print_summary(self, metrics: Mapping[str, Any]) -> None:
        _print_summary(self.run, metrics)


@TASKS.register("fit", validate=check_config, description="Learn a 2-D dynamical system with a neural vector field; plots true (solid) vs model (dotted).",
                examples=("odecli fit dynamics=lotka solver=dopri5", "odecli fit dynamics=spiral iters=500 solver.tol=1e-5",
                          "odecli fit -m solver=dopri5,bosh3 solver.tol=1e-3,1e-5"))  # fmt: skip
def fit(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Train a neural vector field on one system's trajectory; return the final metrics."""
    return train(Fit, cfg, run)


def _plot(run: Run, cfg: DictConfig, system: System, obs: Observations, model: nn.Module, predicted: torch.Tensor, iteration: int) -> None:
    from odecli.plotting import dynamics_figure

    held_out = obs.n_train < len(obs.t)
    title = f"{system.name} · {cfg.solver.method} · iteration {iteration}"
    figure = dynamics_figure(
        obs.t, obs.true_y, predicted, system.vector_field, model, title=title,
        extrapolate_from=float(obs.t[obs.n_train]) if held_out else None,
    )  # fmt: skip
    run.figure("fit/dynamics", figure, iteration, filename="dynamics")


def _print_summary(run: Run, metrics: Mapping[str, Any]) -> None:
    rows = [
        ("val MSE", f"{metrics['val_mse']:.3e}"),
        *([("extrapolation MSE", f"{metrics['extrapolation_mse']:.3e}")] if "extrapolation_mse" in metrics else []),
        ("train loss (last)", f"{metrics['loss_train_last']:.3e}"),
        ("NFE forward / iteration", f"{metrics['nfe_forward']:.1f}"),
        ("NFE backward / iteration", f"{metrics['nfe_backward']:.1f}"),
        ("iterations", str(metrics["iters"])),
        *([("skipped batches (non-finite)", str(metrics["skipped_batches"]))] if metrics["skipped_batches"] else []),
        ("parameters", str(metrics["params"])),
    ]
    print_metrics_table(run, f"fit {metrics['dynamics']} · {metrics['solver']}", rows)
