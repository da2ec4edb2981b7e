"""Built-in models; importing this package registers them in ``MODELS``."""

from odecli.models.vector_field import MLPVectorField, build_model, count_parameters

__all__ = ["MLPVectorField", "build_model", "count_parameters"]
