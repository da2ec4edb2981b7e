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
from collections.abc import Callable, Iterator, Mapping
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
    build_optimizer,
    build_scheduler,
    check_shared_settings,
    make_solve,
    print_metrics_table,
)
from odecli.tasks.distributed import check_settings as check_distributed
from odecli.tasks.distributed import world
from odecli.tasks.driver import Every, Step, TrainingRecord, TrainingTask, train
from odecli.tracking import Run

DATASETS = ("mnist",)


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
    check_distributed(cfg, batch_keys=["data.batch_size"])
    build(cfg)  # the model settings it takes and RK-Net's solver rules; the classifier is small (default: 3 ms to build)
    check_mnist(**mnist_source(cfg.data))  # what the loader would refuse without the network


class Classify(TrainingTask):
    """One classifier trained on MNIST, with validation each epoch and the test set every ``test_every`` epochs.

    On several processes (``distributed.nproc_per_node``) each trains on its share of every batch of
    ``data.batch_size`` under DDP; rank 0 evaluates and writes everything, and returns the metrics.
    """

    def __init__(self, cfg: DictConfig, run: Run, device: torch.device):
        self.cfg, self.run, self.device = cfg, run, device
        ranks = world(cfg)
        self.mnist, self.splits = load_data(cfg, run)
        model, self.solver = build(cfg)
        self.model = model.to(device)
        self.trained = ranks.wrap(self.model)  # DDP over several processes; evaluation and checkpoints use the model itself
        self.model_name = MODELS.canonical(str(cfg.model.name))
        solver = self.solver
        solver_text = "" if solver is None else f", {solver['method']}" + (f" step {solver['step_size']}" if solver.get("step_size") else f" tol {solver['rtol']:g}") + {True: " adjoint", "checkpoint": " checkpoint adjoint"}.get(solver.get("adjoint"), "")
        splits = self.splits
        run.log(
            f"model [bold]{self.model_name}[/]: {count_parameters(self.model):,} parameters{solver_text} · data: {len(splits.train)} train, "
            f"{len(splits.val) if splits.val else 0} validation, {len(splits.test)} test ({self.mnist.source})"
            + (f" · {ranks.size} processes (DDP), {int(cfg.data.batch_size) // ranks.size} images each per batch" if ranks.distributed else "")
        )
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())
        self.batches = EpochBatches(
            splits.train, int(cfg.data.batch_size) // ranks.size, seed=int(cfg.seed), crop_padding=int(cfg.data.random_crop),
            sampler=ranks.sampler(len(splits.train), int(cfg.seed)), augment_seed=int(cfg.seed) + 1 + ranks.rank,
        )  # fmt: skip
        self.samplers = [self.batches]
        self.normalize = Normalize(float(cfg.data.mean), float(cfg.data.std), device)
        self.steps_per_epoch = len(self.batches)
        self.epochs = int(cfg.epochs)
        self.iterations = self.epochs * self.steps_per_epoch  # TensorBoard steps are training batches
        self.scheduler = build_schedule(cfg, self.optimizer, self.iterations)
        self.eval_every = Every(self.steps_per_epoch)  # each epoch's end: validation, and the test set when due
        self.checkpoint_every = Every(cfg.checkpoint_every, self.steps_per_epoch)
        self.description = f"classify {self.model_name}"
        self.processes = ranks.size
        self.epoch_log: list[dict[str, float]] = []
        self.epoch_batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None  # the current epoch's batches, from the next one on
        self.epoch_started: float | None = None  # when this process began training the current epoch
        self.epoch_first_batch = 0
        self.model.train()

    def train_step(self, iteration: int) -> Step:
        epoch, index = divmod(iteration - 1, self.steps_per_epoch)
        if self.epoch_batches is None or index == 0:  # a new epoch, or the rest of one after resume=true
            self.epoch_started, self.epoch_first_batch = time.perf_counter(), index
            self.epoch_batches = self.batches.epoch(epoch, start=index)
        images, labels = next(self.epoch_batches)
        learning_rate = self.optimizer.param_groups[0]["lr"]  # this batch's: the scheduler stepped after each one before
        logits = self.trained(self.normalize(images))
        loss = F.cross_entropy(logits, labels.to(self.device), label_smoothing=float(self.cfg.label_smoothing))
        return Step(loss, scalars={"charts/learning_rate": learning_rate}, progress={"epoch": epoch + 1})

    def evaluate(self, iteration: int) -> dict[str, float]:
        """At an epoch's end: its training time, validation, and the test set every ``test_every`` epochs and at the last; the epoch's record."""
        run, cfg, splits, eval_batch = self.run, self.cfg, self.splits, int(self.cfg.data.eval_batch_size)
        epoch = iteration // self.steps_per_epoch
        record: dict[str, float] = {"epoch": epoch, "step": iteration}
        if self.epoch_started is not None:  # None: resumed at the end of an epoch this process did not train
            train_time = time.perf_counter() - self.epoch_started
            record.update(time_epoch_s=train_time, full_epoch=float(self.epoch_first_batch == 0))
            run.scalar("time/epoch", train_time, iteration)
            self.epoch_started = None
        if splits.val is not None:
            val = evaluate(self.model, splits.val, self.normalize, eval_batch)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            run.scalars({"loss/val": val["loss"], "metrics/val_accuracy": val["accuracy"]}, iteration)
        if epoch == self.epochs or (cfg.test_every and epoch % int(cfg.test_every) == 0):
            test = evaluate(self.model, splits.test, self.normalize, eval_batch)
            record.update(test_loss=test["loss"], test_accuracy=test["accuracy"], nfe_forward_test=test["nfe_forward"])
            run.scalars({"loss/test": test["loss"], "metrics/test_accuracy": test["accuracy"], "metrics/test_error": 1 - test["accuracy"]}, iteration)
        self.epoch_log.append(record)
        run.log(_epoch_line(record, self.epochs))
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_log": self.epoch_log, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        if int(state["steps_per_epoch"]) != self.steps_per_epoch:
            raise ConfigError(
                f"resume: the checkpoint has {state['steps_per_epoch']} batches per epoch, this config {self.steps_per_epoch}; "
                "keep data.batch_size, data.subset and data.val_size as they were."
            )
        self.epoch_log = list(state["epoch_log"])
        self.run.log(f"resume: batch {step} of {self.iterations} (epoch {step // self.steps_per_epoch + 1})")

    def metrics(self, final: Mapping[str, Any], record: TrainingRecord) -> dict[str, Any]:
        """The metrics, and the NFE-over-training figure (it needs the whole run's NFE history)."""
        full_epochs = [r["time_epoch_s"] for r in self.epoch_log if r.get("full_epoch")]
        last_val = next((r for r in reversed(self.epoch_log) if "val_accuracy" in r), None)
        solver, splits = self.solver, self.splits
        metrics: dict[str, Any] = {
            "test_accuracy": final["test_accuracy"],
            "test_error": 1 - final["test_accuracy"],
            "test_loss": final["test_loss"],
            **({"val_accuracy": last_val["val_accuracy"]} if last_val else {}),
            "params": count_parameters(self.model),
            **record.nfe,
            "nfe_forward_test": final["nfe_forward_test"],
            "epochs": self.epochs,
            "steps": self.iterations,
            "skipped_batches": record.skipped_batches,
            "time_per_epoch_s": sum(full_epochs) / len(full_epochs) if full_epochs else float("nan"),
            "processes": self.processes,
            "loss_train_last": record.loss_train_last,
            "model": self.model_name,
            "solver": "" if solver is None else str(solver["method"]),
            "data_source": self.mnist.source,
            "data_full": self.mnist.full,
            "train_size": len(splits.train),
            "test_size": len(splits.test),
        }
        if solver is not None and record.history.trace:
            _plot_nfe(self.run, record.history.trace, self.epoch_log, title=f"{self.model_name} · {solver['method']}", step=self.iterations)
        return metrics

    def print_summary(self, metrics: Mapping[str, Any]) -> None:
        _print_summary(self.run, metrics)


@TASKS.register("classify", validate=check_config,
                description="Train ODE-Net against ResNet, RK-Net and MLP baselines on MNIST (model=odenet|resnet|rknet|mlp).",
                examples=("odecli classify mnist", "odecli classify mnist model=resnet", "odecli classify mnist data.dir=~/mnist"),
                data_argument="mnist")  # fmt: skip
def classify(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Train one classifier on MNIST; return test accuracy, parameters, NFE and timings."""
    return train(Classify, cfg, run)


def _plot_nfe(run: Run, trace: list[tuple[int, float, float]], epoch_log: list[dict[str, float]], *, title: str, step: int) -> None:
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
    parts = [f"epoch {int(record['epoch'])}/{epochs}", *([f"{record['time_epoch_s']:.0f}s"] if "time_epoch_s" in record else [])]
    if "val_accuracy" in record:
        parts.append(f"val acc {record['val_accuracy']:.4f}")
    if "test_accuracy" in record:
        parts.append(f"test acc {record['test_accuracy']:.4f}")
    return "  ".join(parts)


def _print_summary(run: Run, metrics: Mapping[str, Any]) -> None:
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
