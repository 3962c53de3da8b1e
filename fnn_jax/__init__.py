"""fnn_jax: feedback (recurrent) neural networks and fine-tuning in JAX/Flax."""

from fnn_jax import cells, layers, models
from fnn_jax.scan import scan

__all__ = ["cells", "layers", "models", "scan"]
__version__ = "0.1.0"
