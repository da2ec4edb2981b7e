"""Tasks (what `odecli <command>` runs); importing this package registers them in ``TASKS``.

A task is ``task(cfg, run) -> metrics``: it reads its composed config, writes into ``run``
(TensorBoard, plots, checkpoints) and returns the metrics that end up in ``metrics.json``.
"""

from odecli.tasks import classify, cnf, fit  # noqa: F401
from odecli.tasks import sweep_tol  # noqa: F401
