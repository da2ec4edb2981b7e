"""``odeint``: torchdiffeq's interface over odecli's registered solvers.

The front end validates everything the user passed (typed errors, never asserts), then hands a
solver one simple problem. Solvers that declare ``native_problem`` (the explicit Runge–Kutta
family) receive a single-tensor state in its own shape, the user's ``func`` untouched and ``t`` in
either direction, so no Python wrapper sits in the hot loop. Every other solver receives a flat
state, a strictly increasing ``t`` and a wrapped ``func`` (``-f(-t, y)`` for decreasing time), as
``odecli.solvers.base`` describes. Tuple states are always flattened into one vector.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from odecli.errors import closest
from odecli.registry import SOLVERS, UnknownNameError
from odecli.solvers import stats
from odecli.solvers.base import output_dtype_accepted
from odecli.solvers.errors import FuncOutputMismatch, InvalidInputError, InvalidTimeGrid, UnknownMethod, UnknownOption

DEFAULT_METHOD = "dopri5"
CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
# Options every method tolerates silently: torchdiffeq passes ``norm`` to fixed-grid methods too.
_SILENT_OPTIONS = frozenset({"norm"})


class IgnoredOptionWarning(UserWarning):
    """An option that exists, but not for the chosen method (torchdiffeq warns the same way)."""


class UnsupportedCallbackWarning(UserWarning):
    """``func`` has a step callback the chosen method never calls."""


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


# --------------------------------------------------------------------------------------------
# Input checks.


def _check_state(y0) -> tuple[bool, tuple[torch.Tensor, ...]]:
    is_tuple = isinstance(y0, (tuple, list))
    tensors = tuple(y0) if is_tuple else (y0,)
    if is_tuple and not tensors:
        raise InvalidInputError("y0 is an empty tuple; pass at least one tensor.")
    for i, tensor in enumerate(tensors):
        where = f"y0[{i}]" if is_tuple else "y0"
        if not isinstance(tensor, torch.Tensor):
            raise InvalidInputError(f"{where} must be a torch.Tensor (or y0 a tuple of them), got {type(tensor).__name__}.")
        if not (tensor.is_floating_point() or tensor.is_complex()):
            raise InvalidInputError(f"{where} has dtype {tensor.dtype}; the state must be floating point (e.g. y0.float()).")
    if is_tuple:
        dtypes = {t.dtype for t in tensors}
        devices = {t.device for t in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise InvalidInputError(f"all tensors of a tuple state must share dtype and device, got {sorted(map(str, dtypes))} on {sorted(map(str, devices))}.")
    return is_tuple, tensors


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


def _check_tolerance(name: str, tol, shapes: Sequence[torch.Size], is_tuple: bool, device, dtype):
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
        return _check_tolerance(name, torch.cat(parts), shapes, False, device, dtype)
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number or a tensor, got {type(tol).__name__}.") from None
    if not value >= 0:
        raise InvalidInputError(f"{name} must be non-negative, got {tol}.")
    return value


# --------------------------------------------------------------------------------------------
# Wrappers for solvers that want the flat, increasing-time problem (and for tuple states).


class _FlatFunc:
    """``func`` on a flat state: unflattens tuples, reverses time, checks the first output once."""

    def __init__(self, func, shapes: list[torch.Size] | None, shape: torch.Size, reverse: bool):
        self.func, self.shapes, self.shape, self.reverse = func, shapes, shape, reverse
        self.sizes = None if shapes is None else [s.numel() for s in shapes]
        self.checked = False
        self.n = sum(self.sizes) if self.sizes is not None else shape.numel()

    def unflatten(self, y: torch.Tensor):
        if self.shapes is None:
            return y.view(self.shape)
        return tuple(part.view(shape) for part, shape in zip(torch.split(y, self.sizes), self.shapes, strict=True))

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.func(-t if self.reverse else t, self.unflatten(y))
        if not self.checked:
            self._check(out, y)
        if self.shapes is None:
            flat = out.reshape(-1)
        else:
            flat = torch.cat([o.reshape(-1) for o in out])
        if flat.dtype != y.dtype:  # an accepted other dtype (base.output_dtype_accepted): the state's, as torchdiffeq
            flat = flat.to(y.dtype)
        return -flat if self.reverse else flat

    def _check(self, out, y: torch.Tensor) -> None:
        if self.shapes is None:
            outs, shapes = (out,), [self.shape]
            if not isinstance(out, torch.Tensor):
                raise FuncOutputMismatch(f"func(t, y) must return a torch.Tensor like y, got {type(out).__name__}.")
        else:
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                got = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
                raise FuncOutputMismatch(f"func(t, y) must return a tuple of {len(self.shapes)} tensors like y, got {got}.")
            outs, shapes = tuple(out), self.shapes
        for i, (o, shape) in enumerate(zip(outs, shapes, strict=True)):
            where = f"output[{i}]" if self.shapes is not None else "output"
            if not isinstance(o, torch.Tensor):
                raise FuncOutputMismatch(f"func(t, y) {where} must be a torch.Tensor, got {type(o).__name__}.")
            if o.shape != shape:
                raise FuncOutputMismatch(f"func(t, y) {where} has shape {tuple(o.shape)}, but the state has shape {tuple(shape)}; they must match.")
            if not output_dtype_accepted(o.dtype, y.dtype):
                raise FuncOutputMismatch(f"func(t, y) {where} has dtype {o.dtype}, but the state has dtype {y.dtype}; return a floating point tensor (complex only for a complex state).")
        self.checked = True


class _ShiftedTime:
    """``func`` at ``t + shift``, where ``shift`` is zero but carries the gradient of ``t[0]``.

    An adaptive solver's steps start at ``t[0]`` and their sizes are constants, so every step moves
    with ``t[0]`` (torchdiffeq's semantics); the solver itself then works on a detached ``t``.
    """

    def __init__(self, func, shift: torch.Tensor):
        self.func, self.shift = func, shift

    def __call__(self, t: torch.Tensor, y):
        return self.func(t + self.shift, y)

    def __getattr__(self, name: str):
        return getattr(self.func, name)  # step callbacks and hints such as ``jacobian_columns``


def _move_outputs_with_times(func, solution, times: torch.Tensor, offsets: torch.Tensor, is_tuple: bool):
    """``y_i + offset_i · func(t_i, y_i)`` for every output but the first: equal in value (the offsets are zero).

    ``offset_i`` is ``t_i - t_0`` as a zero carrying their gradients: the solve's steps moved with ``t_0``
    (``_ShiftedTime``), so an output moves with its own time relative to them, by ``f(t_i, y_i) dt_i``.
    """
    parts = tuple(solution) if is_tuple else (solution,)
    moved = [[part[0]] for part in parts]
    for i in range(1, len(times)):
        slope = func(times[i], tuple(part[i] for part in parts) if is_tuple else parts[0][i])
        for column, part, f in zip(moved, parts, slope if is_tuple else (slope,), strict=True):
            column.append(part[i] + offsets[i] * f.to(part.dtype))
    stacked = tuple(torch.stack(column) for column in moved)
    return stacked if is_tuple else stacked[0]


def _forward_func_attributes(wrapper: _FlatFunc, func, reverse: bool) -> None:
    """What solvers read from ``func`` besides calling it: step callbacks and the Jacobian hint."""
    if getattr(func, "jacobian_columns", None) is not None and wrapper.shapes is None:
        wrapper.jacobian_columns = func.jacobian_columns
    for name in CALLBACK_NAMES:
        callback = getattr(func, name, None)
        if callback is None:
            continue

        def adapted(t0, y0, dt, _callback=callback):
            return _callback(-t0 if reverse else t0, wrapper.unflatten(y0), dt)

        setattr(wrapper, name, adapted)
    for name in CALLBACK_NAMES:  # the adjoint's callbacks travel with the function
        adjoint_name = name + "_adjoint"
        if hasattr(func, adjoint_name):
            setattr(wrapper, adjoint_name, getattr(func, adjoint_name))


def _mixed_rms_norm(sizes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchdiffeq's default for tuple states: the largest RMS over the tuple's tensors."""

    def norm(flat: torch.Tensor) -> torch.Tensor:
        parts = [p for p in torch.split(flat, sizes) if p.numel()]
        if not parts:
            return flat.new_zeros(())
        return torch.stack([torch.linalg.vector_norm(p) / p.numel() ** 0.5 for p in parts]).max()

    return norm


def shape_norm_option(options: dict[str, Any], cls: type, is_tuple: bool, shapes: Sequence[torch.Size], unflatten: Callable) -> None:
    """Make ``options['norm']`` act on a solver's flat state while the user's norm sees the user's shapes.

    As in torchdiffeq, a user norm receives the state as the user shaped it (a tuple, a 0-dim tensor,
    a batch), never the flat vector a solver works on; a tuple state's default norm is the largest
    RMS over its tensors. ``unflatten`` turns the flat state back into the user's structure.
    """
    user_norm = options.get("norm")
    if callable(user_norm) and (is_tuple or len(shapes[0]) != 1):
        options["norm"] = lambda flat, _norm=user_norm: _norm(unflatten(flat))
    elif is_tuple and user_norm is None and "norm" in getattr(cls, "options", ()):
        options["norm"] = _mixed_rms_norm([s.numel() for s in shapes])


def _flip_time_options(options: dict[str, Any]) -> None:
    for key in ("step_t", "jump_t"):
        if key in options and options[key] is not None:
            options[key] = -torch.as_tensor(options[key])
    if options.get("grid_constructor") is not None:
        user_grid = options["grid_constructor"]
        options["grid_constructor"] = lambda func, y0, t: -user_grid(func, y0, -t)


def check_problem(name: str, cls, y0, t, rtol, atol, options) -> tuple[bool, list[torch.Tensor], list[torch.Size], dict[str, Any], Any, Any]:
    """The checks every front end makes: ``(is_tuple, state tensors, their shapes, solver options, rtol, atol)``."""
    is_tuple, tensors = _check_state(y0)
    first = tensors[0]
    _check_times(t, first.device)
    options = _split_options(name, cls, options)
    shapes = [x.shape for x in tensors]
    rtol = _check_tolerance("rtol", rtol, shapes, is_tuple, first.device, first.dtype)
    atol = _check_tolerance("atol", atol, shapes, is_tuple, first.device, first.dtype)
    return is_tuple, tensors, shapes, options, rtol, atol


# --------------------------------------------------------------------------------------------


def odeint(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable | None = None,
):
    """Solve ``dy/dt = func(t, y), y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    A drop-in for ``torchdiffeq.odeint``. Args:
        func: ``func(t, y)`` with ``t`` a 0-d tensor and ``y`` shaped like ``y0`` (or a tuple like it).
        y0: the initial state, a floating tensor of any shape or a tuple of them.
        t: 1-D strictly increasing or decreasing times on y0's device; ``t[0]`` is the initial time.
        rtol, atol: relative and absolute tolerances (numbers, per-element tensors, or a tuple per tuple state).
        method: a registered solver name (``odecli list solvers``); default ``'dopri5'``.
        options: method options as torchdiffeq's (``step_size``, ``first_step``, ``max_num_steps``, ...)
            plus ``controller='pi'`` for adaptive methods, and ``batch_mode='independent'``: per-sample
            step control over the first dimension of ``y0`` (``odecli.solvers.independent``).
        event_fn: ``event_fn(t, y) -> Tensor``; solve until any component crosses zero. ``t`` must
            then hold two times (the start, and any later time giving the direction).

    Returns:
        ``(len(t), *y0.shape)`` tensor (a tuple of them for a tuple state); with ``event_fn``,
        ``(event_t, solution)`` where ``solution`` holds the states at ``t[0]`` and ``event_t``.
    """
    if isinstance(options, Mapping) and "batch_mode" in options:
        from odecli.solvers.independent import check_batch_mode, odeint_independent

        options = dict(options)
        if check_batch_mode(options.pop("batch_mode")) == "independent":
            return odeint_independent(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn)
    name, cls = resolve_method(method)
    is_tuple, tensors, shapes, options, rtol, atol = check_problem(name, cls, y0, t, rtol, atol, options)
    first = tensors[0]
    if event_fn is not None and len(t) != 2:
        raise InvalidTimeGrid(f"with event_fn, t must hold exactly two times (start and a later time for the direction), got {len(t)}.")

    supported = getattr(cls, "callbacks", frozenset())
    unsupported = {n for n in CALLBACK_NAMES if getattr(func, n, None) is not None} - set(supported)
    if unsupported:
        warnings.warn(f"Solver '{name}' does not support callbacks {sorted(unsupported)}.", UnsupportedCallbackWarning, stacklevel=2)

    # Gradients with respect to t, as torchdiffeq's graph gives them; nothing changes when t needs none.
    user_func, user_t, time_shift = func, t, None
    if t.requires_grad and torch.is_grad_enabled():
        if not getattr(cls, "differentiable", True):
            raise InvalidInputError(
                f"method '{name}' integrates outside autograd, so no gradient can reach t; use odeint_adjoint "
                "(it differentiates through the adjoint ODE) or a torch method such as 'dopri5'."
            )
        if event_fn is not None or not getattr(cls, "differentiates_times", False):
            time_shift = (t[0] - t[0].detach()).to(first.dtype)
            func = _ShiftedTime(func, time_shift)
            if event_fn is None and getattr(cls, "differentiates_output_times", False):
                # The solver differentiates each output in its time: t_i as a time after the moved t_0.
                t, time_shift = t.detach() + ((t - t.detach()) - (t[0] - t[0].detach())), None
            else:
                t = t.detach()

    reverse = len(t) > 1 and bool(t[1] < t[0])
    native = getattr(cls, "native_problem", False)
    combined_event = None
    if event_fn is not None:
        from odecli.solvers.events import combine_event_functions

        combined_event = combine_event_functions(event_fn, t[0], tuple(tensors) if is_tuple else first)

    if is_tuple or not native:
        flat_shapes = shapes if is_tuple else None
        wrap_reverse = reverse and not native
        solver_func = _FlatFunc(func, flat_shapes, first.shape, wrap_reverse)
        unflatten = solver_func.unflatten  # bound now: solver_func may be wrapped below (NFE counting)
        _forward_func_attributes(solver_func, func, wrap_reverse)
        state = torch.cat([x.reshape(-1) for x in tensors])
        shape_norm_option(options, cls, is_tuple, shapes, unflatten)
        if combined_event is not None:
            event_inner = combined_event
            combined_event = lambda te, ye: event_inner(-te if wrap_reverse else te, unflatten(ye))  # noqa: E731
        times = t
        if wrap_reverse:
            times = -t
            _flip_time_options(options)
    else:
        solver_func, state, times = func, first, t
        shape_norm_option(options, cls, False, shapes, lambda flat, _shape=first.shape: flat.reshape(_shape))

    if stats.tracking() and torch.is_grad_enabled():
        from odecli.solvers.adjoint import count_direct_backward

        solver_func = count_direct_backward(solver_func)
    solver = cls(solver_func, state, rtol, atol, **options)
    if combined_event is not None:
        if native:
            direction = -1.0 if reverse else 1.0
            event_t, solution = solver.integrate_until_event(times[0], combined_event, direction=direction)
        else:
            event_t, solution = solver.integrate_until_event(times[0], combined_event)
            if reverse:
                event_t = -event_t
        event_t = event_t.to(t)
    else:
        solution = solver.integrate(times)
    stats.record_forward(solver.nfe, solver.n_accepted, solver.n_rejected)

    if not is_tuple and not native:
        solution = solution.reshape(len(solution), *first.shape)
    if is_tuple:
        flat = solution.reshape(len(solution), -1)
        sizes = [s.numel() for s in shapes]
        solution = tuple(part.reshape(len(flat), *shape) for part, shape in zip(torch.split(flat, sizes, dim=1), shapes, strict=True))
    if time_shift is not None:
        if combined_event is not None:  # odeint_event differentiates the event time itself (implicit function theorem)
            output_times, offsets = torch.stack([t[0], event_t.reshape(())]), torch.stack([-time_shift, -time_shift])
        else:
            output_times, offsets = user_t.detach(), (user_t - user_t.detach()).to(first.dtype) - time_shift
        solution = _move_outputs_with_times(user_func, solution, output_times.to(first.dtype), offsets, is_tuple)
    if combined_event is not None:
        return event_t, solution
    return solution


__all__ = ["odeint", "DEFAULT_METHOD", "known_options", "resolve_method", "shape_norm_option", "IgnoredOptionWarning", "UnsupportedCallbackWarning"]
