"""Models built on the recurrent layers. Each ends in a Dense submodule named ``head``."""

from __future__ import annotations

from typing import Any

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
    """Fields shared by the models; ``encoder`` is a Stacked recurrent encoder.

    Every model splits into ``features`` (everything below the head) and ``predict`` (the
    head), so a fine-tuning stage that freezes the encoder can compute features once.
    """

    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0

    def make_encoder(self) -> Stacked:
        return Stacked(
            **self.cell_fields(),
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
        )

    @property
    def features_are_deterministic(self) -> bool:
        """True when ``features`` uses no randomness in training (dropout sits between
        layers; recurrent dropout and zoneout act inside them)."""
        between = self.dropout == 0 or self.num_layers == 1
        return between and not self.recurrent_dropout and not self.zoneout

    def __call__(
        self,
        inputs: Array,
        lengths: Array | None = None,
        resets: Array | None = None,
        *,
        train: bool = False,
    ):
        """``resets`` [batch, time] bool: where a new document starts inside a row."""
        return self.predict(self.features(inputs, lengths, resets, train=train), train=train)

    def dense(self, features: int) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype)


def _for_the_loss(outputs: Array) -> Array:
    """Outputs in at least float32: a bfloat16 model's loss and metrics stay precise."""
    return outputs.astype(jnp.promote_types(outputs.dtype, jnp.float32))


def check_tokens(tokens: Array) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"tokens must be integer [batch, time]; got shape {tuple(tokens.shape)} "
            f"dtype {tokens.dtype}"
        )


class SequenceClassifier(Encoder):
    """xs [batch, time, features] -> logits [batch, num_classes].

    With ``vocab_size`` > 0 the inputs are tokens [batch, time] (int), embedded first by a
    submodule ``embed`` named and shaped as CharLM's, so a classifier can start from a
    language model's embedding and encoder.
    """

    num_classes: int = 2
    pooling: str = "last"
    vocab_size: int = 0
    embed_dim: int = 64

    def setup(self):
        if self.vocab_size:
            self.embed = nn.Embed(
                self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype
            )
        self.encoder = self.make_encoder()
        self.head_dropout = nn.Dropout(self.dropout)
        self.head = self.dense(self.num_classes)

    def features(
        self,
        xs: Array,
        lengths: Array | None = None,
        resets: Array | None = None,
        *,
        train: bool = False,
    ) -> Array:
        """[batch, encoder output] pooled over valid steps."""
        if self.vocab_size:
            check_tokens(xs)
            xs = self.embed(xs)
        _, ys = self.encoder(xs, lengths, resets=resets, deterministic=not train)
        return pool(ys, lengths, self.pooling, self.bidirectional)

    def predict(self, features: Array, *, train: bool = False) -> Array:
        features = self.head_dropout(features, deterministic=not train or not self.dropout)
        return _for_the_loss(self.head(features))


class Forecaster(Encoder):
    """xs [batch, time, features] -> the next ``horizon`` values [batch, horizon, targets]."""

    horizon: int = 1
    targets: int = 1

    def setup(self):
        self.encoder = self.make_encoder()
        self.head = self.dense(self.horizon * self.targets)

    def features(
        self,
        xs: Array,
        lengths: Array | None = None,
        resets: Array | None = None,
        *,
        train: bool = False,
    ) -> Array:
        """[batch, encoder output] at each sequence's last valid step."""
        _, ys = self.encoder(xs, lengths, resets=resets, deterministic=not train)
        return pool(ys, lengths, "last", self.bidirectional)

    def predict(self, features: Array, *, train: bool = False) -> Array:
        del train
        out = _for_the_loss(self.head(features))
        return out.reshape(features.shape[0], self.horizon, self.targets)


class PerStep(Encoder):
    """An output at every step: ``features`` are the encoder's [batch, time, hidden], and
    ``window`` runs one stretch of the rows from given carries (truncated BPTT, sampling).
    Subclasses say how inputs enter the encoder (``encoder_inputs``) and define the head."""

    def encoder_inputs(self, xs: Array) -> Array:
        return xs

    def features(
        self,
        xs: Array,
        lengths: Array | None = None,
        resets: Array | None = None,
        *,
        train: bool = False,
    ) -> Array:
        """[batch, time, encoder output]."""
        _, ys = self.encoder(
            self.encoder_inputs(xs), lengths, None, resets, deterministic=not train
        )
        return ys

    def window(
        self,
        xs: Array,
        lengths: Array | None,
        carries: list[Any] | None,
        resets: Array | None = None,
        *,
        train: bool = False,
    ) -> tuple[list[Any], Array]:
        """(final carries, outputs [batch, time, ...]) of one stretch of the rows, the
        encoder starting from ``carries`` (one per layer; None: zeros). Windows run in turn,
        each from the carries of the one before, equal one pass over the rows (truncated
        BPTT runs them so, with the carries' gradients stopped)."""
        carries, ys = self.encoder(
            self.encoder_inputs(xs), lengths, carries, resets, deterministic=not train
        )
        return carries, self.predict(ys, train=train)


class CharLM(PerStep):
    """tokens [batch, time] (int) -> next-token logits [batch, time, vocab_size]."""

    vocab_size: int = 128
    embed_dim: int = 64

    def setup(self):
        self.embed = nn.Embed(
            self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype
        )
        self.encoder = self.make_encoder()
        self.head_dropout = nn.Dropout(self.dropout)
        self.head = self.dense(self.vocab_size)

    def encoder_inputs(self, tokens: Array) -> Array:
        check_tokens(tokens)
        return self.embed(tokens)

    def predict(self, features: Array, *, train: bool = False) -> Array:
        features = self.head_dropout(features, deterministic=not train or not self.dropout)
        return _for_the_loss(self.head(features))


class StepForecaster(PerStep):
    """xs [batch, time, features] -> the next value at every step [batch, time, targets]."""

    targets: int = 1

    def setup(self):
        self.encoder = self.make_encoder()
        self.head = self.dense(self.targets)

    def predict(self, features: Array, *, train: bool = False) -> Array:
        del train
        return _for_the_loss(self.head(features))
