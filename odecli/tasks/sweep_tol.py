"""odecli sweep tol: what a solver's tolerance buys — NFE, error and time (Chen et al. 2018, Figure 3).

Takes a vector field (the latest checkpoint of a fit run, or a field trained briefly here as a
fit run under ``<sweep dir>/train``) and, for every solver × tolerance (rtol = atol = tol), solves
it from a batch of states on the true trajectory and measures

- forward: NFE, accepted/rejected steps, median wall time of ``repeats`` solves, and the relative
  error of the solution against a float64 high-accuracy reference;
- backward, each of direct backprop, adjoint, and adjoint with seminorm (Kidger et al. 2021):
  NFE, wall time, and the relative error of dL/dθ (L = mean of the squared solution) against the
  reference's gradient.

One row per (solver, tol) goes to ``summary.csv`` / ``summary.json``; the paper's Figure 3
(NFE vs error, NFE vs time, backward vs forward NFE, NFE over training) goes to ``plots/`` and
TensorBoard, where every solver is its own run so the curves overlay.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch import nn

from odecli.dynamics import build_system
from odecli.errors import ConfigError, did_you_mean
from odecli.models import build_model
from odecli.registry import SOLVERS, TASKS
from odecli.schemas import SWEEP_DTYPES, SWEEP_MODES
from odecli.solvers import SolverError, odeint, odeint_adjoint, track_stats
from odecli.tasks.common import apply_threads, check_shared_settings, seed_everything, select_device
from odecli.tasks.fit import ShiftedTime, fit
from odecli.tasks.fit import check_config as check_fit_config
from odecli.tracking import Run, atomic_write_bytes, atomic_write_json

MODES = SWEEP_MODES
DTYPES = {name: getattr(torch, name) for name in SWEEP_DTYPES}
# summary.csv columns, in order (the first seven are the ones every consumer can rely on).
COLUMNS = (
    "solver", "tol", "nfe_forward", "nfe_backward", "error", "grad_error", "wall_time_s",
    "steps_accepted", "steps_rejected",
    "nfe_backward_direct", "nfe_backward_adjoint", "nfe_backward_seminorm",
    "grad_error_direct", "grad_error_adjoint", "grad_error_seminorm",
    "wall_time_direct_s", "wall_time_adjoint_s", "wall_time_seminorm_s",
    "status", "note",
)  # fmt: skip


@dataclass
class Field:
    """The vector field under study: the model, the fit config it was trained with, its run directory and iteration."""

    model: nn.Module
    config: dict[str, Any]
    source: Path  # the fit run directory
    step: int


@dataclass
class Problem:
    """The field solved from ``y0`` (batch, 2) at times ``t`` (relative to each state's own start time ``starts``)."""

    y0: torch.Tensor
    t: torch.Tensor
    starts: torch.Tensor

    def func(self, model: nn.Module) -> nn.Module:
        """``model`` as the solver sees it: time-dependent fields get each state's start time added to t."""
        return ShiftedTime(model, self.starts) if getattr(model, "time_input", False) else model


def check_config(cfg: DictConfig) -> None:
    """Everything the sweep can refuse from its config alone (its training run's settings too); run before its directory exists."""
    check_shared_settings(cfg)
    sweep_settings(cfg)
    if cfg.from_run:
        _check_fit_run_directory(Path(str(cfg.from_run)))
    else:
        try:
            check_fit_config(training_config(cfg))
        except ConfigError as exc:  # fit names its own keys; here they are set as train.KEY
            raise ConfigError(f"the vector field to sweep is trained first (no from_run), with fit's settings and train.*: {exc}") from exc


@TASKS.register("sweep_tol", validate=check_config)
def sweep_tol(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Measure NFE, error and time over solvers × tolerances; write the table and Figure 3."""
    apply_threads(cfg.threads)
    seed_everything(int(cfg.seed))
    settings = sweep_settings(cfg)
    field = load_field(Path(str(cfg.from_run))) if cfg.from_run else _train_briefly(cfg, run)
    device = select_device(str(cfg.device))
    dtype = DTYPES[str(cfg.dtype)]
    run.log(f"vector field: [cyan]{field.source}[/] (iteration {field.step}); dynamics {field.config['dynamics']['name']}")

    problem = _problem(field, cfg.problem, device)
    model = copy.deepcopy(field.model).to(device=device, dtype=dtype)
    reference_model = copy.deepcopy(field.model).to(device=device, dtype=torch.float64)
    options = dict(OmegaConf.to_container(cfg.solver.options, resolve=True) or {})
    reference = _reference(reference_model, problem, str(cfg.reference.method), float(cfg.reference.tol), options)
    problem = Problem(problem.y0.to(dtype), problem.t.to(dtype), problem.starts.to(dtype))

    rows: list[dict[str, Any]] = []
    steps = tensorboard_steps(settings["tols"])
    points = [(solver, tol) for solver in settings["solvers"] for tol in settings["tols"]]
    with run.progress(len(points), description="sweep tol") as progress:
        for index, (solver, tol) in enumerate(points, start=1):
            row = measure(model, problem, reference, solver, tol, options=options, **settings["measure"])
            rows.append(row)
            _log_point(run, row, steps[tol])
            progress.update(index, nfe_fwd=_num(row["nfe_forward"]))

    csv_path, json_path = write_summary(run.dir, rows)
    figures = _figures(run, rows, field)
    _print_table(run, rows)
    metrics = _metrics(rows, field, settings)
    metrics.update(summary_csv=str(csv_path), summary_json=str(json_path), figures=[str(p) for p in figures])
    _print_ratios(run, metrics)
    return metrics


# ----- inputs -------------------------------------------------------------------------------
def sweep_settings(cfg: DictConfig) -> dict[str, Any]:
    """The sweep's solvers, tolerances (tightest last) and measuring settings; ConfigError for a solver it cannot sweep.

    Types and ranges were checked by the schema (odecli/schemas.py ``SweepTolConfig``); what is left needs the registry.
    """
    solvers = [str(s) for s in cfg.solvers]
    for name in solvers:
        if name not in SOLVERS:
            raise ConfigError(f"solvers: unknown solver '{name}'.{did_you_mean(name, SOLVERS.names())} `odecli list solvers` lists them.")
        if getattr(SOLVERS.get(name), "adaptive", True) is False:
            raise ConfigError(f"solvers: '{name}' has a fixed step, so its tolerance does nothing; sweep adaptive solvers only (`odecli list solvers`).")
    return {
        "solvers": solvers,
        "tols": sorted((float(t) for t in cfg.tols), reverse=True),
        "measure": {
            "repeats": int(cfg.repeats),
            "modes": [str(m) for m in cfg.modes],
            "max_steps": int(cfg.budget.max_steps),
            "max_backward_nfe": int(cfg.budget.max_backward_nfe),
        },
    }


def _check_fit_run_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise ConfigError(f"from_run: there is no run directory {directory}. Pass a fit run's directory (`odecli report outputs/fit` lists them).")
    if not (directory / "checkpoints").is_dir() or not any((directory / "checkpoints").glob("ckpt_*.pt")):
        raise ConfigError(f"from_run: {directory} has no checkpoints/ckpt_*.pt; is it a finished fit run? (`odecli fit` saves one at the end.)")


def load_field(directory: Path) -> Field:
    """The vector field of a fit run: its latest checkpoint's weights, built from the config it saved."""
    _check_fit_run_directory(directory)
    state = Run(directory, tensorboard=False).load_latest_checkpoint()
    if state is None:
        raise ConfigError(f"from_run: every checkpoint in {directory / 'checkpoints'} is unreadable.")
    config = state.get("config")
    if not isinstance(config, Mapping) or "model" not in state or config.get("task") != "fit" or "model" not in config:
        task = config.get("task") if isinstance(config, Mapping) else None
        raise ConfigError(f"from_run: {directory} is not a fit run (its checkpoint's task is {task!r}); sweep tol needs a vector field from `odecli fit`.")
    model = build_model(config["model"], dim=2)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ConfigError(f"from_run: the checkpoint in {directory} does not match its own model config: {exc}") from exc
    return Field(model.eval(), dict(config), directory, int(state["step"]))


# What the brief training takes from the sweep's own config (a group there replaces fit's choice whole).
SHARED_WITH_FIT = ("dynamics", "model", "solver", "optim", "scheduler", "logger", "paths", "seed", "device", "threads")


def training_config(cfg: DictConfig) -> DictConfig:
    """The config of the short fit a sweep without ``from_run`` trains: fit's config composed by Hydra (its defaults
    list included: e.g. its scheduler) with ``training_overrides`` — the sweep's shared groups, then ``train.*``."""
    from odecli.hydra_bridge import compose

    return compose("fit", training_overrides(cfg))


def training_overrides(cfg: DictConfig) -> list[str]:
    """fit overrides for the brief training, in Hydra's override syntax.

    A group the sweep holds (``dynamics``, ``solver``, ...) replaces fit's: ``~dynamics`` drops fit's default
    option, then ``+dynamics={...}`` adds the whole mapping as the sweep has it (interpolations kept), so nothing of
    fit's default option (lotka_volterra) is left in the sweep's (spiral); one mapping, not a key at a time, because
    fit's schema types a group it holds one schema for (``solver``) and a typed group cannot be refilled key by key
    once dropped. Settings (``seed``, ``threads``, ...)
    are plain ``KEY=VALUE``; ``train.*`` comes last, each leaf as ``KEY=VALUE`` on fit's own keys
    (``train.iters=3`` → ``iters=3``, ``+train.data.batch_size=4`` → ``data.batch_size=4``), so a key fit does
    not have is refused as a typo is.
    """
    raw: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    overrides: list[str] = []
    for key in SHARED_WITH_FIT:
        if key not in raw:
            continue
        if isinstance(raw[key], dict):
            overrides.extend([f"~{key}", f"+{key}={override_value(raw[key])}"])
        else:
            overrides.append(f"{key}={override_value(raw[key])}")
    overrides.extend(f"{key}={override_value(value)}" for key, value in _leaves(raw.get("train") or {}))
    return overrides


def _leaves(node: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{'data': {'batch_size': 4}}`` → ``[('data.batch_size', 4)]`` (lists are values, not branches)."""
    leaves: list[tuple[str, Any]] = []
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            leaves.extend(_leaves(value, f"{prefix}{key}."))
        else:
            leaves.append((f"{prefix}{key}", value))
    return leaves


def override_value(value: Any) -> str:
    """``value`` written as Hydra's override grammar reads it back: null, true, 1e-06, 'text', [..], {k: ..}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf and nan read back as floats too
    if isinstance(value, str):
        # Quoted, so any text stays text ('${.tol}' stays an interpolation); a backslash escapes only before a quote.
        return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot pass {value!r} ({type(value).__name__}) on to the brief fit run as an override.")


def _train_briefly(cfg: DictConfig, run: Run) -> Field:
    """A short fit (fit's own task and config, ``train.*`` overriding it) as a run under ``<dir>/train``."""
    fit_cfg = training_config(cfg)
    train_run = Run(run.dir / "train", console=run.console, tensorboard=bool(cfg.logger.tensorboard))
    run.log(f"no from_run: training a vector field for {fit_cfg.iters} iterations in [cyan]{train_run.dir}[/]")
    started = time.time()
    try:
        metrics = dict(fit(fit_cfg, train_run))
        metrics["status"] = "completed"
    finally:
        train_run.close()
    metrics.update(wall_time_s=round(time.time() - started, 3), task="fit", run_dir=str(train_run.dir))
    train_run.write_metrics(metrics)
    return load_field(train_run.dir)


def _problem(field: Field, node: DictConfig, device: torch.device) -> Problem:
    """``batch`` states spread over the true trajectory's training span, each solved over ``span``."""
    system = build_system(field.config["dynamics"])
    true_y = system.trajectory()
    extrapolate = float(field.config.get("data", {}).get("extrapolate", 0.0) or 0.0)
    n_train = len(system.t) - int(round(extrapolate * len(system.t)))
    index = torch.linspace(0, n_train - 1, int(node.batch)).round().long()
    t = torch.linspace(0.0, float(node.span), int(node.n_times), dtype=torch.float64)
    return Problem(true_y[index].double().to(device), t.to(device), system.t[index].double()[:, None].to(device))


# ----- measuring ----------------------------------------------------------------------------
@dataclass
class Reference:
    solution: torch.Tensor
    gradient: torch.Tensor


def _loss(solution: torch.Tensor) -> torch.Tensor:
    return solution[1:].pow(2).mean()


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()]).double()


def _reference(model: nn.Module, problem: Problem, method: str, tol: float, options: Mapping[str, Any]) -> Reference:
    """The float64 high-accuracy solution and gradient (direct backprop through ``method`` at ``tol``)."""
    model.zero_grad(set_to_none=True)
    solution = odeint(problem.func(model), problem.y0, problem.t, rtol=tol, atol=tol, method=method, options=dict(options))
    _loss(solution).backward()
    gradient = _flat_grad(model)
    model.zero_grad(set_to_none=True)
    return Reference(solution.detach(), gradient)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference).norm() / reference.norm().clamp(min=1e-300))


