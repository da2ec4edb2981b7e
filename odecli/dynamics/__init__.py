"""Built-in 2-D dynamical systems; importing this package registers them in ``DYNAMICS``."""

from odecli.dynamics import matrix, mlp, nonlinear  # noqa: F401
from odecli.dynamics.system import RESERVED_KEYS, System, build_system

__all__ = ["System", "build_system", "RESERVED_KEYS"]
