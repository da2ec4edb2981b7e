"""odecli cnf: a continuous normalizing flow fitted to a 2-D distribution by maximum likelihood.

Each iteration draws a batch from the data distribution, solves the augmented system
(z, Δlog p) from the data at t = 0 to the Gaussian base at t = ``t1`` and minimises the negative
log-likelihood (plus optional kinetic-energy and Jacobian-norm regularisers). Evaluation always
uses the exact trace on a fixed held-out sample; where the density is known, the gap between that
NLL and the true entropy says how far the model is from perfect (a perfect model has gap 0).

``objective=kl`` is the paper's density matching (its Figure 4): no data, an unnormalised target
p̃ = exp(−U) (``target=u1..u4``), and the flow — a CNF, or the planar normalizing flow baseline
``model=planar_nf`` — is trained to minimise KL(q‖p) from its own samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from odecli.data import targets
from odecli.data.toy2d import get_density, sample
from odecli.models import build_model, count_parameters
from odecli.models.cnf import CNFDynamics, log_likelihood, standard_normal_log_prob, step_control
from odecli.registry import TASKS
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
from odecli.tasks.driver import Every, Step, TrainingRecord, TrainingTask, data_and_noise_generators, train
from odecli.tracking import Run

EVAL_CHUNK = 2000  # points per evaluation solve: bounds memory of the exact trace


def _mean_log_likelihood(dynamics: CNFDynamics, solve: Any, x: torch.Tensor, t1: float) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([log_likelihood(dynamics, solve, chunk, t1=t1)[0] for chunk in x.split(EVAL_CHUNK)])


def check_config(cfg: DictConfig) -> None:
    """Everything cnf can refuse from its config alone; run before a run directory exists."""
    check_shared_settings(cfg, cfg.solver)
    check_distributed(cfg, batch_keys=["batch_size"])
    build_model(cfg.model, dim=2)  # the model's own settings (widths, activation, ...): building it is cheap


class CNF(TrainingTask):
    """A continuous normalizing flow (or planar NF) fitted to a 2-D density, by maximum likelihood or density matching.

    On several processes every rank draws the same batch and trains on its rows of it under DDP, so the
    run computes what one process would (up to the order of sums); rank 0 evaluates, plots and writes.
    """

    def __init__(self, cfg: DictConfig, run: Run, device: torch.device):
        self.cfg, self.run = cfg, run
        self.ranks = world(cfg)
        seed = int(cfg.seed)
        self.matching = cfg.objective == "kl"
        self.device = device
        if self.matching:  # no data: samples of the model are scored by the target's energy
            self.energy = targets.restricted_energy(str(cfg.target))
            self.log_normalizer = targets.log_normalizer(str(cfg.target))
            self.name, self.limit = str(cfg.target), targets.LIMIT
            self.test_x = torch.randn(int(cfg.test_samples), 2, generator=torch.Generator().manual_seed(seed + 1)).to(device)
        else:
            self.density = get_density(str(cfg.data.name))
            self.name, self.limit = self.density.name, float(cfg.data.get("plot_limit", 4.5))
            self.test_x = sample(self.density.name, int(cfg.test_samples), seed + 1).to(device)

        self.field = self.model = build_model(cfg.model, dim=2).to(device)
        self.regularize = float(cfg.regularize.kinetic) > 0 or float(cfg.regularize.jacobian) > 0
        self.dynamics = CNFDynamics(self.field, trace=str(cfg.trace), noise=str(cfg.noise), regularize=self.regularize)
        self.evaluation = CNFDynamics(self.field, trace="exact")
        self.optimizer = build_optimizer(cfg.optim, self.field.parameters())
        self.scheduler = build_scheduler(cfg.get("scheduler"), self.optimizer)
        self.solve = make_solve(cfg.solver)
        self.t1 = float(cfg.t1)
        self.train_terms = self.ranks.wrap(_TrainTerms(self.dynamics, self.field, self.solve, self.t1, self.matching))  # DDP over several processes
        self.data_generator, self.noise_generator = data_and_noise_generators(seed)
        self.samplers = [self.data_generator, self.noise_generator]
        self.description = f"cnf {self.name}"
        self.iterations = int(cfg.iters)
        self.eval_every, self.plot_every, self.checkpoint_every = Every(cfg.eval_every), Every(cfg.plot_every), Every(cfg.checkpoint_every)

        self.entropy = self.entropy_error = None
        if not self.matching and self.density.log_prob is not None:
            reference = sample(self.density.name, int(cfg.entropy_samples), seed + 4)
            log_p = self.density.log_prob(reference.double())
            self.entropy = float(-log_p.mean())
            self.entropy_error = float(log_p.std() / math.sqrt(len(log_p)))

    def train_step(self, iteration: int) -> Step:
        cfg, ranks, dynamics = self.cfg, self.ranks, self.dynamics
        if self.matching:
            x = torch.randn(int(cfg.batch_size), 2, generator=self.data_generator).to(self.device)
        else:
            x = self.density.sample(int(cfg.batch_size), self.data_generator).float().to(self.device)
        dynamics.sample_noise(x, self.noise_generator)
        x, dynamics.noise = ranks.part(x), None if dynamics.noise is None else ranks.part(dynamics.noise)  # this rank's rows
        if self.matching:
            samples, log_q, (kinetic, jacobian) = self.train_terms(x)
            nll = (log_q + self.energy(samples)).mean()  # KL(q‖p) − log Z
        else:
            log_p, (kinetic, jacobian) = self.train_terms(x)
            nll = -log_p.mean()
        loss = nll + float(cfg.regularize.kinetic) * kinetic + float(cfg.regularize.jacobian) * jacobian
        nll_value = ranks.mean(nll.item())
        scalars = {("loss/kl" if self.matching else "loss/nll"): nll_value}
        if self.regularize:
            scalars |= {"loss/kinetic": kinetic.item(), "loss/jacobian": jacobian.item()}
        return Step(loss, scalars=scalars, progress={"kl" if self.matching else "nll": nll_value})

    def evaluate(self, iteration: int) -> dict[str, float]:
        """KL(q‖p) for density matching; otherwise the test NLL (exact trace) and its gap to the true entropy."""
        run, solve, t1 = self.run, self.solve, self.t1
        if self.matching:  # KL(q‖p) = E_q[log q − log p̃] + log Z, on a fixed set of base samples
            with torch.no_grad():
                x, log_q, _ = _sample_with_log_density(self.evaluation, self.field, solve, self.test_x, t1)
                kl = float((log_q + self.energy(x)).mean()) + self.log_normalizer
            run.scalar("metrics/kl", kl, iteration)
            return {"kl": kl, "log_normalizer": self.log_normalizer}
        with track_stats() as stats:
            nll = float(-_mean_log_likelihood(self.evaluation, solve, self.test_x, t1).mean())
        # the learned flow's own cost: one exact-trace solve, no regulariser states in the error norm
        nfe_test = stats.nfe_forward / math.ceil(len(self.test_x) / EVAL_CHUNK)
        metrics = {"nll_test": nll, "nfe_forward_test": nfe_test}
        run.scalars({"metrics/nll_test": nll, "nfe/test": nfe_test}, iteration)
        if self.entropy is not None:
            metrics["nll_gap"] = nll - self.entropy
            run.scalar("metrics/gap", metrics["nll_gap"], iteration)
        return metrics

    def plot(self, iteration: int) -> None:
        if self.matching:
            _plot_matching(self.run, self.cfg, self.field, self.evaluation, self.solve, self.energy, self.test_x, self.limit, self.t1, iteration)
        else:
            _plot(self.run, self.cfg, self.field, self.evaluation, self.solve, self.name, self.test_x, self.limit, self.t1, iteration)

    def metrics(self, final: Mapping[str, Any], record: TrainingRecord) -> dict[str, Any]:
        cfg = self.cfg
        metrics: dict[str, Any] = {
            **final,
            **record.common_metrics(),
            "iters": self.iterations,
            "params": count_parameters(self.field),
            "data": self.name,
            "objective": str(cfg.objective),
            "model": str(cfg.model.name),
            "trace": str(cfg.trace),
            "solver": str(cfg.solver.method),
            "processes": self.ranks.size,
        }
        if self.entropy is not None:
            metrics |= {"true_entropy": self.entropy, "true_entropy_stderr": self.entropy_error}
        return metrics

    def print_summary(self, metrics: Mapping[str, Any]) -> None:
        _print_summary(self.run, metrics)


@TASKS.register("cnf", validate=check_config, description="Continuous normalizing flows on 2-D densities.",
                examples=("odecli cnf", "odecli cnf data=moons", "odecli cnf trace=hutchinson"))  # fmt: skip
def cnf(cfg: DictConfig, run: Run) -> dict[str, Any]:
    """Train a CNF on ``data``; return test NLL, true entropy and gap (when known) and NFE."""
    return train(CNF, cfg, run)


class _TrainTerms(torch.nn.Module):
    """One training solve as a module, so DistributedDataParallel can wrap it: ``(log p(x), regularisers)``
    for maximum likelihood, ``(x, log q(x), regularisers)`` from base samples for density matching."""

    def __init__(self, dynamics: CNFDynamics, field: Any, solve: Any, t1: float, matching: bool):
        super().__init__()
        self.dynamics, self.field = dynamics, field
        self.solve, self.t1, self.matching = solve, t1, matching

    def forward(self, x: torch.Tensor) -> Any:
        if self.matching:
            return _sample_with_log_density(self.dynamics, self.field, self.solve, x, self.t1)
        return _train_terms(self.dynamics, self.solve, x, self.t1)


def _train_terms(dynamics: CNFDynamics, solve: Any, x: torch.Tensor, t1: float) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    log_p, regularizers = log_likelihood(dynamics, solve, x, t1=t1)
    if regularizers:
        return log_p, (regularizers[0].mean(), regularizers[1].mean())
    zero = x.new_zeros(())
    return log_p, (zero, zero)


def _sample_with_log_density(
    dynamics: CNFDynamics, field: Any, solve: Any, z: torch.Tensor, t1: float
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Push base samples z through the flow: ``(x, log q(x), (kinetic, jacobian))``.

    A CNF runs from the base at t1 back to t = 0, and log q(x) = log N(z) + ∫₀^t1 tr(∂f/∂z) dt;
    a discrete flow (planar NF) gives x and log|det| directly.
    """
    if getattr(field, "discrete", False):
        x, log_det = field(z)
        zero = z.new_zeros(())
        return x, standard_normal_log_prob(z) - log_det, (zero, zero)
    zeros = torch.zeros(len(z), dtype=z.dtype, device=z.device)
    state = (z, zeros) + ((zeros, zeros) if dynamics.regularize else ())
    final = tuple(part[-1] for part in solve(dynamics, state, torch.tensor([t1, 0.0], dtype=z.dtype, device=z.device), **step_control(dynamics)))
    if dynamics.regularize:  # integrated backwards in time: the integrals come out negated
        regularizers = (-final[2].mean(), -final[3].mean())
    else:
        regularizers = (z.new_zeros(()), z.new_zeros(()))
    return final[0], standard_normal_log_prob(z) + final[1], regularizers


