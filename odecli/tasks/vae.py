"""odecli vae: a latent ODE VAE on irregularly sampled series, against an RNN baseline (Chen et al. 2018, §5, Table 2).

Each iteration draws ``batch_size`` training series and takes one Adam step on both models, each on
its own loss and parameters (same data, same budget): the latent ODE on −ELBO (reconstruction of the
observed points, KL weight ``β`` annealed from 0 to 1 over ``kl_anneal_iters``), the RNN baseline
(``baseline=true``) on the negative log-likelihood of its one-step-ahead predictions under the same
Gaussian (std ``likelihood_std``). Evaluation, on held-out test series: RMSE against the held-out
targets inside the observed window (``rmse_interp``) and after it (``rmse_extrap``); the RNN rolls
forward past its last observation, feeding its predictions back (see odecli/models/latent_ode.py).

TensorBoard: ``loss/elbo`` (−ELBO per series, β = 1), ``loss/kl``, ``loss/rnn``, ``loss/train``
(the annealed objective), ``metrics/rmse_interp``, ``metrics/rmse_extrap`` and ``metrics/rnn_…``,
``nfe/forward``, ``nfe/backward`` (latent ODE solves), ``time/step``; figures ``vae/reconstruction``
(the paper's Figure 8: observed points, truth, reconstruction and extrapolation, for both models)
and ``vae/latent`` (the latent trajectories z(t)).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch import nn

from odecli.data import ecg, spirals
from odecli.data.irregular import SeriesData, SeriesSet, check_series, load_series
from odecli.errors import ConfigError
from odecli.models import count_parameters
from odecli.models.latent_ode import GapRNN, LatentODE, gaussian_log_likelihood
from odecli.registry import TASKS
from odecli.solvers import track_stats
from odecli.tasks.common import (
    Checkpointer,
    NFEHistory,
    build_optimizer,
    build_scheduler,
    check_shared_settings,
    make_solve,
    prepare,
)
from odecli.tasks.loop import TrainingLoop
from odecli.tracking import Run

EVAL_CHUNK = 256  # series per evaluation solve
MODEL_LABELS = {"latent_ode": "latent ODE", "rnn": "RNN (Δt inputs)"}


def load_data(node: DictConfig) -> SeriesData:
    """The data set ``data=spirals|ecg|csv`` describes."""
    name = str(node.get("name"))
    if name == "spirals":
        from odecli.data.spirals import generate

        return generate(node)
    if name == "ecg":
        from odecli.data.ecg import generate

        return generate(node)
    if name == "csv":
        _require_path(node)
        return load_series(node)
    raise _not_vae_data(name)


def _not_vae_data(name: str) -> ConfigError:
    return ConfigError(f"odecli vae trains on irregular series: data=spirals, data=ecg or data=csv data.path=<file>; data={name} belongs to another task.")


def _require_path(node: DictConfig) -> None:
    if OmegaConf.is_missing(node, "path") or node.get("path") in (None, ""):
        raise ConfigError("data=csv reads your own series: add data.path=<file.csv|file.npz> (columns series_id, t, x1..xd; see odecli/data/irregular.py).")


def check_data(node: DictConfig) -> None:
    """What ``load_data`` would refuse, before the run starts: generated data's settings, your series file (read and checked)."""
    name = str(node.get("name"))
    generated = {"spirals": spirals.check_config, "ecg": ecg.check_config}
    if name in generated:
        generated[name](node)
    elif name == "csv":
        _require_path(node)
        check_series(node)
    else:
        raise _not_vae_data(name)


def _validate(cfg: DictConfig) -> None:
    for key in ("iters", "batch_size", "eval_every", "checkpoint_every"):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}.")
    for key in ("plot_every", "plot_series", "kl_anneal_iters"):
        if not isinstance(cfg[key], int) or cfg[key] < 0:
            raise ConfigError(f"{key} must be an integer >= 0, got {cfg[key]!r}.")
    if cfg.likelihood_std is None or float(cfg.likelihood_std) <= 0:
        raise ConfigError(f"likelihood_std (the Gaussian observation noise of the likelihood) must be positive, got {cfg.likelihood_std}.")
    if cfg.grad_clip is not None and float(cfg.grad_clip) <= 0:
        raise ConfigError(f"grad_clip must be positive or null, got {cfg.grad_clip}.")


