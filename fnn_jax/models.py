"""Models built on the recurrent layers. Each ends in a Dense submodule named ``head``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fnn_jax.layers import CellOptions, Stacked

Array = jax.Array
POOLINGS = ("last", "mean")


def pool(ys: Array, lengths: Array | None, mode: str, bidirectional: bool = False) -> Array:
    """[batch, time, features] -> [batch, features], ignoring steps past each length.

    "last" takes the last valid step; for a bidirectional encoder the backward half is taken
    at step 0, where the reverse pass has read the whole sequence.
    """
    batch, time, features = ys.shape
    if lengths is None:
        lengths = jnp.full((batch,), time, jnp.int32)
    if mode == "mean":
        valid = (jnp.arange(time)[None, :] < lengths[:, None])[..., None]
        total = jnp.sum(jnp.where(valid, ys, 0.0), axis=1)
        return total / jnp.maximum(lengths, 1)[:, None].astype(ys.dtype)
    if mode == "last":
        last = jnp.take_along_axis(ys, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
        if bidirectional:
            half = features // 2
            return jnp.concatenate([last[:, :half], ys[:, 0, half:]], axis=-1)
        return last
    raise ValueError(f"unknown pooling {mode!r}; valid choices: {list(POOLINGS)}")


class Encoder(CellOptions):
    """Fields shared by the models: a Stacked encoder named ``encoder``."""

    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0

    def encode(self, xs: Array, lengths: Array | None, train: bool) -> Array:
        encoder = Stacked(
            **self.cell_fields(),
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            name="encoder",
        )
        _, ys = encoder(xs, lengths, deterministic=not train)
        return ys


class SequenceClassifier(Encoder):
    """xs [batch, time, features] -> logits [batch, num_classes]."""

    num_classes: int = 2
    pooling: str = "last"

    @nn.compact
    def __call__(self, xs: Array, lengths: Array | None = None, *, train: bool = False) -> Array:
        ys = self.encode(xs, lengths, train)
        features = pool(ys, lengths, self.pooling, self.bidirectional)
        features = nn.Dropout(self.dropout)(features, deterministic=not train or not self.dropout)
        return nn.Dense(self.num_classes, name="head")(features)


class Forecaster(Encoder):
    """xs [batch, time, features] -> the next ``horizon`` values [batch, horizon, targets].

    ``targets`` defaults to the input's feature count.
    """

    horizon: int = 1
    targets: int | None = None

    @nn.compact
    def __call__(self, xs: Array, lengths: Array | None = None, *, train: bool = False) -> Array:
        targets = xs.shape[-1] if self.targets is None else self.targets
        ys = self.encode(xs, lengths, train)
        features = pool(ys, lengths, "last", self.bidirectional)
        out = nn.Dense(self.horizon * targets, name="head")(features)
        return out.reshape(xs.shape[0], self.horizon, targets)


class CharLM(Encoder):
    """tokens [batch, time] (int) -> next-token logits [batch, time, vocab_size]."""

    vocab_size: int = 128
    embed_dim: int = 64

    @nn.compact
    def __call__(
        self, tokens: Array, lengths: Array | None = None, *, train: bool = False
    ) -> Array:
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be integer [batch, time]; got shape {tuple(tokens.shape)} "
                f"dtype {tokens.dtype}"
            )
        xs = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
        ys = self.encode(xs, lengths, train)
        ys = nn.Dropout(self.dropout)(ys, deterministic=not train or not self.dropout)
        return nn.Dense(self.vocab_size, name="head")(ys)
