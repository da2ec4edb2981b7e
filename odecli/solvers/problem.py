"""The problem front end: what every front end checks and flattens before a solver sees the problem.

``check_problem`` validates what the user passed (typed errors naming the fix, never asserts) and
returns a ``Problem``. ``StateLayout`` is the one place a state — a tensor of any shape (0-dim
included) or a tuple of tensors — becomes the flat vector solvers work on, and back.
``FlatStateFunc`` is the user's ``func`` on that flat vector. ``odeint``, ``odeint_adjoint``,
``odeint_checkpoint``, ``odeint_event`` and the per-sample mode all start here; this module
imports no stepper and no front end.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from odecli.errors import closest
from odecli.registry import SOLVERS, UnknownNameError
from odecli.solvers.base import CALLBACK_NAMES, output_dtype_accepted
from odecli.solvers.controllers import SegmentedRMS
from odecli.solvers.errors import FuncOutputMismatch, InvalidInputError, InvalidTimeGrid, UnknownMethod, UnknownOption

DEFAULT_METHOD = "dopri5"
# Options every method tolerates silently: torchdiffeq passes ``norm`` to fixed-grid methods too.
_SILENT_OPTIONS = frozenset({"norm"})


class IgnoredOptionWarning(UserWarning):
    """An option that exists, but not for the chosen method (torchdiffeq warns the same way)."""


# --------------------------------------------------------------------------------------------
# The method and its options.

_known_options_cache: dict[tuple, frozenset[str]] = {}


def known_options() -> frozenset[str]:
    """Every option some registered method understands (recomputed only when the registry changes)."""
    entries = SOLVERS.entries()
    key = tuple((entry.name, id(entry.obj)) for entry in entries)
    cached = _known_options_cache.get(key)
    if cached is None:
        names: set[str] = set(_SILENT_OPTIONS)
        for entry in entries:
            names |= set(getattr(entry.obj, "options", ()))
        _known_options_cache.clear()
        cached = _known_options_cache[key] = frozenset(names)
    return cached


def resolve_method(method: str | None) -> tuple[str, type]:
    """The registered name and class for ``method`` (default ``dopri5``), or ``UnknownMethod``."""
    name = DEFAULT_METHOD if method is None else method
    if not isinstance(name, str):
        raise UnknownMethod(f"method must be a string naming a solver, got {type(name).__name__}. Valid methods: {', '.join(SOLVERS.names())}.")
    try:
        canonical = SOLVERS.canonical(name)
    except UnknownNameError as exc:
        raise UnknownMethod(f"{exc} (Run `odecli list solvers` for descriptions.)") from None
    return canonical, SOLVERS.get(canonical)


def _split_options(name: str, cls: type, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidInputError(f"options must be a dict, got {type(options).__name__}.")
    accepted = set(getattr(cls, "options", ()))
    valid = known_options()
    kept, ignored = {}, []
    for key, value in options.items():
        if key in accepted:
            kept[key] = value
        elif key not in valid:
            match = closest(str(key), sorted(valid))
            hint = f" Did you mean '{match}'?" if match else ""
            raise UnknownOption(f"Unknown option '{key}' for method '{name}'.{hint} Options of '{name}': {', '.join(sorted(accepted)) or '(none)'}.")
        elif key not in _SILENT_OPTIONS:
            ignored.append(key)
    if ignored:
        warnings.warn(f"{cls.__name__}: Unexpected arguments {dict((k, options[k]) for k in ignored)}; method '{name}' ignores them.", IgnoredOptionWarning, stacklevel=4)  # _split_options ← check_problem ← odeint ← the caller
    return kept


def find_parameters(module: nn.Module) -> list[torch.Tensor]:
    """The tensors of ``module`` an adjoint computes gradients for (its parameters)."""
    if getattr(module, "_is_replica", False):
        # Inside nn.DataParallel replicas, parameters are plain tensor attributes, not Parameters.
        found = []
        for sub in module.modules():
            found += [v for v in sub.__dict__.values() if torch.is_tensor(v) and v.requires_grad]
        return found
    return list(module.parameters())


# --------------------------------------------------------------------------------------------
# The state: one tensor (any shape, 0-dim included) or a tuple of them, and its flat form.


class StateLayout:
    """The structure of a state (a tensor or a tuple of tensors), to flatten it into one vector and restore it.

    Constructing one checks the state: tensors, floating point (or complex), one dtype and device.
    """

    def __init__(self, y0: torch.Tensor | Sequence[torch.Tensor]):
        self.is_tuple = isinstance(y0, (tuple, list))
        tensors = tuple(y0) if self.is_tuple else (y0,)
        if self.is_tuple and not tensors:
            raise InvalidInputError("y0 is an empty tuple; pass at least one tensor.")
        for i, tensor in enumerate(tensors):
            where = f"y0[{i}]" if self.is_tuple else "y0"
            if not isinstance(tensor, torch.Tensor):
                raise InvalidInputError(f"{where} must be a torch.Tensor (or y0 a tuple of them), got {type(tensor).__name__}.")
            if not (tensor.is_floating_point() or tensor.is_complex()):
                raise InvalidInputError(f"{where} has dtype {tensor.dtype}; the state must be floating point (e.g. y0.float()).")
        if self.is_tuple:
            dtypes = {t.dtype for t in tensors}
            devices = {t.device for t in tensors}
            if len(dtypes) > 1 or len(devices) > 1:
                raise InvalidInputError(f"all tensors of a tuple state must share dtype and device, got {sorted(map(str, dtypes))} on {sorted(map(str, devices))}.")
        self.shapes = [tensor.shape for tensor in tensors]
        self.sizes = [tensor.numel() for tensor in tensors]
        self.dtype, self.device = tensors[0].dtype, tensors[0].device

    def tensors(self, y: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The state's tensors as a tuple (one for a tensor state)."""
        return tuple(y) if self.is_tuple else (y,)

    def flatten(self, y: torch.Tensor | Sequence[torch.Tensor], lead: int = 0) -> torch.Tensor:
        """One tensor ``(*lead_dims, n)`` from a state whose components have ``lead`` leading dims.

        A tensor state is reshaped (a view where it can be), a tuple state concatenated.
        """
        if lead == 0:  # the hot path: FlatStateFunc calls this once per evaluation
            return y.reshape(-1) if not self.is_tuple else torch.cat([tensor.reshape(-1) for tensor in y])
        if not self.is_tuple:
            return y.reshape(*y.shape[:lead], -1)
        return torch.cat([tensor.reshape(*tensor.shape[:lead], -1) for tensor in y], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Inverse of ``flatten`` for any leading dims of ``flat``."""
        if flat.ndim == 1:  # the hot path: FlatStateFunc calls this once per evaluation
            if not self.is_tuple:
                return flat.reshape(self.shapes[0])
            return tuple(part.reshape(shape) for part, shape in zip(torch.split(flat, self.sizes), self.shapes, strict=True))
        lead = flat.shape[:-1]
        # One tuple argument: a 0-dim state without leading dims needs reshape(()), which reshape(*()) is not.
        if not self.is_tuple:
            return flat.reshape((*lead, *self.shapes[0]))
        return tuple(part.reshape((*lead, *shape)) for part, shape in zip(torch.split(flat, self.sizes, dim=-1), self.shapes, strict=True))


class FlatStateFunc:
    """``func`` on a flat state: unflattens it, optionally reverses time, checks the first output once."""

    def __init__(self, func: Callable, layout: StateLayout, reverse: bool):
        self.func, self.layout, self.reverse = func, layout, reverse
        self.checked = False
        # A 1-D tensor state is its own flat form: no reshape in or out (two dispatches per evaluation).
        self.one_dim = not layout.is_tuple and len(layout.shapes[0]) == 1

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        one_dim = self.one_dim and y.ndim == 1
        out = self.func(-t if self.reverse else t, y if one_dim else self.layout.unflatten(y))
        if not self.checked:
            self._check(out, y)
        flat = out if one_dim and out.ndim == 1 else self.layout.flatten(out)
        if flat.dtype != y.dtype:  # an accepted other dtype (base.output_dtype_accepted): the state's, as torchdiffeq
            flat = flat.to(y.dtype)
        return -flat if self.reverse else flat

    def _check(self, out, y: torch.Tensor) -> None:
        layout = self.layout
        if not layout.is_tuple:
            if not isinstance(out, torch.Tensor):
                raise FuncOutputMismatch(f"func(t, y) must return a torch.Tensor like y, got {type(out).__name__}.")
        elif not isinstance(out, (tuple, list)) or len(out) != len(layout.shapes):
            got = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
            raise FuncOutputMismatch(f"func(t, y) must return a tuple of {len(layout.shapes)} tensors like y, got {got}.")
        for i, (o, shape) in enumerate(zip(layout.tensors(out), layout.shapes, strict=True)):
            where = f"output[{i}]" if layout.is_tuple else "output"
            if not isinstance(o, torch.Tensor):
                raise FuncOutputMismatch(f"func(t, y) {where} must be a torch.Tensor, got {type(o).__name__}.")
            if o.shape != shape:
                raise FuncOutputMismatch(f"func(t, y) {where} has shape {tuple(o.shape)}, but the state has shape {tuple(shape)}; they must match.")
            if not output_dtype_accepted(o.dtype, y.dtype):
                raise FuncOutputMismatch(f"func(t, y) {where} has dtype {o.dtype}, but the state has dtype {y.dtype}; return a floating point tensor (complex only for a complex state).")
        self.checked = True


def forward_func_attributes(wrapper: FlatStateFunc, func, reverse: bool) -> None:
    """Give ``wrapper`` what solvers read from ``func`` besides calling it: step callbacks and the Jacobian hint."""
    if getattr(func, "jacobian_columns", None) is not None and not wrapper.layout.is_tuple:
        wrapper.jacobian_columns = func.jacobian_columns
    jacobian_matrix = getattr(func, "jacobian_matrix", None)
    if jacobian_matrix is not None and not wrapper.layout.is_tuple:
        layout = wrapper.layout

        def flat_jacobian(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            """∂f/∂y on the flat state; with reversed time f becomes -f(-t, y), and so does its Jacobian."""
            jac = jacobian_matrix(-t if reverse else t, layout.unflatten(y)).reshape(y.numel(), y.numel())
            return -jac if reverse else jac

        wrapper.jacobian_matrix = flat_jacobian
    for name in CALLBACK_NAMES:
        callback = getattr(func, name, None)
        if callback is None:
            continue

        def adapted(t0, y0, dt, _callback=callback):
            return _callback(-t0 if reverse else t0, wrapper.layout.unflatten(y0), dt)

        setattr(wrapper, name, adapted)
    for name in CALLBACK_NAMES:  # the adjoint's callbacks travel with the function
        adjoint_name = name + "_adjoint"
        if hasattr(func, adjoint_name):
            setattr(wrapper, adjoint_name, getattr(func, adjoint_name))


def shape_norm_option(options: dict[str, Any], cls: type, layout: StateLayout) -> None:
    """Make ``options['norm']`` act on a solver's flat state while the user's norm sees the user's shapes.

    As in torchdiffeq, a user norm receives the state as the user shaped it (a tuple, a 0-dim tensor,
    a batch), never the flat vector a solver works on; a tuple state's default norm is the largest
    RMS over its tensors.
    """
    user_norm = options.get("norm")
    if callable(user_norm) and (layout.is_tuple or len(layout.shapes[0]) != 1):
        options["norm"] = lambda flat, _norm=user_norm: _norm(layout.unflatten(flat))
    elif layout.is_tuple and user_norm is None and "norm" in getattr(cls, "options", ()):
        options["norm"] = SegmentedRMS(layout.sizes)


# --------------------------------------------------------------------------------------------
# Times and tolerances.


def _check_times(t, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise InvalidTimeGrid(f"t must be a 1-D torch.Tensor of times, got {type(t).__name__}; use torch.tensor([...]).")
    if not t.is_floating_point():
        raise InvalidTimeGrid(f"t must be a floating point tensor, got dtype {t.dtype}; use t.float() or torch.linspace.")
    if t.ndim != 1:
        raise InvalidTimeGrid(f"t must be one-dimensional, got shape {tuple(t.shape)}.")
    if len(t) == 0:
        raise InvalidTimeGrid("t is empty; it needs at least the initial time.")
    if t.device != device:
        raise InvalidTimeGrid(f"t is on {t.device} but y0 is on {device}; move t with t.to(y0.device).")
    with torch.no_grad():
        # Strictly monotone with finite ends means finite throughout; a NaN fails every comparison.
        steps = t[1:] - t[:-1]
        monotone = len(t) == 1 or bool((steps > 0).all()) or bool((steps < 0).all())
        if not (monotone and math.isfinite(float(t[0])) and math.isfinite(float(t[-1]))):
            if not bool(torch.isfinite(t).all()):
                raise InvalidTimeGrid("t contains NaN or Inf.")
            where = "repeats a time" if bool((steps == 0).any()) else "changes direction"
            raise InvalidTimeGrid(f"t must be strictly increasing or strictly decreasing, but it {where}: {t.tolist() if len(t) <= 12 else '...'}.")


def check_tolerance(name: str, tol, shapes: Sequence[torch.Size], is_tuple: bool, device, dtype):
    """``rtol``/``atol`` checked (a number or tensor, non-negative, no gradient): a float, or a tensor on ``device``."""
    if isinstance(tol, torch.Tensor):
        if tol.requires_grad:
            raise InvalidInputError(f"{name} cannot require gradient.")
        if bool((tol < 0).any()):
            raise InvalidInputError(f"{name} must be non-negative, got {tol}.")
        return tol.to(device=device, dtype=dtype) if tol.numel() > 1 else float(tol)
    if is_tuple and isinstance(tol, (tuple, list)):
        if len(tol) != len(shapes):
            raise InvalidInputError(f"a tuple {name} needs one value per state tensor ({len(shapes)}), got {len(tol)}.")
        parts = [torch.as_tensor(v, dtype=dtype, device=device).expand(shape.numel()) for v, shape in zip(tol, shapes, strict=True)]
        return check_tolerance(name, torch.cat(parts), shapes, False, device, dtype)
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number or a tensor, got {type(tol).__name__}.") from None
    if not value >= 0:
        raise InvalidInputError(f"{name} must be non-negative, got {tol}.")
    return value


# --------------------------------------------------------------------------------------------
# The checked problem.


@dataclass(frozen=True)
class Problem:
    """A checked problem: the state's layout and tensors, the method's own options, and the tolerances.

    ``rtol``/``atol`` are floats, or tensors on the state's device and dtype (a tuple tolerance is
    one flat tensor over the flattened state).
    """

    layout: StateLayout
    tensors: tuple[torch.Tensor, ...]
    options: dict[str, Any]
    rtol: float | torch.Tensor
    atol: float | torch.Tensor

    @property
    def is_tuple(self) -> bool:
        return self.layout.is_tuple

    @property
    def first(self) -> torch.Tensor:
        """The state's first (for a tensor state: only) tensor."""
        return self.tensors[0]


def check_problem(name: str, cls: type, y0, t, rtol, atol, options) -> Problem:
    """The checks every front end makes, for method ``name`` (class ``cls``): a ``Problem``, or a typed error."""
    layout = StateLayout(y0)
    _check_times(t, layout.device)
    options = _split_options(name, cls, options)
    rtol = check_tolerance("rtol", rtol, layout.shapes, layout.is_tuple, layout.device, layout.dtype)
    atol = check_tolerance("atol", atol, layout.shapes, layout.is_tuple, layout.device, layout.dtype)
    return Problem(layout, layout.tensors(y0), options, rtol, atol)


__all__ = ["DEFAULT_METHOD", "IgnoredOptionWarning", "known_options", "resolve_method", "find_parameters", "StateLayout",
           "FlatStateFunc", "forward_func_attributes", "shape_norm_option", "Problem", "check_problem"]