def _plot_matching(run: Run, cfg: DictConfig, field: Any, evaluation: CNFDynamics, solve: Any, energy: Any,
                   base: torch.Tensor, limit: float, t1: float, iteration: int) -> None:  # fmt: skip
    from odecli.density_figures import matching_figure

    axis = torch.linspace(-limit, limit, int(cfg.grid_points), device=base.device)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        samples = _sample_with_log_density(evaluation, field, solve, base, t1)[0]
    model_log_density = None if getattr(field, "discrete", False) else _mean_log_likelihood(evaluation, solve, grid, t1).cpu()
    title = f"density matching {cfg.target} · {cfg.model.name} · iteration {iteration}"
    figure = matching_figure(grid.cpu(), -energy(grid).cpu(), samples.cpu(), model_log_density, limit=limit, title=title)
    run.figure("cnf/matching", figure, iteration, filename="matching")


def _plot(run: Run, cfg: DictConfig, field: Any, evaluation: CNFDynamics, solve: Any, name: str,
          test_x: torch.Tensor, limit: float, t1: float, iteration: int) -> None:  # fmt: skip
    from odecli.density_figures import density_figure, flow_figure

    side = int(cfg.grid_points)
    axis = torch.linspace(-limit, limit, side, device=test_x.device)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    log_density = _mean_log_likelihood(evaluation, solve, grid, t1)
    base = torch.randn(len(test_x), 2, generator=torch.Generator().manual_seed(int(cfg.seed) + 5)).to(test_x)
    fractions = torch.linspace(0, 1, int(cfg.flow_frames))
    with torch.no_grad():  # from the base (t = t1) back to the data (t = 0)
        path = solve(field, base, t1 * (1 - fractions).to(test_x))
    title = f"cnf {name} · {cfg.model.name} · {cfg.trace} trace · iteration {iteration}"
    figure = density_figure(test_x.cpu(), grid.cpu(), log_density.cpu(), path[-1].cpu(), limit=limit, title=title)
    run.figure("cnf/density", figure, iteration, filename="density")
    frames = [(float(f), points.cpu()) for f, points in zip(fractions, path, strict=True)]
    run.figure("cnf/flow", flow_figure(frames, limit=limit, title=title), iteration, filename="flow")