def build_models(cfg: DictConfig, obs_dim: int) -> nn.ModuleDict:
    """The latent ODE (``model``) and, with ``baseline=true``, the RNN (``rnn``), in one module so one
    optimizer and one checkpoint hold both (their parameters never mix)."""

    def kwargs(node: DictConfig) -> dict[str, Any]:
        return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}

    try:
        models = nn.ModuleDict({"latent_ode": LatentODE(obs_dim, **kwargs(cfg.model))})
        if cfg.baseline:
            models["rnn"] = GapRNN(obs_dim, **kwargs(cfg.rnn))
    except TypeError as exc:
        raise ConfigError(f"model or rnn does not accept these settings: {exc}") from exc
    return models


def rmse(model: nn.Module, series: SeriesSet, solve: Any, scale: torch.Tensor) -> dict[str, float | None]:
    """RMSE (in data units) at the held-out times inside (``interp``) and after (``extrap``) the observed window."""
    sums = {"interp": 0.0, "extrap": 0.0}
    counts = {"interp": 0.0, "extrap": 0.0}
    with torch.no_grad():
        for start in range(0, len(series), EVAL_CHUNK):
            chunk = series[start : start + EVAL_CHUNK]
            for part, feedback in (("interp", False), ("extrap", True)):
                target = getattr(chunk, part)
                if not target.mask.any():
                    continue
                fed = target.valid if feedback else None
                predicted = model.predict(chunk.observed, target.t, solve, feedback=fed)
                sums[part] += float(((predicted - target.x) ** 2 * scale**2 * target.mask).sum())
                counts[part] += float(target.mask.sum())
    return {part: (math.sqrt(sums[part] / counts[part]) if counts[part] else None) for part in sums}


def check_config(cfg: DictConfig) -> None:
    """Everything vae can refuse before it starts (its data's settings, your series file); run before a run directory exists."""
    check_shared_settings(cfg, cfg.solver)
    _validate(cfg)
    check_data(cfg.data)
    build_models(cfg, obs_dim=1)  # the models' own settings; they do not depend on the data's dimension


