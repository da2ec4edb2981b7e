"""Training on two processes (torch.distributed.run, gloo, DDP): one set of outputs, the same result as one
process, ranks whose adaptive solves differ in length, resume, a killed rank, and settings refused up front."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from odecli import hydra_bridge
from odecli.data import mnist as M
from odecli.errors import ConfigError
from tests.tasks.tiny_mnist import bar_digits, idx_bytes

ROOT = Path(__file__).resolve().parents[2]
TINY = ["width=8", "data.batch_size=16", "data.val_size=16", "data.eval_batch_size=64", "data.source=dir"]






@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The four idx files, and a plugin that tells the loader their counts and checksums.

    The workers are separate processes, where a monkeypatch cannot reach: the plugin (ODECLI_PLUGINS, which
    they inherit) patches ``odecli.data.mnist.OFFICIAL`` in every process that loads odecli's plugins.
    """
    root = tmp_path_factory.mktemp("ddp")
    directory, plugins = root / "mnist", root / "plugins"
    directory.mkdir()
    plugins.mkdir()
    specs = {}
    for part, array in bar_digits().items():
        official = M.OFFICIAL[part]
        content = idx_bytes(array)
        stored = gzip.compress(content, mtime=0)
        (directory / official.gz_name).write_bytes(stored)
        specs[part] = (official.name, official.kind, len(array), hashlib.md5(stored).hexdigest(), hashlib.sha256(content).hexdigest())
    (plugins / "tiny_mnist.py").write_text(
        "from odecli.data import mnist as M\n"
        f"M.OFFICIAL = {{part: M.IdxFile(*spec) for part, spec in {specs!r}.items()}}\n"
    )
    env = {**os.environ, "ODECLI_PLUGINS": str(plugins), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return directory, env


def odecli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "odecli.cli", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_classify_on_two_processes_writes_one_run_and_matches_one_process(tiny_mnist: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir, env = tiny_mnist
    env = {**env, "ODECLI_OUTPUT_DIR": str(tmp_path / "outputs")}
    settings = ["model=mlp", "epochs=2", f"data.dir={data_dir}", *TINY]
    two = odecli(env, "classify", *settings, "distributed.nproc_per_node=2", f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = odecli(env, "classify", *settings, f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    m1, m2 = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    assert (m2["status"], m2["processes"], m2["steps"]) == ("completed", 2, m1["steps"])  # a batch is the same update on 1 or 2 processes
    assert abs(m2["test_accuracy"] - m1["test_accuracy"]) <= 0.1 and m2["test_accuracy"] >= 0.9
    assert abs(m2["test_loss"] - m1["test_loss"]) < 0.3
    # one set of outputs: one events file, one metrics.json, the checkpoints; nothing written anywhere else
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["ckpt_000000005.pt", "ckpt_000000010.pt"]
    assert not (tmp_path / "outputs").exists() and not (ROOT / "outputs" / "classify" / "two").exists()
    assert "2 processes (DDP), 8 images each per batch" in two.stdout
    assert two.stdout.count("run directory:") == 1  # only rank 0 speaks


DIFFERENT_NFE = '''
import json, os, sys, torch
import torch.distributed as dist
import odecli.solvers
from odecli.solvers import track_stats
from odecli.tasks.distributed import world

solve = getattr(odecli.solvers, sys.argv[1])  # odeint, odeint_adjoint or odeint_checkpoint

dist.init_process_group("gloo")
ranks = world()
torch.manual_seed(0)

class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    def forward(self, t, y):
        return self.net(y)

field = Field()

class Solve(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.field = field
    def forward(self, y0, t1):
        return solve(self.field, y0, torch.tensor([0.0, t1]), rtol=1e-6, atol=1e-6, method="dopri5")[-1]

model = ranks.wrap(Solve())
optimizer = torch.optim.SGD(field.parameters(), lr=0.01)
t1 = 1.0 if ranks.rank == 0 else 8.0  # rank 1 solves over a longer span: many more steps
counts = []
for step in range(4):
    y0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(step + 10 * ranks.rank))
    optimizer.zero_grad()
    with track_stats() as stats:
        loss = model(y0, t1).pow(2).mean()
        loss.backward()
    optimizer.step()
    counts.append(ranks.gather([stats.nfe_forward, stats.nfe_backward]))
weights = ranks.gather([float(p.detach().double().sum()) for p in field.parameters()])
if ranks.is_main:
    print(json.dumps({"counts": counts, "weights": weights}))
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # as odecli's workers leave (odecli/torchrun.py): no interpreter teardown beside gloo's threads
'''


@pytest.mark.parametrize("front_end", ["odeint", "odeint_adjoint", pytest.param("odeint_checkpoint", marks=pytest.mark.slow)])
def test_ranks_whose_solves_take_different_steps_stay_in_step(front_end: str, tmp_path: Path) -> None:
    """DDP syncs gradients only; an adaptive solver that takes more steps on one rank must neither hang nor desynchronise
    (direct backprop, the continuous adjoint's backward solve, the checkpointed steps' recomputation)."""
    from odecli.torchrun import free_port

    script = tmp_path / "different_nfe.py"
    script.write_text(DIFFERENT_NFE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=static", "--master-addr=127.0.0.1",
                f"--master-port={free_port()}", "--local-addr=127.0.0.1", "--max-restarts=0", str(script), front_end]  # fmt: skip
    done = subprocess.run(launcher, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(step[0][0] < step[1][0] and step[0][1] < step[1][1] for step in result["counts"]), result["counts"]
    assert result["weights"][0] == pytest.approx(result["weights"][1], abs=0)  # the same weights on both ranks after 4 updates


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distributed.nproc_per_node=0", "distributed.nproc_per_node must be an integer >= 1"),
        ("distributed.node_rank=1", "distributed.node_rank must be in 0..0"),
        ("distributed.nnodes=2", "add distributed.rdzv_endpoint=HOST:PORT"),
        ("distributed.rdzv_endpoint=nohost", "distributed.rdzv_endpoint must be HOST:PORT"),
        ("distributed.backend=mpi", "distributed.backend must be one of auto, gloo, nccl"),
        ("data.batch_size=15", "data.batch_size=15 cannot be split evenly over 2 processes"),
        ("nonfinite=skip", "nonfinite=skip is for one process"),
    ],
)
def test_bad_settings_are_refused_before_a_run_directory_exists(override: str, message: str, tiny_mnist: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from odecli import torchrun

    data_dir, _ = tiny_mnist
    overrides = ["model=mlp", f"data.dir={data_dir}", "data.verify=false", "data.source=dir", "distributed.nproc_per_node=2", override,
                 f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        torchrun.run("classify", overrides)
    assert not (tmp_path / "run").exists()


def test_tasks_that_train_in_one_process_say_so() -> None:
    from odecli import torchrun

    with pytest.raises(ConfigError, match="odecli fit trains in one process"):
        torchrun.run("fit", ["distributed.nproc_per_node=2"])


def test_a_config_asking_for_processes_outside_the_launcher_is_refused(tmp_path: Path) -> None:
    cfg = hydra_bridge.compose("cnf", ["distributed.nproc_per_node=2"])
    from odecli.tasks.distributed import world

    with pytest.raises(ConfigError, match="not started by the launcher"):
        world(cfg)


def test_the_cli_refuses_multirun_with_several_processes(tiny_mnist: tuple[Path, dict[str, str]]) -> None:
    _, env = tiny_mnist
    done = odecli(env, "classify", "-m", "seed=0,1", "distributed.nproc_per_node=2", timeout=60)
    assert done.returncode == 2 and "without -m" in done.stderr + done.stdout


CNF = ["iters=30", "batch_size=32", "test_samples=200", "entropy_samples=1000", "grid_points=10", "eval_every=1000", "checkpoint_every=5",
       "plot_every=0", "flow_frames=2"]  # fmt: skip


def _worker_pid(run_dir: Path, rank: int) -> int | None:
    """The pid of the worker of ``rank`` whose launcher holds ``run_dir`` (from the environment the launcher gave it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if environ.get("ODECLI_RUN_DIR") == str(run_dir) and environ.get("RANK") == str(rank):
            return int(entry.name)
    return None


@pytest.mark.slow
def test_cnf_killed_rank_ends_the_run_resumably_and_resuming_matches_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    run_dir = tmp_path / "two"
    launcher = subprocess.Popen([sys.executable, "-m", "odecli.cli", "cnf", *CNF, "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}"],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not list((run_dir / "checkpoints").glob("ckpt_*.pt")) and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    victim = _worker_pid(run_dir, 1)
    assert victim is not None and launcher.poll() is None, "the run ended before a rank could be killed"
    os.kill(victim, signal.SIGKILL)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 1, out[-2000:] + err[-2000:]
    message = " ".join(err.split())
    assert f"rank 1 (pid {victim}) was killed by SIGKILL, so the launcher stopped" in message and "resume=true" in message, message
    assert "Traceback" not in err
    assert metrics_of(run_dir)["status"] == "failed"

    resumed = odecli(env, "cnf", *CNF, "distributed.nproc_per_node=2", "resume=true", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing from step" in resumed.stdout
    one = odecli(env, "cnf", *CNF, f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    m1, m2 = metrics_of(tmp_path / "one"), metrics_of(run_dir)
    assert m2["status"] == "completed" and m2["processes"] == 2 and len(m2["nfe_forward_per_rank"]) == 2
    # every rank draws the whole batch and trains on its half: the same NLL as one process, up to the order of sums
    assert m2["nll_test"] == pytest.approx(m1["nll_test"], rel=1e-4)


@pytest.mark.slow
def test_classify_on_two_processes_resumes_where_it_stopped(tiny_mnist: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Each rank's crop generator is checkpointed by rank, so a resumed run ends as an uninterrupted one does."""
    data_dir, env = tiny_mnist
    settings = [f"data.dir={data_dir}", *TINY, "data.random_crop=2", "scheduler=constant", "distributed.nproc_per_node=2"]
    whole = odecli(env, "classify", *settings, "epochs=2", f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = odecli(env, "classify", *settings, "epochs=1", f"hydra.run.dir={tmp_path / 'parts'}")
    assert first.returncode == 0, first.stderr[-3000:]
    rest = odecli(env, "classify", *settings, "epochs=2", "resume=true", f"hydra.run.dir={tmp_path / 'parts'}")
    assert rest.returncode == 0, rest.stderr[-3000:]
    a, b = metrics_of(tmp_path / "whole"), metrics_of(tmp_path / "parts")
    assert (b["status"], b["steps"]) == ("completed", a["steps"])
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-6) and b["nfe_forward_per_rank"] == a["nfe_forward_per_rank"]


@pytest.mark.slow
def test_two_nodes_on_the_loopback_write_one_run(tiny_mnist: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """nnodes=2 as two machines would run it (here both on 127.0.0.1): node 0 writes the run, node 1 nothing."""
    from odecli.torchrun import free_port

    data_dir, env = tiny_mnist
    env = {**env, "ODECLI_OUTPUT_DIR": str(tmp_path / "outputs")}
    shared = ["classify", "model=mlp", "epochs=1", f"data.dir={data_dir}", *TINY, "distributed.nnodes=2", f"distributed.rdzv_endpoint=127.0.0.1:{free_port()}"]
    nodes = [subprocess.Popen([sys.executable, "-m", "odecli.cli", *shared, f"distributed.node_rank={rank}", *([f"hydra.run.dir={tmp_path / 'run'}"] if rank == 0 else [])],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]  # fmt: skip
    results = [node.communicate(timeout=180) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results
    metrics = metrics_of(tmp_path / "run")
    assert (metrics["status"], metrics["processes"]) == ("completed", 2)
    assert not (tmp_path / "outputs").exists()  # node 1 created no run directory of its own
