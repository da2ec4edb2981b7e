"""Example plugin: the Van der Pol oscillator as a new dynamics for `odecli fit`.

Copy this file into your own ``plugins/`` directory (or point ``ODECLI_PLUGINS`` / ``paths.plugins_dir``
at a directory holding it) and it is picked up when odecli starts:

    odecli list dynamics              # van_der_pol appears, with this file as its source
    odecli fit dynamics=van_der_pol   # trains on it; no YAML needed
    odecli fit dynamics=van_der_pol dynamics.mu=2.0 dynamics.t_end=20

``defaults`` below become the config node ``dynamics=van_der_pol`` (through Hydra's ConfigStore),
so every parameter is overridable on the command line; a ``conf/dynamics/van_der_pol.yaml`` would
take precedence. The optional ``train`` node suggests fit settings that suit this system.

To ship a plugin as a package instead, expose the module under the entry-point group
``odecli.plugins`` in your pyproject.toml::

    [project.entry-points."odecli.plugins"]
    van_der_pol = "my_package.van_der_pol"
"""

from __future__ import annotations

import torch

from odecli.dynamics.system import System, initial_state, time_grid
from odecli.registry import DYNAMICS


class VanDerPolField(torch.nn.Module):
    """dx/dt = y, dy/dt = mu·(1 − x²)·y − x: a limit cycle that every start spirals onto."""

    def __init__(self, mu: float):
        super().__init__()
        self.mu = float(mu)

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        x, y = state[..., 0], state[..., 1]
        return torch.stack((y, self.mu * (1 - x**2) * y - x), dim=-1)


@DYNAMICS.register(
    "van_der_pol",
    defaults={
        "mu": 1.0,
        "y0": [2.0, 0.0],
        "t_start": 0.0,
        "t_end": 15.0,
        "n_points": 1000,
        "train": {"iters": 1000, "input_transform": "identity", "time_input": False},
    },
)
def van_der_pol(mu: float, y0: list[float], t_start: float, t_end: float, n_points: int) -> System:
    """Van der Pol oscillator (mu sets the nonlinearity; mu = 1 is mildly nonlinear, not stiff)."""
    return System("van_der_pol", VanDerPolField(mu), initial_state(y0), time_grid(t_start, t_end, n_points))
