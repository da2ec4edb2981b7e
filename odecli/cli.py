"""The ``odecli`` command: a thin Typer layer that maps commands to configs and overrides."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup
from typer.main import get_command_from_info
from typer.models import CommandInfo

from odecli import __version__
from odecli.console import console, error_console
from odecli.errors import RunFailed, UserError

EXAMPLES_SEPARATOR = "   ·   "


class TaskCommands(TyperGroup):
    """The hand-written commands (sweep, report, list, config, board) and one command per task config.

    A task's command comes from the task registry: its help is the registered ``description``, its epilog
    the registered ``examples``, and ``data_argument=NAME`` gives it an optional positional data set
    (``odecli classify mnist``; NAME is the default). Built when a command is looked up, so plugins are loaded first.
    """

    tasks_added = False

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if not args or args[0] not in self.commands:  # sweep, report, ... need no task (nor torch imported)
            self.add_task_commands(args)  # paths.plugins_dir=DIR among the arguments may bring a plugin's task
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_task_commands([])
        return super().list_commands(ctx)

    def add_task_commands(self, args: list[str]) -> None:
        """Put a command for each task config before the hand-written ones (once: this group serves one invocation)."""
        from odecli import hydra_bridge

        if self.tasks_added:
            return
        _load_plugins(args)
        self.commands = {**{task: task_command(task) for task in hydra_bridge.primary_configs()}, **self.commands}
        self.tasks_added = True


app = typer.Typer(
    cls=TaskCommands,
    name="odecli",
    help="Experiment runner for Neural ODEs: fit dynamics, sweep solver tolerances, classify digits, "
    "latent ODEs and continuous normalizing flows — configs by Hydra, results in TensorBoard.",
    # Typer's usage errors (stderr): a rich panel on a terminal; elsewhere click's plain text, one unwrapped
    # line in a log ("Error: No such command 'fitt'. Did you mean 'fit'?"). Help follows the same switch.
    rich_markup_mode="rich" if error_console.is_terminal else None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

OVERRIDES_HELP = "Hydra overrides: key=value, group=option, +new_key=value, ~key (e.g. solver=rk4 solver.step_size=0.05)."
Overrides = typer.Argument(None, help=OVERRIDES_HELP, show_default=False)
MultirunOption = typer.Option(False, "--multirun", "-m", help="Hydra multirun: sweep comma-separated values, one run directory per job.")
DebugOption = typer.Option(False, "--debug", help="Show Python tracebacks (same as HYDRA_FULL_ERROR=1).")

EXIT_USER_ERROR = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
# Writing a run's files failed: the user can fix these (space, permissions, path), so no traceback.
UNWRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
              errno.ENOTDIR: "a path component is a file, not a directory", errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded"}  # fmt: skip


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"odecli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Experiment runner for Neural ODEs."""


