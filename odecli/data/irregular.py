"""Irregularly sampled series: the batch structure ``odecli vae`` trains on, and the CSV/NPZ loader for your own data.

Every data set of ``odecli vae`` (spirals, ECG, your file) becomes a :class:`SeriesData`: a train and
a test :class:`SeriesSet`, each holding, per series, what the encoder sees (``observed``) and what is
held out for evaluation (``interp``: times inside the observed window; ``extrap``: times after it),
each an :class:`IrregularBatch` — padded tensors ``t (B, L)``, ``x (B, L, d)`` and an observation
``mask (B, L, d)`` (1 = observed). Every series starts at t = 0, where the latent ODE's z0 lives.

Your own series (``odecli vae data=csv data.path=FILE``)
-------------------------------------------------------
CSV: a header row, then one row per observation time::

    series_id,t,x1,x2
    patient_a,0.0,1.2,0.3
    patient_a,0.35,,0.1          <- x1 missing at t = 0.35 (empty cell)
    patient_b,0.1,0.9,nan        <- NaN / nan / NA are missing too

- ``series_id``: any text; a series' rows need not be contiguous nor sorted by ``t``.
- ``t``: a finite number in any unit; each series is shifted to start at 0 and all times are scaled
  together so that the longest series spans ``data.time_span`` (null keeps your unit).
- ``x1..xd``: numbers (the header names them); missing values are left out of the encoder's input
  and of the likelihood through the mask. Columns are standardised (``data.standardize``); RMSEs are
  reported back in your units.
- Rows with no observed value are dropped; a series needs ``data.min_points`` observed times.

NPZ: arrays ``series_id (N,)``, ``t (N,)``, ``x (N, d)`` (NaN = missing), optionally ``names (d,)``.

Held out per series (``conf/series/csv.yaml``): every time after the first ``1 − extrap_fraction`` of
its span is an extrapolation target; ``interp_fraction`` of the times before are interpolation
targets; the rest is observed. ``test_fraction`` of the series are the test set the RMSEs use.
Malformed files raise :class:`SeriesFileError` naming the file and line (the CLI exits with code 2).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odecli.data.mnist import DataError

MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none"})


class SeriesFileError(DataError):
    """A series file that cannot be read; the message names the file and, where there is one, the line."""


@dataclass
class IrregularBatch:
    """Series padded to a common length: ``t (B, L)`` ascending per series, ``x (B, L, d)`` (0 where
    missing) and ``mask (B, L, d)`` (1 = observed). Padding repeats a series' last time with an all-zero mask."""

    t: torch.Tensor
    x: torch.Tensor
    mask: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """``(B, L)``: positions holding at least one observed value."""
        return self.mask.bool().any(-1)

    @property
    def dim(self) -> int:
        return self.x.shape[-1]

    def __len__(self) -> int:
        return self.t.shape[0]

    def __getitem__(self, index: Any) -> IrregularBatch:
        return IrregularBatch(self.t[index], self.x[index], self.mask[index])

    def to(self, device: torch.device | str) -> IrregularBatch:
        return IrregularBatch(self.t.to(device), self.x.to(device), self.mask.to(device))

    @classmethod
    def from_lists(cls, times: Sequence[np.ndarray], values: Sequence[np.ndarray], dim: int, masks: Sequence[np.ndarray] | None = None) -> IrregularBatch:
        """Pad per-series arrays (``times[i] (n_i,)`` ascending, ``values[i] (n_i, d)``; NaN or ``masks[i] == 0`` = missing)."""
        length = max([len(t) for t in times] + [1])
        n = len(times)
        t = np.zeros((n, length), dtype=np.float32)
        x = np.zeros((n, length, dim), dtype=np.float32)
        mask = np.zeros((n, length, dim), dtype=np.float32)
        for i, (ti, xi) in enumerate(zip(times, values, strict=True)):
            k = len(ti)
            if k == 0:
                continue
            observed = ~np.isnan(xi) if masks is None else (np.asarray(masks[i]) > 0) & ~np.isnan(xi)
            t[i, :k], t[i, k:] = ti, ti[-1]
            x[i, :k] = np.where(observed, xi, 0.0)
            mask[i, :k] = observed
        return cls(torch.from_numpy(t), torch.from_numpy(x), torch.from_numpy(mask))