def measure(
    model: nn.Module,
    problem: Problem,
    reference: Reference,
    solver: str,
    tol: float,
    *,
    options: Mapping[str, Any] | None = None,
    repeats: int = 3,
    modes: Sequence[str] = MODES,
    max_steps: int = 1000,
    max_backward_nfe: int = 1000,
) -> dict[str, Any]:
    """One (solver, tol) point: forward NFE/steps/error/median time, then each backward mode's NFE/error/time."""
    row: dict[str, Any] = {column: math.nan for column in COLUMNS}
    row.update(solver=solver, tol=tol, status="completed", note="")
    opts = {**dict(options or {}), "max_num_steps": max_steps}
    func = problem.func(model)
    times: list[float] = []
    try:
        for _ in range(repeats):
            with torch.no_grad(), track_stats() as stats:
                began = time.perf_counter()
                solution = odeint(func, problem.y0, problem.t, rtol=tol, atol=tol, method=solver, options=opts)
                times.append(time.perf_counter() - began)
    except SolverError as exc:
        row.update(status="skipped" if "max_num_steps" in str(exc) else "failed", note=_short(exc))
        return row
    row.update(
        nfe_forward=stats.nfe_forward, steps_accepted=stats.steps_accepted, steps_rejected=stats.steps_rejected,
        error=_relative_error(solution, reference.solution), wall_time_s=statistics.median(times),
    )  # fmt: skip
    if stats.nfe_forward > max_backward_nfe:
        row["note"] = f"backward not measured: forward NFE {stats.nfe_forward} > budget.max_backward_nfe={max_backward_nfe}"
        return row
    notes = []
    for mode in modes:
        try:
            nfe, gradient, seconds = _backward(model, problem, solver, tol, opts, mode)
        except SolverError as exc:
            notes.append(f"{mode}: {_short(exc)}")
            continue
        row[f"nfe_backward_{mode}"] = nfe
        row[f"grad_error_{mode}"] = _relative_error(gradient, reference.gradient)
        row[f"wall_time_{mode}_s"] = seconds
    # The paper's backward pass is the adjoint; without it, the first mode measured stands in.
    primary = next((m for m in ("adjoint", "seminorm", "direct") if not math.isnan(row[f"nfe_backward_{m}"])), None)
    if primary is not None:
        row["nfe_backward"], row["grad_error"] = row[f"nfe_backward_{primary}"], row[f"grad_error_{primary}"]
    row["note"] = "; ".join(notes)
    return row


