"""Irregular series: the spiral and ECG generators, the padded batch structure and the CSV/NPZ loader."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from odecli import hydra_bridge
from odecli.data.irregular import IrregularBatch, SeriesFileError, load_series, read_series_file, write_series_csv

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _composed(name: str):
    return hydra_bridge.compose("vae", [f"data={name}"])


def data_cfg(name: str, *overrides: str):
    """``data=name`` as ``odecli vae`` composes it, with ``key=value`` overrides (composed once: Hydra is slow)."""
    cfg = _composed(name).copy()
    for override in overrides:
        key, value = override.split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return cfg.data


# ----- spirals ----------------------------------------------------------------------------------------
def spirals(*overrides: str):
    from odecli.data.spirals import generate

    return generate(data_cfg("spirals", "data.n_spirals=40", *overrides))


def test_spiral_shapes_follow_the_config() -> None:
    data = spirals("data.n_times=50", "data.n_obs=12", "data.extrapolate=0.5")
    assert (len(data.train), len(data.test)) == (32, 8)
    for part in (data.train, data.test):
        assert part.observed.x.shape == (len(part), 12, 2) and part.observed.mask.all()
        assert part.interp.x.shape == (len(part), (50 - 12) + 49, 2)  # unobserved grid points + midpoints
        assert part.extrap.x.shape == (len(part), round(0.5 * 49), 2)
        assert torch.all(part.extrap.t.min(1).values > part.window_end)
        assert torch.all(part.observed.t.max(1).values <= part.window_end)
        assert torch.all(part.interp.t.max(1).values <= part.window_end)
    assert data.info["n_obs"] == 12


def test_half_the_spirals_turn_each_way() -> None:
    data = spirals("data.n_spirals=101")
    labels = torch.cat([data.train.labels, data.test.labels])
    assert int(labels.sum()) == 50 and len(labels) == 101
    for part in (data.train, data.test):  # the label is the true direction of rotation
        path = part.truth_x
        cross = path[:, :-1, 0] * path[:, 1:, 1] - path[:, :-1, 1] * path[:, 1:, 0]
        clockwise = (cross.sum(1) < 0).long()
        assert torch.equal(clockwise, part.labels)


def test_observation_times_are_irregular_and_differ_between_spirals() -> None:
    data = spirals()
    t = data.train.observed.t
    gaps = t.diff(dim=1)
    assert torch.all(gaps > 0)  # ascending, no repeats
    assert gaps.std() > 0.1 * gaps.mean()  # irregular
    assert len({tuple(row.tolist()) for row in t}) == len(t)  # every spiral has its own times


def test_noise_is_gaussian_with_the_configured_std() -> None:
    from odecli.data.spirals import spiral

    part = spirals("data.noise_std=0.2", "data.n_spirals=200").train
    residuals = []
    for i in range(len(part)):
        theta0 = float(part.truth_x[i, 0].norm()) / 0.3  # r = a + bθ with a = 0, b = 0.3
        clean = spiral(theta0 + part.observed.t[i].double().numpy(), 0.0, 0.3, bool(part.labels[i]))
        residuals.append(part.observed.x[i].double().numpy() - clean)
    residuals = np.concatenate(residuals)
    assert residuals.std() == pytest.approx(0.2, rel=0.1) and abs(residuals.mean()) < 0.02


def test_the_same_seed_gives_the_same_spirals() -> None:
    first, again, other = spirals(), spirals(), spirals("seed=1")
    assert torch.equal(first.train.observed.x, again.train.observed.x) and torch.equal(first.test.interp.t, again.test.interp.t)
    assert not torch.equal(first.train.observed.x, other.train.observed.x)


def test_every_point_observed_still_leaves_interpolation_targets() -> None:
    data = spirals("data.n_times=30", "data.n_obs=30")
    assert data.train.interp.x.shape[1] == 29  # the midpoints


@pytest.mark.parametrize("override", ["data.n_obs=1", "data.n_obs=101", "data.n_spirals=1", "data.test_fraction=1.0"])
def test_bad_spiral_settings_are_config_errors(override: str) -> None:
    from odecli.data.spirals import generate
    from odecli.errors import ConfigError

    with pytest.raises(ConfigError):
        generate(data_cfg("spirals", override))


# ----- ECG ----------------------------------------------------------------------------------------------
def test_ecgsyn_beats() -> None:
    from odecli.data.ecg import beat_starts, generate, simulate

    times, path = simulate(6.0, np.array([60.0, 90.0]), 256.0)
    for rate, record in zip((60.0, 90.0), path, strict=True):
        starts = beat_starts(record)
        assert np.diff(times[starts]) == pytest.approx(60.0 / rate, abs=0.01)  # one beat per turn of the limit cycle
        assert np.abs(np.hypot(record[256:, 0], record[256:, 1]) - 1).max() < 1e-3
    data = generate(data_cfg("ecg", "data.n_records=2", "data.beats_per_record=5", "data.n_obs=20"))
    assert len(data.train) + len(data.test) == 10 and data.dim == 1
    truth = torch.cat([data.train.truth_x, data.test.truth_x])
    assert -0.45 < float(truth.min()) and float(truth.max()) <= 1.2 + 1e-6  # ECGSYN's mV range
    peak_time = data.train.truth_t[0, data.train.truth_x[0, :, 0].argmax()]
    assert 0.3 < float(peak_time / data.train.window_end[0]) < 0.7  # the R peak mid-beat
    assert data.train.observed.x.shape[1:] == (20, 1)


# ----- the batch structure and the file loader -------------------------------------------------------
def test_padding_keeps_times_ascending_and_masks_missing_values() -> None:
    batch = IrregularBatch.from_lists([np.array([0.0, 1.0, 2.0]), np.array([0.5])], [np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]]), np.array([[7.0, 8.0]])], 2)
    assert batch.t.tolist() == [[0.0, 1.0, 2.0], [0.5, 0.5, 0.5]]
    assert batch.mask[0, 0].tolist() == [1.0, 0.0] and batch.x[0, 0, 1] == 0.0
    assert batch.valid.tolist() == [[True, True, True], [True, False, False]]


def _series(rng: np.random.Generator, n: int = 6) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for i in range(n):
        t = np.sort(rng.uniform(0, 10, size=rng.integers(8, 15)))
        x = np.stack([np.sin(t), np.cos(t) + i], axis=1)
        out.append((f"s{i}", t, x))
    return out


def test_csv_round_trip_with_missing_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    series = _series(rng)
    series[0][2][3, 1] = np.nan
    series[1][2][0, 0] = np.nan
    path = write_series_csv(tmp_path / "s.csv", series[::-1], ["a", "b"])
    text = path.read_text().splitlines()
    assert text[0] == "series_id,t,a,b" and any(line.endswith(",") for line in text)  # the empty cell
    read, names = read_series_file(path)
    assert names == ["a", "b"]
    by_id = {s.series_id: s for s in read}
    for series_id, t, x in series:
        assert np.array_equal(by_id[series_id].t, t)
        np.testing.assert_array_equal(by_id[series_id].x, x)  # NaN where missing


def test_csv_rows_may_come_in_any_order_and_nan_spellings(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("series_id,t,x1\nb,2,1.5\na,1,NaN\na,0,0.5\nb,0,\na,2,nan\na,3,NA\nb,1,2\n")
    read, _ = read_series_file(path)
    a = next(s for s in read if s.series_id == "a")
    assert a.t.tolist() == [0.0, 1.0, 2.0, 3.0] and np.isnan(a.x[1:, 0]).all()


def test_npz_round_trip(tmp_path: Path) -> None:
    series = _series(np.random.default_rng(1), 3)
    ids = np.concatenate([[s] * len(t) for s, t, _ in series])
    np.savez(tmp_path / "s.npz", series_id=ids, t=np.concatenate([t for _, t, _ in series]), x=np.concatenate([x for _, _, x in series]), names=np.array(["p", "q"]))
    read, names = read_series_file(tmp_path / "s.npz")
    assert names == ["p", "q"] and [s.series_id for s in read] == ["s0", "s1", "s2"]
    np.testing.assert_allclose(read[2].x, series[2][2])


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("series_id,t,x1\na,0,1\na,1,2,3\n", 3, "expected 3 columns"),
        ("series_id,t,x1\na,0,1\na,zero,2\n", 3, "column t: 'zero' is not a number"),
        ("series_id,t,x1\na,0,1\na,1,abc\n", 3, "'abc' is not a number"),
        ("id,time,x1\na,0,1\n", 1, "header"),
        ("series_id,t,x1\na,0,1\n,1,2\n", 3, "empty series_id"),
        ("series_id,t,x1\na,0,1\nb,0,2\na,0,3\n", 4, "twice"),
        ("series_id,t,x1\na,0,1\na,inf,2\n", 3, "finite number"),
        ("", 1, "empty"),
    ],
    ids=["columns", "bad-time", "bad-value", "header", "no-id", "duplicate-time", "infinite-time", "empty"],
)
def test_malformed_files_name_the_file_and_line(tmp_path: Path, content: str, line: int, words: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SeriesFileError) as error:
        read_series_file(path)
    assert f"{path}:{line}:" in str(error.value) and words in str(error.value)


def test_missing_file_and_bad_npz(tmp_path: Path) -> None:
    with pytest.raises(SeriesFileError, match="no such file"):
        read_series_file(tmp_path / "nope.csv")
    np.savez(tmp_path / "s.npz", t=np.zeros(3))
    with pytest.raises(SeriesFileError, match="missing: series_id, x"):
        read_series_file(tmp_path / "s.npz")


def test_load_series_holds_out_and_scales(tmp_path: Path) -> None:
    series = _series(np.random.default_rng(2), 10)
    series = [(s, t + 100.0, x) for s, t, x in series]  # the loader shifts every series to start at 0
    path = write_series_csv(tmp_path / "s.csv", series, ["a", "b"])
    cfg = OmegaConf.merge(data_cfg("csv"), {"path": str(path)})
    data = load_series(cfg)
    assert (len(data.train), len(data.test)) == (8, 2) and data.feature_names == ["a", "b"]
    both = [data.train, data.test]
    observed = sum(int(p.observed.valid.sum()) for p in both)
    held = sum(int(p.interp.valid.sum()) + int(p.extrap.valid.sum()) for p in both)
    assert observed + held == sum(len(t) for _, t, _ in series)
    starts = torch.cat([p.observed.t[:, 0] for p in both])
    assert torch.all(starts == 0)
    ends = torch.cat([torch.maximum(p.observed.t.max(1).values, p.extrap.t.max(1).values) for p in both])
    assert float(ends.max()) == pytest.approx(5.0)  # time_span
    for p in both:
        assert torch.all(p.extrap.t.masked_fill(~p.extrap.valid, math.inf).min(1).values > p.window_end)
    values = torch.cat([p.observed.x[p.observed.mask.bool()] for p in both])
    assert abs(float(values.mean())) < 0.5  # standardised


def test_a_file_checked_before_the_run_is_not_parsed_again_when_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from odecli.data import irregular

    path = write_series_csv(tmp_path / "s.csv", _series(np.random.default_rng(3), 4), ["a", "b"])
    parsed: list[Path] = []
    real_read_csv = irregular._read_csv
    monkeypatch.setattr(irregular, "_read_csv", lambda p: parsed.append(p) or real_read_csv(p))
    cfg = OmegaConf.merge(data_cfg("csv"), {"path": str(path)})
    irregular.check_series(cfg)
    first = load_series(cfg)
    assert len(parsed) == 1
    assert torch.equal(load_series(cfg).train.observed.x, first.train.observed.x)  # the kept parse is not changed by loading
    before = path.stat().st_mtime_ns
    path.write_text(path.read_text().replace("series_id,t,a,b", "series_id,t,c,d"))  # changed since: parsed again
    os.utime(path, ns=(before + 10**9, before + 10**9))  # dated later, as a later write is (the clock's tick may be coarse)
    assert load_series(cfg).feature_names == ["c", "d"] and len(parsed) == 2


def test_too_few_series_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("series_id,t,x1\na,0,1\na,1,2\na,2,3\nb,0,1\n")
    with pytest.raises(SeriesFileError, match="at least 2 are needed"):
        load_series(OmegaConf.merge(data_cfg("csv"), {"path": str(path)}))


def test_load_series_reads_npz_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = np.repeat([f"s{i}" for i in range(6)], 8)
    t = np.concatenate([np.sort(rng.uniform(0, 5, 8)) for _ in range(6)])
    np.savez(tmp_path / "mine.npz", series_id=ids, t=t, x=np.sin(t)[:, None])
    data = load_series(OmegaConf.merge(data_cfg("csv"), {"path": str(tmp_path / "mine.npz")}))
    assert data.name == "mine" and data.feature_names == ["x1"] and len(data.train) + len(data.test) == 6