def _debug_requested(debug: bool) -> bool:
    return debug or os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def _guard(debug: bool, action: Callable[[], Any]) -> Any:
    """Run ``action``; turn known failures into one clear message and an exit code (no traceback)."""
    from odecli.solvers.errors import InvalidInputError, SolverError

    try:
        return action()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        error_console.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if _debug_requested(debug):
            traceback.print_exc()
        if isinstance(exc, (UserError, InvalidInputError)):
            error_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(getattr(exc, "exit_code", EXIT_USER_ERROR)) from None
        if isinstance(exc, RunFailed):
            error_console.print(f"[bold red]run failed:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None
        if isinstance(exc, SolverError):
            error_console.print(f"[bold red]solver failed:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_FAILED) from None
        if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
            error_console.print(
                f"[bold red]error:[/] cannot write {escape(str(exc.filename or 'the run directory'))}: {UNWRITABLE[exc.errno]}. "
                "Free some space or choose a writable place: paths.output_dir=<dir> (or ODECLI_OUTPUT_DIR). "
                "Files written before this point are kept; a run that failed is marked status 'failed' where its metrics.json could be written."
            )
            raise typer.Exit(EXIT_FAILED if exc.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_USER_ERROR) from None
        if not _debug_requested(debug):
            error_console.print(f"[bold red]unexpected error:[/] {type(exc).__name__}: {escape(str(exc))}\n(run again with --debug for the traceback)")
        raise typer.Exit(EXIT_FAILED) from None


def _load_plugins(overrides: list[str]) -> None:
    """Plugins must be registered before configs compose, since they add config options."""
    from odecli.registry import load_all

    chosen = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("paths.plugins_dir=")]
    if chosen:
        os.environ["ODECLI_PLUGINS"] = chosen[-1]
    load_all()


def task_command(task: str) -> click.Command:
    """The ``odecli TASK`` command, as the task's registry entry describes it (a task config without one says so when run)."""
    from odecli.registry import TASKS

    meta = TASKS.entry(task).meta if task in TASKS else {}
    data_default = meta.get("data_argument")
    if data_default is None:

        def command(overrides: list[str] | None = Overrides, multirun: bool = MultirunOption, debug: bool = DebugOption) -> None:
            _run_task(task, overrides, multirun, debug)

    else:

        def command(
            dataset: str = typer.Argument(data_default, help="Data set (`odecli list data` shows each task's choices)."),
            overrides: list[str] | None = Overrides,
            multirun: bool = MultirunOption,
            debug: bool = DebugOption,
        ) -> None:
            extra = list(overrides or [])
            if "=" in dataset:  # `odecli classify model=resnet`: no data set given
                extra.insert(0, dataset)
                dataset = data_default
            # the default data set needs no override, which keeps run directory names short; data=NAME reaches the
            # task's own data group (hydra_bridge.packaged_overrides)
            data = [] if dataset == data_default else [f"data={dataset}"]
            _run_task(task, [*data, *extra], multirun, debug)

    examples = meta.get("examples") or (f"odecli {task}", f"odecli config {task}")
    description = TASKS.entry(task).description if task in TASKS else f"The {task} task (not available in this version)."
    info = CommandInfo(name=task, callback=command, help=description, epilog="Examples:  " + EXAMPLES_SEPARATOR.join(examples))
    return get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=app.rich_markup_mode)


def _run_task(task: str, overrides: list[str] | None, multirun: bool, debug: bool) -> None:
    overrides = list(overrides or [])

    def action() -> tuple[Path, bool] | None:
        from odecli import hydra_bridge, torchrun
        from odecli.errors import ConfigError, TaskNotAvailable
        from odecli.registry import TASKS

        _load_plugins(overrides)
        if task not in TASKS or task not in hydra_bridge.primary_configs():
            available = ", ".join(t for t in TASKS.names() if t in hydra_bridge.primary_configs())
            raise TaskNotAvailable(f"`odecli {task}` is not available yet: the {task} task has not been built in this version. Available: {available}.")
        if torchrun.requested(overrides):
            if multirun:
                raise ConfigError("distributed.nproc_per_node / nnodes > 1 trains one run on several processes; run it without -m (one run at a time).")
            torchrun.run(task, overrides)
            return
        with hydra_bridge.prepare(task, overrides, multirun=multirun) as launch:
            hydra_bridge.start(launch)
        return launch.directory, launch.multirun

    launched = _guard(debug, action)
    if launched is not None and launched[1]:  # a multirun, whichever launcher ran its jobs: the same summary as `odecli sweep`
        _summarise_jobs(launched[0], debug)


@app.command(epilog="Examples:  odecli sweep tol   ·   odecli sweep tol from_run=outputs/fit/<date>/<time>   ·   odecli sweep solvers hydra/launcher=joblib   ·   odecli list sweeps")
def sweep(
    name: str = typer.Argument(..., help="Sweep config name (conf/sweep/NAME.yaml; `odecli list sweeps`)."),
    overrides: list[str] | None = Overrides,
    debug: bool = DebugOption,
) -> None:
    """Run a sweep defined in conf/sweep/NAME.yaml: a Hydra multirun (one job per point) or a sweep task such as `tol`.

    hydra.sweep.dir=DIR sets where it goes (for a sweep task, its run directory). The directory is printed at the end; for a multirun, so is the summary of its jobs (as `odecli report DIR` prints it).
    """

    def action() -> tuple[Path, bool]:
        from odecli import hydra_bridge

        extra = [_quote_path_override(o) for o in overrides or []]
        _load_plugins(extra)
        names = hydra_bridge.sweep_names()
        if name not in names:
            from odecli.errors import did_you_mean

            listing = ", ".join(names) if names else "none are defined yet"
            raise UserError(f"Unknown sweep '{name}'.{did_you_mean(name, names)} Sweeps: {listing}.")
        # Every setting (each swept value too) is checked before the directory is chosen; it is printed and summarised at the end.
        # The config says whether it is a Hydra multirun or a sweep task run as one job in its hydra.sweep.dir.
        with hydra_bridge.prepare(f"sweep/{name}", extra, multirun=None) as launch:
            hydra_bridge.start(launch)
        return launch.directory, launch.multirun

    directory, multirun = _guard(debug, action)
    if not multirun:
        console.print(f"sweep directory: [cyan]{directory}[/]", soft_wrap=True)
        return
    _summarise_jobs(directory, debug)