def _backward(model: nn.Module, problem: Problem, solver: str, tol: float, options: Mapping[str, Any], mode: str) -> tuple[int, torch.Tensor, float]:
    func = problem.func(model)
    model.zero_grad(set_to_none=True)
    began = time.perf_counter()
    with track_stats() as stats:
        if mode == "direct":
            solution = odeint(func, problem.y0, problem.t, rtol=tol, atol=tol, method=solver, options=dict(options))
        else:
            adjoint_options = {**dict(options), "norm": "seminorm"} if mode == "seminorm" else dict(options)
            solution = odeint_adjoint(
                func, problem.y0, problem.t, rtol=tol, atol=tol, method=solver, options=dict(options),
                adjoint_options=adjoint_options, adjoint_params=tuple(model.parameters()),
            )  # fmt: skip
        _loss(solution).backward()
    seconds = time.perf_counter() - began
    gradient = _flat_grad(model)
    model.zero_grad(set_to_none=True)
    return stats.nfe_backward, gradient, seconds


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


# ----- outputs ------------------------------------------------------------------------------
def tensorboard_steps(tols: Sequence[float]) -> dict[float, int]:
    """TensorBoard's x axis: -log10(tol) when every tol is a power of ten, else the tol's rank (loosest first)."""
    digits = {tol: -math.log10(tol) for tol in tols}
    if all(abs(d - round(d)) < 1e-9 for d in digits.values()):
        return {tol: int(round(d)) for tol, d in digits.items()}
    return {tol: rank for rank, tol in enumerate(sorted(tols, reverse=True))}


