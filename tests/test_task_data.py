"""Each task offers only its own data: `data=` lists and accepts that task's options and no other task's."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from odecli import hydra_bridge
from odecli.cli import app
from odecli.errors import ConfigError
from odecli.registry import DENSITIES, load_all

load_all()


def _data_groups() -> dict[str, str]:
    """Task → the config group its `data` choices come from, as the task's defaults list says."""
    with hydra_bridge._initialized():
        packaged = {task: hydra_bridge.packaged_groups(task) for task in hydra_bridge.primary_configs()}
    return {task: groups["data"] for task, groups in packaged.items() if "data" in groups}


DATA_GROUPS = _data_groups()


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (hydra_bridge.config_root() / group).glob("*.yaml"))


CASES = [(task, option) for task, group in DATA_GROUPS.items() for option in _options(group)]


def test_every_task_that_selects_data_has_a_group_of_its_own() -> None:
    for task in hydra_bridge.primary_configs():
        if "name" in hydra_bridge.compose(task).get("data", {}):  # its data is chosen by name (fit's is settings only)
            assert task in DATA_GROUPS, f"{task} selects data from a group shared with other tasks"
    assert len(set(DATA_GROUPS.values())) == len(DATA_GROUPS) and "data" not in DATA_GROUPS.values()
    assert set(_options(DATA_GROUPS["cnf"])) == set(DENSITIES.names())  # every registered density is a cnf option


@pytest.mark.parametrize(("task", "option"), CASES, ids=[f"{t}-data={o}" for t, o in CASES])
def test_data_option_composes_for_its_task(task: str, option: str) -> None:
    assert hydra_bridge.compose(task, [f"data={option}"]).data.name == option


def _assert_refused_with_own_choices(message: str, typed: str, own: list[str]) -> None:
    """``Unknown data 'X'. [Did you mean 'Y'?] Valid choices for data: <own>.`` with Y, if any, among ``own``."""
    assert message.startswith(f"Unknown data '{typed}'.") and message.endswith(
        f" Valid choices for data: {', '.join(own)}."
    ), message
    suggestion = message.removeprefix(f"Unknown data '{typed}'.").split(" Valid choices")[0].strip()
    assert not suggestion or (
        suggestion.startswith("Did you mean '") and suggestion.removeprefix("Did you mean '").removesuffix("'?") in own
    ), message


@pytest.mark.parametrize("task", list(DATA_GROUPS))
def test_unknown_data_lists_exactly_that_tasks_options(task: str) -> None:
    with pytest.raises(ConfigError) as error:
        hydra_bridge.compose(task, ["data=cifar"])
    _assert_refused_with_own_choices(str(error.value), "cifar", _options(DATA_GROUPS[task]))


@pytest.mark.parametrize("task", list(DATA_GROUPS))
def test_another_tasks_data_is_refused_with_only_this_tasks_choices(task: str) -> None:
    own = _options(DATA_GROUPS[task])
    for other in sorted({o for group in DATA_GROUPS.values() for o in _options(group)} - set(own)):
        with pytest.raises(ConfigError) as error:
            hydra_bridge.compose(task, [f"data={other}"])
        _assert_refused_with_own_choices(str(error.value), other, own)


def test_classify_cifar_names_only_classifys_data() -> None:
    result = CliRunner().invoke(app, ["classify", "cifar"])
    assert result.exit_code == 2, result.output
    expected = f"Unknown data 'cifar'. Valid choices for data: {', '.join(_options(DATA_GROUPS['classify']))}."
    assert (
        expected in " ".join(result.output.split())
        and "circles" not in result.output
        and "Traceback" not in result.output
    )


def test_list_data_shows_each_tasks_own_choices() -> None:
    result = CliRunner().invoke(app, ["list", "data"])
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[1]: line
        for line in result.output.splitlines()
        if line.split()[1:2] and line.split()[1] in DATA_GROUPS
    }
    assert set(rows) == set(DATA_GROUPS), result.output
    for task, group in DATA_GROUPS.items():
        assert f" {', '.join(_options(group))} " in rows[task], rows[task]


def test_report_shows_data_as_the_user_typed_it(tmp_path) -> None:
    """Hydra records `density@data=moons`; `odecli report` (and run directory names) say `data=moons`."""
    from odecli.report import find_runs

    with hydra_bridge._initialized():
        recorded = hydra_bridge.packaged_overrides("cnf", ["data=moons", "iters=2"])
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in recorded))
    (job / "metrics.json").write_text('{"status": "completed"}')
    assert recorded[0] != "data=moons" and [r.overrides for r in find_runs(tmp_path)] == [["data=moons", "iters=2"]]
    assert hydra_bridge.override_summary(recorded) == "data=moons,iters=2"


@pytest.mark.parametrize("task", list(DATA_GROUPS))
def test_adding_data_with_plus_says_to_replace_it(task: str) -> None:
    own = _options(DATA_GROUPS[task])
    with pytest.raises(ConfigError) as error:
        hydra_bridge.compose(task, [f"+data={own[0]}"])
    assert f"replace it with data={own[0]} (no '+')" in str(error.value)
    assert str(error.value).endswith(f"Valid choices for data: {', '.join(own)}.")