@TASKS.register("vae", validate=check_config)
def vae(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Train the latent ODE (and the RNN baseline) on ``data``; return test RMSEs, NFE and timings."""
    device = prepare(cfg)
    _validate(cfg)
    data = load_data(cfg.data).to(device)
    train, test = data.train, data.test
    models = build_models(cfg, data.dim).to(device)
    optimizer = build_optimizer(cfg.optim, models.parameters())
    scheduler = build_scheduler(cfg.get("scheduler"), optimizer)
    solve = make_solve(cfg.solver)
    seed, iters = int(cfg.seed), int(cfg.iters)
    batch_size = min(int(cfg.batch_size), len(train))
    obs_std = float(cfg.likelihood_std)
    data_generator = torch.Generator().manual_seed(seed + 2)
    noise_generator = torch.Generator().manual_seed(seed + 3)
    history = NFEHistory()
    train_time = dict.fromkeys(models.keys(), 0.0)
    n_obs = float(train.observed.valid.sum(1).float().mean())
    run.log(f"data {data.name}: {len(train)} training and {len(test)} test series, {data.dim}-D, {n_obs:.1f} observed times per series on average")

    checkpointer = Checkpointer(run, cfg, model=models, optimizer=optimizer, history=history, scheduler=scheduler)
    start = 0
    if (state := checkpointer.resume()) is not None:
        data_generator.set_state(state["data_generator"])
        noise_generator.set_state(state["noise_generator"])
        train_time.update(state.get("train_time", {}))
        start = int(state["step"])
    run.resume_at(start + 1)

    def checkpoint(iteration: int) -> None:
        checkpointer.save(iteration, data_generator=data_generator.get_state(), noise_generator=noise_generator.get_state(), train_time=dict(train_time))

    def evaluate(iteration: int) -> dict[str, float | None]:
        metrics: dict[str, float | None] = {}
        for key, model in models.items():
            prefix = "" if key == "latent_ode" else f"{key}_"
            for part, value in rmse(model, test, solve, data.scale).items():
                metrics[f"{prefix}rmse_{part}"] = value
                if value is not None:
                    run.scalar(f"metrics/{prefix}rmse_{part}", value, iteration)
        return metrics

    def plot(iteration: int) -> None:
        if int(cfg.plot_series) > 0:
            _plot(run, cfg, data, models, solve, iteration)

    loss_value = rnn_value = float("nan")
    ode = models["latent_ode"]
    with run.progress(iters, start=start, description=f"vae {data.name}") as progress, \
            TrainingLoop(run, cfg, start=start, save=checkpoint, samplers=[data_generator, noise_generator]) as loop:  # fmt: skip
        for iteration in range(start + 1, iters + 1):
            with loop.iteration(iteration):
                began = time.perf_counter()
                index = torch.randperm(len(train), generator=data_generator)[:batch_size].to(device)
                batch = train.observed[index]
                beta = min(1.0, iteration / int(cfg.kl_anneal_iters)) if int(cfg.kl_anneal_iters) > 0 else 1.0
                optimizer.zero_grad(set_to_none=True)
                with track_stats() as stats:
                    log_likelihood, kl = ode.elbo_terms(batch, solve, obs_std, noise_generator)
                    loss = (kl * beta - log_likelihood).mean()
                    loss_value = loop.check_loss(loss)
                    loss.backward()
                train_time["latent_ode"] += time.perf_counter() - began
                scalars = {"loss/train": loss_value, "loss/elbo": (kl - log_likelihood).mean().item(), "loss/kl": kl.mean().item(),
                           "loss/log_likelihood": log_likelihood.mean().item(), "train/kl_weight": beta,
                           "nfe/forward": stats.nfe_forward, "nfe/backward": stats.nfe_backward}  # fmt: skip
                if "rnn" in models:
                    rnn_began = time.perf_counter()
                    predicted = models["rnn"].one_step_predictions(batch)
                    rnn_loss = -gaussian_log_likelihood(batch.x, predicted, obs_std, batch.mask).mean()
                    rnn_value = loop.check_loss(rnn_loss)
                    rnn_loss.backward()
                    train_time["rnn"] += time.perf_counter() - rnn_began
                    scalars["loss/rnn"] = rnn_value
                if cfg.grad_clip is not None:
                    for model in models.values():
                        nn.utils.clip_grad_norm_(model.parameters(), float(cfg.grad_clip))
                loop.update(iteration, models.parameters(), optimizer, scheduler)
                history.add(stats)
                run.scalars({**scalars, "time/step": time.perf_counter() - began}, iteration)
                progress.update(iteration, elbo=-scalars["loss/elbo"], rnn=rnn_value, nfe_fwd=stats.nfe_forward, nfe_bwd=stats.nfe_backward)
                if iteration % cfg.eval_every == 0 and iteration < iters:
                    evaluate(iteration)
                if cfg.plot_every > 0 and iteration % cfg.plot_every == 0 and iteration < iters:
                    plot(iteration)
            if iteration % cfg.checkpoint_every == 0 or iteration == iters:
                checkpoint(iteration)

    eval_began = time.perf_counter()
    final = evaluate(iters)
    eval_time = time.perf_counter() - eval_began
    plot(iters)
    with torch.no_grad():
        log_likelihood, kl = ode.elbo_terms(test.observed, solve, obs_std, torch.Generator().manual_seed(seed + 4))
    metrics: dict[str, Any] = {
        **final,
        "n_obs": int(round(n_obs)) if data.name == "spirals" or data.name == "ecg" else round(n_obs, 2),
        "elbo_test": float((log_likelihood - kl).mean()),
        "loss_train_last": loss_value,
        **({"rnn_loss_train_last": rnn_value} if "rnn" in models else {}),
        **history.summary(),
        **{f"train_time_s_{key}": round(value, 2) for key, value in train_time.items()},
        "eval_time_s": round(eval_time, 2),
        "iters": iters,
        "skipped_batches": loop.skipped,
        "params": count_parameters(ode),
        **({"rnn_params": count_parameters(models["rnn"])} if "rnn" in models else {}),
        "data": data.name,
        "series_train": len(train),
        "series_test": len(test),
        "solver": str(cfg.solver.method),
        "adjoint": cfg.solver.adjoint or False,
    }
    _print_summary(run, metrics)
    return metrics


# ----- figures ------------------------------------------------------------------------------------
def _plot_indices(series: SeriesSet, count: int) -> list[int]:
    """Test series to draw: alternate between labels (spirals: counter-clockwise, clockwise) where known."""
    count = min(count, len(series))
    if series.labels is None:
        return list(range(count))
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(series.labels.tolist()):
        by_label.setdefault(int(label), []).append(i)
    chosen: list[int] = []
    queues = [list(v) for _, v in sorted(by_label.items())]
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def _dense_times(series: SeriesSet, points: int = 200) -> torch.Tensor:
    if series.truth_t is not None:
        return series.truth_t
    end = torch.maximum(series.extrap.t.max(1).values, series.observed.t.max(1).values) * 1.0
    fractions = torch.linspace(0, 1, points, device=end.device)
    return end[:, None] * fractions[None, :]


def _plot(run: Run, cfg: DictConfig, data: SeriesData, models: nn.ModuleDict, solve: Any, iteration: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = _plot_indices(data.test, int(cfg.plot_series))
    series = data.test[torch.tensor(chosen, device=data.test.window_end.device)]
    times = _dense_times(series)
    after = times > series.window_end[:, None]
    scale, offset = data.scale, data.offset
    with torch.no_grad():
        predictions = {key: model.predict(series.observed, times, solve, feedback=after) * scale + offset for key, model in models.items()}
        latent = models["latent_ode"].latent_path(series.observed, times, solve)

    def to_np(x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    obs_t, obs_x, obs_m = to_np(series.observed.t), to_np(series.observed.x * scale + offset), to_np(series.observed.mask) > 0
    times_np, after_np = to_np(times), to_np(after)
    truth = to_np(series.truth_x * scale + offset) if series.truth_x is not None else None
    ext_t, ext_x, ext_m = to_np(series.extrap.t), to_np(series.extrap.x * scale + offset), to_np(series.extrap.mask) > 0
    phase_plane = data.dim == 2
    rows, columns = len(models), len(chosen)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
    for r, (key, predicted) in enumerate(predictions.items()):
        values = to_np(predicted)
        for c in range(columns):
            ax = axes[r][c]
            inside, beyond = ~after_np[c], after_np[c]
            beyond_line = beyond.copy()
            if inside.any():  # join the two curves
                beyond_line[np.flatnonzero(inside)[-1]] = True
            if phase_plane:
                if truth is not None:
                    ax.plot(truth[c, :, 0], truth[c, :, 1], color="0.7", lw=1, label="truth")
                seen = obs_m[c].all(-1)
                ax.scatter(obs_x[c, seen, 0], obs_x[c, seen, 1], s=10, color="k", zorder=3, label="observed")
                ax.plot(values[c, inside, 0], values[c, inside, 1], color="C0", lw=1.6, label="reconstruction")
                ax.plot(values[c, beyond_line, 0], values[c, beyond_line, 1], color="C3", lw=1.6, ls="--", label="extrapolation")
                ax.set_aspect("equal", adjustable="datalim")
            else:
                for d in range(data.dim):
                    color = f"C{d}" if data.dim > 1 else "C0"
                    if truth is not None:
                        ax.plot(times_np[c], truth[c, :, d], color="0.7", lw=1, label="truth" if d == 0 else None)
                    seen = obs_m[c, :, d]
                    ax.scatter(obs_t[c, seen], obs_x[c, seen, d], s=8, color="k", zorder=3, label="observed" if d == 0 else None)
                    if truth is None:
                        held = ext_m[c, :, d]
                        ax.scatter(ext_t[c, held], ext_x[c, held, d], s=8, marker="x", color="0.5", label="held out" if d == 0 else None)
                    ax.plot(times_np[c, inside], values[c, inside, d], color=color, lw=1.6, label="reconstruction" if d == 0 else None)
                    ax.plot(times_np[c, beyond_line], values[c, beyond_line, d], color=color, lw=1.6, ls="--", label="extrapolation" if d == 0 else None)
                ax.axvline(float(series.window_end[c]), color="0.5", lw=0.8, ls=":")
                ax.set_xlabel("t")
            ax.set_title(f"{MODEL_LABELS[key]} · test series {chosen[c]}", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"vae {data.name} · {cfg.solver.method} · iteration {iteration}")
    fig.tight_layout()
    run.figure("vae/reconstruction", fig, iteration, filename="reconstruction")

    latent_np = to_np(latent)
    fig, axes = plt.subplots(1, columns, figsize=(3.6 * columns, 3.0), squeeze=False)
    for c in range(columns):
        ax = axes[0][c]
        for k in range(latent_np.shape[-1]):
            ax.plot(times_np[c], latent_np[c, :, k], lw=1.2, label=f"z{k + 1}")
        ax.axvline(float(series.window_end[c]), color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("t")
        ax.set_title(f"latent z(t) · test series {chosen[c]}", fontsize=9)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    run.figure("vae/latent", fig, iteration, filename="latent")

    if data.dim == 1 and bool(cfg.data.get("plot_phase", False)):  # (x, dx/dt) portraits, e.g. heartbeats
        fig, axes = plt.subplots(1, columns, figsize=(3.6 * columns, 3.4), squeeze=False)
        for c in range(columns):
            ax = axes[0][c]
            if truth is not None:
                ax.plot(truth[c, :, 0], np.gradient(truth[c, :, 0], times_np[c]), color="0.7", lw=1, label="truth")
            for key, predicted in predictions.items():
                values = to_np(predicted)[c, :, 0]
                ax.plot(values, np.gradient(values, times_np[c]), lw=1.2, label=MODEL_LABELS[key])
            ax.set_xlabel("x(t)")
            ax.set_ylabel("dx/dt")
            ax.set_title(f"phase portrait · test series {chosen[c]}", fontsize=9)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        run.figure("vae/phase", fig, iteration, filename="phase")


def _print_summary(run: Run, metrics: dict[str, Any]) -> None:
    baseline = "rnn_rmse_interp" in metrics
    table = Table(title=f"vae {metrics['data']} · n_obs {metrics['n_obs']} · {metrics['solver']}{' (' + ('checkpoint adjoint' if metrics['adjoint'] == 'checkpoint' else 'adjoint') + ')' if metrics['adjoint'] else ''}", header_style="bold")
    table.add_column("metric")
    table.add_column("latent ODE", justify="right")
    if baseline:
        table.add_column("RNN (Δt inputs)", justify="right")

    def cell(value: Any) -> str:
        return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    def seconds(value: Any) -> str:
        return "—" if value is None else f"{value:.1f}"

    rows = [("test RMSE, interpolation", "rmse_interp", "rnn_rmse_interp"), ("test RMSE, extrapolation", "rmse_extrap", "rnn_rmse_extrap"),
            ("parameters", "params", "rnn_params")]  # fmt: skip
    for label, ode_key, rnn_key in rows:
        table.add_row(label, cell(metrics.get(ode_key)), *([cell(metrics.get(rnn_key))] if baseline else []))
    table.add_row("training time (s)", seconds(metrics.get("train_time_s_latent_ode")), *([seconds(metrics.get("train_time_s_rnn"))] if baseline else []))
    table.add_row("NFE forward / backward per iteration", f"{metrics['nfe_forward']:.1f} / {metrics['nfe_backward']:.1f}", *([""] if baseline else []))
    table.add_row("test ELBO per series", f"{metrics['elbo_test']:.2f}", *([""] if baseline else []))
    table.add_row("iterations", str(metrics["iters"]), *([str(metrics["iters"])] if baseline else []))
    run.console.print(table)