def _log_point(run: Run, row: Mapping[str, Any], step: int) -> None:
    """TensorBoard: one run per solver (``tb/<tag>_<solver>``) so the solvers' curves overlay."""
    writer = run.writer
    if writer is None:
        return
    for tag, key in (
        ("tol/nfe_forward", "nfe_forward"), ("tol/nfe_backward", "nfe_backward"), ("tol/nfe_backward_seminorm", "nfe_backward_seminorm"),
        ("tol/error", "error"), ("tol/grad_error", "grad_error"), ("tol/wall_time_s", "wall_time_s"),
    ):  # fmt: skip
        value = _num(row[key])
        if math.isfinite(value):
            writer.add_scalars(tag, {str(row["solver"]): value}, step)


def write_summary(directory: Path, rows: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.json``: one row per (solver, tol), ``COLUMNS`` in order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(row[k], float) and math.isnan(row[k]) else row[k]) for k in COLUMNS})
    csv_path, json_path = directory / "summary.csv", directory / "summary.json"
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    atomic_write_json(json_path, [{k: (None if isinstance(row[k], float) and math.isnan(row[k]) else row[k]) for k in COLUMNS} for row in rows])
    return csv_path, json_path


def training_nfe(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """``nfe/forward`` and ``nfe/backward`` per training iteration from a fit run's TensorBoard events."""
    tb_dir = directory / "tb"
    if not tb_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags().get("scalars", []))
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in ("nfe/forward", "nfe/backward") if tag in tags}


