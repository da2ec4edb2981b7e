"""Hydra on our terms: compose configs (inspection, validation, tests) and run tasks in run directories.

Runs go through Hydra's own machinery (run directories, ``.hydra/`` snapshots, multirun,
launcher and sweeper plugins) but errors come back to the CLI as typed exceptions instead of
Hydra's printed tracebacks, and every override is checked first so a typo costs one clear
message rather than a half-created run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.resources
import json
import pickle
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from rich.markup import escape

from odecli.errors import ConfigError, did_you_mean
from odecli.registry import DYNAMICS, MODELS, SOLVERS, TASKS, Registry, load_all
from odecli.report import as_typed, describe_run, find_runs
from odecli.schemas import check_values, register_schemas, schema_fields
from odecli.tracking import LOCK_FILE, SWEEP_LOCK_FILE, DirectoryInUse, DirectoryLock, in_use_message, lock_holder

CONFIG_MODULE = "odecli.conf"
VERSION_BASE = "1.3"
SOLVER_TEMPLATE = "dopri5"

# Registry → config group whose options it provides.
REGISTRY_GROUPS: dict[str, Registry[Any]] = {"dynamics": DYNAMICS, "model": MODELS}


def config_root() -> Path:
    """The directory holding the shipped configs (``conf/`` in a checkout, ``odecli/conf`` when installed)."""
    return Path(str(importlib.resources.files(CONFIG_MODULE)))


def primary_configs() -> list[str]:
    """Task entry configs (``fit``, ``classify``, ...): one per top-level YAML file, and one per task that brings its own."""
    return sorted({p.stem for p in config_root().glob("*.yaml")} | set(task_configs()))


def task_configs() -> dict[str, Path]:
    """The configs registered tasks bring with them (``TASKS.register(name, config=PATH)``: a plugin's task), by task name."""
    load_all()
    return {entry.name: Path(entry.meta["config"]) for entry in TASKS.entries() if entry.meta.get("config") is not None}


def sweep_names() -> list[str]:
    return sorted(p.stem for p in (config_root() / "sweep").glob("*.yaml"))


# ----- registry entries as config options ---------------------------------------------------
_stored: set[tuple[str | None, str]] = set()
_registered_names: tuple[tuple[str, ...], ...] = ()


@functools.cache
def _yaml_node(path: Path) -> Any:
    """A shipped YAML file as plain data (read once per process: the files do not change while odecli runs)."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def register_config_options() -> None:
    """Make every registered dynamics, model and solver selectable as ``group=name`` without YAML.

    Done again only when a registry gained names since the last call (a plugin loaded later).
    """
    from hydra.core.config_store import ConfigStore

    global _registered_names
    load_all()
    plugin_tasks = task_configs()
    names = (*(tuple(registry.all_names()) for registry in (*REGISTRY_GROUPS.values(), SOLVERS)), tuple(plugin_tasks))
    if names == _registered_names:
        return
    store = ConfigStore.instance()
    for group, registry in REGISTRY_GROUPS.items():
        for entry in registry.entries():
            yaml_file = config_root() / group / f"{entry.name}.yaml"
            if yaml_file.exists():  # aliases (dynamics=lotka) select the same YAML content, schema included
                node: Any = _yaml_node(yaml_file)
            elif entry.defaults is not None:  # a plugin's own keys: no schema (its builder checks them)
                node = {"name": entry.name, **entry.defaults}
            else:
                continue
            for option in (entry.name, *entry.aliases):
                _store_once(store, group, option, node)
    for task, path in plugin_tasks.items():  # a plugin task's primary config (a shipped conf/TASK.yaml would win)
        _store_once(store, None, task, _yaml_node(Path(path)))
    template = _yaml_node(config_root() / "solver" / f"{SOLVER_TEMPLATE}.yaml")
    for entry in SOLVERS.entries():
        for option in (entry.name, *entry.aliases):  # the template's schema comes along in its defaults list
            _store_once(store, "solver", option, {**template, "method": entry.name})
    _registered_names = names


def _store_once(store: Any, group: str | None, name: str, node: Any) -> None:
    """Store ``node`` as option ``name`` of ``group`` (``None``: a primary config), once, unless odecli ships that YAML."""
    # A YAML file of the same name takes precedence; storing both would make Hydra treat the
    # stored node as a schema for the file (deprecated automatic schema matching).
    if (config_root() / (group or "") / f"{name}.yaml").exists():
        return
    if (group, name) not in _stored:
        store.store(group=group, name=name, node=node)
        _stored.add((group, name))


# ----- composing ----------------------------------------------------------------------------
@contextlib.contextmanager
def _initialized() -> Iterator[None]:
    """Hydra initialised with odecli's configs; a Hydra already running (a task composing another config,
    as ``sweep tol`` composes fit's) gets its own state back afterwards."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    register_config_options()
    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    if running is not None:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=VERSION_BASE):
            yield
    finally:
        if running is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(running)


