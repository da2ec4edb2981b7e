"""odecli classify: ODE-Net vs ResNet, RK-Net and MLP on MNIST (the paper's Section 3 and Table 1).

Trains the chosen classifier with cross-entropy for ``epochs`` epochs, validates on a held-out
part of the training set each epoch and tests on the official 10k test set (every ``test_every``
epochs and at the end). Per batch it logs ``loss/train``, ``nfe/forward`` and ``nfe/backward``
(the paper's Figure 3d: NFE grows as training goes on); per epoch ``loss/val``,
``metrics/val_accuracy``, ``metrics/test_accuracy``, ``metrics/test_error`` and ``time/epoch``.
TensorBoard steps are training batches. Checkpoints at the end of each epoch (and every
``checkpoint_every`` batches); ``resume=true`` continues mid-epoch with the same batches.
The learning rate follows the ``scheduler/`` group, stepped once per training batch (``charts/learning_rate``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from odecli.data.images import EpochBatches, Normalize, Split, in_order, make_splits
from odecli.data.mnist import check_mnist, load_mnist
from odecli.errors import ConfigError
from odecli.models import count_parameters
from odecli.models.classifiers import SOLVED, build_classifier
from odecli.registry import MODELS, SOLVERS, TASKS
from odecli.solvers import track_stats
from odecli.tasks.common import (
    Checkpointer,
    NFEHistory,
    build_optimizer,
    build_scheduler,
    check_shared_settings,
    make_solve,
    prepare,
    print_metrics_table,
)
from odecli.tasks.distributed import check_settings as check_distributed
from odecli.tasks.distributed import rank_scalars, world
from odecli.tasks.loop import TrainingLoop
from odecli.tracking import Run

DATASETS = ("mnist",)


def _positive_int(key: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}.")
    return value


def _validate(cfg: DictConfig) -> None:
    if str(cfg.data.name) not in DATASETS:
        raise ConfigError(f"odecli classify knows the data sets {', '.join(DATASETS)}; got '{cfg.data.name}'.")
    _positive_int("epochs", cfg.epochs)
    _positive_int("data.batch_size", cfg.data.batch_size)
    _positive_int("data.eval_batch_size", cfg.data.eval_batch_size)
    _positive_int("data.random_crop", cfg.data.random_crop, minimum=0)
    _positive_int("test_every", cfg.test_every, minimum=0)
    _positive_int("checkpoint_every", cfg.checkpoint_every, minimum=0)
    if not 0 <= float(cfg.label_smoothing) < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}.")


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The ``scheduler/`` group's schedule over this run, stepped once per training batch (not per epoch).

    Its ``T_max`` (``${iters}``) and milestones therefore count batches: ``iters`` is filled in here,
    on a copy of the config, as ``total_steps`` = epochs × batches per epoch, which is known only once the
    data is loaded. Its state is checkpointed, so ``resume=true`` continues it where it stopped.
    """
    scheduled = copy.deepcopy(cfg)
    scheduled.iters = total_steps
    return build_scheduler(scheduled.get("scheduler"), optimizer)


def solver_config(cfg: DictConfig) -> dict[str, Any]:
    """The solver group, with the model's own ``solver`` settings (RK-Net's fixed step) merged over it."""
    node = OmegaConf.to_container(cfg.solver, resolve=True)
    own = OmegaConf.select(cfg, "model.solver")
    if own is not None:
        node.update(OmegaConf.to_container(own, resolve=True))  # type: ignore[union-attr]
    return node  # type: ignore[return-value]


def check_rknet_solver(cfg: DictConfig) -> None:
    """RK-Net is a ResNet whose blocks are the steps of a fixed-step solver it backpropagates through."""
    if MODELS.canonical(str(cfg.model.name)) != "rknet":
        return
    solver = solver_config(cfg)
    method = SOLVERS.canonical(str(solver["method"]))
    if getattr(SOLVERS.get(method), "adaptive", False):
        raise ConfigError(f"RK-Net integrates with a fixed step; '{method}' is adaptive. Use model.solver.method=rk4 (or another fixed-step method).")
    if solver.get("adjoint") is True:
        raise ConfigError("RK-Net backpropagates through the solver's steps; model.solver.adjoint must be false or checkpoint (ODE-Net takes solver.adjoint=true).")