def _figures(run: Run, rows: Sequence[Mapping[str, Any]], field: Field) -> list[Path]:
    from odecli.plotting import (
        backward_forward_nfe_figure,
        nfe_error_figure,
        nfe_time_figure,
        nfe_training_figure,
        tolerance_study_figure,
    )

    history = training_nfe(field.source)
    title = f"odecli sweep tol · {field.config['dynamics']['name']} · vector field of {field.source} (iteration {field.step})"
    paths = [
        run.figure("tol/a_nfe_vs_error", nfe_error_figure(rows, title=title), 0, filename="nfe_vs_error"),
        run.figure("tol/b_nfe_vs_time", nfe_time_figure(rows, title=title), 0, filename="nfe_vs_time"),
        run.figure("tol/c_backward_vs_forward_nfe", backward_forward_nfe_figure(rows, title=title), 0, filename="backward_vs_forward_nfe"),
    ]
    if history:
        paths.append(run.figure("tol/d_nfe_over_training", nfe_training_figure(history, title=title), 0, filename="nfe_over_training"))
    else:
        run.log(f"[yellow]note:[/] no TensorBoard NFE events in {field.source / 'tb'}; figure (d) NFE over training is left out")
    paths.append(run.figure("tol/figure3", tolerance_study_figure(rows, history, title=title), 0, filename="figure3"))
    return paths