def compose(config_name: str, overrides: Sequence[str] = (), *, with_hydra: bool = False, for_run: bool = False) -> DictConfig:
    """The composed config, as a task would see it, its values checked by the schemas; ``ConfigError`` for bad overrides.

    ``for_run``: every value must be set (a config shown by ``odecli config`` may still hold ``???``).
    """
    if config_name not in primary_configs() and not config_name.startswith("sweep/"):
        raise ConfigError(f"Unknown task '{config_name}'.{did_you_mean(config_name, primary_configs())} Tasks: {', '.join(primary_configs())}.")
    with _initialized():
        return _compose_checked(config_name, packaged_overrides(config_name, overrides), with_hydra, for_run)


@functools.cache
def packaged_groups(config_name: str) -> dict[str, str]:
    """Groups that ``config_name``'s defaults place at another package, by package.

    classify → ``{'data': 'images', 'model': 'classifier'}``, cnf → ``{'data': 'density'}``: each task
    keeps its own options in its own group, so ``data=`` offers cnf only densities and classify only
    image sets. Read from the config's defaults list (and those of the configs it starts from, as
    sweep/classify_models starts from /classify), not written down twice; reading the YAML, not asking
    Hydra for the whole defaults tree, saves a CLI call half a second.
    """
    path = config_root() / f"{config_name}.yaml"
    if not path.is_file():  # a plugin task's config (TASKS.register(..., config=PATH))
        path = task_configs().get(config_name, path)
    groups: dict[str, str] = {}
    for entry in _yaml_node(path).get("defaults", []) if path.is_file() else []:
        if isinstance(entry, str) and (config_root() / f"{entry.lstrip('/')}.yaml").is_file():
            groups.update(packaged_groups(entry.lstrip("/")))
        elif isinstance(entry, dict):
            for key in entry:
                group, at, package = str(key).removeprefix("override ").lstrip("/").partition("@")
                if at and not group.startswith("hydra"):
                    groups[package] = group
    return groups


def data_choices() -> dict[str, tuple[str, list[str]]]:
    """Task → (its data group, the options ``data=`` takes), for every task whose data is chosen by name."""
    with _initialized():
        groups = {task: packaged_groups(task).get("data") for task in primary_configs()}
        return {task: (group, group_options(group)) for task, group in groups.items() if group}


def packaged_overrides(config_name: str, overrides: Sequence[str]) -> list[str]:
    """What users type → what Hydra needs: ``data=moons`` → ``density@data=moons`` for cnf (see ``packaged_groups``).

    ``classifier=resnet`` (the group's own name) works too; keys such as ``data.n_obs=50`` and
    overrides already written as ``group@package=option`` pass unchanged.
    """
    groups = packaged_groups(config_name)
    by_name = {**groups, **{group: group for group in groups.values()}}
    packages = {group: package for package, group in groups.items()}
    translated = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in by_name:
            group = by_name[key]
            override = f"{group}@{packages[group]}={value}"
        translated.append(override)
    return translated


def _compose_checked(config_name: str, overrides: list[str], with_hydra: bool, for_run: bool) -> DictConfig:
    from hydra import compose as hydra_compose

    try:
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)
    except Exception as exc:  # Hydra raises several unrelated types; translate them all
        raise _explain_compose_error(config_name, overrides, exc) from exc
    check_values(cfg, require_all=for_run)
    return cfg


def group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(set(loader.get_group_options(group)))


def _explain_compose_error(config_name: str, overrides: list[str], exc: Exception) -> ConfigError:
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(exc, OverrideParseException):  # carries only its message (the grammar's own words)
        return ConfigError(f"Cannot parse override: {str(exc).splitlines()[0]}. Overrides look like key=value, group=option, +new_key=value or ~key.")
    packaged = packaged_groups(config_name)
    for override in overrides:  # +data=moons: data is chosen already, and replaced with data=NAME
        key, _, option = override.partition("=")
        if key.startswith("+") and key.lstrip("+") in packaged:
            package = key.lstrip("+")
            options = group_options(packaged[package])
            return ConfigError(f"{package} is chosen already in {config_name}: replace it with {package}={option} (no '+'). Valid choices for {package}: {', '.join(options)}.")
    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        options = sorted(set(exc.options))
        # Users type the package (data=cifar), not the group Hydra looked in (images/cifar).
        name = {g: package for package, g in packaged.items()}.get(group, group)
        return ConfigError(f"Unknown {name} '{option}'.{did_you_mean(option, options)} Valid choices for {name}: {', '.join(options)}.")
    error = _omegaconf_error(exc)
    # Hydra's error for a config file that does not merge names the file only in its text: "In 'experiment/x': ...".
    in_file = re.match(r"In '([^']+)': ", str(exc))
    if isinstance(error, ValidationError) and error.full_key:
        key = str(error.full_key)
        if isinstance(error.value, str) and _expected_type(error) == "mapping":  # fit's `data` is a block of settings, not a group with options to choose from
            settings = _settings_under(_known_keys(config_name), key)
            return ConfigError(f"{key} is not a choice in {config_name}: it holds settings ({settings}); set one with {key}.KEY=VALUE.")
        message = _wrong_type(key, error)
        return ConfigError(f"{in_file.group(1)} does not fit {config_name}: {message}" if in_file else message)
    if isinstance(error, (ConfigAttributeError, ConfigKeyError)) and error.full_key:
        key = str(error.full_key)
        known = _known_keys(config_name)
        if in_file:
            return ConfigError(f"{in_file.group(1)} sets '{key}', which {config_name} does not have.{did_you_mean(key, known)} `odecli config {config_name}` shows every key.")
        full_key = next((o.split("=", 1)[0].lstrip("+~") for o in overrides if key in o.split("=", 1)[0]), key)
        settings = _settings_under(known, full_key)
        if settings:
            return ConfigError(f"{full_key} is not a choice in {config_name}: it holds settings ({settings}); set one with {full_key}.KEY=VALUE.")
        return ConfigError(
            f"Unknown config key '{full_key}'.{did_you_mean(full_key, known)} "
            f"To add a new key use +{full_key}=VALUE; `odecli config {config_name}` shows every key."
        )
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    return ConfigError(f"Invalid configuration: {first_line}")


def _omegaconf_error(exc: BaseException) -> BaseException | None:
    """The OmegaConf error behind one of Hydra's (it carries the key, the value and the schema)."""
    from omegaconf.errors import OmegaConfBaseException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OmegaConfBaseException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _settings_under(known_keys: Iterable[str], key: str) -> str:
    """The settings a mapping ``key`` holds among a config's ``known_keys``, comma-separated ("" when none or no mapping)."""
    return ", ".join(k for k in known_keys if k.startswith(key + "."))


def _wrong_type(key: str, error: Any) -> ConfigError:
    """A value of the wrong type (or null where a value is needed), named with the type its schema asks for and its default."""
    expected = _expected_type(error)
    default = error.parent_node.get(error.key) if isinstance(error.parent_node, DictConfig) else None
    hint = f" (default {default!r})" if default is not None else ""
    example = f" Example: {key}={default!r}" if default is not None else ""
    if error.value is None:
        return ConfigError(f"{key} cannot be null: it expects {_with_article(expected)}{hint}.{example}")
    return ConfigError(f"{key} expects {_with_article(expected)}{hint}, got {error.value!r}.{example}")


def _expected_type(error: Any) -> str:
    """The type, in words, that the schema of the node refusing a value asks for."""
    if error.object_type is not None and dataclasses.is_dataclass(error.object_type):
        return schema_fields(error.object_type).get(str(error.key), ("a value of another type", ""))[0]
    return "a value of another type"


def _with_article(type_words: str) -> str:
    if type_words.startswith(("list", "mapping", "a value", "any")):
        return type_words
    return ("an " if type_words[0] in "aeiou" else "a ") + type_words


def _known_keys(config_name: str) -> list[str]:
    from hydra import compose as hydra_compose

    cfg = hydra_compose(config_name=config_name, overrides=[])
    return flatten_keys(cfg)