@dataclass
class SeriesSet:
    """Series with their held-out targets and, for synthetic data, the noise-free path (for plots).

    ``observed`` is what the models see; ``interp`` and ``extrap`` are targets inside and after the
    observed window (which ends at ``window_end (B,)``); ``truth_t (B, T)`` / ``truth_x (B, T, d)``
    the true path; ``labels (B,)`` a class per series (spirals: 1 = clockwise).
    """

    observed: IrregularBatch
    interp: IrregularBatch
    extrap: IrregularBatch
    window_end: torch.Tensor
    truth_t: torch.Tensor | None = None
    truth_x: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.observed)

    def __getitem__(self, index: Any) -> SeriesSet:
        return SeriesSet(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index]) for f in fields(self)})

    def to(self, device: torch.device | str) -> SeriesSet:
        return SeriesSet(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device)) for f in fields(self)})


@dataclass
class SeriesData:
    """A data set for ``odecli vae``: train and test series, and how to turn errors back into data units."""

    name: str
    train: SeriesSet
    test: SeriesSet
    feature_names: list[str]
    scale: torch.Tensor  # (d,) standard deviation the values were divided by (1 for synthetic data)
    offset: torch.Tensor  # (d,) mean that was subtracted
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def to(self, device: torch.device | str) -> SeriesData:
        return replace(self, train=self.train.to(device), test=self.test.to(device), scale=self.scale.to(device), offset=self.offset.to(device))


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train and test indices (at least one of each when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(int(round(test_fraction * n)), 1), n - 1) if n >= 2 else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# ----- reading files ------------------------------------------------------------------------------
@dataclass
class RawSeries:
    """One series as read from a file: ascending times ``t (n,)`` and values ``x (n, d)`` (NaN = missing)."""

    series_id: str
    t: np.ndarray
    x: np.ndarray


# The last file read, by (path, inode, size, mtime): a run checks its file before its directory exists
# (``check_series``) and loads it afterwards; parsing a CSV costs ~13 µs a row, so it is parsed once.
_last_read: dict[tuple[str, int, int, int], tuple[list[RawSeries], list[str]]] = {}


