"""Convert weights between PyTorch's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and ``layers.Stacked``.

The cells use PyTorch's formulas and gate order (LSTM i, f, g, o; GRU r, z, n), so the
mapping is a plain transpose of the weights; biases are copied unchanged::

    torch key (layer k)           shape         fnn_jax params (Stacked)       shape
    weight_ih_l{k}[_reverse]      [G*H, in_k]   layer_k[/backward]/w_ih        [in_k, G*H]
    weight_hh_l{k}[_reverse]      [G*H, H]      layer_k[/backward]/w_hh        [H, G*H]
    bias_ih_l{k}[_reverse]        [G*H]         layer_k[/backward]/b_ih        [G*H]
    bias_hh_l{k}[_reverse]        [G*H]         layer_k[/backward]/b_hh        [G*H]

G is 1 (elman), 4 (lstm) or 3 (gru); in_0 is the input size and in_k = H * num_directions
for k > 0. Bidirectional layers hold ``forward`` (no suffix) and ``backward`` (``_reverse``).
``nn.RNN``'s nonlinearity is not in its state dict: pass ``options={"activation": "relu"}``
to the layer when the torch module used ``nonlinearity="relu"``. Only ``proj_size=0`` LSTMs
are supported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import torch

GATES = {"elman": 1, "gru": 3, "lstm": 4}
_CELL_OF = {g: c for c, g in GATES.items()}
_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?")
_TO_PARAM = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}
_DIRECTIONS = (("", "forward"), ("_reverse", "backward"))


def _to_numpy(name: str, value: Any) -> np.ndarray:
    """A copy of a torch tensor / numpy / jax array as numpy, keeping its dtype."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        bf16 = str(value.dtype) == "torch.bfloat16"  # numpy has no bfloat16; go via float32
        value = value.float().numpy().astype(jnp.bfloat16) if bf16 else value.numpy()
    array = np.array(value, copy=True)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating array; got dtype {array.dtype}")
    return array


def _check_layout(
    arrays: Mapping[str, np.ndarray], cell: str | None, where: Mapping[str, str] | None = None
) -> tuple[str, int, bool]:
    """Validates torch-named arrays; returns (cell, num_layers, bidirectional).

    ``where`` maps a torch key to the name shown in errors (to_torch names param paths).
    """
    where = where or {}
    label = lambda key: where.get(key, key)
    for key in arrays:
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"unsupported key {key!r}: expected weight_ih/weight_hh/bias_ih/bias_hh_l<k>"
                "[_reverse] (strip any module prefix; proj_size LSTMs are not supported)"
            )
    inferred, gates, hidden = _infer_cell(arrays, cell, label)
    matches = [_KEY.fullmatch(k) for k in arrays]
    num_layers = 1 + max(int(m.group(2)) for m in matches)
    bidirectional = any(m.group(3) for m in matches)
    has_bias = any(m.group(1).startswith("bias") for m in matches)
    suffixes = ("", "_reverse") if bidirectional else ("",)
    for k in range(num_layers):
        in_size = arrays["weight_ih_l0"].shape[1] if k == 0 else hidden * len(suffixes)
        for suffix in suffixes:
            expected = {
                f"weight_ih_l{k}{suffix}": (gates * hidden, in_size),
                f"weight_hh_l{k}{suffix}": (gates * hidden, hidden),
            }
            if has_bias:
                expected[f"bias_ih_l{k}{suffix}"] = (gates * hidden,)
                expected[f"bias_hh_l{k}{suffix}"] = (gates * hidden,)
            for key, shape in expected.items():
                if key not in arrays:
                    raise ValueError(f"missing {label(key)!r} (expected shape {shape})")
                if arrays[key].shape != shape:
                    raise ValueError(
                        f"{label(key)} has shape {arrays[key].shape}; expected {shape} "
                        f"({inferred}, hidden size {hidden}, layer {k})"
                    )
    return inferred, num_layers, bidirectional


def _infer_cell(
    arrays: Mapping[str, np.ndarray], cell: str | None, label: Callable[[str], str]
) -> tuple[str, int, int]:
    """(cell, gate blocks, hidden size) from layer 0's shapes; checks ``cell`` if given."""
    for key in ("weight_ih_l0", "weight_hh_l0"):
        if key not in arrays:
            raise ValueError(f"missing {label(key)!r}; got keys {sorted(arrays)}")
    w_ih, w_hh = arrays["weight_ih_l0"], arrays["weight_hh_l0"]
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise ValueError(
            f"{label('weight_ih_l0')} {w_ih.shape} and {label('weight_hh_l0')} {w_hh.shape} "
            "must both be 2-D"
        )
    hidden = w_hh.shape[1]
    gates, rest = divmod(w_ih.shape[0], hidden) if hidden else (0, 1)
    if rest or gates not in _CELL_OF:
        raise ValueError(
            f"cannot infer the cell: {label('weight_ih_l0')} {w_ih.shape} is not 1, 3 or 4 gate "
            f"blocks of hidden size {hidden} (from {label('weight_hh_l0')} {w_hh.shape})"
        )
    inferred = _CELL_OF[gates]
    if cell is not None and cell != inferred:
        if cell not in GATES:
            raise ValueError(f"unknown cell {cell!r}; valid choices: {sorted(GATES)}")
        raise ValueError(
            f"cell={cell!r} expects {GATES[cell]} gate blocks, but {label('weight_ih_l0')} "
            f"{w_ih.shape} with hidden size {hidden} has {gates} ({inferred!r})"
        )
    return inferred, gates, hidden


