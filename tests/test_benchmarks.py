"""The benchmark script runs (quick mode) and reports every peer with sane numbers; no timing assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run.py"
PEERS = ("odecli", "torchdiffeq", "torchode")


def _run(tmp_path: Path, *args: str, block_imports: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Run the script in a fresh interpreter (optionally with some peers made unimportable)."""
    output, raw = tmp_path / "results.md", tmp_path / "results.json"
    argv = [str(SCRIPT), "--quick", "--output", str(output), "--json", str(raw), *args]
    code = (
        "import runpy, sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in block_imports)
        + f"sys.argv = {argv!r}\n"
        + f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(raw.read_text()), output.read_text()


# The whole quick benchmark (~75 s on a shared 2-core machine) is slow tier; the fast tier runs the script on one
# problem (test_a_missing_peer_is_skipped_with_a_note).
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("bench"))


@pytest.mark.slow
def test_quick_mode_reports_every_peer_with_sane_numbers(quick):
    report, markdown = quick
    assert report["peers"] == list(PEERS)
    speed = [row for row in report["rows"] if row["group"] == "speed"]
    assert {row["name"] for row in speed} >= {"spiral_b1_rtol0.001", "spiral_b512_rtol0.001", "tanh_2_50_2_direct"}
    for row in speed:
        for peer in PEERS:
            result = row["results"][peer]
            assert result["wall_s"] > 0 and math.isfinite(result["wall_s"]), (row["name"], peer)
            assert result["nfe_forward"] > 0, (row["name"], peer)
            assert 0 <= result["error"] < 10, (row["name"], peer)  # the spiral's amplitude is ~2
        # Same method and tolerances: torchdiffeq and odecli take the same steps.
        nfe = {peer: row["results"][peer]["nfe_forward"] for peer in PEERS}
        assert abs(nfe["odecli"] - nfe["torchdiffeq"]) <= 0.1 * nfe["torchdiffeq"], (row["name"], nfe)
    for row in report["rows"]:
        if row["mode"] != "forward":
            assert row["results"]["odecli"]["nfe_backward"] is not None
    # The markdown has the tables, a speed-up column per peer, the overhead and the targets.
    assert "| spiral_b1_rtol0.001 |" in markdown
    assert "vs torchdiffeq" in markdown and "vs torchode" in markdown
    assert "## Solver overhead" in markdown and "## Targets (issues 4 and 21)" in markdown
    # Both overhead measures for the spiral at batch 1 and 512 and the 2-50-2 net: a solver spends at least its
    # evaluations' time (ratio > 0.5 leaves room for the noise of timing f alone).
    assert set(report["overhead"]) >= {"spiral_b1_rtol0.001", "spiral_b512_rtol0.001", "tanh_2_50_2_forward"}
    for name, kinds in report["overhead"].items():
        assert set(kinds) == {"counted", "strict"}
        for kind, ratios in kinds.items():
            assert set(ratios) == set(PEERS), (name, kind)
            assert all(0.5 < r < 1000 and math.isfinite(r) for r in ratios.values()), (name, kind, ratios)
        assert f"| {name} |" in markdown.split("## Solver overhead")[1]
    assert any(word in markdown for word in ("PASS", "MISS"))


@pytest.mark.slow
def test_fixed_step_memory_rows_compare_direct_and_adjoint(quick):
    report, markdown = quick
    memory = [row for row in report["rows"] if row["group"] == "memory"]
    assert {row["mode"] for row in memory} == {"direct", "adjoint"}
    for row in memory:
        assert "torchode" not in row["results"] or row["results"]["torchode"]["wall_s"] is None  # no rk4 in torchode
        odecli = row["results"]["odecli"]
        assert odecli["nfe_forward"] == 4 * row["steps"]  # rk4: four evaluations per step
        assert odecli["peak_mib"] is None or odecli["peak_mib"] >= 0
    assert "## Fixed-step rk4: peak memory" in markdown


def test_a_missing_peer_is_skipped_with_a_note(tmp_path):
    report, markdown = _run(tmp_path, "--problems", "spiral_b1", block_imports=("torchode",))
    assert report["peers"] == ["odecli", "torchdiffeq"]
    # The eager floor: odecli's own torch calls per evaluation of f (f's excluded), priced at one tiny op each.
    floor = report["eager_floor"]["spiral_b1_rtol0.001"]
    assert 1 < floor["calls_per_eval"] < 20 and 0 < floor["op_us"] < 100
    assert floor["floor"] == pytest.approx(1 + floor["calls_per_eval"] * floor["op_us"] / report["bare_eval_us"]["spiral_b1_rtol0.001"]["strict"])
    assert "| spiral_b1_rtol0.001 |" in markdown.split("Eager floor")[1]
    assert any("torchode is not installed" in note for note in report["notes"])
    assert "torchode is not installed" in markdown
    assert [row["name"] for row in report["rows"]] == ["spiral_b1_rtol0.001"]


@pytest.mark.slow
def test_compile_benchmark_reports_every_peer(tmp_path):
    """benchmarks/compile.py with dynamo's eager backend (tracing only, ~1 min): both tables, every peer, with its NFE."""
    output = tmp_path / "compile.md"
    argv = [sys.executable, str(ROOT / "benchmarks" / "compile.py"), "--repeats", "1", "--backend", "eager", "--output", str(output)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    assert "## Cold" in text and "## Warm" in text
    for peer in ("odecli eager", "odecli compiled (eager)", "torchode eager", "torchode compiled (eager)", "torchdiffeq eager"):
        rows = [line for line in text.splitlines() if line.startswith(f"| {peer} |")]
        assert len(rows) == 2, peer
        cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
        assert math.isfinite(float(cells[1])) and int(cells[5]) > 100  # first solve (s), NFE
