"""An opt-in compiled step: ``options={'compile': True}`` runs a method's attempted step under ``torch.compile``.

What is compiled is one function a stepper gives (the explicit pairs: ``attempt_values``, the stages with
``func`` inside, the solution and the error ratio of one attempted step); the loop (step limits, acceptance,
the controller's float arithmetic, dense output) stays in Python around it. Times, step size and tolerances
reach the compiled function as tensors, so a new time span or new tolerances reuse the compiled code;
``torch.compile`` itself caches one graph per field, state shape, dtype, device and grad mode.

When ``func`` cannot be traced into one graph (a Python branch on a tensor's value, a call into scipy, ...) the step
runs eagerly, as without the option, after one ``CompileFallback`` warning for that ``func``. An error the
eager step raises too (``func`` itself failing) is raised as it is, without the warning.

``compile_backend`` chooses ``torch.compile``'s backend: ``'inductor'`` (the default: generated C++/Triton
code behind inductor's C++ wrapper; its first compile takes tens of seconds), or ``'eager'``/``'aot_eager'`` (tracing only: what the fast
tests use), or any name ``torch._dynamo.list_backends()`` offers, or a backend callable.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch

from odecli.solvers.errors import CompileFallback, InvalidInputError

COMPILE_OPTIONS = frozenset({"compile", "compile_backend"})
DEFAULT_BACKEND = "inductor"
# Backends that need no registration (``list_backends`` leaves the debugging ones out by default).
_ALWAYS_AVAILABLE = ("inductor", "eager", "aot_eager")


def check_compile_options(compile: Any, backend: Any) -> tuple[bool, str | Callable]:
    """``(compile, backend)`` as given, checked; ``InvalidInputError`` naming the valid values."""
    if not isinstance(compile, bool):
        raise InvalidInputError(f"options['compile'] must be True or False, got {compile!r}.")
    if backend is None:
        return compile, DEFAULT_BACKEND
    if callable(backend):
        return compile, backend
    valid = sorted(set(_ALWAYS_AVAILABLE) | set(torch._dynamo.list_backends()))
    if not isinstance(backend, str) or backend not in valid:
        raise InvalidInputError(f"options['compile_backend'] must be one of {', '.join(valid)} (or a torch.compile backend callable), got {backend!r}.")
    return compile, backend


class CompiledStep:
    """``function`` under ``torch.compile`` (one graph, ``fullgraph=True``), run eagerly for a ``func`` it cannot trace."""

    def __init__(self, function: Callable, backend: str | Callable):
        self.function = function
        # Inductor's C++ wrapper calls the step's kernels without a Python call each: at the spiral's size the
        # Python wrapper costs about as much as the kernels (benchmarks/compile.md).
        options = {"cpp_wrapper": True} if backend == "inductor" else None
        self.compiled = torch.compile(function, backend=backend, fullgraph=True, options=options)
        # The fields that could not be compiled (weakly: a field's lifetime is its owner's).
        self.eager_fields: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def traceable(self, field: Callable) -> bool:
        """False once ``field`` failed to compile (its solves then take the method's eager path from the start)."""
        owner = field_owner(field)
        return owner is None or owner not in self.eager_fields

    def __call__(self, field: Callable, *args: Any) -> Any:
        """``function(*args)``, compiled unless ``field`` (the solver's ``func``) could not be."""
        owner = field_owner(field)
        if owner is not None and owner in self.eager_fields:
            return self.function(*args)
        try:
            return self.compiled(*args)
        except Exception as failure:  # noqa: BLE001 -- dynamo and its backends raise many types; the eager run below tells them from func's own errors
            result = self.function(*args)  # raises func's own error as it is
            if owner is not None:
                self.eager_fields[owner] = True
            reason = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
            warnings.warn(
                f"options['compile']: the step could not be compiled with this func, so it runs eagerly "
                f"({type(failure).__name__}: {reason[:300]}). Remove what torch.compile cannot trace "
                "(a Python branch on a tensor's value, a call into a library such as scipy) or leave compile off.",
                CompileFallback,
                stacklevel=2,
            )
            return result


def field_owner(field: Callable) -> Any:
    """The object a field's compile state is kept on: the field, or for a bound method its instance (None if neither can be weakly referenced)."""
    owner = getattr(field, "__self__", field)
    try:
        weakref.ref(owner)
    except TypeError:
        return None
    return owner


_compiled_steps: dict[tuple[Callable, Any], CompiledStep] = {}


def compiled_step(function: Callable, backend: str | Callable) -> CompiledStep:
    """The one ``CompiledStep`` of ``function`` for ``backend`` (``torch.compile`` keeps its graphs on it across solves)."""
    key = (function, backend)
    step = _compiled_steps.get(key)
    if step is None:
        step = _compiled_steps[key] = CompiledStep(function, backend)
    return step


__all__ = ["COMPILE_OPTIONS", "DEFAULT_BACKEND", "CompiledStep", "check_compile_options", "compiled_step", "field_owner"]
