"""Where a run's arrays live: a device mesh from config.mesh, and the shardings of the train
state, the batches and the tables on it (JAX's own SPMD: ``jax.sharding.Mesh``,
``NamedSharding``, jit with shardings).

The mesh has two axes. ``data`` splits every batch (and truncated BPTT's carried state)
along its rows; ``model`` splits the large matrices along the axis a rule names, e.g. an
LSTM's gate axis. Everything else is replicated. With one device (the default on a laptop)
every sharding is that device, and a run computes what it always did.

    config.mesh.data = -1     # devices on the data axis; -1: all the model axis leaves
    config.mesh.model = 1     # devices on the model axis
    config.mesh.rules = (("(.*/)?w_(ih|hh)", (None, "model")), ...)  # regex -> spec

A rule is a full match of a state leaf's '/'-joined path (``params/encoder/layer_0/w_ih``,
and the optimizer's moments of that parameter, whose paths end the same way) and a
PartitionSpec as a tuple. Bad settings are a ConfigError naming the numbers or the rule.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fnn_jax.config import ConfigError
from fnn_jax.tree import path_str

AXES = ("data", "model")


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the sharding rules of one run (or one vectorised group of trials)."""

    mesh: Mesh
    rules: tuple[tuple[str, tuple], ...] = ()

    @property
    def data_size(self) -> int:
        return int(self.mesh.shape["data"])

    @property
    def model_size(self) -> int:
        return int(self.mesh.shape["model"])

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def rows(self, ndim: int) -> NamedSharding:
        """An array of ``ndim`` axes, its rows (leading axis) split over ``data``."""
        spec = ("data",) + (None,) * (ndim - 1)
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def state_shardings(self, state: Any, *, trials: str | None = None) -> Any:
        """The sharding of every leaf of a TrainState: parameters (and their optimizer
        moments) by the rules, truncated BPTT's carry by rows, the rest replicated.

        trials: for states stacked on a leading trial axis (a vectorised group): None
            (not stacked), "replicated" (every device holds every trial) or "data" (the
            trials split over the data axis, whose devices then each train whole batches).
        """
        lead = () if trials is None else ("data",) if trials == "data" else (None,)
        rows = None if trials == "data" else "data"  # one mesh axis splits one array axis

        def pick(path, leaf):
            name, ndim = path_str(path), np.ndim(leaf) - len(lead)
            spec: tuple = (None,) * ndim
            if name.startswith("carry/") and ndim:
                spec = (rows,) + (None,) * (ndim - 1)
            else:
                for pattern, rule in self.rules:
                    if re.fullmatch(f"(.*/)?(?:{pattern})", name) and len(rule) == ndim:
                        spec = rule
                        break
            return NamedSharding(self.mesh, PartitionSpec(*lead, *spec))

        return jax.tree_util.tree_map_with_path(pick, state)

    def put(self, tree: Any, shardings: Any) -> Any:
        """Host (or device) arrays placed with ``shardings`` (a sharding per leaf, or one
        for all). Works across processes: each fills its own devices' shards."""
        if isinstance(shardings, jax.sharding.Sharding):
            shardings = jax.tree.map(lambda _: shardings, tree)

        def place(x, sharding):
            if isinstance(x, jax.Array) and jax.process_count() == 1:
                return jax.device_put(x, sharding)
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(place(jax.random.key_data(x), sharding))
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(place, tree, shardings)

    def gather_rows(self, table: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, jax.Array]:
        """Batches of ``table``'s rows: ``rows`` [steps, batch] (indices) -> arrays
        [steps, batch, ...], each batch split over ``data``. A process gathers and sends
        only the rows its own devices hold: its slice of every global batch."""
        sharding = NamedSharding(self.mesh, PartitionSpec(None, "data"))

        def place(values: np.ndarray) -> jax.Array:
            shape = rows.shape + values.shape[1:]
            return jax.make_array_from_callback(shape, sharding, lambda i: values[rows[i[:2]]])

        return {name: place(values) for name, values in table.items()}

    def put_local_rows(self, tree: Any, global_rows: int, axis: int = 0) -> Any:
        """Global arrays of ``global_rows`` rows (along ``axis``: 0 for a batch, 1 for
        [steps, batch, ...]) split over ``data``, from this process's own rows only (its
        contiguous slice, as ``fnn_jax.data.stream`` reads it)."""
        spec = (None,) * axis + ("data",)

        def place(local: np.ndarray) -> jax.Array:
            shape = list(local.shape)
            shape[axis] = global_rows
            sharding = NamedSharding(self.mesh, PartitionSpec(*spec))
            return jax.make_array_from_process_local_data(sharding, local, tuple(shape))

        return jax.tree.map(place, tree)

    def put_rows(self, tree: Any) -> Any:
        """Every leaf split by rows over ``data`` (batches)."""
        return jax.tree.map(lambda x: self.put(x, self.rows(np.ndim(x))), tree)


