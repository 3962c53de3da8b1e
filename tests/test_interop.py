"""fnn_jax.interop against PyTorch's own nn.RNN / nn.LSTM / nn.GRU."""

import jax.numpy as jnp
import numpy as np
import pytest

from fnn_jax.interop import from_torch, to_torch
from fnn_jax.layers import Stacked

torch = pytest.importorskip("torch")

INPUT, HIDDEN, BATCH, TIME = 5, 6, 4, 7
ATOL = 1e-5

# (cell, activation): the activation only matters for elman (nn.RNN's nonlinearity).
CELLS = [("elman", "tanh"), ("elman", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
CELL_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
# (num_layers, bidirectional)
LAYOUTS = [(1, False), (2, False), (2, True)]
LAYOUT_IDS = ["one_layer", "two_layers", "bidirectional_two_layers"]


def torch_module(
    cell: str, activation: str, num_layers: int, bidirectional: bool, **kwargs
) -> "torch.nn.Module":
    torch.manual_seed(0)
    options = dict(
        input_size=INPUT,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=True,
        **kwargs,
    )
    if cell == "elman":
        return torch.nn.RNN(nonlinearity=activation, **options)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](**options)


def inputs() -> "torch.Tensor":
    torch.manual_seed(1)
    return torch.randn(BATCH, TIME, INPUT, dtype=torch.float32)


def run_torch(module, x, lengths=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(ys [batch, time, features], h_n [layers*dirs, batch, hidden], c_n or None)."""
    with torch.no_grad():
        if lengths is None:
            ys, state = module(x)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, torch.tensor(lengths), batch_first=True, enforce_sorted=False
            )
            packed_ys, state = module(packed)
            ys, _ = torch.nn.utils.rnn.pad_packed_sequence(
                packed_ys, batch_first=True, total_length=TIME
            )
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    return ys.numpy(), h_n.numpy(), None if c_n is None else c_n.numpy()


def run_ours(cell, activation, params, x, *, num_layers=1, bidirectional=False, lengths=None):
    """Same triple as run_torch, carries flattened in torch's (layer, direction) order."""
    layer = Stacked(
        cell=cell,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        options={"activation": activation} if cell == "elman" else None,  # lstm, gru: none
    )
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    carries, ys = layer.apply({"params": params}, jnp.asarray(x.numpy()), lengths)
    flat = [c for carry in carries for c in (carry if bidirectional else (carry,))]
    h_n = np.stack([c.h for c in flat])
    c_n = np.stack([c.c for c in flat]) if cell == "lstm" else None
    return np.asarray(ys), h_n, c_n


def assert_same_outputs(ours, theirs) -> None:
    for name, a, b in zip(("ys", "h_n", "c_n"), ours, theirs, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, (name, a.shape, b.shape)
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize(("num_layers", "bidirectional"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize(("cell", "activation"), CELLS, ids=CELL_IDS)
def test_stacked_matches_torch_outputs_and_final_states(
    cell, activation, num_layers, bidirectional
):
    module = torch_module(cell, activation, num_layers, bidirectional)
    x = inputs()
    params = from_torch(module.state_dict(), cell=cell)
    ours = run_ours(cell, activation, params, x, num_layers=num_layers, bidirectional=bidirectional)
    assert_same_outputs(ours, run_torch(module, x))


@pytest.mark.parametrize(("cell", "activation"), CELLS, ids=CELL_IDS)
def test_padded_bidirectional_two_layers_match_torch_packed_sequence(cell, activation):
    # Bidirectional two layers covers both scan directions and masked inputs to layer 1.
    module = torch_module(cell, activation, 2, True)
    x = inputs()
    lengths = [3, TIME, 1, 5]  # unsorted, one full-length, one of length 1
    params = from_torch(module.state_dict())
    ours = run_ours(cell, activation, params, x, num_layers=2, bidirectional=True, lengths=lengths)
    theirs = run_torch(module, x, lengths)
    assert_same_outputs(ours, theirs)
    for b, n in enumerate(lengths):  # both are exactly zero past each length
        assert not ours[0][b, n:].any() and not theirs[0][b, n:].any()


@pytest.mark.parametrize(("cell", "activation"), CELLS, ids=CELL_IDS)
def test_no_bias_torch_layer_converts_to_zero_biases(cell, activation):
    module = torch_module(cell, activation, 1, False, bias=False)
    x = inputs()
    params = from_torch(module.state_dict())
    assert not params["layer_0"]["b_ih"].any() and not params["layer_0"]["b_hh"].any()
    ours = run_ours(cell, activation, params, x)
    assert_same_outputs(ours, run_torch(module, x))


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_a_bias_free_torch_module_round_trips_with_bias_false(cell):
    module = torch_module(cell, "tanh", 2, True, bias=False)
    state = module.state_dict()
    params = from_torch(state)
    back = to_torch(params, cell=cell, bias=False)
    assert back.keys() == state.keys()  # no bias keys
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    module.load_state_dict(back, strict=True)
    params["layer_1"]["backward"]["b_hh"] = params["layer_1"]["backward"]["b_hh"] + 1.0
    with pytest.raises(ValueError, match=r"bias=False, but .*layer_1/backward/b_hh"):
        to_torch(params, cell=cell, bias=False)


@pytest.mark.parametrize(("num_layers", "bidirectional"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_to_torch_inverts_from_torch_bit_for_bit(cell, num_layers, bidirectional):
    module = torch_module(cell, "tanh", num_layers, bidirectional)
    state = module.state_dict()
    back = to_torch(from_torch(state), cell=cell)
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    module.load_state_dict(back, strict=True)


def test_from_torch_accepts_numpy_and_keeps_dtype():
    state = torch_module("gru", "tanh", 1, False).state_dict()
    from_tensors = from_torch(state)
    from_numpy = from_torch({k: v.numpy().astype(np.float16) for k, v in state.items()})
    for name, value in from_tensors["layer_0"].items():
        assert value.dtype == jnp.float32 and from_numpy["layer_0"][name].dtype == jnp.float16
        np.testing.assert_array_equal(from_numpy["layer_0"][name], value.astype(jnp.float16))
    assert from_tensors["layer_0"]["w_ih"].shape == (INPUT, 3 * HIDDEN)
    assert from_tensors["layer_0"]["w_hh"].shape == (HIDDEN, 3 * HIDDEN)


def test_bfloat16_state_dict_round_trips_bit_for_bit():
    state = torch_module("lstm", "tanh", 2, True).to(torch.bfloat16).state_dict()
    params = from_torch(state)
    assert params["layer_1"]["backward"]["w_hh"].dtype == jnp.bfloat16
    back = to_torch(params)
    for key, value in state.items():
        assert back[key].dtype == torch.bfloat16 and torch.equal(back[key], value), key


def test_to_torch_treats_single_recurrent_params_as_layer_0():
    # A Recurrent layer's params are what Stacked holds under layer_0 (no bidirectional).
    params = from_torch(torch_module("lstm", "tanh", 1, False).state_dict())["layer_0"]
    assert set(params) == {"w_ih", "w_hh", "b_ih", "b_hh"}
    state = to_torch(params)
    assert sorted(state) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    np.testing.assert_array_equal(state["weight_ih_l0"].numpy(), np.asarray(params["w_ih"]).T)
    torch_module("lstm", "tanh", 1, False).load_state_dict(state, strict=True)


def test_proj_size_lstm_is_rejected_naming_weight_hr():
    torch.manual_seed(0)
    state = torch.nn.LSTM(INPUT, HIDDEN, proj_size=3).state_dict()
    with pytest.raises(ValueError, match="weight_hr_l0"):
        from_torch(state)


@pytest.mark.parametrize(("given", "actual"), [("gru", "lstm"), ("lstm", "elman")])
def test_cell_mismatch_is_rejected(given, actual):
    state = torch_module(actual, "tanh", 1, False).state_dict()
    with pytest.raises(ValueError, match=f"cell='{given}'.*'{actual}'"):
        from_torch(state, cell=given)
    with pytest.raises(ValueError, match=f"cell='{given}'"):
        to_torch(from_torch(state), cell=given)


def test_missing_key_is_rejected_naming_it():
    state = torch_module("lstm", "tanh", 2, True).state_dict()
    del state["weight_hh_l1_reverse"]
    with pytest.raises(ValueError, match=r"weight_hh_l1_reverse.*\(24, 6\)"):
        from_torch(state)


def test_inconsistent_shape_is_rejected_naming_key_and_shapes():
    state = torch_module("gru", "tanh", 2, False).state_dict()
    state["bias_ih_l1"] = torch.zeros(3 * HIDDEN + 1)
    with pytest.raises(ValueError, match=r"bias_ih_l1 has shape \(19,\); expected \(18,\)"):
        from_torch(state)
    params = from_torch(torch_module("gru", "tanh", 2, False).state_dict())
    params["layer_1"]["w_hh"] = params["layer_1"]["w_hh"][:, :-1]
    with pytest.raises(ValueError, match=r"layer_1/w_hh .* has shape \(17, 6\)"):
        to_torch(params)
