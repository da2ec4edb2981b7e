"""The latent ODE VAE of Chen et al. (2018, §5) and the RNN baseline it is compared with (its Table 2).

Both read an :class:`~odecli.data.irregular.IrregularBatch` (padded times, values and an observation
mask) and predict at any query times ``(B, Q)``; both start every series at t = 0.

- ``latent_ode``: an RNN/GRU *encoder* runs over the observations in reverse time order, each step
  reading ``[x·m, m, t]`` (values with missing entries zeroed, the mask, the time), and gives a
  Gaussian posterior q(z0 | x) = N(μ, σ²) over the initial latent state; z0 is sampled with the
  reparametrisation trick, the *latent ODE* dz/dt = f(z) (an MLP) is solved from t = 0 through every
  time the batch asks for (the union of the series' times, one batched solve through ``solve``, so
  any registered solver and the adjoint work), and a *decoder* (linear or MLP) maps z(t) to x(t).
  Loss: −ELBO = −Σ_observed log N(x; dec(z(t)), σ_obs²) + β·KL(q(z0|x) ‖ N(0, I)) per series.
  Prediction uses the posterior mean μ.
- ``rnn_baseline``: the paper's baseline, a GRU (or tanh RNN) fed ``[x·m, m, Δt]`` with Δt the gap
  since its previous input. Trained by one-step-ahead prediction: before reading observation i it
  predicts x_i from its state and the gap to t_i (``readout([h, Δt])``). It answers a query at any
  time u the same way, from the state after every observation before u and the gap u − t_last; past
  the observed window (extrapolation) it rolls forward, feeding each prediction back as an input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from odecli.data.irregular import IrregularBatch
from odecli.errors import ConfigError
from odecli.registry import MODELS

Solve = Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]
CELLS = {"gru": nn.GRUCell, "rnn": nn.RNNCell}
ACTIVATIONS = {"elu": nn.ELU, "tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus}
DECODERS = ("linear", "mlp")


def _cell(name: str, inputs: int, hidden: int) -> nn.Module:
    if name not in CELLS:
        raise ConfigError(f"RNN cell '{name}' is unknown; choose one of {', '.join(CELLS)}.")
    if int(hidden) < 1:
        raise ConfigError(f"RNN hidden size must be positive, got {hidden}.")
    return CELLS[name](inputs, int(hidden))


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation '{activation}' is unknown; choose one of {', '.join(ACTIVATIONS)}.")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: float, mask: torch.Tensor) -> torch.Tensor:
    """Σ over observed entries of log N(x; mean, std²), per series ``(B,)``."""
    log_density = -0.5 * (((x - mean) / std) ** 2 + 2 * math.log(std) + math.log(2 * math.pi))
    return (log_density * mask).flatten(1).sum(-1)


def normal_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) per series ``(B,)``."""
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)