def single_device() -> Layout:
    """The first device alone (a 1 x 1 mesh): what a run without config.mesh uses."""
    return Layout(Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), AXES))


def host(tree: Any) -> Any:
    """NumPy copies of every leaf, gathered from all devices and processes."""

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_fully_replicated:  # every process holds it whole already
                return np.array(x.addressable_data(0))
            return np.array(multihost_utils.process_allgather(x, tiled=True))
        return np.array(jax.device_get(x))

    return jax.tree.map(fetch, tree)


def from_config(config: ml_collections.ConfigDict, params: Any, *, batch_size: int) -> Layout:
    """The Layout of config.mesh over this process's view of all devices; a ConfigError,
    before training, for a mesh larger than the devices, a batch that does not split over
    the data axis, or a rule that matches no parameter or does not divide its axis."""
    devices = jax.devices()
    model = config.mesh.model
    data = config.mesh.data if config.mesh.data != -1 else len(devices) // max(model, 1)
    if data < 1 or model < 1:
        raise ConfigError(
            f"config.mesh.data={config.mesh.data} and config.mesh.model={model} must be >= 1 "
            f"(data may be -1: all devices)"
        )
    if data * model > len(devices):
        raise ConfigError(
            f"config.mesh.data={data} x config.mesh.model={model} = {data * model} devices; "
            f"only {len(devices)} available ({devices[0].platform})"
        )
    if batch_size % data:
        raise ConfigError(
            f"config.data.batch_size={batch_size} does not divide over the data axis of "
            f"{data} devices (config.mesh.data); use a multiple of {data}"
        )
    mesh = Mesh(np.asarray(devices[: data * model]).reshape(data, model), AXES)
    rules = tuple((pattern, tuple(spec)) for pattern, spec in config.mesh.rules)
    if model > 1:
        _check_rules(rules, params, model)
    return Layout(mesh, rules if model > 1 else ())


def _check_rules(rules: tuple[tuple[str, tuple], ...], params: Any, model: int) -> None:
    """Each rule names mesh axes, matches a parameter, and splits it evenly."""
    leaves = [(path_str(p), tuple(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(params)]
    for pattern, spec in rules:
        where = f"config.mesh.rules ({pattern!r}, {spec})"
        unknown = [axis for axis in spec if axis is not None and axis not in AXES]
        if unknown:
            raise ConfigError(f"{where}: unknown mesh axis {unknown[0]!r}; axes are {AXES}")
        matched = [(p, s) for p, s in leaves if re.fullmatch(pattern, p)]
        if not matched:
            names = sorted(p for p, _ in leaves)[:8]
            raise ConfigError(f"{where} matches no parameter path; the paths: {names}")
        for path, shape in matched:
            if len(spec) != len(shape):
                raise ConfigError(f"{where}: {path!r} has shape {shape}, rank {len(shape)}")
            for size, axis in zip(shape, spec, strict=True):
                if axis == "model" and size % model:
                    raise ConfigError(
                        f"{where}: {path!r} has shape {shape}; {size} does not split over "
                        f"the model axis of {model} devices"
                    )
