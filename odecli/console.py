"""The terminal odecli writes to, and how configs and tables look there."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.tree import Tree

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


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