def flatten_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            full = f"{prefix}{key}"
            keys.append(full)
            node = cfg._get_node(key)
            if isinstance(node, DictConfig):
                keys.extend(flatten_keys(node, full + "."))
    return keys


def validate(config_name: str, overrides: Sequence[str], *, multirun: bool) -> DictConfig:
    """Check every override and the task's own value checks (each value of a sweep separately) before anything
    runs; return the first job's config, Hydra's settings included."""
    overrides = list(overrides)
    if not multirun:
        cfg = compose(config_name, overrides, with_hydra=True, for_run=True)
        check_task_config(cfg)
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"Cannot parse override: {str(exc).splitlines()[0]}") from exc
    first: list[str] = []
    variants: list[list[str]] = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.key_or_group.startswith("hydra") or not override.is_sweep_override():
            first.append(text)
            continue
        values = [str(v) for v in override.sweep_string_iterator()]
        prefix = text.split("=", 1)[0]
        first.append(f"{prefix}={values[0]}")
        variants.extend([[f"{prefix}={value}"] for value in values[1:]])
    cfg = compose(config_name, first, with_hydra=True, for_run=True)
    check_task_config(cfg)
    for variant in variants:
        check_task_config(compose(config_name, [o for o in first if o.split("=", 1)[0] != variant[0].split("=", 1)[0]] + variant, for_run=True))
    return cfg


# ----- running ------------------------------------------------------------------------------
@dataclass
class JobFailure:
    """Returned (not raised) by a failed job so Hydra does not print its own traceback.

    A launcher that runs jobs in other processes (joblib, Ray, submitit) pickles it back to the sweep. An
    error that does not survive that trip (one whose ``__init__`` takes other arguments than its message,
    such as ``MaxStepsExceeded``) travels as a ``JobError`` with its type and message instead: unpickling
    the original in the sweep's process would raise there and stop every other job. The job's own record
    (``metrics.json``: status and error) is written before, in the job's process, either way.
    """

    error: BaseException

    def __reduce__(self) -> tuple[Any, tuple[BaseException]]:
        try:
            pickle.loads(pickle.dumps(self.error))
            error = self.error
        except Exception:
            error = JobError(f"{type(self.error).__name__}: {self.error}")
        return (JobFailure, (error,))


class JobError(RuntimeError):
    """A failed job's error as it reached the sweep's process: the original's type name and message."""


def override_summary(overrides: Sequence[str], limit: int = 48) -> str:
    """A short, filesystem-safe digest of the user's overrides for the run directory name."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra", "paths.", "resume"))]
    kept = [as_typed(o) for o in kept]  # classifier@model=resnet reads as model=resnet
    text = ",".join(o.replace("/", "-") for o in kept)
    text = re.sub(r"[^A-Za-z0-9=,._+-]", "-", text)
    return text[:limit].rstrip(",-")


def unique_run_dir(parent: Path, stem: str) -> Path:
    """Create and return ``parent/stem`` or ``parent/stem_2``, ... — atomic, so two runs never share a directory."""
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        candidate = parent / (stem if attempt == 1 else f"{stem}_{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"Could not create a new run directory under {parent}: too many runs with the name {stem}.")


def _user_set(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+").split("=", 1)[0] == key for o in overrides)


def _default_dirs(cfg: DictConfig, overrides: Sequence[str], multirun: bool) -> list[str]:
    """Overrides that put this run (or sweep) into a fresh directory, unless the user chose one."""
    now = datetime.now()
    parent = Path(str(cfg.paths.output_dir)) / str(cfg.task) / ("multirun" if multirun else "")
    parent = parent / now.strftime("%Y-%m-%d")
    summary = override_summary(overrides)
    stem = now.strftime("%H-%M-%S") + (f"_{summary}" if summary else "")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if _user_set(overrides, key):
        return []
    quoted = str(unique_run_dir(parent, stem)).replace("\\", "\\\\").replace("'", "\\'")
    return [f"{key}='{quoted}'"]  # quoted: the summary holds '=' and ','


def _chosen_dir(overrides: Sequence[str], key: str) -> Path | None:
    """The directory an override ``key=DIR`` names (quoted or not), the last one winning."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen = [o for o in overrides if o.lstrip("+").split("=", 1)[0] == key]
    return Path(str(OverridesParser.create().parse_override(chosen[-1]).value())) if chosen else None


