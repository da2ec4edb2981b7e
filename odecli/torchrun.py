"""One training run on several processes, through PyTorch's own elastic launcher (``torch.distributed.run``,
the engine behind ``torchrun``).

``odecli classify distributed.nproc_per_node=2`` checks every setting, chooses and locks the run directory
(as a one-process run does), then starts the launcher, which runs ``python -m odecli.torchrun TASK OVERRIDES``
in each worker with the same overrides. Rank 0 runs the task through Hydra as usual (``.hydra/``, TensorBoard,
metrics.json, figures, checkpoints); the other ranks compose the same config and run the task with a
``ReplicaRun``, which writes nothing. A worker that fails or is killed ends the whole run (the launcher stops
the others, ``--max-restarts=0``), and the message names the rank and the checkpoint to resume from.

On one machine the rendezvous and gloo listen on 127.0.0.1 (a free port is picked); across machines every node
runs the same command with its own ``distributed.node_rank`` and node 0's ``distributed.rdzv_endpoint``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from odecli import hydra_bridge
from odecli.errors import ConfigError, RunFailed, UserError
from odecli.registry import TASKS
from odecli.tasks.distributed import ReplicaRun, backend, endpoint, processes
from odecli.tracking import CHECKPOINT_PREFIX, METRICS_FILE, atomic_write_json

RUN_DIR_ENV = "ODECLI_RUN_DIR"  # node 0's run directory, for its rank 0 (the launcher passes the environment on)
LOOPBACK = "127.0.0.1"
EXIT_INTERRUPTED = 130


def requested(overrides: Sequence[str]) -> bool:
    """Whether the command line asks for more than one process (``distributed.nproc_per_node``/``nnodes`` > 1)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") in ("distributed.nproc_per_node", "distributed.nnodes") and value.strip() not in ("1", ""):
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def run(config_name: str, overrides: Sequence[str]) -> dict[str, Any] | None:
    """Check, prepare the run directory (node 0) and run the task on ``distributed.*`` processes; rank 0's metrics."""
    if "distributed" not in hydra_bridge.compose(config_name):  # the task's own config says whether it trains on several
        raise ConfigError(f"odecli {config_name} trains in one process; distributed.* is for classify and cnf.")
    cfg = hydra_bridge.validate(config_name, overrides, multirun=False)
    if int(cfg.distributed.node_rank) > 0:  # its ranks are replicas: no run directory on this machine
        _launch(cfg, config_name, list(overrides), None)
        return None
    with hydra_bridge.prepare(config_name, overrides) as launch:
        return _launch(cfg, config_name, launch.overrides, launch.directory)


def _launch(cfg: DictConfig, config_name: str, overrides: list[str], directory: Path | None) -> dict[str, Any] | None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as elastic_run

    node = cfg.distributed
    host, port = endpoint(node) or (LOOPBACK, free_port())
    if host in (LOOPBACK, "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's own connections stay on the loopback too
    if directory is not None:
        os.environ[RUN_DIR_ENV] = str(directory)
    argv = [
        f"--nnodes={node.nnodes}", f"--nproc-per-node={node.nproc_per_node}", f"--node-rank={node.node_rank}",
        "--rdzv-backend=static", f"--master-addr={host}", f"--master-port={port}", "--max-restarts=0", "--monitor-interval=0.2",
        *([f"--local-addr={host}"] if int(node.nnodes) == 1 else []), "-m", __name__, config_name, *overrides,
    ]  # fmt: skip
    try:
        elastic_run(parse_args(argv))
    except ChildFailedError as exc:
        raise RunFailed(_failure_message(exc, config_name, overrides, directory, processes(cfg))) from None
    except SignalException as exc:  # Ctrl-C or a kill of the launcher: it has stopped the workers
        if directory is not None:
            _mark_failed(directory, config_name, f"the launcher received {exc.sigval.name}", status="interrupted")
        raise KeyboardInterrupt from None
    if directory is None:
        return None
    return json.loads((directory / METRICS_FILE).read_text())


def _failure_message(exc: Any, config_name: str, overrides: list[str], directory: Path | None, size: int) -> str:
    """Which rank ended the run and how, and where it can be resumed from."""
    # The cause is the earliest failure; the launcher times them to the second, so within a second a rank killed by a
    # signal of its own comes before one that exited (a peer's lost connection), and both before the launcher's SIGTERM.
    def order(item: tuple[int, Any]) -> tuple[int, int, int]:
        rank, failure = item
        stopped = failure.exitcode in (-signal.SIGTERM, -signal.SIGINT)
        return failure.timestamp, 2 if stopped else 0 if failure.exitcode < 0 else 1, rank

    (rank, cause), *others = sorted(exc.failures.items(), key=order)
    text = f"rank {rank} (pid {cause.pid}) {_how(cause.exitcode)}, so the launcher stopped the run's other {size - 1} process(es)"
    if others:
        text += " (" + "; ".join(f"rank {r} {_how(f.exitcode)}" for r, f in others) + ")"
    text += "."
    if directory is None:
        return text + " Node 0 holds the run directory and its checkpoints."
    _mark_failed(directory, config_name, text)
    latest = sorted((directory / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*.pt"), reverse=True)
    if not latest:
        return text + f" No checkpoint was written yet in {directory}; start again."
    kept = " ".join(o for o in overrides if not o.startswith(("hydra.run.dir", "resume=")))
    return (
        text + f" The last checkpoint is {latest[0]}; continue with: "
        f"odecli {config_name} {kept} resume=true hydra.run.dir={directory}"
    )


def _how(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exited with code {code}"


def _mark_failed(directory: Path, config_name: str, reason: str, *, status: str = "failed") -> None:
    """Rank 0 stopped before it could record the outcome: the launcher, which holds the directory, records it."""
    path = directory / METRICS_FILE
    if path.exists():
        return
    atomic_write_json(path, {"status": status, "error": f"RunFailed: {reason}", "task": config_name, "run_dir": str(directory)})


def worker(argv: Sequence[str]) -> int:
    """One worker started by the launcher: join the process group, then run the task as rank 0 or as a replica."""
    import torch.distributed as dist

    config_name, overrides = argv[0], list(argv[1:])
    rank = int(os.environ.get("RANK", 0))
    try:
        cfg = hydra_bridge.compose(config_name, [o for o in overrides if not o.startswith("hydra.")])
        dist.init_process_group(backend(cfg))
        try:
            if rank == 0:
                directory = Path(os.environ[RUN_DIR_ENV])
                hydra_bridge.start(hydra_bridge.Launch(config_name, overrides, False, directory))
            else:
                TASKS.get(str(cfg.task))(cfg, ReplicaRun(os.environ.get(RUN_DIR_ENV)))
            dist.barrier()  # the replicas wait for rank 0's evaluation: no rank leaves while a peer may still reach it
        finally:
            dist.destroy_process_group()
    except (UserError, RunFailed) as exc:
        print(f"rank {rank}: {exc}", file=sys.stderr, flush=True)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:  # Ctrl-C reaches every worker; the launcher reports it once
        return EXIT_INTERRUPTED
    except Exception as exc:  # e.g. gloo's "Connection reset by peer" when another rank died: one line, not a traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"rank {rank}: {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    import logging

    from odecli.registry import load_all

    load_all()
    code = worker(sys.argv[1:])
    # Leave without the interpreter's teardown: gloo's threads can outlive destroy_process_group, and tearing
    # down beside them sometimes aborts (SIGABRT, "terminate called without an active exception") a run that
    # had finished. Everything the run wrote is closed by now; flush what is buffered, then go.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
