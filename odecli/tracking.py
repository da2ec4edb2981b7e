"""Everything a run writes: TensorBoard events, figures, checkpoints, metrics.json, progress.

One ``Run`` per run directory. Files that must never be seen half-written (checkpoints,
metrics.json) go through a temporary file and an atomic rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import math
import os
import pickle
import re
import socket
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from odecli.console import PipeFriendlyConsole
from odecli.errors import UserError

METRICS_FILE = "metrics.json"
CHECKPOINT_PREFIX = "ckpt_"
KEEP_CHECKPOINTS = 3
# TensorBoard section of the final metrics (one point each); '~' sorts after the curves' loss/, nfe/, time/.
FINAL_SECTION = "~final"
# Figures go under plots/ in TensorBoard: that section sorts after loss/ and nfe/, which TensorBoard's
# Time Series page (its default) then opens first, instead of a task's figure group (classify/, cnf/, fit/).
FIGURE_SECTION = "plots"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be read back."""


class UnsafeCheckpoint(UserError):
    """A checkpoint holding more than tensors, numbers, strings and plain containers: it is refused, never unpickled."""


class Run:
    """The directory of one run and the writers into it.

    Layout: ``tb/`` TensorBoard events, ``plots/`` PNG figures, ``checkpoints/`` ``ckpt_<step>.pt``,
    ``metrics.json`` final metrics with status and wall time, ``run.lock`` (see ``DirectoryLock``) its writer.
    """

    def __init__(self, directory: str | Path, *, console: Console | None = None, tensorboard: bool = True):
        self.dir = Path(directory)
        self.plots_dir = self.dir / "plots"
        self.checkpoints_dir = self.dir / "checkpoints"
        self.tb_dir = self.dir / "tb"
        for d in (self.dir, self.plots_dir, self.checkpoints_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.console = console or PipeFriendlyConsole(highlight=False)
        self._tensorboard = tensorboard
        self._writer: Any = None
        self._purge_step: int | None = None
        self.started = time.time()

    # ----- TensorBoard -------------------------------------------------------------------------
    def resume_at(self, step: int) -> None:
        """Continue logging at ``step``: events a killed run wrote after it are dropped, so curves stay continuous."""
        if self._writer is not None:
            raise RuntimeError("resume_at must be called before anything is logged")
        self._purge_step = step

    @property
    def writer(self) -> Any:
        if self._writer is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            if self._purge_step is not None:
                _wait_to_sort_after_event_files(self.tb_dir)
            self._writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=self._purge_step)
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def figure(self, tag: str, fig: Any, step: int, *, filename: str | None = None, close: bool = True) -> Path:
        """Save a matplotlib figure as ``plots/<filename or tag>.png`` and log it as a TensorBoard image."""
        name = filename or tag.replace("/", "_")
        path = self.plots_dir / f"{name}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(path, buffer.getvalue())
        if self.writer is not None:
            self.writer.add_figure(f"{FIGURE_SECTION}/{tag}", fig, step, close=False)
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
        return path

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> None:
        """Log hyperparameters (flattened config) and final metrics so TensorBoard's HParams dashboard compares runs.

        The dashboard reads a metric's value from a scalar, so each final number is also written once, under
        ``FINAL_SECTION``: TensorBoard orders sections by character code and ``~`` comes after every letter, so
        these one-point charts sit below the loss, NFE and time curves instead of opening the page. In the
        HParams table a metric is shown by its metrics.json key (``val_mse``), not by its tag, and each run is a
        row of its own (its directory is the trial id), even when two runs share a config.
        """
        if self.writer is None:
            return
        from tensorboard.plugins.hparams import summary_v2

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        final = {k: float(v) for k, v in (metrics or {}).items() if _is_number(v)}
        experiment = summary_v2.hparams_config_pb(
            hparams=[summary_v2.HParam(name) for name in clean],
            metrics=[summary_v2.Metric(f"{FINAL_SECTION}/{name}", display_name=name) for name in final],
        )
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, summary_v2.hparams_pb(clean, trial_id=str(self.dir), start_time_secs=self.started), _session_end(time.time())):
            file_writer.add_summary(summary)
        for name, value in final.items():
            self.writer.add_scalar(f"{FINAL_SECTION}/{name}", value)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ----- checkpoints -------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:09d}.pt"

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, newest first."""
        return sorted(self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*.pt"), reverse=True)

    def save_checkpoint(self, state: Mapping[str, Any], step: int) -> Path:
        """Write ``state`` atomically and keep only the newest few checkpoints.

        ``state`` holds only what a weights-only load reads back (see ``check_plain``): a checkpoint is
        data, so resuming from a run directory someone else wrote cannot run their code.
        """
        payload = {"step": step, "state": dict(state)}
        check_plain(payload["state"], "state")
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path = self.checkpoint_path(step)
        atomic_write_bytes(path, buffer.getvalue())
        for old in self.checkpoints()[KEEP_CHECKPOINTS:]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return path

    def load_latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest readable checkpoint's state (with ``step``); corrupt ones are reported and skipped.

        A checkpoint the weights-only loader refuses (a pickled callable, an older odecli's numpy arrays)
        raises ``UnsafeCheckpoint``: nothing in it is run, and falling back past it silently would hide it.
        """
        for partial in self.checkpoints_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp"):  # a writer killed mid-write
            self.log(f"[yellow]warning:[/] removing {partial.name}, a checkpoint whose writing was cut off")
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        for path in self.checkpoints():
            try:
                payload = _read_checkpoint(path)
            except CorruptCheckpoint as exc:
                warnings.warn(f"Checkpoint {path} is unreadable ({exc}); falling back to the previous one.", stacklevel=2)
                self.log(f"[yellow]warning:[/] checkpoint {path.name} is corrupt ({exc}); using the previous one")
                continue
            state = dict(payload["state"])
            state["step"] = payload["step"]
            return state
        return None

    # ----- metrics and messages ----------------------------------------------------------------
    def write_metrics(self, metrics: Mapping[str, Any], name: str = METRICS_FILE) -> Path:
        path = self.dir / name
        atomic_write_json(path, dict(metrics))
        return path

    def elapsed(self) -> float:
        return time.time() - self.started

    def log(self, message: str) -> None:
        self.console.print(message)

    def progress(self, total: int, *, start: int = 0, description: str = "train") -> ProgressReporter:
        return ProgressReporter(self.console, total, start=start, description=description)