def _check_resume_target(config_name: str, overrides: Sequence[str]) -> None:
    """``resume=true`` continues an existing run, so it needs that run's directory."""
    chosen = _chosen_dir(overrides, "hydra.run.dir")
    if chosen is None:
        raise ConfigError(
            f"resume=true continues an earlier run: add hydra.run.dir=<its directory>, e.g. "
            f"`odecli {config_name} resume=true hydra.run.dir=outputs/{config_name}/<date>/<time>` "
            f"(`odecli report outputs/{config_name}` lists runs)."
        )
    if not chosen.is_dir():
        raise ConfigError(f"resume=true: there is no run directory {chosen}; check the path (`odecli report outputs` lists runs).")


def is_multirun_config(cfg: DictConfig) -> bool:
    mode = OmegaConf.select(cfg, "hydra.mode")
    return str(mode).upper().endswith("MULTIRUN")


def check_task_config(cfg: DictConfig) -> None:
    """The task's own checks of its values (``TASKS.register(name, validate=...)``), run before any directory exists."""
    task = OmegaConf.select(cfg, "task", default=None)
    if task is not None and str(task) in TASKS:
        check = TASKS.entry(str(task)).meta.get("validate")
        if check is not None:
            check(cfg)


RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


def launcher_overrides(launcher: DictConfig) -> list[str]:
    """Settings a multirun's launcher plugin (``hydra.launcher`` of the composed config) needs beyond its own defaults (none for most).

    Ray (``hydra/launcher=ray``): hydra-ray-launcher 1.2.2 passes ``object_store_memory=75 MB`` to ``ray.init``
    unless that key is set, and ``ray.init`` refuses any value when it joins a running cluster (an address, or a
    ``ray start`` found on this machine); null lets Ray size the store itself, locally or on a cluster.
    """
    if launcher.get("_target_") == RAY_LAUNCHER and "object_store_memory" not in launcher.ray.init:
        return ["+hydra.launcher.ray.init.object_store_memory=null"]
    return []


@dataclass
class Launch:
    """A run (or multirun) whose every setting was checked, with its directory chosen and locked by this process."""

    config_name: str
    overrides: list[str]
    multirun: bool
    directory: Path
    config: DictConfig | None = None  # a single run's composed config, Hydra's settings included: it runs as it is


@contextlib.contextmanager
def prepare(config_name: str, overrides: Sequence[str] = (), *, multirun: bool | None = False) -> Iterator[Launch]:
    """Check everything, then choose the directory, refuse one that already holds a run, and hold its lock.

    ``multirun=None``: as the config says (``odecli sweep NAME``: a Hydra multirun, or a sweep task run as one
    job in its ``hydra.sweep.dir``). Nothing is created before every check has passed, so a mistake costs one
    message and leaves no directory behind; the lock is held until the ``with`` block ends (``run`` starts Hydra inside it).
    """
    with _initialized():
        overrides = packaged_overrides(config_name, overrides)
    # One composition (per swept value of a multirun) checks every override; it says too whether the config itself asks for a multirun.
    cfg = validate(config_name, overrides, multirun=multirun is not False)
    if multirun is None and not is_multirun_config(cfg):
        swept = [o for o in overrides if _has_sweep_value(o)]
        if swept:
            raise ConfigError(f"{config_name} runs as one job, so it takes one value per key; got {', '.join(swept)}.")
        # a sweep task runs as one job: its sweep directory is its run directory
        overrides = [("hydra.run.dir=" + o.split("=", 1)[1]) if o.split("=", 1)[0] == "hydra.sweep.dir" else o for o in overrides]
    multirun = bool(multirun) or is_multirun_config(cfg)
    resume = bool(OmegaConf.select(cfg, "resume", default=False)) and not multirun
    if resume:
        _check_resume_target(config_name, overrides)
    chosen_dir = _default_dirs(cfg, overrides, multirun)
    overrides = overrides + chosen_dir
    if multirun:
        overrides = overrides + launcher_overrides(cfg.hydra.launcher)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    directory = _chosen_dir(overrides, key)
    if directory is None:  # _default_dirs chooses one unless the user did
        raise ConfigError(f"No run directory was chosen; name one with {key}=DIR.")
    # the directory as users name it (`odecli sweep tol` runs as one job, in its hydra.sweep.dir)
    named = "hydra.sweep.dir" if multirun or config_name.startswith("sweep/") else "hydra.run.dir"
    fix = ("continue it with resume=true, or " if "resume" in cfg and not multirun else "") + f"choose another directory: {named}=DIR"
    lock = _claim(directory, str(cfg.task), fix=fix, multirun=multirun, resume=resume)
    try:
        yield Launch(config_name, overrides, multirun, directory, None if multirun else _placed(cfg, config_name, directory, chosen_dir))
    finally:
        lock.release()


