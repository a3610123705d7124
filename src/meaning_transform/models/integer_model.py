"""The integer coding model: what a decoder needs to compute the coding distributions, exactly.

A trained ``LosslessCodec`` computes its probabilities in float32, and other CPU kernels, thread
counts, torch versions or a GPU give other floats, so ANS streams coded on one machine do not
decode on another. ``IntegerModel`` is its decoder side after post-training quantization
(``integer_export.py``; Balle, Johnston and Minnen, ICLR 2019, "Integer networks for data
compression with latent-variable models"), computed only with integer arithmetic that every
machine does identically (``fixed_point.py``):

- **inputs** are integers in units of ``2**-INPUT_BITS``: the latent's integer offsets from the
  bottleneck's centers (the centers are folded into the first layer's bias), the previous state
  from its grid symbols (``StateInput``: one-hot categories, 0/1 flags, continuous features as
  ``(cell * a + b) >> shift`` with the cells that predicate thresholds split looked up in a
  table), the flag, the capped unchanged counts and the parities (exact: ``RUN_CAP`` is 2**5);
- **layers** (``IntLayer``): integer weights (``WeightBits``, symmetric per output row), an
  exact float64 product (``exact_matmul``; ``check`` proves every partial sum is an integer
  below 2**50 from the stored weights and the inputs' clamps), a per-row integer multiplier and
  shift to the output's unit, an integer bias (in ``2**bias_shift`` output units), ReLU as the
  clamp ``[0, 2**ACT_BITS - 1]``;
- **heads** (``IntHead``): the same for the coefficients, then the absolute head's smooth bins
  through the integer cosine table, giving integer logits in units of 2**-10 bits, and the
  integer softmax with the float model's floor (``fixed_point.frequencies``): integer weights
  ``q`` that constriction codes with frequencies ``q + 1`` out of 2**24, unchanged;
- **latent tables**: each channel's integer weights over its support, computed once at export
  from the bottleneck's density (CompressAI's ``update()``), escapes beyond as before.

Every size and every bound is checked by ``check`` (at export and when bytes are read), so a
model that passes cannot overflow int64 or lose float64 exactness. The encoder that computes z
stays float (``LosslessCodec.encode``): z is transmitted, only the decoder side must agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from meaning_transform.data.context import steps_unchanged
from meaning_transform.models.bottlenecks.coding import CodingTables
from meaning_transform.models.fixed_point import (
    BIAS_LIMIT,
    COS_BITS,
    LOGIT_BITS,
    PRECISION,
    check_exact,
    check_requantize,
    cosine_table,
    exact_matmul,
    frequencies,
    magnitude,
    product_bound,
    requantize,
)
from meaning_transform.models.lossless import FLOOR, RUN_CAP, HeadLayout

#: integer inputs are in units of 2**-INPUT_BITS (normalized units, flags, latent steps)
INPUT_BITS = 8
#: inputs are clamped to +-INPUT_MAX (256 std for continuous features)
INPUT_MAX = 1 << (INPUT_BITS + 8)
#: latent offsets past +-LATENT_MAX are clamped before they enter the network
LATENT_MAX = 1 << 8
#: hidden activations are integers in [0, 2**ACT_BITS - 1]
ACT_BITS = 24
#: head coefficients and logits are clamped to +-LOGIT_MAX (256 bits)
LOGIT_MAX = 1 << (LOGIT_BITS + 8)
#: every bin's frequency is at least FLOOR_WEIGHT / 2**24 (the float model's FLOOR)
FLOOR_WEIGHT = round(FLOOR * 2**PRECISION)
#: the encoder's latent is in units of 2**-LATENT_FRAC_BITS; offsets are within +-OFFSET_MAX
LATENT_FRAC_BITS = 12
OFFSET_MAX = 1 << 24
#: continuous cells are clamped to +-CELL_MAX before ``cell * a + b`` (|a| <= 2**30, |b| <= 2**61)
CELL_MAX = 1 << 31
CONTEXTS = (None, "previous", "history")
assert RUN_CAP == 1 << 5 and FLOOR_WEIGHT >= 1  # runs scale exactly into INPUT_BITS


@dataclass(frozen=True, eq=False)
class IntLayer:
    """``clip(round(x @ weight.T * mult / 2**shift) + bias * 2**bias_shift, lo, hi)`` per
    output row."""

    weight: np.ndarray  # int64 [out, in]
    bias: np.ndarray  # int64 [out], in the output's unit
    mult: np.ndarray  # int64 [out], 0 <= mult < 2**MULT_BITS
    shift: np.ndarray  # int64 [out], -62 <= shift <= 62 (negative: a left shift)
    lo: int
    hi: int
    bias_shift: int = 0  # the biases are in units of 2**bias_shift output units

    @cached_property
    def weight_t(self) -> np.ndarray:
        """The weights transposed, as the float64 ``exact_matmul`` takes."""
        return np.ascontiguousarray(self.weight.T, dtype=np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """int64 [B, in] -> int64 [B, out]."""
        acc = exact_matmul(x, self.weight_t)
        return requantize(acc, self.mult, self.shift, self._bias, self.lo, self.hi)

    @cached_property
    def _bias(self) -> np.ndarray:
        return self.bias << self.bias_shift

    def check(self, x_max: np.ndarray, what: str) -> np.ndarray:
        """Raise ValueError unless inputs bounded by ``x_max`` keep every product exact and
        every intermediate of ``requantize`` in int64; the outputs' bound."""
        out, width = self.weight.shape
        if len(x_max) != width or any(len(a) != out for a in (self.bias, self.mult, self.shift)):
            raise ValueError(f"{what}: shapes do not fit")
        bound = product_bound(self.weight, x_max)
        check_exact(float(bound.max(initial=0)), what)
        if (
            not 0 <= self.bias_shift <= 40
            or (magnitude(self.bias) * 2.0**self.bias_shift > BIAS_LIMIT).any()
        ):
            raise ValueError(f"{what}: biases out of range")  # (before they are shifted)
        check_requantize(bound, self.mult, self.shift, self._bias, what)
        if not -(1 << 62) < self.lo <= self.hi < 1 << 62:
            raise ValueError(f"{what}: clamp out of range")
        return np.full(out, max(abs(self.lo), abs(self.hi)), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class StateInput:
    """Grid symbols [B, F] -> the network's integer view of that state [B, columns].

    Column c reads feature ``source[c]``: one-hot (``symbol == a[c]``, times 2**INPUT_BITS) or
    ``(cell * a[c] + b[c]) >> shift[c]`` where ``cell`` is the symbol less the predicate
    crossings it has passed (``keys``: the grid's crossing keys, the same integers as
    ``MeaningGrid._midpoint_tables``); symbols in ``split`` (cells a threshold splits) take
    ``split_x`` instead. Binary features: a = 2**INPUT_BITS, b = 0, no keys.
    """

    source: np.ndarray  # int64 [C]
    onehot: np.ndarray  # bool [C]
    a: np.ndarray  # int64 [C]
    b: np.ndarray  # int64 [C]
    shift: np.ndarray  # int64 [C]
    keys: tuple[np.ndarray, ...]  # per feature, sorted int64
    split: tuple[np.ndarray, ...]  # per feature, sorted unique int64 symbols
    split_x: tuple[np.ndarray, ...]  # per feature, their input values

    @property
    def num_features(self) -> int:
        """Features of a state."""
        return len(self.keys)

    @cached_property
    def _plan(self) -> tuple[np.ndarray, np.ndarray, list[int], list[tuple[int, int]]]:
        """(one-hot columns, linear columns, features with keys, (feature, its linear column)
        of the features with split cells)."""
        linear = np.flatnonzero(~self.onehot)
        column = {int(self.source[c]): int(c) for c in linear}
        return (
            np.flatnonzero(self.onehot),
            linear,
            [f for f, k in enumerate(self.keys) if len(k)],
            [(f, column[f]) for f, t in enumerate(self.split) if len(t) and f in column],
        )

    def __call__(self, symbols: np.ndarray) -> np.ndarray:
        """int64 [B, F] symbols -> int64 [B, C] inputs, each within +-INPUT_MAX."""
        onehot, linear, keyed, split = self._plan
        out = np.empty((len(symbols), len(self.source)), dtype=np.int64)
        src = self.source
        out[:, onehot] = (symbols[:, src[onehot]] == self.a[onehot]).astype(np.int64) << INPUT_BITS
        cells = symbols.copy()
        for f in keyed:  # (array methods: the numpy functions' wrappers cost per wave)
            cells[:, f] -= self.keys[f].searchsorted(symbols[:, f], side="right")
        cells = np.minimum(np.maximum(cells[:, src[linear]], -CELL_MAX), CELL_MAX)
        x = (cells * self.a[linear] + self.b[linear]) >> self.shift[linear]
        out[:, linear] = np.minimum(np.maximum(x, -INPUT_MAX), INPUT_MAX)
        for f, c in split:  # cells a predicate threshold splits: their own inputs
            table, s = self.split[f], symbols[:, f]
            at = np.minimum(table.searchsorted(s), len(table) - 1)
            rows = (table[at] == s).nonzero()[0]
            out[rows, c] = self.split_x[f][at[rows]]
        return out

    def bounds(self) -> np.ndarray:
        """Largest magnitude of each column (what ``__call__`` clamps to)."""
        return np.where(self.onehot, 1 << INPUT_BITS, INPUT_MAX).astype(np.int64)

    def check(self) -> None:
        """Raise ValueError unless every array fits the others and the overflow bounds."""
        c, f = len(self.source), self.num_features
        if any(len(x) != c for x in (self.onehot, self.a, self.b, self.shift)):
            raise ValueError("state input: column arrays differ in length")
        if len(self.split) != f or len(self.split_x) != f:
            raise ValueError("state input: per-feature tables differ in number")
        if c and (self.source.min() < 0 or self.source.max() >= f):
            raise ValueError("state input: a column reads no feature")
        linear = ~self.onehot
        if (magnitude(self.a[linear]) > 1 << 30).any() or (
            magnitude(self.b[linear]) > 1 << 61
        ).any():
            raise ValueError("state input: multiplier or offset out of range")
        if ((self.shift < 0) | (self.shift > 62)).any():
            raise ValueError("state input: shift out of range")
        for keys, split, x in zip(self.keys, self.split, self.split_x, strict=True):
            if (magnitude(keys) > 2.0**40).any() or (magnitude(split) > 2.0**40).any():
                raise ValueError("state input: crossing or split tables out of range")
            if len(split) != len(x) or (np.diff(keys) < 0).any() or (np.diff(split) <= 0).any():
                raise ValueError("state input: crossing or split tables are not sorted")
            if (magnitude(x) > INPUT_MAX).any():
                raise ValueError("state input: split-cell input out of range")


@dataclass(frozen=True, eq=False)
class IntHead:
    """Hidden activations -> per-feature integer weights over one HeadLayout's bins.

    ``coef`` gives, per feature, ``coefs[f]`` coefficients (feature order), then one escape logit
    per feature with an escape bin; a feature's bin logits are its coefficients times the
    integer cosine table (``coefs[f] == n[f]``: the coefficients are the logits).
    """

    coef: IntLayer
    layout: HeadLayout
    coefs: np.ndarray  # int64 [F]

    @cached_property
    def _columns(self) -> list[tuple[int, int, int]]:
        """(first coefficient column, coefficients, escape column or -1) per feature."""
        starts = np.cumsum([0, *self.coefs.tolist()])
        esc = iter(range(int(starts[-1]), int(starts[-1]) + int(self.layout.escape.sum())))
        return [
            (int(starts[f]), int(self.coefs[f]), next(esc) if self.layout.escape[f] else -1)
            for f in range(len(self.coefs))
        ]

    @cached_property
    def _bases(self) -> list[np.ndarray | None]:
        """Per feature, the float64 cosine table (None: free logits)."""
        return [
            cosine_table(n, m).astype(np.float64) if m < n else None
            for n, m in zip(self.layout.n.tolist(), self.coefs.tolist(), strict=True)
        ]

    @cached_property
    def _padded(self) -> np.ndarray | None:
        """[F, width] columns of ``coef``'s output holding each feature's logits (bins, then
        escape; past its size: a padding column), or None when the head has smooth bins or
        padding would more than double the work (then one feature at a time)."""
        sizes = self.layout.size
        width = max(int(sizes.max(initial=1)), 2)
        if any(b is not None for b in self._bases) or len(sizes) * width > 2 * sizes.sum():
            return None
        pad = len(self.coef.bias)  # the column ``groups`` appends
        index = np.full((len(sizes), width), pad, dtype=np.int64)
        for f, (start, m, esc) in enumerate(self._columns):
            index[f, :m] = np.arange(start, start + m)
            if esc >= 0:
                index[f, m] = esc
        return index

    def logits(self, c: np.ndarray, f: int) -> np.ndarray:
        """Coefficients [B, out] -> feature f's logits [B, size] (units of 2**-LOGIT_BITS bits)."""
        start, m, esc = self._columns[f]
        basis = self._bases[f]
        bins = c[:, start : start + m]
        if basis is not None:  # |c| <= LOGIT_MAX, |cos| <= 2**COS_BITS, m terms: exact
            acc = exact_matmul(bins, basis)
            bins = (acc + (1 << (COS_BITS - 1))) >> COS_BITS
        return np.concatenate([bins, c[:, esc : esc + 1]], axis=1) if esc >= 0 else bins

    def groups(self, c: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
        """Coefficients [B, out] (``coef(h)``) -> the head's coding groups: (features, int64
        weights [B, len(features), width]); constriction codes bin i with frequency q_i + 1 out
        of 2**24. A narrow head is one group of all its features, padded to one width (one
        coder call per block); a wide one a group per feature of two bins or more."""
        index = self._padded
        sizes = self.layout.size
        if index is None:
            return [
                ([f], frequencies(self.logits(c, f), FLOOR_WEIGHT)[:, None, :])
                for f in range(len(sizes))
                if sizes[f] >= 2
            ]
        pad = np.full((len(c), 1), -(LOGIT_MAX << 2), dtype=np.int64)
        q = frequencies(np.concatenate([c, pad], axis=1)[:, index], FLOOR_WEIGHT, sizes)
        return [(list(range(len(sizes))), q)]

    def check(self, x_max: np.ndarray, what: str) -> None:
        """Raise ValueError unless the layout, the coefficient layer and the bases fit."""
        layout, f = self.layout, len(self.coefs)
        if any(len(a) != f for a in (layout.lo, layout.n, layout.escape, layout.modulo)):
            raise ValueError(f"{what}: layout arrays differ in length")
        if (layout.n < 1).any() or (self.coefs < 1).any() or (self.coefs > layout.n).any():
            raise ValueError(f"{what}: bins or coefficients out of range")
        if (magnitude(layout.lo) > 1 << 40).any():
            raise ValueError(f"{what}: lowest bins out of range")
        if ((layout.modulo < 0) | (layout.modulo > layout.n)).any():
            raise ValueError(f"{what}: modulo out of range")
        if int(self.coefs.sum() + layout.escape.sum()) != len(self.coef.bias):
            raise ValueError(f"{what}: coefficient count does not fit its layout")
        bound = self.coef.check(x_max, what)
        if bound.max(initial=0) > LOGIT_MAX:
            raise ValueError(f"{what}: logits are not clamped to +-{LOGIT_MAX}")
        check_exact(float(self.coefs.max(initial=0)) * LOGIT_MAX * (1 << COS_BITS), what)


def context_input(
    state: StateInput, context: str | None, prev: np.ndarray, flag: np.ndarray, runs: np.ndarray
) -> list[np.ndarray]:
    """The context's integer input columns (none without context): the previous state (zero
    without one), the flag, and for ``history`` the capped counts and the parities, in units
    of 2**-INPUT_BITS (``LosslessCodec.context_input`` in integers)."""
    if context is None:
        return []
    f = flag.astype(np.int64)[:, None]
    parts = [state(prev) * f, f << INPUT_BITS]
    if context == "history":
        capped = (np.minimum(runs, RUN_CAP) << INPUT_BITS) // RUN_CAP
        parts += [capped, ((prev & 1) * f) << INPUT_BITS]
    return parts


def context_bounds(state: StateInput, context: str | None) -> np.ndarray:
    """Largest magnitude of each ``context_input`` column."""
    if context is None:
        return np.zeros(0, dtype=np.int64)
    extra = 1 + (2 * state.num_features if context == "history" else 0)
    return np.concatenate([state.bounds(), np.full(extra, 1 << INPUT_BITS)]).astype(np.int64)


def run_layers(layers: tuple[IntLayer, ...], x: np.ndarray) -> np.ndarray:
    """``x`` through each layer in turn."""
    for layer in layers:
        x = layer(x)
    return x


def check_layers(layers: tuple[IntLayer, ...], x_max: np.ndarray, what: str) -> np.ndarray:
    """Check hidden layers on inputs within ``x_max`` (ReLU clamps); their output bound."""
    if not layers:
        raise ValueError(f"{what} has no layers")
    for i, layer in enumerate(layers):
        x_max = layer.check(x_max, f"{what} layer {i + 1}")
        if layer.lo < 0 or layer.hi >= 1 << ACT_BITS:
            raise ValueError(f"{what} layer {i + 1}: activations out of range")
    return x_max


@dataclass(frozen=True, eq=False)
class IntegerEncoder:
    """The float encoder in integers (compress side, not stored in files): grid symbols and
    context -> latent offsets from the bottleneck's centers, the same on every machine, so the
    bytes of a file do not depend on where it was written either."""

    context: str | None
    state: StateInput
    body: tuple[IntLayer, ...]
    out: IntLayer  # the latent in units of 2**-LATENT_FRAC_BITS, clamped
    centers: np.ndarray  # int64 [D], the bottleneck's centers in those units

    def offsets(self, symbols: np.ndarray, flag: np.ndarray) -> np.ndarray:
        """int64 [n, D] latent offsets of a chunk's rows (in (agent, step) order; ``flag``:
        row i - 1 is the same agent's previous state)."""
        flag = np.asarray(flag, dtype=bool) & (self.context is not None)
        prev = np.where(flag[:, None], np.roll(symbols, 1, axis=0), 0)
        runs = steps_unchanged(symbols, flag) if self.context == "history" else None
        parts = context_input(self.state, self.context, prev, flag, runs)
        mu = self.out(run_layers(self.body, np.concatenate([self.state(symbols), *parts], 1)))
        return (mu - self.centers + (1 << (LATENT_FRAC_BITS - 1))) >> LATENT_FRAC_BITS

    def check(self) -> None:
        """Raise ValueError unless every shape fits and every bound holds."""
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}")
        self.state.check()
        bounds = np.concatenate([self.state.bounds(), context_bounds(self.state, self.context)])
        top = self.out.check(check_layers(self.body, bounds, "encoder"), "encoder output")
        if len(self.centers) != len(self.out.bias) or (magnitude(self.centers) > OFFSET_MAX).any():
            raise ValueError("encoder: centers do not fit its output")
        if top.max(initial=0) > OFFSET_MAX << LATENT_FRAC_BITS:
            raise ValueError("encoder: output not clamped")

    def to_bytes(self) -> bytes:
        """The compact serialization (``integer_format.py``)."""
        from meaning_transform.models.integer_format import encoder_to_bytes

        return encoder_to_bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> IntegerEncoder:
        """Read ``to_bytes``'s bytes; ``IntegerModelError`` (one line) if they are not valid."""
        from meaning_transform.models.integer_format import encoder_from_bytes

        return encoder_from_bytes(data)


@dataclass(frozen=True, eq=False)
class IntegerModel:
    """The decoder side of a LosslessCodec and its latent tables, in integers (module docstring)."""

    context: str | None
    latent_lowest: np.ndarray  # int64 [D]: the lowest offset of each channel's table
    latent_weights: tuple[np.ndarray, ...]  # per channel int64 weights, sum 2**24 - len
    state: StateInput
    body: tuple[IntLayer, ...]
    absolute: IntHead
    delta: IntHead | None

    @property
    def num_features(self) -> int:
        """Features of a state (grid symbols per row)."""
        return self.state.num_features

    @property
    def latent_dim(self) -> int:
        """Latent channels per state."""
        return len(self.latent_lowest)

    @property
    def num_parameters(self) -> int:
        """Stored integers of the layers (weights, biases, multipliers, shifts)."""
        layers = [*self.body, self.absolute.coef, *([self.delta.coef] if self.delta else [])]
        return sum(layer.weight.size + 3 * len(layer.bias) for layer in layers)

    def layout(self, delta: bool) -> HeadLayout:
        """The absolute or the delta head's bins."""
        return self.head(delta).layout

    def head(self, delta: bool) -> IntHead:
        """The absolute or the delta head."""
        head = self.delta if delta else self.absolute
        if head is None:
            raise ValueError("this model has no context: no delta head")
        return head

    @cached_property
    def latent_tables(self) -> CodingTables:
        """The latent channels' coding tables (integer weights, kept exactly by constriction)."""
        pmfs = [w.astype(np.float64) for w in self.latent_weights]
        return CodingTables.from_pmfs(self.latent_lowest, pmfs)

    def latent_input(self, offsets: np.ndarray) -> np.ndarray:
        """Latent offsets [B, D] -> their integer network input (clamped)."""
        return np.clip(offsets, -LATENT_MAX, LATENT_MAX).astype(np.int64) << INPUT_BITS

    def inputs(
        self, offsets: np.ndarray, prev: np.ndarray, flag: np.ndarray, runs: np.ndarray
    ) -> np.ndarray:
        """The first layer's integer input [B, in]: latent, then the context (``context_input``)."""
        parts = [
            self.latent_input(offsets),
            *context_input(self.state, self.context, prev, flag, runs),
        ]
        return np.concatenate(parts, axis=1)

    def hidden(
        self, offsets: np.ndarray, prev: np.ndarray, flag: np.ndarray, runs: np.ndarray
    ) -> np.ndarray:
        """The decoder body's last activations [B, hidden] (see ``inputs``)."""
        return run_layers(self.body, self.inputs(offsets, prev, flag, runs))

    def input_bounds(self) -> np.ndarray:
        """Largest magnitude of each first-layer input column (what ``inputs`` clamps to)."""
        latent = np.full(self.latent_dim, LATENT_MAX << INPUT_BITS, dtype=np.int64)
        return np.concatenate([latent, context_bounds(self.state, self.context)])

    def check(self) -> None:
        """Raise ValueError unless every shape fits and every bound holds (module docstring)."""
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}")
        if (self.delta is None) != (self.context is None):
            raise ValueError("heads do not fit the context")
        if len(self.latent_weights) != self.latent_dim:
            raise ValueError("one latent table per channel")
        for w in self.latent_weights:
            if len(w) < 2 or (w < 0).any() or (w > 1 << PRECISION).any():
                raise ValueError("latent tables must sum to 2**24 less their length")
            if int(w.sum()) != (1 << PRECISION) - len(w):
                raise ValueError("latent tables must sum to 2**24 less their length")
        self.state.check()
        x_max = check_layers(self.body, self.input_bounds(), "decoder")
        for head in (self.absolute, self.delta):
            if head is not None:
                if len(head.coefs) != self.num_features:
                    raise ValueError("a head's features differ from the state's")
                head.check(x_max, "head")

    def to_bytes(self) -> bytes:
        """The compact serialization (``integer_format.py``); the same bytes every call."""
        if "_bytes" not in self.__dict__:
            from meaning_transform.models.integer_format import model_to_bytes

            self.__dict__["_bytes"] = model_to_bytes(self)
        return self.__dict__["_bytes"]

    @classmethod
    def from_bytes(cls, data: bytes) -> IntegerModel:
        """Read ``to_bytes``'s bytes; ``IntegerModelError`` (one line) if they are not valid."""
        from meaning_transform.models.integer_format import model_from_bytes

        model = model_from_bytes(data)
        model.__dict__["_bytes"] = bytes(data)
        return model

    @property
    def sha256(self) -> str:
        """SHA-256 of the serialized bytes: the model's name."""
        return hashlib.sha256(self.to_bytes()).hexdigest()