def read_series_file(path: str | Path) -> tuple[list[RawSeries], list[str]]:
    """Read a CSV or NPZ series file (format in the module docstring); return the series and the value names.

    The arrays are read-only: the file read last is kept, and each call gets new ``RawSeries`` over them.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SeriesFileError(f"{path}: no such file. Pass data.path=<file.csv|file.npz> (columns series_id, t, x1..xd).")
    status = path.stat()
    identity = (str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns)
    if identity not in _last_read:
        if path.suffix.lower() == ".npz":
            ids, t, x, names = _read_npz(path)
            lines = None
        else:
            ids, t, x, names, lines = _read_csv(path)
        series = _group(path, ids, t, x, lines)
        for s in series:
            s.t.setflags(write=False)
            s.x.setflags(write=False)
        _last_read.clear()
        _last_read[identity] = series, names
    series, names = _last_read[identity]
    return [RawSeries(s.series_id, s.t, s.x) for s in series], list(names)


def _read_csv(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[int]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeriesFileError(f"{path}: cannot be read as UTF-8 text ({exc}).") from exc
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None:
        raise SeriesFileError(f"{path}:1: the file is empty; expected a header 'series_id,t,x1,...'.")
    header = [h.strip() for h in header]
    if len(header) < 3 or [h.lower() for h in header[:2]] != ["series_id", "t"]:
        raise SeriesFileError(f"{path}:1: the header must start with 'series_id,t' and name at least one value column, got {','.join(header)!r}.")
    names = header[2:]
    ids: list[str] = []
    times: list[float] = []
    values: list[list[float]] = []
    lines: list[int] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise SeriesFileError(f"{path}:{line}: expected {len(header)} columns ({','.join(header)}), found {len(row)}.")
        series_id = row[0].strip()
        if not series_id:
            raise SeriesFileError(f"{path}:{line}: empty series_id.")
        time = _number(row[1], path, line, "t")
        if time is None or not math.isfinite(time):
            raise SeriesFileError(f"{path}:{line}: the time t must be a finite number, got {row[1].strip()!r}.")
        ids.append(series_id)
        times.append(time)
        values.append([_value(cell, path, line, name) for cell, name in zip(row[2:], names, strict=True)])
        lines.append(line)
    if not ids:
        raise SeriesFileError(f"{path}:2: no data rows after the header.")
    return ids, np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64), names, lines


def _number(cell: str, path: Path, line: int, column: str) -> float | None:
    text = cell.strip()
    if text.lower() in MISSING_TOKENS:
        return None
    try:
        return float(text)
    except ValueError:
        raise SeriesFileError(f"{path}:{line}: column {column}: {text!r} is not a number (leave the cell empty for a missing value).") from None


def _value(cell: str, path: Path, line: int, column: str) -> float:
    number = _number(cell, path, line, column)
    if number is None or math.isnan(number):
        return math.nan
    if not math.isfinite(number):
        raise SeriesFileError(f"{path}:{line}: column {column}: {cell.strip()!r} is infinite.")
    return number


def _read_npz(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    try:
        archive = np.load(path, allow_pickle=False)
        missing = [k for k in ("series_id", "t", "x") if k not in archive.files]
        if missing:
            raise SeriesFileError(f"{path}: NPZ series files need arrays series_id, t and x; missing: {', '.join(missing)} (found: {', '.join(archive.files)}).")
        ids = [str(s) for s in archive["series_id"].tolist()]
        t = np.asarray(archive["t"], dtype=np.float64)
        x = np.asarray(archive["x"], dtype=np.float64)
        names = [str(n) for n in archive["names"].tolist()] if "names" in archive.files else None
    except SeriesFileError:
        raise
    except Exception as exc:  # not a zip, object arrays, non-numeric values
        raise SeriesFileError(f"{path}: cannot be read as an NPZ series file ({type(exc).__name__}: {exc}).") from exc
    if x.ndim == 1:
        x = x[:, None]
    if t.ndim != 1 or x.ndim != 2 or not len(ids) == len(t) == len(x):
        raise SeriesFileError(f"{path}: series_id, t and x must have the same length N, with x of shape (N, d); got {len(ids)}, {t.shape}, {x.shape}.")
    if len(t) == 0:
        raise SeriesFileError(f"{path}: no observations (N = 0).")
    bad = np.flatnonzero(~np.isfinite(t))
    if len(bad):
        raise SeriesFileError(f"{path}: t[{bad[0]}] is {t[bad[0]]}; times must be finite numbers.")
    bad = np.flatnonzero(np.isinf(x).any(axis=1))
    if len(bad):
        raise SeriesFileError(f"{path}: x[{bad[0]}] holds an infinite value.")
    names = names or [f"x{i + 1}" for i in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise SeriesFileError(f"{path}: 'names' has {len(names)} entries but x has {x.shape[1]} columns.")
    return ids, t, x, names


def _group(path: Path, ids: list[str], t: np.ndarray, x: np.ndarray, lines: list[int] | None) -> list[RawSeries]:
    def where(i: int) -> str:
        return f"{path}:{lines[i]}" if lines is not None else f"{path} (row {i})"

    by_id: dict[str, list[int]] = {}
    for i, series_id in enumerate(ids):
        by_id.setdefault(series_id, []).append(i)
    series = []
    for series_id, rows in by_id.items():
        rows_arr = np.asarray(rows)
        order = rows_arr[np.argsort(t[rows_arr], kind="stable")]
        times = t[order]
        repeated = np.flatnonzero(np.diff(times) == 0)
        if len(repeated):
            first, second = sorted((order[repeated[0]], order[repeated[0] + 1]))
            raise SeriesFileError(f"{where(second)}: series {series_id!r} has time {times[repeated[0]]:g} twice (also at {where(first)}); merge the two rows.")
        series.append(RawSeries(series_id, times, x[order]))
    return series


# ----- preparing your series for odecli vae ---------------------------------------------------------
def usable_series(cfg: Any) -> tuple[list[RawSeries], list[str], int]:
    """``cfg.path``'s series with at least ``cfg.min_points`` observed times, their value names, and how many were dropped.

    Raises :class:`SeriesFileError` for a missing or malformed file, or fewer than two usable series.
    """
    path = Path(str(cfg.path)).expanduser()
    raw, names = read_series_file(path)
    min_points = int(cfg.min_points)
    kept = []
    for s in raw:
        rows = ~np.isnan(s.x).all(axis=1)  # rows without any value carry nothing
        s = RawSeries(s.series_id, s.t[rows], s.x[rows])
        if len(s.t) >= min_points:
            kept.append(s)
    if len(kept) < 2:
        raise SeriesFileError(f"{path}: {len(kept)} series have at least data.min_points={min_points} observed times; at least 2 are needed (one to train, one to test).")
    return kept, names, len(raw) - len(kept)


def check_series(cfg: Any) -> None:
    """What ``load_series`` would refuse (the file missing or malformed, too few usable series), before a run starts.

    The parsed file is kept (``read_series_file``), so loading it in the run does not parse it again.
    """
    usable_series(cfg)


def load_series(cfg: Any) -> SeriesData:
    """``data=csv``: read ``cfg.path``, scale, hold out interpolation/extrapolation targets, split train/test."""
    path = Path(str(cfg.path)).expanduser()
    kept, names, dropped = usable_series(cfg)
    for s in kept:
        s.t = s.t - s.t[0]
    longest = max(float(s.t[-1]) for s in kept)
    span = cfg.get("time_span")
    time_scale = float(span) / longest if span is not None and longest > 0 else 1.0
    stacked = np.concatenate([s.x for s in kept])
    offset = np.zeros(stacked.shape[1])
    scale = np.ones(stacked.shape[1])
    if cfg.standardize:
        offset = np.nan_to_num(np.nanmean(stacked, axis=0))
        scale = np.nan_to_num(np.nanstd(stacked, axis=0), nan=1.0)
        scale[scale <= 0] = 1.0
    rng = np.random.default_rng(int(cfg.seed))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"observed": [], "interp": [], "extrap": []}
    window_end = []
    for s in kept:
        t = s.t * time_scale
        x = (s.x - offset) / scale
        cut = float(t[-1]) * (1.0 - float(cfg.extrap_fraction))
        late = t > cut if float(cfg.extrap_fraction) > 0 else np.zeros(len(t), dtype=bool)
        late[: 2] = False  # the encoder always sees at least the first two times
        inside = np.flatnonzero(~late)
        n_interp = min(int(round(float(cfg.interp_fraction) * len(inside))), max(len(inside) - 2, 0))
        held = rng.choice(inside[1:], size=n_interp, replace=False) if n_interp > 0 else np.zeros(0, dtype=int)
        interp = np.zeros(len(t), dtype=bool)
        interp[held] = True
        observed = ~late & ~interp
        for key, chosen in (("observed", observed), ("interp", interp), ("extrap", late)):
            parts[key].append((t[chosen], x[chosen]))
        window_end.append(float(t[observed][-1]))
    dim = len(names)
    batches = {k: IrregularBatch.from_lists([p[0] for p in v], [p[1] for p in v], dim) for k, v in parts.items()}
    whole = SeriesSet(**batches, window_end=torch.tensor(window_end, dtype=torch.float32))
    train, test = split(len(kept), float(cfg.test_fraction), int(cfg.seed) + 1)
    info = {"series": len(kept), "dropped_series": dropped, "time_scale": time_scale, "path": str(path)}
    return SeriesData(
        name=path.stem, train=whole[torch.from_numpy(train)], test=whole[torch.from_numpy(test)], feature_names=names,
        scale=torch.tensor(scale, dtype=torch.float32), offset=torch.tensor(offset, dtype=torch.float32), info=info,
    )  # fmt: skip


def write_series_csv(path: str | Path, series: Sequence[tuple[str, np.ndarray, np.ndarray]], names: Sequence[str]) -> Path:
    """Write ``(series_id, t (n,), x (n, d))`` triples in the CSV format above (NaN → empty cell)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["series_id", "t", *names])
        for series_id, t, x in series:
            for time, row in zip(t, np.asarray(x).reshape(len(t), -1), strict=True):
                writer.writerow([series_id, repr(float(time)), *("" if math.isnan(v) else repr(float(v)) for v in row)])
    return path