def _placed(cfg: DictConfig, config_name: str, directory: Path, chosen_dir: list[str]) -> DictConfig:
    """The composed config as Hydra's run would have composed it with the directory chosen after composing:
    its run directory, the override that chose it (recorded in .hydra/hydra.yaml) and the job's name."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.run.dir = str(directory)
        cfg.hydra.overrides.hydra.extend(chosen_dir)
        cfg.hydra.job.name = config_name.replace("/", "_")
    return cfg


def _claim(directory: Path, task: str, *, fix: str, multirun: bool, resume: bool) -> DirectoryLock:
    """Lock ``directory`` for this process; without ``resume``, refuse one that already holds a run (or sweep)."""
    from odecli.console import console

    if not resume:  # checked before the lock, whose file would otherwise be the first thing written there
        _refuse_taken(directory, fix=fix, multirun=multirun)
    lock = DirectoryLock(directory, task=task, name=SWEEP_LOCK_FILE if multirun else LOCK_FILE)
    previous = lock.acquire()
    what = f"{previous['task']} run" if previous.get("task") else "run"
    if previous.get("pid") is not None:
        console.print(f"[yellow]note:[/] cleared the stale lock of pid {previous['pid']} (that {what} was killed)", highlight=False)
    if previous and not resume and not multirun:  # another run took the directory between the check and the lock
        lock.release()
        raise DirectoryInUse(f"{directory} was just taken by another {what}; {fix}.")
    return lock


def _refuse_taken(directory: Path, *, fix: str, multirun: bool) -> None:
    if multirun:
        runs = find_runs(directory) if directory.is_dir() else []
        if runs or (directory / "multirun.yaml").exists():
            counts = ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in sorted({r.status for r in runs}))
            runs_text = f"{len(runs)} run{'' if len(runs) == 1 else 's'}" + (f": {counts}" if counts else "")
            raise ConfigError(f"{directory} holds a sweep already ({runs_text}); {fix}.")
        return
    holder = lock_holder(directory)
    if holder is not None:
        raise DirectoryInUse(in_use_message(directory / LOCK_FILE, holder))
    held = describe_run(directory)
    if held is not None:
        raise ConfigError(f"{directory} holds {held}; {fix}.")


def run(config_name: str, overrides: Sequence[str] = (), *, multirun: bool = False) -> Any:
    """Validate, then run the task through Hydra. Returns the metrics (run) or the job returns (multirun)."""
    with prepare(config_name, overrides, multirun=multirun) as launch:
        return start(launch)


def start(launch: Launch) -> Any:
    """Run a prepared ``Launch`` through Hydra's own machinery (run directories, ``.hydra/``, launchers, sweepers)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name=launch.config_name.replace("/", "_"), config_search_path=create_config_search_path(f"pkg://{CONFIG_MODULE}"))
    try:
        if launch.multirun:
            returns = hydra.multirun(config_name=launch.config_name, task_function=_sweep_job, overrides=launch.overrides)
            return [r for batch in returns for r in batch] if returns and isinstance(returns[0], list) else returns
        job = _run_composed(hydra, launch, launch.config) if launch.config is not None else hydra.run(config_name=launch.config_name, task_function=_job, overrides=launch.overrides)
    finally:
        GlobalHydra.instance().clear()
    if isinstance(job.return_value, JobFailure):
        raise job.return_value.error
    return job.return_value


