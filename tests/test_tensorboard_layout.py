"""What TensorBoard shows of a finished run: curves first, final metrics in the HParams dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from odecli import hydra_bridge
from odecli.tracking import FIGURE_SECTION, FINAL_SECTION

TINY = [
    "dynamics=spiral",
    "iters=4",
    "eval_every=2",
    "plot_every=0",
    "data.batch_size=4",
    "dynamics.n_points=100",
    "threads=1",
]


def tensorboard_order(tag: str) -> list[tuple[int, float]]:
    """Sort key of TensorBoard's ``compareTagNames`` (both dashboards order sections and cards by it):
    runs of digits compare by value, '/' and digits come before every other character, the rest by character code."""
    return [
        (0, float(number)) if number else (0, -1.0) if char == "/" else (1, ord(char))
        for number, char in re.findall(r"(\d+)|(.)", tag)
    ]


def events(run_dir: Path) -> tuple[dict[str, list[float]], dict[str, bytes]]:
    """Scalar values by tag, and the HParams plugin's records by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    return scalars, accumulator.PluginTagToContent("hparams")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("board") / "fit"
    hydra_bridge.run("fit", [*TINY, f"hydra.run.dir={run_dir}"])
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_sorted_sections_start_with_the_curves_and_end_with_the_final_numbers(finished: tuple[Path, dict]) -> None:
    scalars, _ = events(finished[0])
    tags = sorted(scalars, key=tensorboard_order)
    sections = list(dict.fromkeys(tag.split("/", 1)[0] for tag in tags))
    assert sections == ["loss", "nfe", "time", FINAL_SECTION], sections  # TensorBoard opens the first two
    assert "hparams" not in sections
    curves = [tag for tag in tags if not tag.startswith(f"{FINAL_SECTION}/")]
    assert all(len(scalars[tag]) > 1 for tag in curves), {tag: len(scalars[tag]) for tag in curves}
    assert tags == curves + [tag for tag in tags if tag not in curves]  # every one-point chart after every curve


def test_time_series_page_opens_on_the_curves_not_the_figures(finished: tuple[Path, dict]) -> None:
    """TensorBoard's default page mixes scalar and image sections in one order; figures sort after loss and nfe."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(finished[0] / "tb"), size_guidance={"images": 0})
    accumulator.Reload()
    images = accumulator.Tags()["images"]
    assert images and all(tag.startswith(f"{FIGURE_SECTION}/") for tag in images), images
    scalars, _ = events(finished[0])
    tags = sorted([*scalars, *images], key=tensorboard_order)
    sections = list(dict.fromkeys(tag.split("/", 1)[0] for tag in tags))
    assert sections[:2] == ["loss", "nfe"], sections


def test_final_metrics_reach_the_hparams_dashboard(finished: tuple[Path, dict]) -> None:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    run_dir, metrics = finished
    scalars, records = events(run_dir)
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(content) for tag, content in records.items()}
    experiment = data["_hparams_/experiment"].experiment
    shown = {info.display_name: info.name.tag for info in experiment.metric_infos}
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(shown) == set(numbers) and {"val_mse", "wall_time_s", "params"} <= set(shown)
    for name, tag in shown.items():  # the dashboard reads each metric's value from its scalar
        assert scalars[tag] == [pytest.approx(numbers[name])], name
    start = data["_hparams_/session_start_info"].session_start_info
    assert start.hparams["solver.method"].string_value == "dopri5" and start.hparams["iters"].number_value == 4
    assert start.group_name == str(run_dir)  # one row per run in the HParams table, even for equal configs
    assert data["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS
