"""fnn_jax: feedback (recurrent) neural networks and fine-tuning in JAX/Flax."""

from fnn_jax import cells, interop, layers, models
from fnn_jax.scan import scan

# and, on first use: load, LoadedRun, fit
__all__ = ["cells", "interop", "layers", "models", "scan"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # ``fnn_jax.load`` and ``fit`` pull in the datasets and the training code: only when used.
    if name in ("load", "LoadedRun"):
        from fnn_jax import loading

        return getattr(loading, name)
    if name == "fit":
        from fnn_jax.train import fit

        return fit
    raise AttributeError(f"module 'fnn_jax' has no attribute {name!r}")
