"""What every task needs: seeding, device and thread choice, and a solve function from the solver config."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from odecli.errors import ConfigError, RunFailed
from odecli.schemas import SolverConfig, checked
from odecli.solvers.controllers import DEFAULT_MAX_NUM_STEPS
from odecli.solvers.errors import GridTooLarge, MaxStepsExceeded, StepSizeTooSmall
from odecli.solvers.grid import check_grid_size
from odecli.solvers.problem import resolve_method
from odecli.tasks.distributed import world

Solve = Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator's state, for checkpoints that resume bit-for-bit.

    Plain data only (a checkpoint is loaded weights-only): Python's state is a tuple of ints; numpy's
    ``(name, uint32 keys, pos, has_gauss, cached_gaussian)`` keeps its keys as an int64 tensor.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    numpy_state = (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian))
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu or device=auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device '{name}' is not a valid torch device (use auto, cpu or cuda).") from exc


def prepare(cfg: DictConfig) -> torch.device:
    """Every task's first lines: torch threads, seeds, and the device it runs on."""
    apply_threads(cfg.threads)
    seed_everything(int(cfg.seed))
    return select_device(str(cfg.device))


def print_metrics_table(run: Any, title: str, rows: list[tuple[str, str]]) -> None:
    """A run's final metrics as a two-column table on its console."""
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    run.console.print(table)


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(int(threads))


def check_shared_settings(cfg: DictConfig, solver: DictConfig | Mapping[str, Any] | None = None) -> None:
    """What ``prepare``, ``make_solve``, ``build_optimizer`` and ``build_scheduler`` would refuse beyond the schemas' ranges
    (a device this machine lacks, a solver method, the optimizer's and scheduler's own arguments), checked without applying
    anything: task validators call it before a run directory exists. The optimizer is built over a one-number stand-in
    for the model's parameters."""
    select_device(str(cfg.device))
    if solver is not None:
        make_solve(solver)
    if cfg.get("optim") is not None:
        optimizer = build_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(1))])
        build_scheduler(cfg.get("scheduler"), optimizer)


# What a solver given as a plain mapping (Python code, not a composed config) may leave out: the solvers' own defaults.
PLAIN_SOLVER_DEFAULTS: dict[str, Any] = {"step_size": None, "max_num_steps": DEFAULT_MAX_NUM_STEPS, "adjoint": False, "checkpoints": None,
                                         "batch_mode": "joint", "adjoint_seminorm": False, "compile": False, "options": {}}  # fmt: skip


def solver_settings(solver: DictConfig | Mapping[str, Any]) -> SolverConfig:
    """A solver config (composed, or a plain mapping) as its schema's dataclass, its ranges checked by the schema."""
    values = OmegaConf.to_container(solver, resolve=True) if isinstance(solver, DictConfig) else dict(solver)
    values.setdefault("tol", values.get("rtol"))  # as conf/solver/ derives them: rtol, atol from tol; the adjoint's from those
    for key, base in (("adjoint_rtol", "rtol"), ("adjoint_atol", "atol")):
        if values.get(key) is None:
            values[key] = values.get(base)
    return checked(SolverConfig, {**PLAIN_SOLVER_DEFAULTS, **values}, at="solver.")


def make_solve(solver: DictConfig | Mapping[str, Any]) -> Solve:
    """``solve(func, y0, t, norm=None)`` as the solver config says: method, tolerances, fixed step, step budget,
    adjoint, batch mode. A fixed grid over the step budget is refused as a ``ConfigError`` before it is built."""
    from odecli.solvers import odeint, odeint_adjoint, odeint_checkpoint

    settings = solver_settings(solver)
    method, method_class = resolve_method(settings.method)
    rtol, atol = float(settings.rtol), float(settings.atol)
    options = dict(settings.options)
    if settings.step_size is not None:
        options["step_size"] = float(settings.step_size)
    if settings.compile:
        options["compile"] = True
    independent = settings.batch_mode == "independent"
    if independent:
        options["batch_mode"] = "independent"
    # Every method that counts steps gets the budget (the per-sample solver does, whatever the method);
    # solver.options.max_num_steps, where given, wins.
    if independent or "max_num_steps" in getattr(method_class, "options", ()):
        options.setdefault("max_num_steps", settings.max_num_steps)
    if settings.adjoint == "checkpoint":
        checkpoints = settings.checkpoints
        return _grid_refusals_as_config_errors(lambda func, y0, t, norm=None: odeint_checkpoint(
            func, y0, t, rtol=rtol, atol=atol, method=method, options=_with_norm(options, norm), checkpoints=checkpoints
        ))  # fmt: skip
    if not settings.adjoint:
        return _grid_refusals_as_config_errors(
            lambda func, y0, t, norm=None: odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=_with_norm(options, norm))
        )
    adjoint_options = None  # the backward solve inherits options (the step budget included)
    if settings.adjoint_seminorm:
        adjoint_options = {"norm": "seminorm", **({"max_num_steps": options["max_num_steps"]} if "max_num_steps" in options else {})}
    adjoint_rtol, adjoint_atol = float(settings.adjoint_rtol), float(settings.adjoint_atol)
    return _grid_refusals_as_config_errors(lambda func, y0, t, norm=None: odeint_adjoint(
        func, y0, t, rtol=rtol, atol=atol, method=method, options=_with_norm(options, norm),
        adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_options=adjoint_options,
    ))  # fmt: skip


