"""Flax Linen layers: they own the parameters and call the pure cells and ``scan``."""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from fnn_jax import cells
from fnn_jax.cells import CellSpec, regularize, resolve_scan_impl
from fnn_jax.scan import check_sequence, scan

Array = jax.Array


def hoists_inputs(setting: bool | None) -> bool:
    """Whether to compute x_t W_ih for all steps as one matmul before the time loop.

    Measured by experiments/bench.py: on XLA:CPU the [time, batch, gates*hidden] projection
    leaves the cache and costs more than it saves (LSTM forward+backward 1.35x slower at
    batch 64, length 256, hidden 256), so the default (None) hoists only on accelerators.
    """
    return jax.default_backend() != "cpu" if setting is None else setting


def _check_initial_carry(carry: Any, zeros: Any) -> None:
    """``carry`` must have the leaves and shapes of ``zeros`` (the layer's own initial carry)."""
    got = [tuple(jnp.shape(leaf)) for leaf in jax.tree.leaves(carry)]
    want = [tuple(leaf.shape) for leaf in jax.tree.leaves(zeros)]
    if got != want:
        raise ValueError(
            f"initial_carry has leaf shapes {got}; expected {want}, i.e. [batch, ...] "
            f"per leaf of {type(zeros).__name__} (xs is [batch, time, features], batch first)"
        )


class CellOptions(nn.Module):
    """Fields shared by every layer that builds a cell (a base class, not a layer).

    ``options``: the settings the cell declares (``CellSpec.options``, e.g. elman's
    ``{"activation": "relu"}``, equilibrium's ``solver``, a ``cells.fixed_point.Solver``),
    by name; what is not given takes the cell's own default, and a name the cell does not
    declare is an error. ``output_size`` applies to the cells whose spec takes one (jordan,
    lru); ``scan_impl`` picks the time loop (see cells.resolve_scan_impl).
    """

    cell: str = "lstm"
    hidden_size: int = 128
    options: Any = None  # a mapping of the cell's declared options; None: its defaults
    output_size: int | None = None
    recurrent_dropout: float = 0.0  # variational: one mask per sequence (cells.regularize)
    zoneout: float = 0.0  # lstm, gru: probability a unit keeps its previous value (lstm:
    # h and c each draw their own mask, at this rate)
    unroll: int | None = None  # lax.scan unroll; None: the cell's own (CellSpec.unroll)
    remat: bool = False
    hoist_inputs: bool | None = None  # None: hoist except on CPU (see hoists_inputs)
    scan_impl: str = "sequential"  # "associative" (lru, mingru) or "auto": resolve_scan_impl
    # As in Flax: the computation's dtype (None: the inputs' and parameters' promoted dtype),
    # and the parameters' (bfloat16 compute on float32 parameters is mixed precision).
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if isinstance(self.options, dict):  # hashable, as a module used by jit must be
            object.__setattr__(self, "options", flax.core.FrozenDict(self.options))
        super().__post_init__()

    def cell_fields(self) -> dict[str, Any]:
        skip = ("parent", "name")
        return {f: getattr(self, f) for f in CellOptions.__dataclass_fields__ if f not in skip}