def _wait_to_sort_after_event_files(directory: Path) -> None:
    """Wait (at most a second) until a new event file's name sorts after every one already in ``directory``.

    TensorBoard reads a directory's event files in name order, and a name starts with the second the file was
    made (``events.out.tfevents.<seconds>.<host>.<pid>...``). A resumed run's purge (drop what the killed run
    logged after its checkpoint) applies only to files read before its own; made in the same second as the killed
    run's, its file could sort first (a smaller pid) and the killed run's events would then purge the resumed ones.
    """
    seconds = [int(part) for p in directory.glob("events.out.tfevents.*") if (part := p.name.split(".")[3]).isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.02)


def _session_end(end_time: float) -> Any:
    """The HParams plugin's "session ended successfully" record (its own API for it needs TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=end_time)
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=info))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=content)])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What a checkpoint may hold: what ``torch.load(weights_only=True)`` reads back without an allowlist.
PLAIN_SCALARS = (type(None), bool, int, float, str)
PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple)


def check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the first value under ``where`` that is not a tensor, number, string, None or plain container.

    Exact types: a numpy scalar is a ``float`` subclass but pickles as numpy's own object, which a
    weights-only load refuses.
    """
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_SCALARS:
        return
    if type(value) not in PLAIN_CONTAINERS:
        raise TypeError(
            f"checkpoint value {where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds only "
            "tensors, numbers, strings, None and plain dicts/lists/tuples (convert it, e.g. an array with torch.as_tensor)"
        )
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict) and type(key) not in PLAIN_SCALARS:
            raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__qualname__}; use a string or a number")
        check_plain(item, f"{where}[{key!r}]")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused something before creating it
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))  # the error has no field naming it
        what = f"it refers to {found.group(1)}" if found else "it is not plain data"
        raise UnsafeCheckpoint(
            f"refusing checkpoint {path}: {what}, and odecli loads only tensors, numbers, strings and plain containers, "
            f"so nothing from it was loaded or run. If an older odecli or someone else wrote it, move it out of "
            f"{path.parent} (resume then uses the previous checkpoint) or start a new run directory."
        ) from None
    except Exception as exc:  # truncated zip, missing records, ...
        raise CorruptCheckpoint(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or "state" not in payload or "step" not in payload:
        raise CorruptCheckpoint("not an odecli checkpoint")
    return payload


class ProgressReporter:
    """A rich progress bar on a terminal; plain periodic lines elsewhere (CI, pipes, log files)."""

    def __init__(self, console: Console, total: int, *, start: int = 0, description: str = "train"):
        self.console = console
        self.total = total
        self.start = start
        self.description = description
        self.interactive = console.is_terminal and not os.environ.get("CI")
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_print = 0.0
        self._print_every = max(1, total // 10)
        self._t0 = time.time()

    def __enter__(self) -> ProgressReporter:
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.start, info="", rate="")
        return self

    def update(self, step: int, **fields: float) -> None:
        """Report that ``step`` iterations are done; ``fields`` (loss, nfe, ...) are shown beside the bar."""
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        elapsed = time.time() - self._t0
        done = step - self.start
        rate = f"{done / elapsed:.1f} it/s" if elapsed > 0 and done > 0 else ""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info, rate=rate)
            return
        now = time.time()
        if step == self.total or step % self._print_every == 0 or now - self._last_print > 30:
            self._last_print = now
            self.console.print(f"{self.description} {step}/{self.total}  {info}  {rate}", highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


# ----- one writer per directory --------------------------------------------------------------
LOCK_FILE = "run.lock"
SWEEP_LOCK_FILE = "sweep.lock"
# flock errors that mean "this file system has no such locks" (some cluster mounts), not "someone holds it"
NO_FLOCK_ERRNOS = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK})