def _grid_refusals_as_config_errors(solve: Solve) -> Solve:
    """``solve``, with a fixed grid too large for the step budget reported in the config's words (a config mistake: exit 2)."""

    def checked(func: Callable, y0: torch.Tensor, t: torch.Tensor, norm: Callable | None = None) -> torch.Tensor:
        try:
            return solve(func, y0, t, norm)
        except GridTooLarge as exc:
            raise _grid_config_error(exc) from exc

    return checked


def check_fixed_grid(solver: DictConfig | Mapping[str, Any], t: torch.Tensor) -> None:
    """Refuse, before a run starts, a ``solver.step_size`` whose grid over the output times ``t`` exceeds the step budget."""
    settings = solver_settings(solver)
    if settings.step_size is None or getattr(resolve_method(settings.method)[1], "adaptive", False):
        return
    try:
        check_grid_size(t, float(settings.step_size), settings.max_num_steps)
    except GridTooLarge as exc:
        raise _grid_config_error(exc) from exc


def _grid_config_error(exc: GridTooLarge) -> ConfigError:
    """A fixed grid too large for the step budget, in the config's words."""
    steps = f"solver.step_size={exc.step_size:.3g} would take {exc.total_steps:,} steps in all"
    if exc.per_interval:
        return ConfigError(
            f"{steps}, {exc.widest_steps:,} of them between the output times t={exc.t_start:.6g} and t={exc.t_end:.6g}: "
            f"more than solver.max_num_steps={exc.limit:,}. Use a larger solver.step_size, or raise solver.max_num_steps."
        )
    return ConfigError(f"{steps}, more than the {exc.limit:,} a fixed grid may hold. Use a larger solver.step_size.")


def _with_norm(options: dict[str, Any], norm: Callable | None) -> dict[str, Any]:
    """A task's own error norm for one solve (e.g. leaving quadrature-only states out of step control)."""
    return options if norm is None else {**options, "norm": norm}


def build_optimizer(node: DictConfig, parameters: Any) -> torch.optim.Optimizer:
    """The optimizer an ``optim/`` config describes (``_target_`` + ``_partial_``) over ``parameters``."""
    from hydra.utils import instantiate

    try:
        return instantiate(node)(parameters)
    except Exception as exc:  # bad lr, unknown keyword, missing class: all the user's config
        cause = exc.__cause__ or exc
        raise ConfigError(f"optim could not be built from {OmegaConf.to_container(node)}: {cause}") from exc


def build_scheduler(node: DictConfig | None, optimizer: torch.optim.Optimizer) -> Any:
    """The learning-rate schedule a ``scheduler/`` config describes (stepped once per iteration), or None."""
    if node is None:
        return None
    from hydra.utils import instantiate

    try:
        return instantiate(node)(optimizer)
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"scheduler could not be built from {OmegaConf.to_container(node)}: {cause}") from exc


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """``scheduler.state_dict()`` as plain data for a weights-only checkpoint (MultiStepLR keeps its milestones in a Counter)."""
    return {key: dict(value) if isinstance(value, Counter) else value for key, value in scheduler.state_dict().items()}