def solve_at(solve: Solve, field: nn.Module, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """z(t) for every series at its own times ``(B, Q)`` → ``(B, Q, latent)``: one solve from t = 0 over the union of the times."""
    if times.numel() and float(times.min()) < 0:
        raise ConfigError(f"query times must be >= 0 (every series starts at t = 0), got {float(times.min())}.")
    grid, inverse = torch.unique(times, sorted=True, return_inverse=True)
    if grid.numel() == 0 or float(grid[0]) > 0:
        grid = torch.cat([grid.new_zeros(1), grid])
        inverse = inverse + 1
    path = solve(field, z0, grid) if len(grid) > 1 else z0[None]  # (T, B, latent)
    batch = torch.arange(z0.shape[0], device=z0.device)[:, None].expand_as(inverse)
    return path[inverse, batch]


class LatentVectorField(nn.Module):
    """dz/dt = f(z): an autonomous MLP in latent space."""

    def __init__(self, latent_dim: int, hidden: int, layers: int, activation: str):
        super().__init__()
        if int(layers) < 1:
            raise ConfigError(f"model.field_layers must be at least 1, got {layers}.")
        self.net = mlp([latent_dim, *[int(hidden)] * int(layers), latent_dim], activation)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ReverseEncoder(nn.Module):
    """q(z0 | observations): an RNN run from the last observation back to the first; returns (μ, log σ²)."""

    def __init__(self, obs_dim: int, latent_dim: int, hidden: int, cell: str):
        super().__init__()
        self.cell = _cell(cell, 2 * obs_dim + 1, hidden)
        self.hidden = int(hidden)
        self.head = nn.Linear(self.hidden, 2 * latent_dim)

    def forward(self, obs: IrregularBatch) -> tuple[torch.Tensor, torch.Tensor]:
        h = obs.x.new_zeros(len(obs), self.hidden)
        valid = obs.valid
        for j in reversed(range(obs.t.shape[1])):
            step = torch.cat([obs.x[:, j] * obs.mask[:, j], obs.mask[:, j], obs.t[:, j, None]], dim=-1)
            h = torch.where(valid[:, j, None], self.cell(step, h), h)  # padding leaves the state alone
        mean, logvar = self.head(h).chunk(2, dim=-1)
        return mean, logvar


@MODELS.register("latent_ode")
class LatentODE(nn.Module):
    """Latent ODE VAE (Chen et al. 2018): reverse-time RNN encoder → z0 → ODE solve → decoder."""

    def __init__(self, obs_dim: int, latent_dim: int = 4, encoder: str = "gru", encoder_hidden: int = 25, field_hidden: int = 20,
                 field_layers: int = 2, activation: str = "elu", decoder: str = "mlp", decoder_hidden: int = 20):  # fmt: skip
        super().__init__()
        if int(latent_dim) < 1:
            raise ConfigError(f"model.latent_dim must be positive, got {latent_dim}.")
        if decoder not in DECODERS:
            raise ConfigError(f"model.decoder '{decoder}' is unknown; choose one of {', '.join(DECODERS)}.")
        self.latent_dim = int(latent_dim)
        self.encoder = ReverseEncoder(obs_dim, self.latent_dim, encoder_hidden, encoder)
        self.field = LatentVectorField(self.latent_dim, field_hidden, field_layers, activation)
        sizes = [self.latent_dim, obs_dim] if decoder == "linear" else [self.latent_dim, int(decoder_hidden), obs_dim]
        self.decoder = mlp(sizes, "relu")

    def elbo_terms(self, obs: IrregularBatch, solve: Solve, obs_std: float, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Per series ``(B,)``: the expected log-likelihood (one z0 sample) and KL(q(z0|x) ‖ p(z0))."""
        mean, logvar = self.encoder(obs)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu" if generator is not None else mean.device)
        z0 = mean + noise.to(mean.device) * (0.5 * logvar).exp()
        reconstruction = self.decoder(solve_at(solve, self.field, z0, obs.t))
        return gaussian_log_likelihood(obs.x, reconstruction, obs_std, obs.mask), normal_kl(mean, logvar)

    def latent_path(self, obs: IrregularBatch, times: torch.Tensor, solve: Solve) -> torch.Tensor:
        """z(t) ``(B, Q, latent)`` from the posterior mean of z0."""
        mean, _ = self.encoder(obs)
        return solve_at(solve, self.field, mean, times)

    def predict(self, obs: IrregularBatch, times: torch.Tensor, solve: Solve, feedback: torch.Tensor | None = None) -> torch.Tensor:
        """x(t) ``(B, Q, d)`` at any times (``feedback`` is the RNN's; the ODE needs none)."""
        return self.decoder(self.latent_path(obs, times, solve))


@MODELS.register("rnn_baseline")
class GapRNN(nn.Module):
    """RNN baseline with time-gap inputs (Chen et al. 2018, Table 2): one-step-ahead prediction at any gap."""

    def __init__(self, obs_dim: int, hidden: int = 25, cell: str = "gru", readout_hidden: int = 20):
        super().__init__()
        self.hidden = int(hidden)
        self.cell = _cell(cell, 2 * obs_dim + 1, hidden)
        self.h0 = nn.Parameter(torch.zeros(self.hidden))
        self.readout = mlp([self.hidden + 1, int(readout_hidden), obs_dim], "tanh")

    def _predict(self, h: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        return self.readout(torch.cat([h, gap[:, None]], dim=-1))

    def one_step_predictions(self, obs: IrregularBatch) -> torch.Tensor:
        """``(B, L, d)``: each observation predicted from the ones before it (teacher forcing)."""
        h = self.h0.expand(len(obs), -1)
        last = obs.t.new_zeros(len(obs))
        valid = obs.valid
        predictions = []
        for j in range(obs.t.shape[1]):
            gap = obs.t[:, j] - last
            predictions.append(self._predict(h, gap))
            step = torch.cat([obs.x[:, j] * obs.mask[:, j], obs.mask[:, j], gap[:, None]], dim=-1)
            h = torch.where(valid[:, j, None], self.cell(step, h), h)
            last = torch.where(valid[:, j], obs.t[:, j], last)
        return torch.stack(predictions, dim=1)

    def predict(self, obs: IrregularBatch, times: torch.Tensor, solve: Solve | None = None, feedback: torch.Tensor | None = None) -> torch.Tensor:
        """x at query times ``(B, Q)`` → ``(B, Q, d)``.

        Observations and queries are merged in time order per series. A query is answered from the
        state after every earlier observation and the gap to it; a query with ``feedback`` true
        (extrapolation) is then fed back as if observed, so the RNN rolls forward past its data.
        At equal times a query is answered before the observation is read.
        """
        batch, n_obs, n_query = len(obs), obs.t.shape[1], times.shape[1]
        if feedback is None:
            feedback = torch.zeros_like(times, dtype=torch.bool)
        event_t = torch.cat([obs.t, times], dim=1)
        is_query = torch.cat([torch.zeros_like(obs.t, dtype=torch.bool), torch.ones_like(times, dtype=torch.bool)], dim=1)
        # in time order; at equal times the query comes first
        key = torch.stack([event_t, (~is_query).to(event_t.dtype)], dim=-1)
        order = _lexsort(key)
        rows = torch.arange(batch, device=times.device)[:, None]
        event_t, is_query = event_t[rows, order], is_query[rows, order]
        obs_x = torch.cat([obs.x, obs.x.new_zeros(batch, n_query, obs.dim)], dim=1)[rows, order]
        obs_m = torch.cat([obs.mask, obs.mask.new_zeros(batch, n_query, obs.dim)], dim=1)[rows, order]
        obs_valid = torch.cat([obs.valid, torch.zeros_like(times, dtype=torch.bool)], dim=1)[rows, order]
        fed = torch.cat([torch.zeros_like(obs.t, dtype=torch.bool), feedback], dim=1)[rows, order]
        h = self.h0.expand(batch, -1)
        last = times.new_zeros(batch)
        answers = []
        ones = obs.mask.new_ones(batch, obs.dim)
        for k in range(event_t.shape[1]):
            gap = event_t[:, k] - last
            prediction = self._predict(h, gap)
            answers.append(prediction)
            x_in = torch.where(fed[:, k, None], prediction, obs_x[:, k] * obs_m[:, k])
            m_in = torch.where(fed[:, k, None], ones, obs_m[:, k])
            update = obs_valid[:, k] | fed[:, k]
            h = torch.where(update[:, None], self.cell(torch.cat([x_in, m_in, gap[:, None]], dim=-1), h), h)
            last = torch.where(update, event_t[:, k], last)
        # back to the caller's query order
        inverse = torch.empty_like(order)
        inverse[rows.expand_as(order), order] = torch.arange(order.shape[1], device=order.device).expand_as(order)
        return torch.stack(answers, dim=1)[rows, inverse[:, n_obs:]]


def _lexsort(key: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row by ``key[..., 0]``, then ``key[..., 1]`` (stable)."""
    secondary = torch.argsort(key[..., 1], dim=1, stable=True)
    primary = torch.gather(key[..., 0], 1, secondary)
    return torch.gather(secondary, 1, torch.argsort(primary, dim=1, stable=True))
