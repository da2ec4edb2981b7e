"""Named registries of dynamics, solvers, models and tasks, and the plugin loader that fills them.

A registry maps the names users type (``dopri5``, ``lotka_volterra``) to Python objects. Builtins
register themselves on import; third parties add entries through the ``odecli.plugins`` entry-point
group or a ``.py`` file in a plugins directory. Load order: builtins, entry points, local files.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from odecli.errors import UserError, closest

T = TypeVar("T")

ENTRY_POINT_GROUP = "odecli.plugins"
PLUGINS_ENV = "ODECLI_PLUGINS"

BUILTIN = "builtin"
# Set while a plugin is imported, so its registrations record where they came from.
_loading_source: contextvars.ContextVar[str] = contextvars.ContextVar("loading_source", default=BUILTIN)


class RegistryError(UserError):
    """Base class of registry lookup and registration errors."""


class UnknownNameError(RegistryError, KeyError):
    """A name that is not registered; the message lists the valid names and the closest one."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        match = closest(name, valid)
        hint = f" Did you mean '{match}'?" if match else ""
        super().__init__(f"Unknown {kind} '{name}'.{hint} Valid {kind}: {', '.join(valid)}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DuplicateNameError(RegistryError):
    """A name registered twice; the message names both sources."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with what ``odecli list`` shows about it."""

    name: str
    obj: T
    description: str
    source: str
    aliases: tuple[str, ...] = ()
    defaults: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names → objects for one kind of thing (``kind`` is the plural users see: 'dynamics', 'solvers')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str | None = None,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        description: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        **meta: Any,
    ) -> Callable[[T], T]:
        """Decorator registering a class or factory under ``name`` (default: its ``__name__``).

        ``defaults`` are the keyword arguments a config of this entry starts from; entries with
        defaults become Hydra config options (``dynamics=<name>``) without any YAML.
        """

        def decorator(obj: T) -> T:
            self.add(obj, name or obj.__name__, aliases=aliases, description=description, defaults=defaults, **meta)
            return obj

        return decorator

    def add(
        self,
        obj: T,
        name: str,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        description: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        **meta: Any,
    ) -> Entry[T]:
        source = _loading_source.get()
        for key in (name, *aliases):
            owner = self._aliases.get(key, key if key in self._entries else None)
            if owner is not None:
                raise DuplicateNameError(
                    f"{self.kind} name '{key}' is registered twice: by {self._entries[owner].source} "
                    f"({_qualname(self._entries[owner].obj)}) and by {source} ({_qualname(obj)}). "
                    "Rename one of them."
                )
        if description is None:
            doc = inspect.getdoc(obj) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        entry = Entry(name, obj, description, source, tuple(aliases), dict(defaults) if defaults is not None else None, dict(meta))
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (which may be an alias)."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(self.kind, name, self.names())

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.canonical(name)]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names (aliases excluded), sorted; ``pattern`` is a shell glob like ``rk*``."""
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def all_names(self) -> list[str]:
        """Names and aliases, everything a user may type."""
        return sorted([*self._entries, *self._aliases])

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def remove(self, name: str) -> None:
        """Drop an entry and its aliases (tests and plugin reloads)."""
        entry = self._entries.pop(self.canonical(name))
        for alias in entry.aliases:
            self._aliases.pop(alias, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualname(obj: object) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


DYNAMICS: Registry[Any] = Registry("dynamics")
SOLVERS: Registry[Any] = Registry("solvers")
MODELS: Registry[Any] = Registry("models")
TASKS: Registry[Any] = Registry("tasks")
DENSITIES: Registry[Any] = Registry("densities")  # 2-D data distributions (odecli cnf data=<name>)
REGISTRIES: dict[str, Registry[Any]] = {r.kind: r for r in (DYNAMICS, SOLVERS, MODELS, DENSITIES, TASKS)}

BUILTIN_MODULES = ("odecli.solvers", "odecli.dynamics", "odecli.models", "odecli.data.toy2d", "odecli.tasks")

_loaded_builtins = False
_loaded_plugin_sources: set[str] = set()


@contextlib.contextmanager
def loading_from(source: str) -> Iterator[None]:
    """Registrations inside this block are attributed to ``source``."""
    token = _loading_source.set(source)
    try:
        yield
    finally:
        _loading_source.reset(token)


def load_builtins() -> None:
    global _loaded_builtins
    if not _loaded_builtins:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded_builtins = True


def default_plugin_dirs() -> list[Path]:
    """``$ODECLI_PLUGINS`` (os.pathsep-separated) if set, else ``./plugins``."""
    env = os.environ.get(PLUGINS_ENV)
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path.cwd() / "plugins"]


def load_entry_points() -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        source = f"entry point {dist}:{ep.value}"
        if source in _loaded_plugin_sources:
            continue
        _loaded_plugin_sources.add(source)
        with loading_from(source):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not break odecli
                warnings.warn(f"odecli plugin {source} failed to load and was skipped: {type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)


def load_plugin_files(dirs: list[Path] | None = None) -> None:
    for directory in dirs if dirs is not None else default_plugin_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            source = f"plugin {path.resolve()}"
            if source in _loaded_plugin_sources:
                continue
            _loaded_plugin_sources.add(source)
            module_name = f"odecli_plugin_{path.stem}"
            with loading_from(source):
                try:
                    spec = importlib.util.spec_from_file_location(module_name, path)
                    if spec is None or spec.loader is None:
                        raise ImportError(f"cannot import {path}")
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[module_name] = module
                    spec.loader.exec_module(module)
                except Exception as exc:
                    sys.modules.pop(module_name, None)
                    warnings.warn(f"odecli plugin file {path} failed to load and was skipped: {type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)


class PluginWarning(UserWarning):
    """A plugin could not be loaded; everything else keeps working."""


def load_all(plugin_dirs: list[Path] | None = None) -> None:
    """Builtins, then entry points, then local plugin files. Safe to call repeatedly."""
    load_builtins()
    load_entry_points()
    load_plugin_files(plugin_dirs)
