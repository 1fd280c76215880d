from . import builtin  # noqa: F401  (registers the embedded dataset)
from .shapes import generate_shapes

__all__ = ["generate_shapes"]