class Recurrent(CellOptions):
    """One recurrent layer over [batch, time, features].

    Calling it returns (final carry, ys [batch, time, output]), as Bidirectional and Stacked
    do. ``initial_carry`` (default zeros) has leaves [batch, carry size].
    """

    reverse: bool = False

    @property
    def spec(self) -> CellSpec:
        return cells.get(self.cell)

    @property
    def output_features(self) -> int:
        return self.spec.output_features(self.hidden_size, self.output_size)

    def _options(self, function: str) -> dict[str, Any]:
        """The cell's declared options that ``function`` takes (CellSpec.keywords)."""
        spec = self.spec
        return spec.keywords(spec.option_values(self.options), function)

    def _params(self, input_size: int) -> dict[str, Array]:
        module = self.spec
        options = self._options("init_params")
        if module.output_size and self.output_size is not None:
            options["output_size"] = self.output_size
        init = functools.partial(
            module.init_params,
            input_size=input_size,
            hidden_size=self.hidden_size,
            dtype=self.param_dtype,
            **options,
        )
        names = jax.eval_shape(init, jax.random.key(0)).keys()
        return {n: self.param(n, lambda key, n=n: init(key)[n]) for n in names}

    def initial_carry(self, batch_size: int, dtype: Any = jnp.float32) -> Any:
        """Zeros for ``batch_size`` sequences, in the carry dtype of a cell run in ``dtype``."""
        spec = self.spec
        size = spec.carry_size(self.hidden_size, self.output_size)
        return spec.init_carry((batch_size,), size, dtype=spec.carry_dtype(dtype))

    @nn.compact
    def __call__(
        self,
        xs: Array,
        lengths: Array | None = None,
        initial_carry: Any = None,
        resets: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[Any, Array]:
        """``deterministic=False`` (training) draws recurrent-dropout and zoneout masks from
        the "dropout" rng; evaluation runs the plain cell (zoneout: its expectation).
        ``resets`` [batch, time] bool restarts the carry from zeros where a new document
        starts (fnn_jax.scan; a linear recurrence's associative scan zeroes its decay
        there)."""
        check_sequence(xs, lengths)
        module = self.spec
        self._check_regularization(module)
        if self.has_variable("params", module.input_weight):
            expected = self.get_variable("params", module.input_weight).shape[0]
            if xs.shape[-1] != expected:
                raise ValueError(
                    f"xs has shape {tuple(xs.shape)}; expected [batch, time, {expected}] "
                    f"(input size of layer '{'/'.join(self.scope.path) or self.name}')"
                )
        params = self._params(xs.shape[-1])
        dtype = self.dtype or jnp.result_type(xs.dtype, *(p.dtype for p in params.values()))
        compute = module.compute_dtype(dtype)
        params = {name: p.astype(compute) for name, p in params.items()}
        xs = xs.astype(compute)
        zeros = self.initial_carry(xs.shape[0], compute)
        if initial_carry is not None:
            _check_initial_carry(initial_carry, zeros)
        carry = zeros if initial_carry is None else initial_carry
        if module.prepare is not None:
            params = module.prepare(params, **self._options("prepare"))
        sequential = bool(self.recurrent_dropout or self.zoneout)
        if resets is not None and module.summarize is not None:
            raise ValueError(
                f"resets: cell {module.name!r} keeps per-sequence solver statistics in its "
                "carry; rows holding several documents are not supported"
            )
        if resolve_scan_impl(module, self.scan_impl) == "associative" and not sequential:
            run = dict(lengths=lengths, reverse=self.reverse)
            if resets is not None:
                run["resets"] = resets
            carry, ys = module.parallel(params, carry, xs, **run)
        else:
            carry, ys = self._time_loop(module, params, carry, xs, lengths, deterministic, resets)
        if module.summarize is not None:
            summary = module.summarize(carry, **self._options("summarize"))
            self.sow("diagnostics", "solver", summary)
        ys = ys.astype(dtype)  # a complex-state cell asked for bfloat16 ran in float32
        return carry, ys

    def _check_regularization(self, module: CellSpec) -> None:
        for name in ("recurrent_dropout", "zoneout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {rate!r}")
        if self.zoneout and not module.zoneout:
            raise ValueError(f"zoneout applies to lstm and gru; cell {module.name!r} has none")
        if (self.recurrent_dropout or self.zoneout) and self.scan_impl == "associative":
            raise ValueError(
                "recurrent_dropout and zoneout act inside the time loop: use "
                "scan_impl='sequential' or 'auto', not 'associative'"
            )

    def _time_loop(  # noqa: PLR0913, PLR0917 (one call site: __call__)
        self, module: CellSpec, params: Any, carry: Any, xs: Array, lengths, deterministic, resets
    ) -> tuple[Any, Array]:
        """``fnn_jax.scan`` of the cell's step, with recurrent dropout and zoneout."""
        step_options = self._options("step")
        if module.summarize is not None:
            step_options["check"] = False  # checked once per sequence, in __call__
        zoneout_masks = bool(self.zoneout) and not deterministic  # they ride with the inputs
        hoist = hoists_inputs(self.hoist_inputs) and not zoneout_masks
        step = functools.partial(module.step_projected if hoist else module.step, **step_options)
        if self.recurrent_dropout and not deterministic:
            key_x, key_h = jax.random.split(self.make_rng("dropout"))
            rate, (batch, features) = self.recurrent_dropout, (xs.shape[0], xs.shape[-1])
            xs = xs * regularize.dropout_mask(key_x, (batch, features), rate, xs.dtype)[:, None]
            mask = regularize.dropout_mask(key_h, jnp.shape(carry[0]), rate, xs.dtype)
            step = regularize.with_state_dropout(step, mask)
        if self.zoneout:
            features = xs.shape[-1]
            if zoneout_masks:  # one independent mask per carry leaf (lstm: h and c)
                sizes = [jnp.shape(leaf)[-1] for leaf in jax.tree.leaves(carry)]
                key = self.make_rng("dropout")
                xs = regularize.pack_zoneout_masks(key, xs, sizes, self.zoneout)
            step = regularize.with_zoneout(step, self.zoneout, features if zoneout_masks else None)
        unroll = self.unroll or module.unroll
        run = dict(lengths=lengths, reverse=self.reverse, unroll=unroll, remat=self.remat)
        project = module.project_inputs if hoist else None
        zeros = self.initial_carry(xs.shape[0], xs.dtype) if resets is not None else None
        return scan(
            step, params, carry, xs, project=project, resets=resets, reset_carry=zeros, **run
        )


class Bidirectional(CellOptions):
    """A forward and a reverse Recurrent layer; outputs concatenated [batch, time, 2*output]."""

    @nn.compact
    def __call__(
        self, xs: Array, lengths: Array | None = None, *, deterministic: bool = True
    ) -> tuple[Any, Array]:
        fields = self.cell_fields()
        fw_carry, fw = Recurrent(**fields, name="forward")(xs, lengths, deterministic=deterministic)
        bw_carry, bw = Recurrent(**fields, reverse=True, name="backward")(
            xs, lengths, deterministic=deterministic
        )
        return (fw_carry, bw_carry), jnp.concatenate([fw, bw], axis=-1)


class Stacked(CellOptions):
    """num_layers recurrent layers (each bidirectional or not), dropout between them.

    Submodules are ``layer_0`` ... ``layer_{n-1}``. Returns (final carries, one per layer,
    ys [batch, time, output] of the top layer).
    """

    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        xs: Array,
        lengths: Array | None = None,
        initial_carries: list[Any] | None = None,
        resets: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[list[Any], Array]:
        """``initial_carries``: one per layer (default zeros), e.g. the carries a previous
        window of the same rows returned (truncated BPTT); ``resets`` as Recurrent's."""
        fields = self.cell_fields()
        stateful = initial_carries is not None or resets is not None
        if stateful and self.bidirectional:
            raise ValueError(
                "initial_carries and resets carry state forward in time: not bidirectional"
            )
        if initial_carries is not None and len(initial_carries) != self.num_layers:
            raise ValueError(
                f"initial_carries has {len(initial_carries)} entries; expected one per layer "
                f"({self.num_layers})"
            )
        carries = []
        for i in range(self.num_layers):
            if i > 0 and self.dropout > 0:
                xs = nn.Dropout(self.dropout)(xs, deterministic=deterministic)
            name = f"layer_{i}"
            if self.bidirectional:
                carry, xs = Bidirectional(**fields, name=name)(
                    xs, lengths, deterministic=deterministic
                )
            else:
                carry0 = None if initial_carries is None else initial_carries[i]
                carry, xs = Recurrent(**fields, name=name)(
                    xs, lengths, carry0, resets, deterministic=deterministic
                )
            carries.append(carry)
        return carries, xs
