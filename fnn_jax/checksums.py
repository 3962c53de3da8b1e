"""SHA-256 of a train state as it is saved: one digest per saved shard.

A leaf held whole (a NumPy array, or a jax.Array on one device or replicated) has one
digest, keyed by its '/'-joined path. A leaf split over devices (``config.mesh.model``) has
one per distinct shard, keyed ``path[start:stop,start:stop]`` and computed from that shard
alone, where it lies: nothing gathers the whole array to hash it. Checking works on any
layout of the same values: a state restored to the host, or to another mesh, is sliced as
the stored keys say (a process checks the slices its own devices hold).

Every digest covers the dtype and shape of what it hashes, so a whole leaf's digest is the
same whether it was saved from the host or from devices.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection
from typing import Any

import jax
import numpy as np

from fnn_jax.tree import path_str

Index = tuple[slice, ...]
_SHARD_KEY = re.compile(r"(.+)\[(\d+:\d+(?:,\d+:\d+)*)\]")  # path[a:b,c:d]


def digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    value = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    value.update(array.tobytes())
    return value.hexdigest()


def saved_shard_hashes(tree: Any) -> dict[str, str]:
    """The digest of every leaf, or of every distinct shard of a leaf split over devices
    (keyed ``path[start:stop,...]``). With several processes, each hashes the shards it
    holds and the digests (not the arrays) are exchanged, so every process returns all."""
    local: dict[str, str] = {}
    exchange = False
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = path_str(path)
        if not _split(leaf):
            local[name] = digest(_whole(leaf))
            continue
        exchange = exchange or not leaf.is_fully_addressable
        for shard in leaf.addressable_shards:
            if shard.replica_id == 0:  # one copy of each distinct shard
                key = shard_key(name, _bounds(shard.index, leaf.shape), leaf.shape)
                local[key] = digest(np.asarray(shard.data))
    return _from_every_process(local) if exchange else local


def leaf_paths(hashes: dict[str, str], paths: Collection[str] = ()) -> set[str]:
    """The leaves a set of digests covers (a split leaf's shards count once); ``paths``:
    the leaf paths of the state checked (a key that is one of them names a whole leaf)."""
    return {parse_key(key, paths)[0] for key in hashes}


def mismatches(tree: Any, stored: dict[str, str]) -> list[str]:
    """What of ``tree`` (host arrays, or jax.Arrays on any mesh) fails the stored digests,
    among what this process can check: each stored key whose slice hashes otherwise, and
    each leaf (named by its path) that the stored digests do not cover whole."""
    leaves = {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    wanted: dict[str, list[tuple[str, Index | None]]] = {}
    for key in stored:
        path, index = parse_key(key, leaves)
        wanted.setdefault(path, []).append((key, index))
    bad = []
    for path, leaf in leaves.items():
        entries = wanted.get(path, [])
        if not _covers([index for _, index in entries], np.shape(leaf)):
            bad.append(f"{path} (not all of it has a stored digest)")
            continue
        gathered: list[np.ndarray] = []  # the rare whole copy, made once per leaf
        for key, index in entries:
            value = _slice(leaf, index, gathered)
            if value is not None and digest(value) != stored[key]:
                bad.append(key)
    return bad


def shard_key(path: str, bounds: list[tuple[int, int]], shape: tuple[int, ...]) -> str:
    """``path`` for the whole array, else ``path[a:b,c:d]``."""
    if all(bound == (0, size) for bound, size in zip(bounds, shape, strict=True)):
        return path
    return f"{path}[{','.join(f'{a}:{b}' for a, b in bounds)}]"


def parse_key(key: str, paths: Collection[str] = ()) -> tuple[str, Index | None]:
    """(leaf path, the shard's index, or None for the whole leaf). A key that is one of
    ``paths`` is a whole leaf, whatever brackets its name ends in."""
    match = None if key in paths else _SHARD_KEY.fullmatch(key)
    if match is None:
        return key, None
    bounds = match[2].split(",")
    return match[1], tuple(slice(*map(int, bound.split(":"))) for bound in bounds)


def _split(leaf: Any) -> bool:
    """A jax.Array whose devices hold different parts of it."""
    return isinstance(leaf, jax.Array) and not leaf.is_fully_replicated


def _whole(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array):  # replicated: this process's first copy
        return np.asarray(leaf.addressable_data(0))
    return np.asarray(leaf)


def _bounds(index: Index, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    bounds = []
    for axis, size in enumerate(shape):
        start, stop, _ = (index[axis] if axis < len(index) else slice(None)).indices(size)
        bounds.append((start, stop))
    return bounds


def _contains(outer: Index, inner: list[tuple[int, int]], shape: tuple[int, ...]) -> bool:
    return all(
        a <= c and d <= b for (a, b), (c, d) in zip(_bounds(outer, shape), inner, strict=True)
    )


def _covers(indices: list[Index | None], shape: tuple[int, ...]) -> bool:
    """Whether shards at ``indices`` (None: the whole array) tile ``shape``: inside it, no
    two overlapping, their sizes adding up to its size."""
    if None in indices:
        return True
    if any(len(index) != len(shape) for index in indices):
        return False
    boxes = [_bounds(index, shape) for index in indices]
    size = lambda box: math.prod(b - a for a, b in box)
    overlap = lambda p, q: all(a < d and c < b for (a, b), (c, d) in zip(p, q, strict=True))
    if any(overlap(p, q) for i, p in enumerate(boxes) for q in boxes[i + 1 :]):
        return False
    return bool(boxes) and sum(map(size, boxes)) == math.prod(shape)


def _slice(leaf: Any, index: Index | None, gathered: list[np.ndarray]) -> np.ndarray | None:
    """``leaf[index]`` on the host, read from one shard that holds it; None when only
    another process's devices hold it. Only when no single device holds the slice (the
    state restored to another mesh) is the leaf gathered whole, once (kept in
    ``gathered`` for its other keys)."""
    if not _split(leaf):
        whole = _whole(leaf)
        return whole if index is None else whole[index]
    want = _bounds(index or (), leaf.shape)
    for shard in leaf.addressable_shards:
        if _contains(shard.index, want, leaf.shape):
            offset = [start for start, _ in _bounds(shard.index, leaf.shape)]
            inner = tuple(slice(a - o, b - o) for (a, b), o in zip(want, offset, strict=True))
            return np.asarray(shard.data)[inner]
    placements = leaf.sharding.devices_indices_map(leaf.shape).values()
    if any(_contains(placed, want, leaf.shape) for placed in placements):
        return None  # another process checks it
    if not gathered:
        from fnn_jax.train import mesh  # the rare case: a collective on every process

        gathered.append(mesh.host(leaf))
    return gathered[0][tuple(slice(a, b) for a, b in want)]


def _from_every_process(local: dict[str, str]) -> dict[str, str]:
    """The union of every process's digests (a few KB of JSON, not the arrays)."""
    from jax.experimental import multihost_utils

    text = json.dumps(local, sort_keys=True).encode()
    size = int(np.max(multihost_utils.process_allgather(np.int32(len(text)))))
    mine = np.frombuffer(text.ljust(size), np.uint8)
    merged: dict[str, str] = {}
    for row in np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, size):
        merged |= json.loads(bytes(row).decode())
    return merged