def _summarise_jobs(directory: Path, debug: bool) -> None:
    """After a multirun: its jobs' table and summary.csv (as `odecli report DIR`), and exit 1 when any job failed."""
    report(directory=directory, debug=debug)
    console.print(f"sweep directory: [cyan]{directory}[/]", soft_wrap=True)
    from odecli.report import find_runs

    failed = [r.path.name for r in find_runs(directory) if r.status != "completed"]
    if failed:
        error_console.print(f"[bold red]{len(failed)} job(s) failed[/] (jobs {', '.join(failed)}); the others went on — see the status and error columns.")
        raise typer.Exit(EXIT_FAILED)


PATH_KEYS = ("from_run", "hydra.sweep.dir", "hydra.run.dir")


def _quote_path_override(override: str) -> str:
    """Quote directory values: run directory names hold '=' and ',' which Hydra's override grammar would split."""
    key, sep, value = override.partition("=")
    if not sep or key.lstrip("+") not in PATH_KEYS or value[:1] in ("'", '"') or not value:
        return override
    return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@app.command(epilog="Examples:  odecli report outputs/fit/multirun/2026-11-23/14-05-09")
def report(
    directory: Path = typer.Argument(
        None, help="A sweep directory (or any directory of runs); default: where runs go, $ODECLI_OUTPUT_DIR or ./outputs."
    ),
    debug: bool = DebugOption,
) -> None:
    """Summarise every run under DIRECTORY (status, overrides, metrics); writes summary.csv and summary.json there."""

    if directory is None:  # where paths.output_dir puts runs unless told otherwise
        directory = Path(os.environ.get("ODECLI_OUTPUT_DIR", "outputs"))

    def action() -> None:
        from odecli.report import find_runs, rows, write_summary

        records = find_runs(directory)
        if not records:
            raise UserError(f"No runs under {directory}: a run is a directory where a task started (it holds metrics.json or run.lock).")
        header, table_rows = rows(directory, records)
        table = Table(title=f"{len(records)} runs in {directory}", title_justify="left")
        for column in header:
            table.add_column(column, overflow="fold")
        for row in table_rows:
            table.add_row(*(_cell(v) for v in row))
        console.print(table)
        csv_path, _ = write_summary(directory, records)
        counts = {s: sum(r.status == s for r in records) for s in sorted({r.status for r in records})}
        console.print(f"{', '.join(f'{n} {s}' for s, n in counts.items())} — summary: {csv_path}")

    _guard(debug, action)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


LIST_KINDS = ("dynamics", "solvers", "models", "densities", "data", "tasks", "sweeps")


@app.command("list", epilog="Examples:  odecli list   ·   odecli list solvers")
def list_(kind: str | None = typer.Argument(None, help=f"One of: {', '.join(LIST_KINDS)}. All when omitted."), debug: bool = DebugOption) -> None:
    """List registered dynamics, solvers, models, densities, tasks and sweeps with their sources, and each task's data choices."""

    def action() -> None:
        from odecli.errors import did_you_mean

        _load_plugins([])
        if kind is not None and kind not in LIST_KINDS:
            raise UserError(f"Unknown kind '{kind}'.{did_you_mean(kind, LIST_KINDS)} Choose one of: {', '.join(LIST_KINDS)}.")
        for each in [kind] if kind else LIST_KINDS:
            console.print(_table(each, fill=console.has_a_screen_width))

    _guard(debug, action)


