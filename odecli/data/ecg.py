"""Synthetic heartbeats from ECGSYN, McSharry et al. (2003), "A dynamical model for generating synthetic
electrocardiogram signals", IEEE Trans. Biomed. Eng. 50(3): 289–294. No download.

The model is a 3-D ODE: (x, y) circles the unit limit cycle once per beat and z, the ECG, is pushed
by one Gaussian per wave P, Q, R, S, T placed at angles θ_i on the cycle::

    dx/dt = α x − ω y,    dy/dt = α y + ω x,    α = 1 − √(x² + y²),   ω = 2π · heart_rate / 60
    dz/dt = − Σ_i a_i Δθ_i exp(−Δθ_i² / (2 b_i²)) − (z − z0(t)),   Δθ_i = (θ − θ_i) mod 2π,  θ = atan2(y, x)
    z0(t) = A sin(2π f_resp t)   (baseline wander from respiration; A = 0.005 before scaling, as ecgsyn.m)

with the paper's Table 1 parameters (:data:`WAVES`). It is integrated here with classic RK4 in numpy
at ``sampling_rate`` (vectorised over ``n_records`` records, each with its own heart rate), z is scaled
to [−0.4, 1.2] mV as ECGSYN does, and the records are cut into beats where θ passes ±π (between T
and the next P). Simplifications: a constant heart rate per record (ECGSYN draws RR intervals from a
tachogram with respiratory and Mayer-wave peaks) and wave widths not scaled with heart rate.

Each beat is one series: its duration is the observed window, sampled like the spirals (``n_times``
equally spaced times, ``n_obs`` observed at random with Gaussian noise); the next ``extrapolate``
fraction of a beat (the following P wave and QRS) is the extrapolation target. Times in seconds,
values in mV. Parameters: ``conf/series/ecg.yaml``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from odecli.data.irregular import IrregularBatch, SeriesData, SeriesSet, split
from odecli.errors import ConfigError

# McSharry et al. (2003), Table 1: wave → (θ_i, a_i, b_i)
WAVES: dict[str, tuple[float, float, float]] = {
    "P": (-math.pi / 3, 1.2, 0.25),
    "Q": (-math.pi / 12, -5.0, 0.1),
    "R": (0.0, 30.0, 0.1),
    "S": (math.pi / 12, -7.5, 0.1),
    "T": (math.pi / 2, 0.75, 0.4),
}
MV_RANGE = (-0.4, 1.2)  # ECGSYN scales z to this range (mV)


def ecgsyn_field(t: float, state: np.ndarray, omega: np.ndarray, resp_amplitude: float, resp_rate_hz: float) -> np.ndarray:
    """The ECGSYN vector field for states ``(R, 3)`` (one row per record, each with its own ω)."""
    x, y, z = state[:, 0], state[:, 1], state[:, 2]
    alpha = 1.0 - np.sqrt(x**2 + y**2)
    theta = np.arctan2(y, x)
    dz = np.zeros_like(z)
    for theta_i, a_i, b_i in WAVES.values():
        delta = np.remainder(theta - theta_i + np.pi, 2 * np.pi) - np.pi
        dz -= a_i * delta * np.exp(-(delta**2) / (2 * b_i**2))
    z0 = resp_amplitude * np.sin(2 * np.pi * resp_rate_hz * t)
    return np.stack([alpha * x - omega * y, alpha * y + omega * x, dz - (z - z0)], axis=1)


def simulate(duration: float, heart_rates: np.ndarray, sampling_rate: float, resp_amplitude: float = 0.005,
             resp_rate_hz: float = 0.25) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """RK4 from ECGSYN's initial state (1, 0, 0.04) at ``sampling_rate`` Hz: times ``(N,)`` and states ``(R, N, 3)`` (z unscaled)."""
    omega = 2 * np.pi * np.asarray(heart_rates, dtype=np.float64) / 60.0
    dt = 1.0 / sampling_rate
    n = int(round(duration * sampling_rate)) + 1
    state = np.tile(np.array([1.0, 0.0, 0.04]), (len(omega), 1))
    path = np.empty((len(omega), n, 3))
    path[:, 0] = state
    for k in range(1, n):
        t = (k - 1) * dt
        k1 = ecgsyn_field(t, state, omega, resp_amplitude, resp_rate_hz)
        k2 = ecgsyn_field(t + dt / 2, state + dt / 2 * k1, omega, resp_amplitude, resp_rate_hz)
        k3 = ecgsyn_field(t + dt / 2, state + dt / 2 * k2, omega, resp_amplitude, resp_rate_hz)
        k4 = ecgsyn_field(t + dt, state + dt * k3, omega, resp_amplitude, resp_rate_hz)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        path[:, k] = state
    return np.arange(n) * dt, path


