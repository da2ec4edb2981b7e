"""Tasks (what `odecli <command>` runs); importing this package registers them in ``TASKS``.

A task is ``task(cfg, run) -> metrics``: it reads its composed config, writes into ``run``
(TensorBoard, plots, checkpoints) and returns the metrics that end up in ``metrics.json``.
"""

from odecli.tasks import (  # noqa: F401
    classify,
    cnf,
    fit,
    sweep_tol,  # noqa: F401
    vae,  # noqa: F401  (odecli vae: latent ODE vs RNN on irregular series)
)