class DirectoryInUse(UserError):
    """Another live odecli process writes into this directory."""


class DirectoryLock:
    """One writer per run (or sweep) directory: an OS lock (``flock``) on ``run.lock``, which also records its holder.

    The kernel drops a ``flock`` when its process dies, so a killed run can never block the next one and a
    recycled pid cannot fake a live one (what a pid file alone gets wrong). The file stays as the run's
    record: ``task``, ``started`` and, while a holder has not released it, its ``pid`` and ``host`` —
    a pid left behind is the stale lock of a killed run, reported and cleared by the next holder. Where the
    file system has no ``flock``, liveness falls back to the recorded pid (same host only).
    """

    def __init__(self, directory: str | Path, *, task: str, name: str = LOCK_FILE):
        self.path = Path(directory) / name
        self.task = task
        self._fd: int | None = None
        self._record: dict[str, Any] = {}

    def acquire(self) -> dict[str, Any]:
        """Take the lock and return the record found in the file (``{}`` for a new one); DirectoryInUse when held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_flock(fd, fcntl.LOCK_EX)
            previous = _parse_record(os.pread(fd, 1 << 16, 0))  # read under the lock: no holder is mid-write
            if locked is False or (locked is None and _alive(previous)):
                raise DirectoryInUse(in_use_message(self.path, previous, kernel_lock=locked is not None))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._record = {"task": self.task, "started": _now(), "pid": os.getpid(), "host": socket.gethostname()}
        _write_record(fd, self._record)
        return previous

    def release(self) -> None:
        """Mark the record as released (no pid) and drop the lock."""
        if self._fd is None:
            return
        try:
            _write_record(self._fd, {**self._record, "pid": None, "ended": _now()})
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_lock_record(directory: str | Path, name: str = LOCK_FILE) -> dict[str, Any] | None:
    """What a directory's lock file records (task, started, pid of an unreleased holder), or None without one."""
    try:
        return _parse_record((Path(directory) / name).read_bytes())
    except FileNotFoundError:
        return None


def lock_holder(directory: str | Path, name: str = LOCK_FILE) -> dict[str, Any] | None:
    """The record of the live process that holds the directory's lock, or None when nobody does."""
    try:
        fd = os.open(Path(directory) / name, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        locked = _try_flock(fd, fcntl.LOCK_SH)  # a shared probe, dropped when fd closes
        record = _parse_record(os.pread(fd, 1 << 16, 0))
        if locked is None:
            return record if _alive(record) else None
        return None if locked else record
    finally:
        os.close(fd)


def _try_flock(fd: int, operation: int) -> bool | None:
    """True: locked; False: another process holds it; None: the file system has no flock."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in NO_FLOCK_ERRNOS:
            return None
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def _write_record(fd: int, record: Mapping[str, Any]) -> None:
    # In place, never by rename: other processes lock this very inode.
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


def _parse_record(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data or b"{}")
    except ValueError:  # cut off by a kill mid-write: no usable record
        return {}
    return record if isinstance(record, dict) else {}


def _alive(record: Mapping[str, Any]) -> bool:
    """Whether the holder a record names still runs (only where flock is unavailable)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    if record.get("host") != socket.gethostname():
        return True  # another machine's process: this one cannot tell, so it must not take over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def in_use_message(path: Path, record: Mapping[str, Any], *, kernel_lock: bool = True) -> str:
    """Why the lock file ``path`` refuses a writer: who holds it, since when, and what to do."""
    holder = f"pid {record.get('pid', '?')}" + (f" on {record['host']}" if record.get("host") not in (None, socket.gethostname()) else "")
    what = f"a {record['task']} run" if record.get("task") else "a run"
    message = f"{path.parent} is in use by {holder} ({what} started {record.get('started', 'at an unknown time')}); wait for it to end or choose another directory."
    if not kernel_lock:
        message += f" This file system has no file locks: if that process is gone, delete {path}."
    return message


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
