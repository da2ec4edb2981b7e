"""Where odecli writes (a terminal, or a pipe, file or job log) and how configs and tables look there."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console, ConsoleDimensions
from rich.tree import Tree

# Off a terminal without COLUMNS, the width a table may take: in practice "as wide as its content".
UNBOUNDED_WIDTH = 10_000


class PipeFriendlyConsole(Console):
    """A rich console that is rich on a terminal and never hard-wraps anywhere else.

    Off a terminal (a pipe, ``tee``, a file, a cluster job's or CI's log), rich would wrap everything at
    80 columns, mid-word where a path is long. Here, instead, text is soft-wrapped (a message stays one
    line however long, so ``grep`` finds it), and tables take the width of their content, or ``COLUMNS``
    when it is set. Both are decided at each print, since the same console may write to a terminal in
    one process and to a captured stream in another.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._width is not None or self._environ.get("COLUMNS", "").isdigit():
            return size
        return ConsoleDimensions(UNBOUNDED_WIDTH, size.height)

    @property
    def has_a_screen_width(self) -> bool:
        """True on a terminal or with COLUMNS: a table may fill this width. False in a plain pipe."""
        return self.width < UNBOUNDED_WIDTH

    def print(self, *objects: Any, soft_wrap: bool | None = None, **options: Any) -> None:
        """Rich's ``print``; off a terminal, soft-wrapped unless ``soft_wrap=False`` is asked for."""
        super().print(*objects, soft_wrap=(not self.is_terminal) if soft_wrap is None else soft_wrap, **options)


console = PipeFriendlyConsole(highlight=False)
error_console = PipeFriendlyConsole(stderr=True, highlight=False)


def config_tree(cfg: DictConfig, label: str = "config") -> Tree:
    """A rich tree of a config with interpolations resolved where possible."""
    tree = Tree(f"[bold]{label}[/]")
    _add_nodes(tree, cfg)
    return tree


def _add_nodes(tree: Tree, node: Any) -> None:
    for key in node.keys():
        try:
            value = node[key]
        except Exception:  # unresolvable interpolation (e.g. hydra runtime values): show it raw
            value = OmegaConf.to_container(node, resolve=False)[key]
        if isinstance(value, DictConfig) and len(value) > 0:
            _add_nodes(tree.add(f"[bold cyan]{key}[/]"), value)
        elif isinstance(value, ListConfig):
            tree.add(f"[cyan]{key}[/]: {OmegaConf.to_container(value, resolve=False)}")
        else:
            tree.add(f"[cyan]{key}[/]: {value!r}" if isinstance(value, str) else f"[cyan]{key}[/]: {value}")


def print_config(cfg: DictConfig) -> None:
    console.print(config_tree(cfg))