def beat_starts(path: np.ndarray) -> np.ndarray:
    """Indices where θ = atan2(y, x) wraps from +π to −π: the start of every beat."""
    theta = np.arctan2(path[:, 1], path[:, 0])
    return np.flatnonzero(np.diff(theta) < -np.pi) + 1


def check_config(cfg: Any) -> None:
    """Refuse settings that cannot make a data set (the ``data`` node of a vae config)."""
    if not 2 <= int(cfg.n_obs) <= int(cfg.n_times):
        raise ConfigError(f"data.n_obs must be between 2 and data.n_times={cfg.n_times}, got {cfg.n_obs}.")
    low, high = (float(v) for v in cfg.heart_rate)
    if not 20 <= low <= high <= 200:
        raise ConfigError(f"data.heart_rate is a [low, high] range in beats per minute within [20, 200], got {list(cfg.heart_rate)}.")
    if int(cfg.n_records) < 1 or int(cfg.beats_per_record) < 1 or int(cfg.n_records) * int(cfg.beats_per_record) < 2:
        raise ConfigError("data.n_records and data.beats_per_record must be positive, with at least two beats in all.")
    if not 0 <= float(cfg.extrapolate) < 1:
        raise ConfigError(f"data.extrapolate (fraction of the next beat) must be in [0, 1), got {cfg.extrapolate}.")


def generate(cfg: Any) -> SeriesData:
    """The heartbeat data set a ``data=ecg`` config describes (see the module docstring)."""
    check_config(cfg)
    rng = np.random.default_rng(int(cfg.seed))
    low, high = (float(v) for v in cfg.heart_rate)
    rates = rng.uniform(low, high, size=int(cfg.n_records))
    skip = int(cfg.warmup_beats)
    beats = int(cfg.beats_per_record)
    duration = (skip + beats + 2) * 60.0 / low
    times, path = simulate(duration, rates, float(cfg.sampling_rate), float(cfg.resp_amplitude), float(cfg.resp_rate_hz))
    z = path[..., 2]
    z = MV_RANGE[0] + (z - z.min()) * (MV_RANGE[1] - MV_RANGE[0]) / (z.max() - z.min())
    n_times, n_obs, noise = int(cfg.n_times), int(cfg.n_obs), float(cfg.noise_std)
    observed_t, observed_x, interp_t, interp_x, extrap_t, extrap_x, truth_t, truth_x, window_end, labels = ([] for _ in range(10))
    for r in range(len(rates)):
        starts = beat_starts(path[r])[skip:]
        for begin, end in zip(starts[:beats], starts[1 : beats + 1], strict=False):
            t0, length = times[begin], times[end] - times[begin]
            window = np.linspace(0.0, length, n_times)
            dt = window[1] - window[0]
            midpoints = window[:-1] + dt / 2
            future = window[-1] + dt * np.arange(1, int(round(float(cfg.extrapolate) * (n_times - 1))) + 1)
            chosen = np.sort(rng.choice(n_times, size=n_obs, replace=False))
            hidden = np.setdiff1d(np.arange(n_times), chosen)
            t_in = np.sort(np.concatenate([window[hidden], midpoints]))
            dense = np.sort(np.concatenate([window, midpoints, future]))

            def ecg(t: np.ndarray, r: int = r, t0: float = t0) -> np.ndarray:
                return np.interp(t0 + t, times, z[r])[:, None]

            observed_t.append(window[chosen])
            observed_x.append(ecg(window[chosen]) + noise * rng.standard_normal((n_obs, 1)))
            interp_t.append(t_in)
            interp_x.append(ecg(t_in))
            extrap_t.append(future)
            extrap_x.append(ecg(future))
            truth_t.append(dense)
            truth_x.append(ecg(dense))
            window_end.append(length)
            labels.append(r)
    n = len(observed_t)
    if n < 2:
        raise ConfigError(f"data=ecg produced {n} beats; raise data.n_records or data.beats_per_record.")
    truth = IrregularBatch.from_lists(truth_t, truth_x, 1)  # beats differ in length (heart rate): padded
    everything = SeriesSet(
        observed=IrregularBatch.from_lists(observed_t, observed_x, 1),
        interp=IrregularBatch.from_lists(interp_t, interp_x, 1),
        extrap=IrregularBatch.from_lists(extrap_t, extrap_x, 1),
        window_end=torch.tensor(window_end, dtype=torch.float32),
        truth_t=truth.t,
        truth_x=truth.x,
        labels=torch.tensor(labels),
    )
    train, test = split(n, float(cfg.test_fraction), int(cfg.seed) + 1)
    return SeriesData(
        name="ecg", train=everything[torch.from_numpy(train)], test=everything[torch.from_numpy(test)],
        feature_names=["ecg_mV"], scale=torch.ones(1), offset=torch.zeros(1),
        info={"n_obs": n_obs, "n_times": n_times, "beats": n, "heart_rates": [round(float(h), 1) for h in rates]},
    )  # fmt: skip