def _table(kind: str, *, fill: bool) -> Table:
    """The registry of ``kind`` as a table; ``fill``: spread it over a screen's width (in a pipe: as wide as its content)."""
    from odecli import hydra_bridge
    from odecli.registry import REGISTRIES

    table = Table(title=kind, title_justify="left", title_style="bold", expand=fill)
    if kind == "sweeps":
        table.add_column("name", style="cyan", no_wrap=True)
        table.add_column("config", overflow="fold")
        for name in hydra_bridge.sweep_names():
            table.add_row(name, str(hydra_bridge.config_root() / "sweep" / f"{name}.yaml"))
        return table
    if kind == "data":  # each task's own choices for data=NAME, from its own config group
        table.add_column("task", style="cyan", no_wrap=True)
        table.add_column("data=NAME", ratio=3)
        table.add_column("configs", ratio=1, overflow="fold")
        for task, (group, options) in hydra_bridge.data_choices().items():
            table.add_row(task, ", ".join(options), str(hydra_bridge.config_root() / group))
        return table
    registry = REGISTRIES[kind]
    # Only the name never wraps: on an 80-column screen the rest share what is left, description first.
    table.add_column("name", style="cyan", no_wrap=True)
    table.add_column("aliases", ratio=1)
    if kind == "solvers":
        table.add_column("order", justify="center", no_wrap=True)
        table.add_column("kind", ratio=1, min_width=10)
    table.add_column("description", ratio=4)
    table.add_column("source", ratio=1, min_width=7, overflow="fold")
    for entry in registry.entries():
        cells = [entry.name, ", ".join(entry.aliases)]
        if kind == "solvers":
            cells += [str(getattr(entry.obj, "order", "?")), _solver_kind(entry.obj)]
        cells += [escape(entry.description), escape(entry.source)]
        table.add_row(*cells)
    return table


def _solver_kind(solver: Any) -> str:
    """``adaptive`` or ``fixed grid``, then ``implicit``, ``FSAL`` and ``compile`` (options={'compile': True}) where they hold.

    ``?``: the solver does not say.
    """
    adaptive, implicit, fsal = (getattr(solver, flag, None) for flag in ("adaptive", "implicit", "fsal"))
    grid = "?" if adaptive is None else "adaptive" if adaptive else "fixed grid"
    compiles = "compile" in getattr(solver, "options", ())
    return ", ".join([grid, *(["implicit"] if implicit else []), *(["FSAL"] if fsal else []), *(["compile"] if compiles else [])])


@app.command(epilog="Examples:  odecli config fit dynamics=lotka solver=dopri5   ·   odecli config fit --yaml")
def config(
    task: str = typer.Argument(..., help="Task config to compose (fit, classify, vae, cnf, or a plugin's task; `odecli list tasks`)."),
    overrides: list[str] | None = Overrides,
    yaml: bool = typer.Option(False, "--yaml", help="Print the composed YAML instead of the table of keys."),
    debug: bool = DebugOption,
) -> None:
    """Show every key of TASK's config with OVERRIDES applied: its type, value and what it means; runs nothing."""

    def action() -> None:
        from omegaconf import OmegaConf

        from odecli import hydra_bridge

        extra = list(overrides or [])
        _load_plugins(extra)
        cfg = hydra_bridge.compose(task, extra)
        if yaml:
            sys.stdout.write(OmegaConf.to_yaml(cfg, resolve=True))
        else:
            console.print(_keys_table(cfg, task, fill=console.has_a_screen_width))

    _guard(debug, action)


def _keys_table(cfg: Any, task: str, *, fill: bool) -> Table:
    """Every setting of a composed config: key, type, value and the schema's one line about it (odecli/schemas.py)."""
    from odecli.schemas import documented_keys

    table = Table(title=f"odecli {task}: set any key with KEY=VALUE (--yaml: the config as YAML)", title_justify="left", expand=fill)
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("value", ratio=1, overflow="fold")
    table.add_column("meaning", ratio=3)
    for key, type_words, value, meaning in documented_keys(cfg):
        table.add_row(key, type_words, escape(_shown(value)), escape(meaning))
    return table


def _shown(value: Any) -> str:
    """A value as it is typed on the command line: null, true, 1e-06, [1.0, 1.0]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@app.command(epilog="Examples:  odecli board   ·   odecli board --logdir outputs/fit --port 6007")
def board(
    logdir: Path = typer.Option(Path("outputs"), "--logdir", help="Directory of runs (searched recursively for event files)."),
    port: int = typer.Option(6006, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 to share on a network)."),
    debug: bool = DebugOption,
) -> None:
    """Start TensorBoard over run directories."""

    def action() -> None:

        if not logdir.exists():
            raise UserError(f"No such directory: {logdir}. Run a task first (e.g. `odecli fit`) or pass --logdir.")
        console.print(f"TensorBoard on http://{host}:{port} over {logdir} (Ctrl-C to stop)")
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port), "--host", host]
        raise typer.Exit(subprocess.call(command))

    _guard(debug, action)


if __name__ == "__main__":  # pragma: no cover
    app()