def _run_composed(hydra: Any, launch: Launch, cfg: DictConfig) -> Any:
    """``Hydra.run`` (hydra-core 1.3) on the config ``prepare`` composed and checked, instead of composing it again:
    the same logging set-up, callbacks and ``run_job`` (run directory, ``.hydra/``, HydraConfig)."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    if cfg.hydra.mode is None:
        cfg.hydra.mode = RunMode.RUN
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=launch.config_name)
    job = run_job(hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks), task_function=_job, config=cfg,
                  job_dir_key="hydra.run.dir", job_subdir_key=None, configure_logging=True)  # fmt: skip
    callbacks.on_run_end(config=cfg, config_name=launch.config_name, job_return=job)
    _ = job.return_value  # raises what the job raised (as Hydra.run does)
    return job


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """``{'solver.rtol': 1e-6, ...}`` for TensorBoard's HParams view (lists become strings)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(container, "")
    return flat


def _has_sweep_value(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:
        return False


def _job_return(cfg: DictConfig, metrics: dict[str, Any]) -> Any:
    """A multirun job's return: its metrics, or, when the config names an ``objective``, that one metric
    (what an optimising sweeper such as ``hydra/sweeper=optuna`` minimises; metrics.json keeps them all)."""
    objective = OmegaConf.select(cfg, "objective", default=None)
    if not objective:
        return metrics
    if not isinstance(metrics.get(objective), (int, float)) or isinstance(metrics.get(objective), bool):
        numbers = ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(f"objective '{objective}' is not a number among the {cfg.task} task's metrics ({numbers}).")
    return float(metrics[objective])


def _sweep_job(cfg: DictConfig) -> Any:
    """One job of a multirun: ``_job`` holding its job directory's lock (a single run's is held by ``prepare``)."""
    from hydra.core.hydra_config import HydraConfig

    with DirectoryLock(HydraConfig.get().runtime.output_dir, task=str(cfg.task)):
        return _job(cfg)


FAILED_ATTEMPT_FILE = "metrics.failed_attempt.json"


def _completed_record(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds the metrics of a completed run (a resume continues it)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status") == "completed"
    except (OSError, ValueError, AttributeError):
        return False


def _job(cfg: DictConfig) -> Any:
    """One task execution inside its run directory (also what launcher plugins pickle and ship)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from odecli.console import console, print_config
    from odecli.tracking import Run

    load_all()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    tracked = Run(run_dir, console=console, tensorboard=bool(OmegaConf.select(cfg, "logger.tensorboard", default=True)))
    console.print(f"[bold]odecli {cfg.task}[/] run directory: [cyan]{escape(str(run_dir))}[/]")
    if not multirun:
        print_config(cfg)
    task = TASKS.get(str(cfg.task))
    completed_before = _completed_record(run_dir)
    started = time.time()
    metrics: dict[str, Any] = {}
    status = "failed"
    try:
        metrics = dict(task(cfg, tracked) or {})
        returned = _job_return(cfg, metrics) if multirun else metrics
        status = "completed"
        return returned
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        # Returned, not raised: a failed job is recorded and the rest of a sweep goes on.
        metrics = {"error": f"{type(exc).__name__}: {exc}"}
        if multirun:
            console.print(f"[red]job {hydra_cfg.job.num} failed:[/] {escape(str(exc))}")
        return JobFailure(exc)
    except BaseException:
        # Stopped from outside (SystemExit: a launcher cancelling the sweep, e.g. Ctrl-C on a Ray multirun):
        # the run is resumable from its checkpoints, not failed.
        status = "interrupted"
        raise
    finally:
        metrics.update(status=status, wall_time_s=round(time.time() - started, 3), task=str(cfg.task), run_dir=str(run_dir))
        if status != "completed" and completed_before:
            # A resumed run that did not finish keeps the completed run's metrics.json: nothing written is lost.
            attempt = tracked.write_metrics(metrics, name=FAILED_ATTEMPT_FILE)
            console.print(f"metrics.json of the completed run is kept; this attempt is recorded in {escape(str(attempt))}", soft_wrap=True, highlight=False)
        else:
            tracked.write_metrics(metrics)
        if status == "completed":
            tracked.hparams(flat_config(cfg), metrics)
        tracked.close()
        if status == "completed":
            console.print(f"[green]done[/] in {metrics['wall_time_s']:.1f}s", highlight=False)
            for label, path in (("metrics", run_dir / "metrics.json"), ("plots", tracked.plots_dir), ("events", tracked.tb_dir)):
                console.print(f"  {label:<8}{path}", soft_wrap=True, highlight=False)
            console.print(f"  view with: odecli board --logdir {run_dir}", soft_wrap=True, highlight=False)