def build(cfg: DictConfig) -> tuple[nn.Module, dict[str, Any] | None]:
    """The classifier and, for ODE-Net and RK-Net, the solver settings its block uses."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    name = MODELS.canonical(str(node["name"]))  # type: ignore[index]
    if name not in SOLVED:
        return build_classifier(node), None  # type: ignore[arg-type]
    check_rknet_solver(cfg)
    solver = solver_config(cfg)
    return build_classifier(node, solve=make_solve(solver)), solver  # type: ignore[arg-type]


def mnist_source(data: DictConfig) -> dict[str, Any]:
    """Where ``data`` says the images come from, as ``check_mnist`` and ``load_mnist`` take it."""
    return {"directory": data.dir, "cache_dir": data.cache_dir, "source": str(data.source), "verify": bool(data.verify)}


def load_data(cfg: DictConfig, run: Run) -> Any:
    data = cfg.data
    mnist = load_mnist(
        **mnist_source(data),
        download=bool(data.download),
        mirrors=list(data.mirrors or []),
        timeout=float(data.timeout),
        log=run.log,
    )
    val_size = data.val_size
    splits = make_splits(
        mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels,
        val_size=val_size, subset=data.subset, test_subset=data.test_subset, seed=int(cfg.seed),
    )  # fmt: skip
    for note in splits.notes:
        run.log(f"[yellow]note:[/] {note}")
    return mnist, splits


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, normalize: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> dict[str, float]:
    """Mean loss, accuracy and forward NFE per batch over ``split``."""
    model.eval()
    total_loss, correct, nfe, batches = 0.0, 0, 0, 0
    with track_stats() as stats:
        for images, labels in in_order(split, batch_size):
            labels = labels.to(normalize.device)  # type: ignore[attr-defined]
            logits = model(normalize(images))
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            batches += 1
        nfe = stats.nfe_forward
    model.train()
    n = max(len(split), 1)
    return {"loss": total_loss / n, "accuracy": correct / n, "nfe_forward": nfe / max(batches, 1)}


def check_config(cfg: DictConfig) -> None:
    """Everything classify can refuse before it starts, its data files included; run before a run directory exists."""
    check_shared_settings(cfg, solver_config(cfg))
    _validate(cfg)
    check_distributed(cfg, batch_keys=["data.batch_size"])
    build(cfg)  # the model settings it takes and RK-Net's solver rules; the classifier is small (default: 3 ms to build)
    check_mnist(**mnist_source(cfg.data))  # what the loader would refuse without the network


@TASKS.register("classify", validate=check_config)
def classify(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Train one classifier on MNIST; return test accuracy, parameters, NFE and timings.

    On several processes (``distributed.nproc_per_node``) each trains on its share of every batch of
    ``data.batch_size`` under DDP; rank 0 evaluates and writes everything, and returns the metrics.
    """
    ranks = world(cfg)
    device = ranks.device(prepare(cfg))
    _validate(cfg)
    mnist, splits = load_data(cfg, run)
    model, solver = build(cfg)
    model = model.to(device)
    trained = ranks.wrap(model)  # DDP over several processes; evaluation and checkpoints use the model itself
    params = count_parameters(model)
    model_name = MODELS.canonical(str(cfg.model.name))
    solver_text = "" if solver is None else f", {solver['method']}" + (f" step {solver['step_size']}" if solver.get("step_size") else f" tol {solver['rtol']:g}") + {True: " adjoint", "checkpoint": " checkpoint adjoint"}.get(solver.get("adjoint"), "")
    run.log(
        f"model [bold]{model_name}[/]: {params:,} parameters{solver_text} · data: {len(splits.train)} train, "
        f"{len(splits.val) if splits.val else 0} validation, {len(splits.test)} test ({mnist.source})"
        + (f" · {ranks.size} processes (DDP), {int(cfg.data.batch_size) // ranks.size} images each per batch" if ranks.distributed else "")
    )
    optimizer = build_optimizer(cfg.optim, model.parameters())
    batches = EpochBatches(
        splits.train, int(cfg.data.batch_size) // ranks.size, seed=int(cfg.seed), crop_padding=int(cfg.data.random_crop),
        sampler=ranks.sampler(len(splits.train), int(cfg.seed)), augment_seed=int(cfg.seed) + 1 + ranks.rank,
    )  # fmt: skip
    normalize = Normalize(float(cfg.data.mean), float(cfg.data.std), device)
    eval_batch = int(cfg.data.eval_batch_size)
    steps_per_epoch = len(batches)
    epochs = int(cfg.epochs)
    total_steps = epochs * steps_per_epoch
    scheduler = build_schedule(cfg, optimizer, total_steps)
    history = NFEHistory()
    epoch_log: list[dict[str, float]] = []
    nfe_trace: list[tuple[int, int, int]] = []  # (batch, forward, backward): the paper's Figure 3d

    checkpointer = Checkpointer(run, cfg, model=model, optimizer=optimizer, history=history, scheduler=scheduler)
    start = 0
    if (state := checkpointer.resume()) is not None:
        if int(state["steps_per_epoch"]) != steps_per_epoch:
            raise ConfigError(
                f"resume: the checkpoint has {state['steps_per_epoch']} batches per epoch, this config {steps_per_epoch}; "
                "keep data.batch_size, data.subset and data.val_size as they were."
            )
        batches.load_state_dict(_own_state(state["batches"], ranks))
        epoch_log = list(state["epoch_log"])
        nfe_trace = list(state.get("nfe_trace", []))
        start = int(state["step"])
        run.log(f"resume: batch {start} of {total_steps} (epoch {start // steps_per_epoch + 1})")
    run.resume_at(start + 1)  # the parameter count is a final metric (metrics.json, HParams), not a one-point chart among the curves

    def checkpoint(step: int) -> None:
        # several processes: each rank's crop generator, by rank (every rank calls this at the same step)
        sampler_state = ranks.gather_objects(batches.state_dict()) if ranks.distributed else batches.state_dict()
        checkpointer.save(step, batches=sampler_state, epoch_log=epoch_log, nfe_trace=nfe_trace, steps_per_epoch=steps_per_epoch)

    step = start
    loss_value = float("nan")
    test: dict[str, float] | None = None
    model.train()
    with run.progress(total_steps, start=start, description=f"classify {model_name}") as progress, \
            TrainingLoop(run, cfg, start=start, save=checkpoint, samplers=[batches]) as loop:  # fmt: skip
        for epoch in range(start // steps_per_epoch, epochs):
            first = start % steps_per_epoch if epoch == start // steps_per_epoch else 0
            epoch_started = time.perf_counter()
            for images, labels in batches.epoch(epoch, start=first):
                step += 1
                with loop.iteration(step):
                    began = time.perf_counter()
                    learning_rate = optimizer.param_groups[0]["lr"]  # this batch's: the scheduler stepped after each one before
                    x, y = normalize(images), labels.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    with track_stats() as stats:
                        loss = F.cross_entropy(trained(x), y, label_smoothing=float(cfg.label_smoothing))
                        loss_value = loop.check_loss(loss)
                        loss.backward()
                    loop.update(step, model.parameters(), optimizer, scheduler)
                    nfe, per_rank = ranks.nfe(stats)
                    history.add(nfe, per_rank)
                    nfe_trace.append((step, nfe.nfe_forward, nfe.nfe_backward))
                    run.scalars(
                        {"loss/train": loss_value, "nfe/forward": nfe.nfe_forward, "nfe/backward": nfe.nfe_backward,
                         "time/step": time.perf_counter() - began, "charts/learning_rate": learning_rate, **rank_scalars(per_rank)},
                        step,
                    )  # fmt: skip
                    progress.update(step, loss=loss_value, nfe_fwd=nfe.nfe_forward, nfe_bwd=nfe.nfe_backward, epoch=epoch + 1)
                    if cfg.checkpoint_every and step % int(cfg.checkpoint_every) == 0 and step % steps_per_epoch:
                        checkpoint(step)
            train_time = time.perf_counter() - epoch_started
            record: dict[str, float] = {"epoch": epoch + 1, "step": step, "time_epoch_s": train_time, "full_epoch": float(first == 0)}
            run.scalar("time/epoch", train_time, step)
            if splits.val is not None and ranks.is_main:
                val = evaluate(model, splits.val, normalize, eval_batch)
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                run.scalars({"loss/val": val["loss"], "metrics/val_accuracy": val["accuracy"]}, step)
            if ranks.is_main and (epoch + 1 == epochs or (cfg.test_every and (epoch + 1) % int(cfg.test_every) == 0)):
                test = evaluate(model, splits.test, normalize, eval_batch)
                record.update(test_loss=test["loss"], test_accuracy=test["accuracy"], nfe_forward_test=test["nfe_forward"])
                run.scalars({"loss/test": test["loss"], "metrics/test_accuracy": test["accuracy"], "metrics/test_error": 1 - test["accuracy"]}, step)
            epoch_log.append(record)
            run.log(_epoch_line(record, epochs))
            checkpoint(step)

    if not ranks.is_main:  # rank 0 evaluates and reports
        return {}
    if test is None:  # resumed after the last epoch had finished
        test = evaluate(model, splits.test, normalize, eval_batch)
    full_epochs = [r["time_epoch_s"] for r in epoch_log if r.get("full_epoch")]
    last_val = next((r for r in reversed(epoch_log) if "val_accuracy" in r), None)
    metrics: dict[str, Any] = {
        "test_accuracy": test["accuracy"],
        "test_error": 1 - test["accuracy"],
        "test_loss": test["loss"],
        **({"val_accuracy": last_val["val_accuracy"]} if last_val else {}),
        "params": params,
        **history.summary(),
        "nfe_forward_test": test["nfe_forward"],
        "epochs": epochs,
        "steps": step,
        "skipped_batches": loop.skipped,
        "time_per_epoch_s": sum(full_epochs) / len(full_epochs) if full_epochs else float("nan"),
        "processes": ranks.size,
        "loss_train_last": loss_value,
        "model": model_name,
        "solver": "" if solver is None else str(solver["method"]),
        "data_source": mnist.source,
        "data_full": mnist.full,
        "train_size": len(splits.train),
        "test_size": len(splits.test),
    }
    if solver is not None and nfe_trace:
        _plot_nfe(run, nfe_trace, epoch_log, title=f"{model_name} · {solver['method']}", step=step)
    _print_summary(run, metrics)
    return metrics


def _own_state(saved: Any, ranks: Any) -> Any:
    """This rank's part of a checkpointed sampler state (by rank when several processes wrote it)."""
    if isinstance(saved, list) != ranks.distributed or (ranks.distributed and len(saved) != ranks.size):
        written = f"{len(saved)} processes" if isinstance(saved, list) else "one process"
        raise ConfigError(f"resume: the checkpoint was written by {written}, this run has {ranks.size}; resume with the same distributed.nproc_per_node × nnodes.")
    return saved[ranks.rank] if ranks.distributed else saved


def _plot_nfe(run: Run, trace: list[tuple[int, int, int]], epoch_log: list[dict[str, float]], *, title: str, step: int) -> None:
    """NFE per training batch, forward and backward (the paper's Figure 3d), with epoch boundaries."""
    from odecli.plotting import plt  # Agg backend: files and TensorBoard only

    steps, forward, backward = zip(*trace, strict=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, forward, lw=0.8, label="forward")
    ax.plot(steps, backward, lw=0.8, label="backward")
    for record in epoch_log:
        ax.axvline(record["step"], color="grey", lw=0.5, ls=":")
    ax.set(xlabel="training batch", ylabel="function evaluations", title=f"NFE over training · {title}")
    ax.set_ylim(bottom=0)
    ax.legend()
    run.figure("classify/nfe", fig, step, filename="nfe")


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(record['epoch'])}/{epochs}", f"{record['time_epoch_s']:.0f}s"]
    if "val_accuracy" in record:
        parts.append(f"val acc {record['val_accuracy']:.4f}")
    if "test_accuracy" in record:
        parts.append(f"test acc {record['test_accuracy']:.4f}")
    return "  ".join(parts)


def _print_summary(run: Run, metrics: dict[str, Any]) -> None:
    title = f"classify mnist · {metrics['model']}" + (f" · {metrics['solver']}" if metrics["solver"] else "")
    rows = [
        ("test accuracy", f"{metrics['test_accuracy']:.4f}"),
        ("test error", f"{100 * metrics['test_error']:.2f}%"),
        *([("validation accuracy", f"{metrics['val_accuracy']:.4f}")] if "val_accuracy" in metrics else []),
        ("parameters", f"{metrics['params']:,}"),
        ("NFE forward / batch (train)", f"{metrics['nfe_forward']:.1f}"),
        ("NFE backward / batch (train)", f"{metrics['nfe_backward']:.1f}"),
        ("NFE forward / batch (last)", str(metrics["nfe_forward_last"])),
        ("time per epoch", f"{metrics['time_per_epoch_s']:.1f}s"),
        ("epochs", str(metrics["epochs"])),
        *([("skipped batches (non-finite)", str(metrics["skipped_batches"]))] if metrics["skipped_batches"] else []),
        ("data", f"{metrics['data_source']} ({metrics['train_size']} train, {metrics['test_size']} test)"),
    ]
    print_metrics_table(run, title, rows)
