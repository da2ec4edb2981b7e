"""`odecli board` serves a real TensorBoard that shows a fit run's scalars and images."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from odecli import hydra_bridge


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow  # starts a real TensorBoard server (~20 s)
def test_board_shows_a_runs_scalars_and_images(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "fit"
    hydra_bridge.run("fit", ["dynamics=spiral", "iters=2", "eval_every=1", "plot_every=0", "data.batch_size=4", "dynamics.n_points=100", f"hydra.run.dir={run_dir}"])
    port = _free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "odecli.cli", "board", "--logdir", str(tmp_path / "runs"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ}, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 90
        scalars: dict = {}
        while time.time() < deadline:
            try:
                scalars = _get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
                if scalars:
                    break
            except OSError:
                pass
            assert board.poll() is None, board.stdout.read().decode() if board.stdout else ""
            time.sleep(0.5)
        run_name = "fit/tb"
        assert {"loss/train", "loss/val", "nfe/forward", "nfe/backward", "time/step"} <= set(scalars[run_name]), scalars
        images = _get(f"http://127.0.0.1:{port}/data/plugin/images/tags")
        assert "plots/fit/dynamics" in images[run_name]

        def points(tag: str) -> list[int]:  # [wall_time, step, value] per point
            return [int(p[1]) for p in _get(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run={run_name}&tag={tag}")]

        assert points("loss/train") == [1, 2] and points("nfe/forward") == [1, 2]
        assert points("loss/val") == [0, 1, 2], "evaluated before training and after each iteration"
        shown = _get(f"http://127.0.0.1:{port}/data/plugin/images/images?run={run_name}&tag=plots/fit/dynamics&sample=0")
        assert [int(image["step"]) for image in shown] == [2], "one figure, at the end (plot_every=0)"
    finally:
        os.killpg(board.pid, signal.SIGTERM)
        board.wait(timeout=30)