def _ratio(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    ratios = [row[key] / row["nfe_forward"] for row in rows if math.isfinite(_num(row[key])) and _num(row["nfe_forward"]) > 0]
    return round(statistics.median(ratios), 4) if ratios else None


def _metrics(rows: Sequence[Mapping[str, Any]], field: Field, settings: Mapping[str, Any]) -> dict[str, Any]:
    completed = [r for r in rows if r["status"] == "completed"]
    metrics: dict[str, Any] = {
        "points": len(rows),
        "points_completed": len(completed),
        "points_skipped": sum(r["status"] == "skipped" for r in rows),
        "points_failed": sum(r["status"] == "failed" for r in rows),
        # median over points of backward NFE / forward NFE (the paper reports about 0.5 for the adjoint)
        "nfe_ratio_adjoint": _ratio(completed, "nfe_backward_adjoint"),
        "nfe_ratio_seminorm": _ratio(completed, "nfe_backward_seminorm"),
        "nfe_ratio_direct": _ratio(completed, "nfe_backward_direct"),
        "from_run": str(field.source),
        "checkpoint_step": field.step,
        "dynamics": field.config["dynamics"]["name"],
        "solvers": list(settings["solvers"]),
        "tols": list(settings["tols"]),
    }
    for solver in settings["solvers"]:
        mine = [r for r in completed if r["solver"] == solver]
        for mode in ("adjoint", "seminorm"):
            ratio = _ratio(mine, f"nfe_backward_{mode}")
            if ratio is not None:
                metrics[f"nfe_ratio_{mode}/{solver}"] = ratio
    return metrics


def _fmt(value: Any, spec: str) -> str:
    number = _num(value) if not isinstance(value, str) else math.nan
    return "—" if not math.isfinite(number) else format(number, spec)


def _print_table(run: Run, rows: Sequence[Mapping[str, Any]]) -> None:
    table = Table(
        title="tolerance sweep · bwd = adjoint backward NFE, sn = with seminorm · errors relative to the float64 reference",
        title_justify="left", header_style="bold",
    )  # fmt: skip
    for column in ("solver", "tol", "NFE fwd", "NFE bwd", "bwd sn", "bwd direct", "acc/rej", "error", "grad err", "grad err sn", "fwd ms"):
        table.add_column(column, justify="left" if column == "solver" else "right", no_wrap=True)
    notes = []
    for row in rows:
        steps = "—" if math.isnan(_num(row["steps_accepted"])) else f"{int(row['steps_accepted'])}/{int(row['steps_rejected'])}"
        mark = "" if row["status"] == "completed" and not row["note"] else f" [{len(notes) + 1}]"
        if mark:
            notes.append(f"[{len(notes) + 1}] {row['solver']} tol={row['tol']:.0e} {row['status']}: {row['note']}")
        table.add_row(
            f"{row['solver']}{mark}", f"{row['tol']:.0e}", _fmt(row["nfe_forward"], ".0f"), _fmt(row["nfe_backward_adjoint"], ".0f"),
            _fmt(row["nfe_backward_seminorm"], ".0f"), _fmt(row["nfe_backward_direct"], ".0f"), steps,
            _fmt(row["error"], ".1e"), _fmt(row["grad_error"], ".1e"), _fmt(row["grad_error_seminorm"], ".1e"),
            _fmt(_num(row["wall_time_s"]) * 1000, ".1f"),
        )  # fmt: skip
    run.console.print(table)  # odecli's console: a pipe or log gets the table's full width (odecli/console.py)
    for note in notes:
        run.console.print(note, highlight=False, soft_wrap=True)


def _print_ratios(run: Run, metrics: Mapping[str, Any]) -> None:
    parts = [
        f"{label} {metrics[key]:.2f}"
        for key, label in (("nfe_ratio_adjoint", "adjoint"), ("nfe_ratio_seminorm", "adjoint+seminorm"), ("nfe_ratio_direct", "direct backprop"))
        if metrics.get(key) is not None
    ]
    if parts:
        run.log(f"backward/forward NFE (median over points; the paper reports ≈0.5 for the adjoint): {', '.join(parts)}")
    skipped = metrics["points_skipped"] + metrics["points_failed"]
    if skipped:
        run.log(f"{skipped} of {metrics['points']} points were skipped or failed (see the status column); raise budget.max_steps to include them")

