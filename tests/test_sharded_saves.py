"""A model split over ``mesh.model`` is saved as it lies: no evaluation or save gathers a
split array to the host; each saved shard has its own SHA-256; the checkpoint restores onto
the same mesh without a gather, onto another mesh and onto one host, and the run resumes
bit for bit.

Full host copies are counted where JAX makes them: ``jax.Array._value`` assembling an array
whose devices hold different parts (what ``np.asarray``, ``jax.device_get`` and
``mesh.host`` of such an array come down to on one process). Orbax writes shard by shard,
through each device's own buffer, so it makes none.
"""

import hashlib
import json

import jax
import numpy as np
import pytest

from fnn_jax import checksums
from fnn_jax.checkpoint import Checkpoints
from tests.test_devices import _final, _run_on_devices

STOP = 9  # of 12 steps; validation (and a save: checkpoint_every_s=0) every 3


def _sha256(array: np.ndarray) -> str:
    """The reference: hashlib over the dtype, shape and bytes, written out again here."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()


def test_a_whole_leaf_is_keyed_by_its_path_and_hashed_with_its_dtype_and_shape():
    tree = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "step": np.int32(5)}
    assert checksums.saved_shard_hashes(tree) == {
        "params/w": _sha256(tree["params"]["w"]),
        "step": _sha256(np.int32(5)),
    }


def test_a_damaged_shard_is_named_by_its_slice_and_the_others_pass():
    w = np.arange(32, dtype=np.float32).reshape(4, 8)
    stored = {"params/w[0:4,0:4]": _sha256(w[:, :4]), "params/w[0:4,4:8]": _sha256(w[:, 4:])}
    assert checksums.mismatches({"params": {"w": w}}, stored) == []
    damaged = w.copy()
    damaged[3, 6] += 1
    assert checksums.mismatches({"params": {"w": damaged}}, stored) == ["params/w[0:4,4:8]"]
    assert checksums.parse_key("params/w[0:4,4:8]") == ("params/w", (slice(0, 4), slice(4, 8)))
    assert checksums.leaf_paths(stored) == {"params/w"}


def test_a_leaf_or_shard_without_a_stored_digest_is_reported_not_passed():
    w, b = np.ones((4, 8), np.float32), np.zeros(3, np.float32)
    halves = {"params/w[0:4,0:4]": _sha256(w[:, :4]), "params/w[0:4,4:8]": _sha256(w[:, 4:])}
    tree = {"params": {"w": w, "b": b}}
    assert checksums.mismatches(tree, {**halves, "params/b": _sha256(b)}) == []
    missing = checksums.mismatches(tree, halves)
    assert missing == ["params/b (not all of it has a stored digest)"]
    one_half = {"params/w[0:4,0:4]": halves["params/w[0:4,0:4]"], "params/b": _sha256(b)}
    assert checksums.mismatches(tree, one_half) == ["params/w (not all of it has a stored digest)"]


def test_a_leaf_whose_own_name_ends_in_brackets_is_a_whole_leaf():
    leaf = np.arange(3.0)
    stored = {"x[0]": _sha256(leaf), "y[0:3]": _sha256(leaf)}
    assert checksums.mismatches({"x[0]": leaf, "y[0:3]": leaf}, stored) == []
    assert checksums.mismatches({"x[0]": leaf + 1, "y[0:3]": leaf}, stored) == ["x[0]"]
    assert checksums.leaf_paths(stored, {"x[0]", "y[0:3]"}) == {"x[0]", "y[0:3]"}


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    """On 4 devices as data 2 x model 2: an uninterrupted run; the same run stopped at
    step STOP (full host copies counted meanwhile), then resumed; its checkpoint restored
    onto the same shardings, onto transposed ones, and a damaged shard checked."""
    tmp_path = tmp_path_factory.mktemp("split")
    script = f"""
    import json, sys
    from pathlib import Path
    import jax, numpy as np
    import jax._src.array as jax_array
    from jax.sharding import NamedSharding, PartitionSpec as P
    from fnn_jax import checksums
    from fnn_jax.checkpoint import Checkpoints
    from fnn_jax.train import mesh, train_and_evaluate

    root = Path(sys.argv[1])
    copies = []
    value = jax_array.ArrayImpl._value

    def counted(self):
        if self._npy_value is None and not self.is_fully_replicated:
            copies.append(list(self.shape))
        return value.fget(self)

    jax_array.ArrayImpl._value = property(counted)

    def run(workdir, every=0.0, min_delta=0.0, **kwargs):
        c = config(2, 2)
        c.train.eval_every_steps = 3
        c.train.checkpoint_every_s = every  # 0: a save at every validation
        c.train.keep_checkpoints = 4
        c.train.min_delta = min_delta
        return train_and_evaluate(c, root / workdir, **kwargs)

    out = {{}}
    run("whole")
    copies.clear()
    out["stopped"] = run("cut", stop_after_steps={STOP})
    out["copies_while_training"] = list(copies)
    run("cut")
    # No save before the stage's end, and only the first validation is ever a best: it
    # is kept on the devices (a copy: the steps after it donate the state) until then.
    run("rare", every=1e9, min_delta=1e9)

    checkpoints = Checkpoints(root / "cut" / "checkpoints", read_only=True)
    saved, _ = checkpoints.restore_saved({STOP})
    devices = jax.make_mesh((2, 2), ("data", "model"))
    w = saved["params"]["encoder"]["layer_0"]["w_hh"]
    for name, rule in {{"same": (None, "model"), "transposed": ("model", None)}}.items():
        layout = mesh.Layout(devices, rules=(("(.*/)?w_(ih|hh)", rule),))
        copies.clear()
        state, _ = checkpoints.restore({STOP}, layout.put(saved, layout.state_shardings(saved)))
        w_hh = state["params"]["encoder"]["layer_0"]["w_hh"]
        out[name] = {{"spec": str(w_hh.sharding.spec), "copies": list(copies)}}
        out[name]["equal"] = bool(np.array_equal(w_hh, w))
    stored = checkpoints.restore_progress({STOP})["hashes"]
    damaged = w.copy()
    damaged[0, -1] += 1.0
    split = layout.put(damaged, NamedSharding(devices, P(None, "model")))
    tree = {{"params": {{"encoder": {{"layer_0": {{"w_hh": split}}}}}}}}
    out["damaged"] = checksums.mismatches(tree, stored)
    checkpoints.close()
    print(json.dumps(out))
    """
    out = _run_on_devices(4, script, tmp_path)
    return tmp_path, json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_evaluations_and_saves_of_a_split_model_gather_nothing_to_the_host(split_runs):
    _, out = split_runs
    assert out["stopped"] == {"interrupted_at": STOP}
    assert out["copies_while_training"] == []  # 3 validations, 4 saves


@pytest.mark.slow
def test_each_saved_shard_has_the_sha256_of_its_own_slice(split_runs):
    root, _ = split_runs
    checkpoints = Checkpoints(root / "cut" / "checkpoints", read_only=True)
    try:
        stored = checkpoints.restore_progress(STOP)["hashes"]
        saved, _ = checkpoints.restore_saved(STOP)  # on this process's one device
    finally:
        checkpoints.close()
    w_hh = saved["params"]["encoder"]["layer_0"]["w_hh"]  # [16, 64]: gates split in two
    keys = sorted(k for k in stored if k.startswith("params/encoder/layer_0/w_hh"))
    assert keys == [
        "params/encoder/layer_0/w_hh[0:16,0:32]",
        "params/encoder/layer_0/w_hh[0:16,32:64]",
    ]
    assert stored[keys[0]] == _sha256(w_hh[:, :32]) and stored[keys[1]] == _sha256(w_hh[:, 32:])
    moments = [k for k in stored if k.startswith("opt_state") and "w_hh[" in k]
    assert len(moments) == 4  # Adam's mu and nu, two shards each
    assert stored["params/encoder/layer_0/b_hh"] == _sha256(
        saved["params"]["encoder"]["layer_0"]["b_hh"]
    )


@pytest.mark.slow
def test_a_split_checkpoint_restores_onto_its_mesh_without_a_gather_and_onto_another(split_runs):
    _, out = split_runs
    assert out["same"] == {"spec": "P(None, 'model')", "copies": [], "equal": True}
    # Transposed: no device holds a saved shard whole, so each split leaf (w_ih, w_hh and
    # their 2 moments each) is gathered once to check it.
    transposed = out["transposed"]
    assert transposed["spec"] == "P('model', None)" and transposed["equal"]
    assert len(transposed["copies"]) == 6
    assert out["damaged"] == ["params/encoder/layer_0/w_hh[0:16,32:64]"]


@pytest.mark.slow
def test_a_split_run_stopped_and_resumed_ends_bit_for_bit_as_the_uninterrupted_one(split_runs):
    root, _ = split_runs
    whole, cut = _final(root / "whole"), _final(root / "cut")
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(cut), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (
        json.loads((root / "cut" / "report.json").read_text())["results"]
        == json.loads((root / "whole" / "report.json").read_text())["results"]
    )


@pytest.mark.slow
def test_a_best_kept_on_the_devices_between_rare_saves_is_the_state_of_its_step(split_runs):
    root, _ = split_runs
    rare = Checkpoints(root / "rare" / "checkpoints", read_only=True)
    whole = Checkpoints(root / "whole" / "checkpoints", read_only=True)
    try:
        best = rare.manager.best_step()
        assert best == 3 and rare.steps() == [3, 12] and whole.steps() == [3, 6, 9, 12]
        kept, _ = rare.restore_saved(best)
        saved, _ = whole.restore_saved(best)
    finally:
        rare.close()
        whole.close()
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(a, b)
