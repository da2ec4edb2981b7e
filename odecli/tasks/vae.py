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
from collections.abc import Mapping
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
from odecli.tasks.common import (
    build_optimizer,
    build_scheduler,
    check_shared_settings,
    make_solve,
)
from odecli.tasks.driver import Every, Step, TrainingRecord, TrainingTask, data_and_noise_generators, train
from odecli.tasks.loop import checked_loss
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
    check_data(cfg.data)
    build_models(cfg, obs_dim=1)  # the models' own settings; they do not depend on the data's dimension


class VAE(TrainingTask):
    """The latent ODE (and, with ``baseline=true``, the RNN) trained on irregularly sampled series, each on its own loss."""

    def __init__(self, cfg: DictConfig, run: Run, device: torch.device):
        self.cfg, self.run = cfg, run
        self.data = load_data(cfg.data).to(device)
        self.train_set, self.test_set = self.data.train, self.data.test
        self.models = self.model = build_models(cfg, self.data.dim).to(device)
        self.optimizer = build_optimizer(cfg.optim, self.models.parameters())
        self.scheduler = build_scheduler(cfg.get("scheduler"), self.optimizer)
        self.solve = make_solve(cfg.solver)
        self.device = device
        self.seed, self.iterations = int(cfg.seed), int(cfg.iters)
        self.batch_size = min(int(cfg.batch_size), len(self.train_set))
        self.obs_std = float(cfg.likelihood_std)
        self.data_generator, self.noise_generator = data_and_noise_generators(self.seed)
        self.samplers = [self.data_generator, self.noise_generator]
        self.train_time = dict.fromkeys(self.models.keys(), 0.0)
        self.eval_time = 0.0  # seconds of the last evaluation (the final one's is a metric)
        self.description = f"vae {self.data.name}"
        self.eval_every, self.plot_every, self.checkpoint_every = Every(cfg.eval_every), Every(cfg.plot_every), Every(cfg.checkpoint_every)
        self.n_obs = float(self.train_set.observed.valid.sum(1).float().mean())
        run.log(f"data {self.data.name}: {len(self.train_set)} training and {len(self.test_set)} test series, {self.data.dim}-D, "
                f"{self.n_obs:.1f} observed times per series on average")  # fmt: skip

    def train_step(self, iteration: int) -> Step:
        began = time.perf_counter()
        index = torch.randperm(len(self.train_set), generator=self.data_generator)[: self.batch_size].to(self.device)
        batch = self.train_set.observed[index]
        anneal = int(self.cfg.kl_anneal_iters)
        beta = min(1.0, iteration / anneal) if anneal > 0 else 1.0
        log_likelihood, kl = self.models["latent_ode"].elbo_terms(batch, self.solve, self.obs_std, self.noise_generator)
        loss = (kl * beta - log_likelihood).mean()
        elbo = (kl - log_likelihood).mean().item()
        scalars = {"loss/elbo": elbo, "loss/kl": kl.mean().item(), "loss/log_likelihood": log_likelihood.mean().item(), "train/kl_weight": beta}

        def train_baseline() -> dict[str, float]:
            """The latent ODE's backward pass is done: time it, then take the RNN's step on the same batch."""
            self.train_time["latent_ode"] += time.perf_counter() - began
            if "rnn" not in self.models:
                return {}
            rnn_began = time.perf_counter()
            predicted = self.models["rnn"].one_step_predictions(batch)
            rnn_loss = -gaussian_log_likelihood(batch.x, predicted, self.obs_std, batch.mask).mean()
            rnn_value = checked_loss(rnn_loss)
            rnn_loss.backward()
            self.train_time["rnn"] += time.perf_counter() - rnn_began
            return {"loss/rnn": rnn_value}

        return Step(loss, scalars=scalars, progress={"elbo": -elbo}, after_backward=train_baseline)

    def clip_gradients(self) -> None:
        if self.cfg.grad_clip is not None:
            for model in self.models.values():
                nn.utils.clip_grad_norm_(model.parameters(), float(self.cfg.grad_clip))

    def evaluate(self, iteration: int) -> dict[str, float | None]:
        """Test RMSEs inside (``rmse_interp``) and after (``rmse_extrap``) the observed window, for each model."""
        began = time.perf_counter()
        metrics: dict[str, float | None] = {}
        for key, model in self.models.items():
            prefix = "" if key == "latent_ode" else f"{key}_"
            for part, value in rmse(model, self.test_set, self.solve, self.data.scale).items():
                metrics[f"{prefix}rmse_{part}"] = value
                if value is not None:
                    self.run.scalar(f"metrics/{prefix}rmse_{part}", value, iteration)
        self.eval_time = time.perf_counter() - began
        return metrics

    def plot(self, iteration: int) -> None:
        if int(self.cfg.plot_series) > 0:
            _plot(self.run, self.cfg, self.data, self.models, self.solve, iteration)

    def state_dict(self) -> dict[str, Any]:
        return {"train_time": dict(self.train_time), "eval_time": self.eval_time}

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        self.train_time.update(state["train_time"])
        self.eval_time = float(state["eval_time"])

    def metrics(self, final: Mapping[str, Any], record: TrainingRecord) -> dict[str, Any]:
        cfg, data, models = self.cfg, self.data, self.models
        with torch.no_grad():
            log_likelihood, kl = models["latent_ode"].elbo_terms(self.test_set.observed, self.solve, self.obs_std, torch.Generator().manual_seed(self.seed + 4))
        common = record.common_metrics()
        return {
            **final,
            "n_obs": int(round(self.n_obs)) if data.name == "spirals" or data.name == "ecg" else round(self.n_obs, 2),
            "elbo_test": float((log_likelihood - kl).mean()),
            "loss_train_last": common.pop("loss_train_last"),
            **({"rnn_loss_train_last": float(record.last_scalars.get("loss/rnn", float("nan")))} if "rnn" in models else {}),
            **common,
            **{f"train_time_s_{key}": round(value, 2) for key, value in self.train_time.items()},
            "eval_time_s": round(self.eval_time, 2),
            "iters": self.iterations,
            "params": count_parameters(models["latent_ode"]),
            **({"rnn_params": count_parameters(models["rnn"])} if "rnn" in models else {}),
            "data": data.name,
            "series_train": len(self.train_set),
            "series_test": len(self.test_set),
            "solver": str(cfg.solver.method),
            "adjoint": cfg.solver.adjoint or False,
        }

    def print_summary(self, metrics: Mapping[str, Any]) -> None:
        _print_summary(self.run, metrics)


@TASKS.register("vae", validate=check_config, description="Latent ODE on irregularly sampled noisy spirals vs an RNN baseline.",
                examples=("odecli vae", "odecli vae data.n_obs=30", "odecli vae data=csv data.path=series.csv"))  # fmt: skip
def vae(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Train the latent ODE (and the RNN baseline) on ``data``; return test RMSEs, NFE and timings."""
    return train(VAE, cfg, run)


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


def _print_summary(run: Run, metrics: Mapping[str, Any]) -> None:
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
