"""fnn_jax: feedback (recurrent) neural networks and fine-tuning in JAX/Flax."""

from fnn_jax import cells, interop, layers, models
from fnn_jax.scan import scan

__all__ = ["cells", "interop", "layers", "models", "scan"]
__version__ = "0.1.0"
