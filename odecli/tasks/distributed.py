"""Training on several processes: what a task does differently when torch.distributed runs it.

``odecli.torchrun`` starts the workers (PyTorch's elastic launcher); inside each, a task asks ``world(cfg)``
who it is and uses it: ``wrap`` puts the model under DistributedDataParallel (gradients averaged during
``backward``), ``sampler``/``part`` give each rank its share of a batch, ``mean``/``gather`` make the numbers
every rank must agree on (the loss checked for NaN, NFE per rank). Rank 0 writes the run directory; the other
ranks get a ``ReplicaRun``, which writes nothing and receives resumed checkpoints from rank 0.

Adaptive solvers take different numbers of steps on different ranks. That is safe: DDP's gradient hooks fire
once per parameter per ``backward`` however long each rank's graph is, and every collective here is called
the same number of times on every rank (one per step, whatever the solver did).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from odecli.errors import ConfigError

ENDPOINT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


def processes(cfg: DictConfig) -> int:
    """How many worker processes the config asks for in all (1 without a ``distributed`` block)."""
    node = cfg.get("distributed")
    if node is None:
        return 1
    return int(node.nproc_per_node) * int(node.nnodes)


def endpoint(node: DictConfig | Any) -> tuple[str, int] | None:
    """``distributed.rdzv_endpoint`` as (host, port), or None when odecli should pick 127.0.0.1 and a free port."""
    text = node.rdzv_endpoint
    if text is None:
        return None
    match = ENDPOINT.match(str(text))
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise ConfigError(f"distributed.rdzv_endpoint must be HOST:PORT (node 0's address and a free port), got {text!r}. Example: distributed.rdzv_endpoint=10.0.0.1:29500")
    return match["host"].strip("[]"), int(match["port"])


def backend(cfg: DictConfig) -> str:
    """The process-group backend: ``auto`` is nccl when the run uses CUDA, gloo otherwise."""
    chosen = str(cfg.distributed.backend)
    if chosen != "auto":
        return chosen
    device = str(cfg.device)
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def check_settings(cfg: DictConfig, *, batch_keys: Sequence[str] = ()) -> None:
    """Refuse ``distributed.*`` settings that cannot run, before a run directory exists.

    ``batch_keys``: the config's batch sizes, each split evenly over the processes (a batch is the same
    update whatever the number of processes, so results match a one-process run).
    """
    node = cfg.get("distributed")
    if node is None:
        return
    nproc, nnodes = int(node.nproc_per_node), int(node.nnodes)  # their ranges: the schema (odecli/schemas.py DistributedConfig)
    if endpoint(node) is None and nnodes > 1:
        raise ConfigError(f"distributed.nnodes={nnodes}: every machine needs node 0's address; add distributed.rdzv_endpoint=HOST:PORT (the same on all of them).")
    if backend(cfg) == "nccl" and (not torch.cuda.is_available() or str(cfg.device) == "cpu"):
        raise ConfigError("distributed.backend=nccl needs CUDA devices (and device=auto or cuda); on CPUs use distributed.backend=gloo.")
    uses_cuda = str(cfg.device).startswith("cuda") or (str(cfg.device) == "auto" and torch.cuda.is_available())
    if uses_cuda and nproc > 1 and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"distributed.nproc_per_node={nproc} but this machine has {torch.cuda.device_count()} CUDA device(s): one process per device "
            f"(or device=cpu with distributed.backend=gloo)."
        )
    size = nproc * nnodes
    if size == 1:
        return
    if OmegaConf.select(cfg, "nonfinite", default="stop") == "skip":
        raise ConfigError("nonfinite=skip is for one process: a rank that skips a batch would leave the others waiting in the gradient average. Use nonfinite=stop.")
    for key in batch_keys:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, int) and value % size:
            raise ConfigError(f"{key}={value} cannot be split evenly over {size} processes; use a multiple of {size} (each process takes {key} / {size}).")


@dataclass(frozen=True)
class World:
    """This process's place among the workers of one training run (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each process on a machine takes its own GPU."""
        return torch.device("cuda", self.local_rank) if self.distributed and device.type == "cuda" else device

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel (its weights broadcast from rank 0); itself in one process."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def sampler(self, length: int, seed: int) -> Any:
        """A ``DistributedSampler`` over ``length`` items (this rank's share of each shuffled epoch), None in one process."""
        if not self.distributed:
            return None
        from torch.utils.data import DistributedSampler

        return DistributedSampler(range(length), num_replicas=self.size, rank=self.rank, shuffle=True, seed=seed)

    def part(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a batch every rank drew alike (same generator state on all ranks)."""
        return batch.tensor_split(self.size)[self.rank] if self.distributed else batch

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks (all_reduce): the same number on every rank."""
        if not self.distributed:
            return value
        total = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(total)
        return float(total) / self.size

    def gather(self, values: Sequence[float]) -> list[list[float]]:
        """Each rank's ``values`` (all_gather), by rank, on every rank."""
        if not self.distributed:
            return [list(values)]
        mine = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._collective_device())
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(parts, mine)
        return [part.tolist() for part in parts]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Each rank's ``obj`` (plain data), by rank, on every rank."""
        if not self.distributed:
            return [obj]
        parts: list[Any] = [None] * self.size
        dist.all_gather_object(parts, obj)
        return parts

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (broadcast)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def nfe(self, stats: Any) -> tuple[Any, list[list[float]] | None]:
        """A step's NFE as counted (one process), or its mean over the ranks and each rank's [forward, backward]."""
        if not self.distributed:
            return stats, None
        per_rank = self.gather([stats.nfe_forward, stats.nfe_backward])
        mean = SimpleNamespace(nfe_forward=sum(r[0] for r in per_rank) / self.size, nfe_backward=sum(r[1] for r in per_rank) / self.size)
        return mean, per_rank

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def rank_scalars(per_rank: list[list[float]] | None) -> dict[str, float]:
    """``nfe/forward_rank0``, ``nfe/backward_rank1``, ... for TensorBoard, beside the mean over the ranks."""
    return {f"nfe/{kind}_rank{rank}": counts[i] for rank, counts in enumerate(per_rank or []) for i, kind in enumerate(("forward", "backward"))}


