"""odecli fit: learn a 2-D system's vector field from its trajectory (torchdiffeq's ode_demo, as a run).

Each iteration draws ``batch_size`` short segments of ``batch_time`` points from the observed
trajectory, solves the model from each segment's first point and fits the rest (L1 or MSE).
Every ``eval_every`` iterations the model is solved over the whole span and compared with the
noise-free truth (``loss/val``, and ``loss/extrapolation`` on a held-out tail when asked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from odecli.dynamics import System, build_system
from odecli.errors import ConfigError
from odecli.models import build_model, count_parameters
from odecli.registry import TASKS
from odecli.solvers import track_stats
from odecli.tasks.common import (
    Checkpointer,
    NFEHistory,
    build_optimizer,
    build_scheduler,
    check_fixed_grid,
    check_shared_settings,
    make_solve,
    prepare,
    print_metrics_table,
)
from odecli.tasks.loop import TrainingLoop
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


def _validate(cfg: DictConfig, n_points: int) -> None:
    def positive_int(key: str, value: Any, minimum: int = 1) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}.")
        return value

    positive_int("iters", cfg.iters)
    positive_int("eval_every", cfg.eval_every)
    positive_int("checkpoint_every", cfg.checkpoint_every)
    positive_int("plot_every", cfg.plot_every, minimum=0)
    batch_time = positive_int("data.batch_time", cfg.data.batch_time, minimum=2)
    positive_int("data.batch_size", cfg.data.batch_size)
    if cfg.loss not in LOSSES:
        raise ConfigError(f"loss '{cfg.loss}' is unknown; choose one of {', '.join(LOSSES)}.")
    if float(cfg.data.noise) < 0:
        raise ConfigError(f"data.noise must be >= 0, got {cfg.data.noise}.")
    extrapolate = float(cfg.data.extrapolate)
    if not 0 <= extrapolate < 1:
        raise ConfigError(f"data.extrapolate is the held-out fraction of the time span, in [0, 1); got {extrapolate}.")
    n_train = n_points - int(round(extrapolate * n_points))
    if batch_time > n_train:
        raise ConfigError(
            f"data.batch_time={batch_time} is longer than the {n_train} training points; "
            f"lower data.batch_time or raise dynamics.n_points (now {n_points})."
        )


def check_config(cfg: DictConfig) -> None:
    """Everything fit can refuse from its config alone; run before a run directory exists."""
    check_shared_settings(cfg, cfg.solver)
    system = build_system(cfg.dynamics)
    _validate(cfg, len(system.t))
    check_fixed_grid(cfg.solver, system.t)  # the evaluation solve spans every training segment's grid
    build_model(cfg.model, dim=2)  # the settings the vector field takes (a small network: milliseconds)


@TASKS.register("fit", validate=check_config)
def fit(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Train a neural vector field on one system's trajectory; return the final metrics."""
    device = prepare(cfg)
    system = build_system(cfg.dynamics)
    _validate(cfg, len(system.t))
    obs = observe(system, noise=float(cfg.data.noise), extrapolate=float(cfg.data.extrapolate), seed=int(cfg.seed), device=device)
    model = build_model(cfg.model, dim=2).to(device)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    scheduler = build_scheduler(cfg.get("scheduler"), optimizer)
    solve = make_solve(cfg.solver)
    loss_fn = LOSSES[str(cfg.loss)]
    batches = SegmentBatches(obs, int(cfg.data.batch_time), int(cfg.data.batch_size), seed=int(cfg.seed) + 1)
    shift_time = bool(getattr(model, "time_input", False))
    history = NFEHistory()
    frames: list[tuple[int, torch.Tensor]] = []
    iters = int(cfg.iters)

    checkpointer = Checkpointer(run, cfg, model=model, optimizer=optimizer, history=history, scheduler=scheduler)
    start = 0
    if (state := checkpointer.resume()) is not None:
        batches.load_state_dict(state["batches"])
        frames = list(state.get("frames", []))
        start = int(state["step"])
    run.resume_at(start + 1)

    def checkpoint(iteration: int) -> None:
        checkpointer.save(iteration, batches=batches.state_dict(), frames=frames)

    def evaluate(iteration: int, *, plot: bool) -> dict[str, float]:
        with torch.no_grad():
            predicted = solve(model, obs.true_y[0], obs.t)
        errors = ((predicted - obs.true_y) ** 2).mean(dim=-1)
        metrics = {"val_mse": float(errors[: obs.n_train].mean())}
        run.scalar("loss/val", metrics["val_mse"], iteration)
        if obs.n_train < len(obs.t):
            metrics["extrapolation_mse"] = float(errors[obs.n_train :].mean())
            run.scalar("loss/extrapolation", metrics["extrapolation_mse"], iteration)
        if plot:
            frames.append((iteration, predicted.detach().cpu()))
            _plot(run, cfg, system, obs, model, predicted, iteration)
        return metrics

    if start == 0:
        evaluate(0, plot=False)  # the untrained model's error: where loss/val starts
    loss_value = float("nan")
    with run.progress(iters, start=start, description=f"fit {system.name}") as progress, \
            TrainingLoop(run, cfg, start=start, save=checkpoint, samplers=[batches]) as loop:  # fmt: skip
        for iteration in range(start + 1, iters + 1):
            with loop.iteration(iteration):
                began = time.perf_counter()
                y0, t_relative, starts, targets = batches.sample()
                field = ShiftedTime(model, starts) if shift_time else model
                optimizer.zero_grad(set_to_none=True)
                with track_stats() as stats:
                    loss = loss_fn(solve(field, y0, t_relative), targets)
                    loss_value = loop.check_loss(loss)
                    loss.backward()
                loop.update(iteration, model.parameters(), optimizer, scheduler)
                history.add(stats)
                run.scalars(
                    {"loss/train": loss_value, "nfe/forward": stats.nfe_forward, "nfe/backward": stats.nfe_backward,
                     "time/step": time.perf_counter() - began},
                    iteration,
                )  # fmt: skip
                progress.update(iteration, loss=loss_value, nfe_fwd=stats.nfe_forward, nfe_bwd=stats.nfe_backward)
                plot_now = cfg.plot_every > 0 and iteration % cfg.plot_every == 0 and iteration < iters
                if plot_now or (iteration % cfg.eval_every == 0 and iteration < iters):
                    evaluate(iteration, plot=plot_now)
            if iteration % cfg.checkpoint_every == 0 or iteration == iters:
                checkpoint(iteration)

    final = evaluate(iters, plot=True)
    if cfg.gif and frames:
        from odecli.plotting import phase_animation

        path = phase_animation(obs.true_y.cpu(), frames, run.plots_dir / "training.gif")
        run.log(f"animation: {path}")
    metrics = {
        **final,
        "loss_train_last": loss_value,
        **history.summary(),
        "iters": iters,
        "skipped_batches": loop.skipped,
        "params": count_parameters(model),
        "dynamics": system.name,
        "solver": str(cfg.solver.method),
    }
    _print_summary(run, metrics)
    return metrics


def _plot(run: Run, cfg: DictConfig, system: System, obs: Observations, model: nn.Module, predicted: torch.Tensor, iteration: int) -> None:
    from odecli.plotting import dynamics_figure

    held_out = obs.n_train < len(obs.t)
    title = f"{system.name} · {cfg.solver.method} · iteration {iteration}"
    figure = dynamics_figure(
        obs.t, obs.true_y, predicted, system.vector_field, model, title=title,
        extrapolate_from=float(obs.t[obs.n_train]) if held_out else None,
    )  # fmt: skip
    run.figure("fit/dynamics", figure, iteration, filename="dynamics")


def _print_summary(run: Run, metrics: dict[str, Any]) -> None:
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
