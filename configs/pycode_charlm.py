"""python experiments/main.py --config configs/pycode_charlm.py --workdir runs/pycode_charlm

Prepare the corpus first (once, about 5 s):
python experiments/prepare_corpus.py --stdlib --out runs/pycode_corpus --row_length 256

A byte-level language model of Python source, streamed from disk (pip install '.[stream]'
for grain): the standard library's own .py files (1790 files, about 31 MB on every machine
with Python 3.11), whole files held out by a hash of their path for validation (83 files)
and test (86 files). Two GRU layers of 512 (2,612,033 parameters, ten times the largest
model before it). Bits per byte against a unigram model, a 5-gram model and lzma:
experiments/pycode_baselines.py.

The optional argument is the number of steps: the default fits about 20 minutes of a 2-core
CPU (a sliver of one epoch); --config configs/pycode_charlm.py:20000 is a longer run.
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    steps = int(arg) if arg else 2000
    config = default_config()
    config.data.name = "corpus"
    config.data.options = ml_collections.ConfigDict({"path": "runs/pycode_corpus", "stream": True})
    config.data.batch_size = 16
    config.data.eval_batch_size = 64
    config.model.cell = "gru"
    config.model.hidden_size = 512
    config.model.num_layers = 2
    config.model.embed_dim = 64
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = min(100, steps // 10)
    config.optimizer.final_lr_fraction = 0.05
    config.train.num_steps = steps
    config.train.eval_every_steps = max(1, steps // 4)
    config.train.log_every_steps = 25
    config.train.early_stopping_metric = "bits_per_char"
    config.lock()
    return config
