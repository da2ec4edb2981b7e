"""Registry behaviour and plugin loading (entry points, local files, broken plugins)."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from odecli import registry
from odecli.registry import DuplicateNameError, PluginWarning, Registry, UnknownNameError


def test_register_lookup_and_aliases() -> None:
    things: Registry[object] = Registry("things")

    @things.register("lotka_volterra", aliases=("lotka",), description="predator and prey")
    class LotkaVolterra:
        pass

    assert things.get("lotka") is LotkaVolterra
    assert things.canonical("lotka") == "lotka_volterra"
    assert "lotka" in things and "lotka_volterra" in things
    assert things.names() == ["lotka_volterra"]
    assert things.all_names() == ["lotka", "lotka_volterra"]
    assert things.entry("lotka").description == "predator and prey"
    assert things.entry("lotka").source == registry.BUILTIN


def test_description_defaults_to_first_docstring_line() -> None:
    things: Registry[object] = Registry("things")

    @things.register()
    def spiral():
        """A cubic spiral.

        More text."""

    assert things.entry("spiral").description == "A cubic spiral."


def test_unknown_name_lists_valid_names_and_suggests_closest() -> None:
    things: Registry[object] = Registry("dynamics")
    for name in ("spiral", "lotka_volterra", "nonlinear"):
        things.add(object(), name)
    with pytest.raises(UnknownNameError) as info:
        things.get("lotka_voltera")
    message = str(info.value)
    assert "Did you mean 'lotka_volterra'" in message
    assert "spiral" in message and "nonlinear" in message
    assert isinstance(info.value, KeyError)


def test_duplicate_name_names_both_sources() -> None:
    things: Registry[object] = Registry("solvers")
    things.add(object(), "dopri5", aliases=("dp5",))
    with registry.loading_from("plugin /tmp/mine.py"):
        with pytest.raises(DuplicateNameError) as info:
            things.add(object(), "dopri5")
        with pytest.raises(DuplicateNameError):
            things.add(object(), "other", aliases=("dp5",))
    assert "builtin" in str(info.value) and "plugin /tmp/mine.py" in str(info.value)


def test_glob_listing() -> None:
    things: Registry[object] = Registry("solvers")
    for name in ("rk4", "rk4_classic", "dopri5"):
        things.add(object(), name)
    assert things.names("rk*") == ["rk4", "rk4_classic"]


def test_local_plugin_file_registers_with_its_path(tmp_path: Path, clean_registries: None) -> None:
    (tmp_path / "my_dynamics.py").write_text(
        textwrap.dedent(
            """
            from odecli.registry import DYNAMICS

            @DYNAMICS.register("test_local_plugin_dyn", defaults={"mu": 1.0})
            def make(mu):
                '''A test plugin dynamics.'''
                return mu
            """
        )
    )
    registry.load_plugin_files([tmp_path])
    entry = registry.DYNAMICS.entry("test_local_plugin_dyn")
    assert entry.source == f"plugin {(tmp_path / 'my_dynamics.py').resolve()}"
    assert entry.defaults == {"mu": 1.0}


def test_broken_plugin_warns_once_and_the_rest_keeps_working(tmp_path: Path, clean_registries: None) -> None:
    (tmp_path / "a_broken.py").write_text("this is not python(\n")
    (tmp_path / "b_good.py").write_text(
        "from odecli.registry import SOLVERS\n@SOLVERS.register('test_plugin_solver')\nclass S:\n    '''x'''\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.load_plugin_files([tmp_path])
    plugin_warnings = [w for w in caught if issubclass(w.category, PluginWarning)]
    assert len(plugin_warnings) == 1
    assert "a_broken.py" in str(plugin_warnings[0].message) and "SyntaxError" in str(plugin_warnings[0].message)
    assert "test_plugin_solver" in registry.SOLVERS


def test_plugin_registering_an_existing_name_warns_naming_both(tmp_path: Path, clean_registries: None) -> None:
    registry.SOLVERS.add(object(), "test_taken_name")
    (tmp_path / "dup.py").write_text("from odecli.registry import SOLVERS\nSOLVERS.add(object(), 'test_taken_name')\n")
    with pytest.warns(PluginWarning, match=r"registered twice: by builtin .* and by plugin .*dup\.py"):
        registry.load_plugin_files([tmp_path])


def _write_dist(site: Path, dist: str, module: str, body: str) -> None:
    (site / f"{module}.py").write_text(body)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[odecli.plugins]\n{module} = {module}\n")


def test_entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registries: None) -> None:
    _write_dist(
        tmp_path,
        "odecli_test_ep",
        "odecli_test_ep_mod",
        "from odecli.registry import SOLVERS\n@SOLVERS.register('test_ep_solver', description='from an entry point')\nclass S:\n    pass\n",
    )
    _write_dist(tmp_path, "odecli_test_bad", "odecli_test_bad_mod", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginWarning, match="odecli_test_bad.*missing dependency xyz"):
        registry.load_entry_points()
    entry = registry.SOLVERS.entry("test_ep_solver")
    assert entry.source == "entry point odecli_test_ep:odecli_test_ep_mod"
    sys.modules.pop("odecli_test_ep_mod", None)
