"""The paper's time-series data (Chen et al. 2018, §5.1): noisy 2-D spirals observed at irregular times.

``n_spirals`` Archimedean spirals r = a + b·θ, exactly half counter-clockwise (θ = θ0 + t) and half
clockwise (the mirror image, y → −y), each with its own random start angle θ0 ~ U[theta_start].
Each has ``n_times`` equally spaced times over the observed window [0, t_window]; ``n_obs`` of them
are drawn at random (without replacement, so the observation times are irregular and differ between
spirals) and observed with Gaussian noise of std ``noise_std``.

Held out, noise-free: interpolation targets are the window's grid points that are not observed plus
the midpoints between grid points (so there are targets even when n_obs = n_times); extrapolation
targets continue the grid for ``extrapolate × t_window`` after the window.
All parameters are in ``conf/series/spirals.yaml``; the same seed gives the same data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from odecli.data.irregular import IrregularBatch, SeriesData, SeriesSet, split
from odecli.errors import ConfigError


def spiral(theta: np.ndarray, a: float, b: float, clockwise: bool) -> np.ndarray:
    """Points ``(…, 2)`` of the spiral r = a + bθ at angles θ; clockwise spirals are mirrored (y → −y)."""
    radius = a + b * theta
    sign = -1.0 if clockwise else 1.0
    return np.stack([radius * np.cos(theta), sign * radius * np.sin(theta)], axis=-1)


def check_config(cfg: Any) -> None:
    """Refuse settings that cannot make a data set (the ``data`` node of a vae config)."""
    n_times, n_obs = int(cfg.n_times), int(cfg.n_obs)
    if int(cfg.n_spirals) < 2:
        raise ConfigError(f"data.n_spirals must be at least 2 (one clockwise, one counter-clockwise), got {cfg.n_spirals}.")
    if n_times < 2:
        raise ConfigError(f"data.n_times must be at least 2, got {n_times}.")
    if not 2 <= n_obs <= n_times:
        raise ConfigError(f"data.n_obs must be between 2 and data.n_times={n_times}, got {n_obs}.")
    if float(cfg.t_window) <= 0 or float(cfg.noise_std) < 0 or float(cfg.extrapolate) < 0:
        raise ConfigError("data.t_window must be positive and data.noise_std, data.extrapolate non-negative.")
    if not 0 < float(cfg.test_fraction) < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {cfg.test_fraction}.")


def generate(cfg: Any) -> SeriesData:
    """The spiral data set a ``data=spirals`` config describes (see the module docstring)."""
    check_config(cfg)
    rng = np.random.default_rng(int(cfg.seed))
    n, n_times, n_obs = int(cfg.n_spirals), int(cfg.n_times), int(cfg.n_obs)
    a, b, noise = float(cfg.a), float(cfg.b), float(cfg.noise_std)
    window = np.linspace(0.0, float(cfg.t_window), n_times)
    dt = window[1] - window[0]
    midpoints = window[:-1] + dt / 2
    n_extrap = int(round(float(cfg.extrapolate) * (n_times - 1)))
    future = window[-1] + dt * np.arange(1, n_extrap + 1)
    clockwise = rng.permutation(np.arange(n) < n // 2)  # exactly half (n odd: one more counter-clockwise)
    low, high = (float(v) for v in cfg.theta_start)
    theta0 = rng.uniform(low, high, size=n)
    truth_t = np.sort(np.concatenate([window, midpoints, future]))
    observed_t, observed_x, interp_t, interp_x, extrap_x, truth_x = [], [], [], [], [], []
    for i in range(n):
        chosen = np.sort(rng.choice(n_times, size=n_obs, replace=False))
        hidden = np.setdiff1d(np.arange(n_times), chosen)
        path = spiral(theta0[i] + truth_t, a, b, bool(clockwise[i]))
        truth_x.append(path)
        observed_t.append(window[chosen])
        observed_x.append(spiral(theta0[i] + window[chosen], a, b, bool(clockwise[i])) + noise * rng.standard_normal((n_obs, 2)))
        t_in = np.sort(np.concatenate([window[hidden], midpoints]))
        interp_t.append(t_in)
        interp_x.append(spiral(theta0[i] + t_in, a, b, bool(clockwise[i])))
        extrap_x.append(spiral(theta0[i] + future, a, b, bool(clockwise[i])))
    everything = SeriesSet(
        observed=IrregularBatch.from_lists(observed_t, observed_x, 2),
        interp=IrregularBatch.from_lists(interp_t, interp_x, 2),
        extrap=IrregularBatch.from_lists([future] * n, extrap_x, 2),
        window_end=torch.full((n,), float(window[-1])),
        truth_t=torch.from_numpy(np.tile(truth_t, (n, 1))).float(),
        truth_x=torch.from_numpy(np.stack(truth_x)).float(),
        labels=torch.from_numpy(clockwise.astype(np.int64)),
    )
    train, test = split(n, float(cfg.test_fraction), int(cfg.seed) + 1)
    return SeriesData(
        name="spirals", train=everything[torch.from_numpy(train)], test=everything[torch.from_numpy(test)],
        feature_names=["x", "y"], scale=torch.ones(2), offset=torch.zeros(2),
        info={"n_obs": n_obs, "n_times": n_times, "n_extrap": n_extrap, "clockwise": int(clockwise.sum())},
    )  # fmt: skip