def from_torch(state_dict: Mapping[str, Any], *, cell: str | None = None) -> dict[str, Any]:
    """PyTorch RNN/LSTM/GRU state dict -> params of ``Stacked`` (see the module docstring).

    num_layers, bidirectionality and (unless given, then checked) the cell are inferred from
    the keys and shapes. A ``bias=False`` state dict gets zero biases. Values are jax arrays
    with the input's dtype (float64 only under jax_enable_x64). Raises ValueError naming any
    unsupported, missing or mis-shaped key.
    """
    arrays = {key: _to_numpy(key, value) for key, value in state_dict.items()}
    _, num_layers, bidirectional = _check_layout(arrays, cell)
    gate_width = arrays["weight_hh_l0"].shape[0]
    params: dict[str, Any] = {}
    for k in range(num_layers):
        directions = {}
        for suffix, direction in _DIRECTIONS[: 2 if bidirectional else 1]:
            w_ih = arrays[f"weight_ih_l{k}{suffix}"]
            zeros = np.zeros((gate_width,), w_ih.dtype)
            directions[direction] = {
                "w_ih": jnp.asarray(w_ih.T),
                "w_hh": jnp.asarray(arrays[f"weight_hh_l{k}{suffix}"].T),
                "b_ih": jnp.asarray(arrays.get(f"bias_ih_l{k}{suffix}", zeros)),
                "b_hh": jnp.asarray(arrays.get(f"bias_hh_l{k}{suffix}", zeros)),
            }
        params[f"layer_{k}"] = directions if bidirectional else directions["forward"]
    return params


def to_torch(
    params: Mapping[str, Any], *, cell: str | None = None, bias: bool = True
) -> dict[str, torch.Tensor]:
    """Params of ``Stacked`` (or of one ``Recurrent``/``Bidirectional``) -> torch state dict.

    The exact inverse of ``from_torch``: ``to_torch(from_torch(sd))`` equals ``sd``
    bit-for-bit. ``bias=False`` writes the state dict of a ``bias=False`` module (no bias
    keys; every bias must be zero, as ``from_torch`` of such a module gives). Accepts a
    ``{"params": ...}`` variables dict too. Returns CPU ``torch.Tensor``s.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "fnn_jax.interop.to_torch needs PyTorch; install it (pip install torch) or the "
            "test extra (pip install 'fnn_jax[test]')"
        ) from error
    if set(params) == {"params"}:
        params = params["params"]
    if "w_ih" in params or "forward" in params:  # a single layer
        params = {"layer_0": params}
    arrays, where = _torch_named_arrays(params)
    _check_layout(arrays, cell, where)
    if not bias:
        biases = [key for key in arrays if key.startswith("bias")]
        nonzero = [where[key] for key in biases if np.any(arrays[key])]
        if nonzero:
            raise ValueError(f"bias=False, but these biases are not zero: {nonzero}")
        arrays = {key: value for key, value in arrays.items() if key not in biases}

    def tensor(a: np.ndarray) -> torch.Tensor:
        if a.dtype == jnp.bfloat16:  # exact: every bfloat16 is a float32
            return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a))

    return {key: tensor(a) for key, a in arrays.items()}


def _torch_named_arrays(
    params: Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """{torch key: transposed array} and {torch key: the param path it came from}."""
    num_layers = len(params)
    expected_layers = {f"layer_{k}" for k in range(num_layers)}
    if set(params) != expected_layers:
        raise ValueError(
            f"expected params keys layer_0..layer_{num_layers - 1}; got {sorted(params)}"
        )
    arrays: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for k in range(num_layers):
        layer = params[f"layer_{k}"]
        bidirectional = "forward" in layer or "backward" in layer
        if bidirectional and set(layer) != {"forward", "backward"}:
            raise ValueError(f"layer_{k} must hold forward and backward; got {sorted(layer)}")
        for suffix, direction in _DIRECTIONS[: 2 if bidirectional else 1]:
            path = f"layer_{k}/{direction}" if bidirectional else f"layer_{k}"
            group = layer[direction] if bidirectional else layer
            for torch_name, name in _TO_PARAM.items():
                if name not in group:
                    raise ValueError(f"missing {path}/{name}; got {sorted(group)}")
                key = f"{torch_name}_l{k}{suffix}"
                arrays[key] = _to_numpy(f"{path}/{name}", group[name]).T
                where[key] = f"{path}/{name} (transposed, as {key})"
            extra = set(group) - set(_TO_PARAM.values())
            if extra:
                raise ValueError(f"unsupported params under {path}: {sorted(extra)}")
    if any(k.endswith("_reverse") for k in arrays) and not all(
        "forward" in params[f"layer_{k}"] for k in range(num_layers)
    ):
        raise ValueError("either every layer is bidirectional (forward/backward) or none is")
    return arrays, where
