"""Tasks (what `odecli <command>` runs); importing this package registers them in ``TASKS``.

A task is ``task(cfg, run) -> metrics``: it reads its composed config, writes into ``run``
(TensorBoard, plots, checkpoints) and returns the metrics that end up in ``metrics.json``.
A training task is a ``driver.TrainingTask`` (its models and data, one training step, its evaluation,
its figures, its own checkpoint state) run by ``driver.train``, which owns the loop.

Adding a task is one module and its config, nothing else: the module registers the task with

    @TASKS.register("NAME", validate=check_config,   # what it refuses before a run directory exists
                    description="...",             # the command's help and `odecli list tasks`
                    examples=("odecli NAME ...",),   # the command's help epilog
                    data_argument="mnist",         # optional: `odecli NAME DATA` (the default data set)
                    config=Path(...))              # a plugin's YAML; a shipped task's is conf/NAME.yaml
    def NAME(cfg, run): return train(NameTask, cfg, run)

and `odecli NAME` follows from the registry (odecli/cli.py ``TaskCommands``). A task's config schema
(structured configs) registers beside its config.
"""

from odecli.tasks import (  # noqa: F401
    classify,
    cnf,
    fit,
    sweep_tol,  # noqa: F401
    vae,  # noqa: F401  (odecli vae: latent ODE vs RNN on irregular series)
)
