"""Augmentation of training batches of real-valued sequences, on the device, in the step.

``config.data.augment`` sets each transform's strength (0 = off), applied in this order:

- ``scale``: every sequence times s ~ N(1, scale) per feature;
- ``jitter``: Gaussian noise of standard deviation ``jitter`` on every valid step;
- ``max_shift``: each sequence moved later by 0..max_shift steps, zeros in front, its end
  cut at its length (a random window of the sequence, shifted);
- ``mask_width``: a window of 0..mask_width consecutive steps set to zero (time masking).

Steps past a sequence's length stay zero. The key is ``fold_in(base, step)`` in the train
step, so a resumed run sees the same augmented batches; validation and test never pass here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array
_STREAM = 0x617567  # "aug": this key stream, apart from dropout's


@dataclasses.dataclass(frozen=True)
class Augment:
    """Strengths of each transform (0 = off); hashable, fixed for a run."""

    jitter: float = 0.0
    scale: float = 0.0
    max_shift: int = 0
    mask_width: int = 0

    @property
    def active(self) -> bool:
        return bool(self.jitter or self.scale or self.max_shift or self.mask_width)

    @classmethod
    def from_config(cls, options: ml_collections.ConfigDict) -> Augment:
        return cls(**options.to_dict())


def check(augment: Augment, inputs_dtype, length: int) -> None:
    """Refuses augmentation of token inputs, and shifts or masks as long as the sequences
    (``length``: the time axis), naming the key and the numbers."""
    if not augment.active:
        return
    if not jnp.issubdtype(inputs_dtype, jnp.floating):
        raise ValueError(
            f"config.data.augment applies to real-valued inputs; this dataset's are "
            f"{jnp.dtype(inputs_dtype).name} tokens (set every config.data.augment key to 0)"
        )
    for key in ("max_shift", "mask_width"):
        value = getattr(augment, key)
        if value >= length:
            raise ValueError(
                f"config.data.augment.{key}={value} must be less than the sequence length {length}"
            )


def apply(augment: Augment, inputs: Array, lengths: Array, key: Array) -> Array:
    """Augmented ``inputs`` [batch, time, features] (``lengths`` [batch]), from ``key``."""
    batch, time, features = inputs.shape
    k_scale, k_jitter, k_shift, k_mask = jax.random.split(jax.random.fold_in(key, _STREAM), 4)
    steps = jnp.arange(time)[None, :]  # [1, time]
    valid = (steps < lengths[:, None])[..., None]  # [batch, time, 1]
    x = inputs
    if augment.scale:
        s = 1.0 + augment.scale * jax.random.normal(k_scale, (batch, 1, features), x.dtype)
        x = x * s
    if augment.jitter:
        x = x + augment.jitter * jax.random.normal(k_jitter, x.shape, x.dtype)
    if augment.max_shift:
        shift = jax.random.randint(k_shift, (batch, 1), 0, augment.max_shift + 1)
        source = steps - shift  # [batch, time]
        moved = jnp.take_along_axis(x, jnp.clip(source, 0, time - 1)[..., None], axis=1)
        x = jnp.where((source >= 0)[..., None], moved, 0.0)
    if augment.mask_width:
        width = jax.random.randint(k_mask, (batch, 1), 0, augment.mask_width + 1)
        start = jax.random.randint(jax.random.fold_in(k_mask, 1), (batch, 1), 0, time)
        hidden = (steps >= start) & (steps < start + width)
        x = jnp.where(hidden[..., None], 0.0, x)
    return jnp.where(valid, x, 0.0).astype(inputs.dtype)
