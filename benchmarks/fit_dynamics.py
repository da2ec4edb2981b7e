"""The README's `odecli fit` table: every dynamics on its defaults, one run each.

    .venv/bin/python benchmarks/fit_dynamics.py [--out benchmarks/fit_dynamics.md] [extra overrides...]

Each row is `odecli fit dynamics=<name>` (plus any extra overrides) in its own run directory
under outputs/fit_dynamics/; the table reads each run's metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DYNAMICS = ("spiral", "random_matrix", "lotka_volterra", "nonlinear", "mlp", "van_der_pol")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "fit_dynamics.md")
    parser.add_argument("--dynamics", nargs="*", default=list(DYNAMICS))
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. solver=bosh3")
    args = parser.parse_args()
    os.environ.setdefault("ODECLI_PLUGINS", str(REPO / "plugins"))

    from odecli import hydra_bridge
    from odecli.registry import load_all

    load_all()
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    rows = []
    for name in args.dynamics:
        run_dir = REPO / "outputs" / "fit_dynamics" / stamp / name
        hydra_bridge.run("fit", [f"dynamics={name}", *args.overrides, f"hydra.run.dir={run_dir}"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append(
            f"| `{name}` | {metrics['iters']} | {metrics['val_mse']:.2e} | {metrics['nfe_forward']:.1f} | "
            f"{metrics['nfe_backward']:.1f} | {metrics['wall_time_s']:.0f} |"
        )
    extra = " ".join(args.overrides)
    text = "\n".join(
        [
            f"`odecli fit dynamics=<name> {extra}`".replace("  ", " ") + f" — {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, {datetime.now():%Y-%m-%d}; command: `python benchmarks/fit_dynamics.py {extra}`".rstrip(),
            "",
            "| dynamics | iterations | val MSE | NFE forward / iter | NFE backward / iter | wall time (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