def load_scheduler_state(scheduler: Any, state: Mapping[str, Any]) -> None:
    """Restore what ``scheduler_state`` saved, turning plain dicts back into the Counters the scheduler holds."""
    current = scheduler.state_dict()
    scheduler.load_state_dict({key: Counter(value) if isinstance(current.get(key), Counter) else value for key, value in state.items()})


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite."""

    def __init__(self, iteration: int, value: float, cfg: DictConfig, *, what: str = "loss"):
        lr = OmegaConf.select(cfg, "optim.lr", default="?")
        tol = OmegaConf.select(cfg, "solver.rtol", default="?")
        super().__init__(
            f"the {what} became {value} at iteration {iteration}. Likely causes: a learning rate too high "
            f"(optim.lr={lr}; try a tenth) or a solver tolerance too loose (solver.rtol={tol}; try solver.tol=1e-6). "
            f"The last checkpoint is kept; nonfinite=skip would drop such batches and go on."
        )
        self.iteration = iteration


class SolverGaveUp(RunFailed):
    """A solve during training needed more steps than its budget, or its step size underflowed."""

    def __init__(self, iteration: int, cause: MaxStepsExceeded | StepSizeTooSmall, cfg: DictConfig):
        lr = OmegaConf.select(cfg, "optim.lr", default="?")
        if isinstance(cause, MaxStepsExceeded):
            what = f"a solve needed more than its step budget (max_num_steps={cause.max_num_steps}; it stopped at t={cause.t:.6g})"
            otherwise = "if the dynamics are genuinely stiff, raise solver.max_num_steps or use an implicit solver"
        else:
            what = f"the solver's step size fell to {cause.dt:.3g} at t={cause.t:.6g}, too small to go on"
            otherwise = "if the dynamics are genuinely stiff, loosen solver.tol or use an implicit solver"
        super().__init__(
            f"at iteration {iteration} {what}: the learned dynamics have most likely blown up or become very stiff. "
            f"Lower the learning rate (optim.lr={lr}; try a tenth); {otherwise}. The last checkpoint is kept."
        )
        self.iteration = iteration


class NFEHistory:
    """Running sums of per-iteration function evaluations (kept in checkpoints, so resumed runs agree)."""

    def __init__(self) -> None:
        self.iterations = 0
        self.forward = 0
        self.backward = 0
        self.last_forward = 0
        self.last_backward = 0
        self.per_rank: list[list[float]] = []  # [forward, backward] sums of each process (several processes only)
        self.trace: list[tuple[int, float, float]] = []  # (iteration, forward, backward) of every iteration, for figures

    def add(self, stats: Any, per_rank: Sequence[Sequence[float]] | None = None, *, iteration: int) -> None:
        """Iteration ``iteration``'s counts; ``per_rank`` ([forward, backward] of each process, several processes
        only): the history then keeps each rank's sums, and ``stats`` is their mean over the ranks."""
        self.iterations += 1
        self.trace.append((iteration, stats.nfe_forward, stats.nfe_backward))
        self.forward += stats.nfe_forward
        self.backward += stats.nfe_backward
        self.last_forward, self.last_backward = stats.nfe_forward, stats.nfe_backward
        if per_rank is not None:
            sums = self.per_rank or [[0.0, 0.0] for _ in per_rank]
            self.per_rank = [[s[0] + r[0], s[1] + r[1]] for s, r in zip(sums, per_rank, strict=True)]

    def summary(self) -> dict[str, Any]:
        n = max(self.iterations, 1)
        summary: dict[str, Any] = {
            "nfe_forward": self.forward / n,
            "nfe_backward": self.backward / n,
            "nfe_forward_last": self.last_forward,
            "nfe_backward_last": self.last_backward,
        }
        if self.per_rank:
            summary["nfe_forward_per_rank"] = [s[0] / n for s in self.per_rank]
            summary["nfe_backward_per_rank"] = [s[1] / n for s in self.per_rank]
        return summary

    def state_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        vars(self).update(state)


# Keys that may differ between a run and its resumption without changing what it computes.
RESUME_NEUTRAL_KEYS = ("resume", "iters", "threads", "device", "plot_every", "gif", "logger", "paths")


def saved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars (enums as their names), which a weights-only load reads back."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def check_resumed_config(saved: Mapping[str, Any], cfg: DictConfig, run: Any) -> None:
    """Warn when a resumed run is continued with settings other than those it started with."""
    from odecli.hydra_bridge import flat_config

    before = flat_config(OmegaConf.create(dict(saved)))
    now = flat_config(cfg)
    changed = [
        f"{key}: {before.get(key)} → {now.get(key)}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key) and key.split(".")[0] not in RESUME_NEUTRAL_KEYS
    ]
    if changed:
        run.log("[yellow]warning:[/] resuming with settings that differ from the checkpoint's: " + "; ".join(changed))


class Checkpointer:
    """A training run's checkpoints: what every task saves (model, optimizer, schedule, NFE sums,
    random states, config) plus each task's extras, and ``resume=true`` restoring all of it."""

    def __init__(self, run: Any, cfg: DictConfig, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 history: NFEHistory, scheduler: Any = None):  # fmt: skip
        self.run, self.cfg = run, cfg
        self.model, self.optimizer, self.history, self.scheduler = model, optimizer, history, scheduler

    def save(self, step: int, **extra: Any) -> None:
        """Rank 0 writes the checkpoint (several processes: every rank calls this at the same step)."""
        if not world().is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler) if self.scheduler is not None else None,
            "history": self.history.state_dict(),
            "rng": rng_state(),
            "config": saved_config(self.cfg),
            **extra,
        }
        self.run.save_checkpoint(state, step)

    def resume(self) -> dict[str, Any] | None:
        """With ``resume=true``: restore the newest readable checkpoint and return it (extras included)."""
        if not self.cfg.resume:
            return None
        ranks = world()
        state = ranks.from_main(self.run.load_latest_checkpoint() if ranks.is_main else None)  # rank 0 reads, the others receive
        if state is None:
            self.run.log(f"[yellow]resume:[/] no checkpoint in {self.run.checkpoints_dir}; starting from the beginning")
            return None
        check_resumed_config(state["config"], self.cfg, self.run)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            load_scheduler_state(self.scheduler, state["scheduler"])
        self.history.load_state_dict(state["history"])
        restore_rng_state(state["rng"])
        self.run.log(f"[bold]resume:[/] continuing from step {state['step']} ({self.run.checkpoint_path(state['step']).name})")
        return state