def world(cfg: DictConfig | None = None) -> World:
    """Who this process is; with ``cfg``, also checks that a config asking for N processes runs under the launcher."""
    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if cfg is not None and processes(cfg) > 1:
        raise ConfigError(
            f"distributed.nproc_per_node × nnodes = {processes(cfg)} processes, but this process was not started by the launcher: "
            f"give distributed.* on the odecli command line (e.g. odecli {cfg.task} distributed.nproc_per_node=2)."
        )
    return World()


class ReplicaRun:
    """The ``Run`` of ranks other than 0: the same methods, and nothing written, printed or created."""

    def __init__(self, directory: str | Path | None = None):
        self.dir = Path(directory) if directory is not None else Path(".")
        self.plots_dir = self.dir / "plots"
        self.checkpoints_dir = self.dir / "checkpoints"
        self.tb_dir = self.dir / "tb"
        self.console = Console(file=io.StringIO(), quiet=True)

    def resume_at(self, step: int) -> None: ...
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def scalars(self, values: Any, step: int) -> None: ...
    def hparams(self, hparams: Any, metrics: Any = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def log(self, message: str) -> None: ...
    def write_metrics(self, metrics: Any) -> None: ...

    def figure(self, tag: str, fig: Any, step: int, *, filename: str | None = None, close: bool = True) -> None:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"ckpt_{step:09d}.pt"

    def checkpoints(self) -> list[Path]:
        return []

    def save_checkpoint(self, state: Any, step: int) -> None: ...

    def load_latest_checkpoint(self) -> None:
        return None  # rank 0 reads it and broadcasts it (Checkpointer.resume)

    def progress(self, total: int, *, start: int = 0, description: str = "train") -> Any:
        from odecli.tracking import ProgressReporter

        return ProgressReporter(self.console, total, start=start, description=description)