def _print_summary(run: Run, metrics: Mapping[str, Any]) -> None:
    rows = [("KL(q‖p) (nats)", f"{metrics['kl']:.4f}")] if "kl" in metrics else [("test NLL (nats)", f"{metrics['nll_test']:.4f}")]
    if "true_entropy" in metrics:
        rows += [("true entropy (nats)", f"{metrics['true_entropy']:.4f} ± {metrics['true_entropy_stderr']:.4f}"),
                 ("gap NLL − entropy", f"{metrics['nll_gap']:.4f}")]  # fmt: skip
    rows += [
        ("NFE forward / iteration", f"{metrics['nfe_forward']:.1f}"),
        ("NFE backward / iteration", f"{metrics['nfe_backward']:.1f}"),
        *([("NFE of the trained flow (test solve)", f"{metrics['nfe_forward_test']:.1f}")] if "nfe_forward_test" in metrics else []),
        ("iterations", str(metrics["iters"])),
        *([("skipped batches (non-finite)", str(metrics["skipped_batches"]))] if metrics["skipped_batches"] else []),
        ("parameters", str(metrics["params"])),
    ]
    title = f"cnf {metrics['objective']} {metrics['data']} · {metrics['model']} · {metrics['solver']} · {metrics['trace']} trace"
    print_metrics_table(run, title, rows)
