"""Built-in models; importing this package registers them in ``MODELS``."""

from odecli.models import (
    classifiers,  # noqa: F401  (ODE-Net, ResNet, RK-Net, MLP for odecli classify)
    cnf,  # noqa: F401  (CNF dynamics: ffjord_mlp, planar_cnf)
    latent_ode,  # noqa: F401  (latent_ode and rnn_baseline for odecli vae)
    planar_flow,  # noqa: F401  (planar_nf, the discrete baseline)
)
from odecli.models.vector_field import MLPVectorField, build_model, count_parameters

__all__ = ["MLPVectorField", "build_model", "count_parameters"]
