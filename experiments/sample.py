"""Print text sampled from a trained character language model.

    python experiments/sample.py --workdir runs/reviews_charlm --prompt "This tea" \
        --temperature 0.8 --length 300 --seed 0

The model reads the document separator and the prompt in one pass, then its own samples one
character at a time, its recurrent state carried along (``CharLM.window``: one step per
character, not the whole prefix again). Sampling stops after ``--length`` characters or when
the model ends the review (samples the separator). The same seed gives the same text; temperature 0
takes the most likely character each step. Prompt characters outside the vocabulary become
the unknown symbol, with a warning.
"""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fnn_jax  # noqa: E402

flags.DEFINE_string("workdir", None, "A language model's run directory.")
flags.DEFINE_string("prompt", "", "Text the sample continues.")
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = always the likeliest.")
flags.DEFINE_integer("length", 300, "Characters to sample at most.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def encode_prompt(prompt: str, vocab: list[str], unknown: int) -> list[int]:
    """Token ids of ``prompt``; characters outside ``vocab`` become ``unknown``, with a
    warning that names them."""
    lookup = {symbol: i for i, symbol in enumerate(vocab) if len(symbol) == 1}
    missing = sorted({c for c in prompt if c not in lookup})
    if missing:
        warnings.warn(
            f"prompt characters {missing} are not in the vocabulary: read as the unknown "
            f"symbol {vocab[unknown]!r}",
            stacklevel=2,
        )
    return [lookup.get(c, unknown) for c in prompt]


@functools.partial(jax.jit, static_argnames="model")
def read(
    model: Any, params: Any, carries: list | None, tokens: jax.Array
) -> tuple[list, jax.Array]:
    """``tokens`` [time] through ``model`` (a unidirectional CharLM) from ``carries`` (None:
    zeros): (the carries after them, the logits [vocab] after the last one)."""
    carries, logits = model.apply({"params": params}, tokens[None], None, carries, method="window")
    return carries, logits[0, -1]


def sample(
    run: Any, prompt: str, *, temperature: float, length: int, seed: int
) -> tuple[str, list[int]]:
    """(prompt + sampled text, the sampled token ids) from ``run`` (``fnn_jax.load`` of a
    language model on reviews_text, or on a byte corpus)."""
    if temperature < 0 or length < 0:
        raise ValueError(f"temperature and length must be >= 0; got {temperature}, {length}")
    info = run.dataset.info
    separator, byte_level = info["separator_id"], info.get("byte_level", False)
    model, params = run.model, jax.tree.map(jnp.asarray, run.params)  # restored as numpy
    if model.bidirectional:
        raise ValueError("sampling needs a unidirectional model; this one is bidirectional")
    if byte_level:  # a corpus of bytes (fnn_jax.data.corpus): the prompt's UTF-8
        prompt_ids = [separator, *prompt.encode("utf-8")]
    else:
        prompt_ids = [separator, *encode_prompt(prompt, info["vocab"], info["unknown_id"])]
    carries, logits = read(model, params, None, jnp.asarray(prompt_ids, jnp.int32))
    key, out = jax.random.key(seed), []
    for i in range(length):
        if temperature == 0:
            token = int(jnp.argmax(logits))
        else:
            token = int(jax.random.categorical(jax.random.fold_in(key, i), logits / temperature))
        if token == separator:  # the model ended the review
            break
        out.append(token)
        carries, logits = read(model, params, carries, jnp.asarray([token], jnp.int32))
    if byte_level:
        return prompt + bytes(out).decode("utf-8", errors="replace"), out
    shown = {info["unknown_id"]: "\ufffd"}
    return prompt + "".join(shown.get(t, info["vocab"][t]) for t in out), out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    step = int(FLAGS.step) if FLAGS.step.isdigit() else FLAGS.step
    run = fnn_jax.load(FLAGS.workdir, step=step)
    if "separator_id" not in run.dataset.info:
        sys.exit(f"error: {FLAGS.workdir} is not a language model (reviews_text or corpus)")
    text, _ = sample(
        run, FLAGS.prompt, temperature=FLAGS.temperature, length=FLAGS.length, seed=FLAGS.seed
    )
    print(text)


if __name__ == "__main__":
    app.run(main)
