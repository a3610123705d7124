"""Post-training quantization: a trained LosslessCodec and its bottleneck -> IntegerModel (the
decoder side, which files carry) and IntegerEncoder (the compress side).

Data-free: every scale comes from the weights and from typical input ranges (normalized features
within +-TYPICAL_STD, 0/1 inputs, the latent tables' support), never from a calibration batch, so
the integer model is a function of the checkpoint. Activations have 24 bits, so a typical range
that overstates the real one 100x still leaves 2**17 levels below it.

- Each layer's weights are quantized per output row, symmetric, to its ``WeightBits``: the row's
  step is ``mult / 2**shift`` output units with ``mult`` in ``[2**4, 2**5)``, the smallest such
  step that keeps the row's largest weight within ``2**(bits - 1) - 1``, so the integer
  rescale is exact for the quantized weights; biases are rounded in the output's unit: hidden
  layers ``typical bound / (2**ACT_BITS - 1)`` (a common unit per layer), heads 2**-LOGIT_BITS
  bits (natural-log logits / ln 2).
- A BatchNorm after a Linear is folded into it; ReLU is the only activation the integer layers
  implement (others are refused with one line).
- The latent's median centers are folded into the first layer's bias; its float pmf tables
  (``EntropyBottleneck.coding_tables``) become integer weights over the same supports.

The export asserts every bound (``IntegerModel.check``) before returning.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from meaning_transform.models.fixed_point import BIAS_LIMIT, LOGIT_BITS, MULT_BITS, PRECISION
from meaning_transform.models.integer_model import (
    ACT_BITS,
    INPUT_BITS,
    LATENT_FRAC_BITS,
    LOGIT_MAX,
    OFFSET_MAX,
    IntegerEncoder,
    IntegerModel,
    IntHead,
    IntLayer,
    StateInput,
)

#: typical magnitude of a normalized continuous input, in std (sets activation units only)
TYPICAL_STD = 4.0


class WeightBits(NamedTuple):
    """Bits of a quantized weight (sign included) in each part of the decoder, which travels in
    every file. Measured on the shared databases (``benchmarks/integer_model.py``): the hidden
    layers are the most sensitive and the smallest part, the head that codes most states next;
    the absolute head of a model with context codes each agent's first state only."""

    body: int = 8
    head: int = 5
    first_state: int = 2


DEFAULT_BITS = WeightBits()
#: the encoder's weights are not stored in files: as precise as the bounds allow
ENCODER_BITS = 12


def export(
    codec: nn.Module, bottleneck: nn.Module, bits: WeightBits = DEFAULT_BITS
) -> IntegerModel:
    """The IntegerModel (decoder side) of a trained ``LosslessCodec`` and its bottleneck, with
    ``bits`` per weight (the absolute head of a model without context is its main head)."""
    for b in bits:
        _check_bits(b)
    state = state_input(codec)
    tables = bottleneck.coding_tables()
    lowest = np.asarray(tables.lowest, dtype=np.int64)
    latent_weights = tuple(integer_weights(np.asarray(p, dtype=np.float64)) for p in tables.pmfs)
    support = np.maximum(np.abs(lowest), np.abs(lowest + np.array(tables.sizes))) + 1
    layers = _float_layers(codec.decoder_body)
    w, b = layers[0]
    centers = bottleneck.centers.detach().double().cpu().numpy()
    layers[0] = (w, b + w[:, : codec.latent_dim] @ centers)  # the decoder reads offsets
    typical = np.concatenate([support * float(1 << INPUT_BITS), _typical_context(codec, state)])
    body, unit, typical = _hidden(layers, typical, bits.body)
    absolute_bits = bits.first_state if codec.context is not None else bits.head
    heads = [
        _head(head, layout, unit, typical, b) if head is not None else None
        for head, layout, b in (
            (codec.absolute_head, codec.absolute, absolute_bits),
            (codec.delta_head, codec.delta, bits.head),
        )
    ]
    model = IntegerModel(codec.context, lowest, latent_weights, state, body, heads[0], heads[1])
    model.check()
    return model


def export_encoder(
    codec: nn.Module, bottleneck: nn.Module, weight_bits: int = ENCODER_BITS
) -> IntegerEncoder:
    """The IntegerEncoder (compress side) of a trained ``LosslessCodec`` and its bottleneck."""
    _check_bits(weight_bits)
    state = state_input(codec)
    kinds = [codec.schema.features[j].kind for j in state.source.tolist()]
    own = np.array([_typical(k, o) for k, o in zip(kinds, state.onehot.tolist(), strict=True)])
    typical = np.concatenate([own, _typical_context(codec, state)])
    body, unit, typical = _hidden(_float_layers(codec.encoder_body), typical, weight_bits)
    w = codec.encoder_out.weight.detach().double().cpu().numpy() * unit
    b = codec.encoder_out.bias.detach().double().cpu().numpy()
    top = OFFSET_MAX << LATENT_FRAC_BITS
    out = _layer(w, b, typical, 2.0**-LATENT_FRAC_BITS, weight_bits, (-top, top))
    scale = float(1 << LATENT_FRAC_BITS)
    centers = np.rint(bottleneck.centers.detach().double().cpu().numpy() * scale).astype(np.int64)
    encoder = IntegerEncoder(codec.context, state, body, out, centers)
    encoder.check()
    return encoder


def _check_bits(weight_bits: int) -> None:
    if not 2 <= weight_bits <= 16:
        raise ValueError(f"weight_bits must be in 2..16, got {weight_bits}")


def _hidden(
    layers: list[tuple[np.ndarray, np.ndarray]], typical: np.ndarray, weight_bits: int
) -> tuple[tuple[IntLayer, ...], float, np.ndarray]:
    """Float ReLU layers on integer inputs in units of 2**-INPUT_BITS (typical magnitudes
    ``typical``) -> IntLayers, the real value of one unit of the last one's output and the
    typical magnitudes of its outputs."""
    unit = 2.0**-INPUT_BITS
    body = []
    top = (1 << ACT_BITS) - 1
    for w, b in layers:
        bound = np.abs(w * unit) @ typical + np.abs(b)
        out_unit = max(float(bound.max(initial=0.0)), 1e-30) / top
        body.append(_layer(w * unit, b, typical, out_unit, weight_bits, (0, top)))
        typical = np.minimum(bound / out_unit, top)
        unit = out_unit
    return tuple(body), unit, typical


def integer_weights(p: np.ndarray) -> np.ndarray:
    """A pmf [N] -> int64 weights summing to ``2**24 - N`` (the remainder on the largest)."""
    free = (1 << PRECISION) - len(p)
    q = np.floor(p / p.sum() * free).astype(np.int64)
    q[np.argmax(p)] += free - q.sum()
    return q


def _float_layers(body: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [out, in], bias [out]) float64 of each Linear, BatchNorm folded in; ReLU only."""
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for module in body:
        if isinstance(module, nn.Linear):
            w = module.weight.detach().double().cpu().numpy()
            b = module.bias.detach().double().cpu().numpy()
            layers.append((w, b))
        elif isinstance(module, nn.BatchNorm1d):
            w, b = layers[-1]
            g = (module.weight / torch.sqrt(module.running_var + module.eps)).detach().double()
            g, mu = g.cpu().numpy(), module.running_mean.detach().double().cpu().numpy()
            beta = module.bias.detach().double().cpu().numpy()
            layers[-1] = (w * g[:, None], (b - mu) * g + beta)
        elif not isinstance(module, (nn.ReLU, nn.Dropout)):
            raise ValueError(
                f"the integer coding model implements model.activation=ReLU only, not "
                f"{type(module).__name__}: train the lossless model with ReLU"
            )
    return layers


def state_input(codec: nn.Module) -> StateInput:
    """The integer view of a state's grid symbols that matches ``codec.state_input``."""
    schema, grid, layout = codec.schema, codec.grid, codec.schema_layout
    features = schema.features
    keys, split, split_x = [], [], []
    per_feature: dict[int, tuple[int, int, int]] = {}
    for j, f in enumerate(features):
        if f.kind != "continuous":
            keys.append(np.zeros(0, np.int64)), split.append(np.zeros(0, np.int64))
            split_x.append(np.zeros(0, np.int64))
            continue
        norm, step = schema.normalizers[f.name], grid.steps[f.name]
        k = grid._midpoint_tables(f.name)[2].astype(np.int64) if grid._crossings[f.name] else []
        keys.append(np.asarray(k, dtype=np.int64))
        a, b, shift = _affine(step / norm.std, -norm.mean / norm.std)
        per_feature[j] = (a, b, shift)
        s, x = _split_cells(grid, f.name, keys[-1], step, norm.mean, norm.std)
        split.append(s), split_x.append(x)
    source = layout.input_source.cpu().numpy().astype(np.int64)
    onehot = layout.input_one_hot.cpu().numpy().astype(bool)
    code = np.nan_to_num(layout.input_code.cpu().numpy()).astype(np.int64)
    a, b, shift = (np.zeros(len(source), np.int64) for _ in range(3))
    for c, j in enumerate(source.tolist()):
        if onehot[c]:
            a[c] = code[c]
        elif j in per_feature:
            a[c], b[c], shift[c] = per_feature[j]
        else:  # binary: the symbol itself
            a[c] = 1 << INPUT_BITS
    return StateInput(source, onehot, a, b, shift, tuple(keys), tuple(split), tuple(split_x))


def _affine(scale: float, offset: float) -> tuple[int, int, int]:
    """(a, b, shift) with ``(cell * a + b) >> shift ~ round(2**INPUT_BITS * (cell * scale +
    offset))``, the largest shift (up to 40) keeping |a| <= 2**30 and |b| <= 2**61."""
    for shift in range(40, -1, -1):
        unit = 2.0 ** (INPUT_BITS + shift)
        a, b = round(scale * unit), round(offset * unit) + (1 << shift >> 1)
        if abs(a) <= 1 << 30 and abs(b) <= 1 << 61:
            return a, b, shift
    raise ValueError(f"a feature's scale {scale:.3g} or offset {offset:.3g} cannot be an input")


def _split_cells(grid, name: str, keys: np.ndarray, step: float, mean: float, std: float):
    """Symbols next to predicate crossings whose decoded value is not their cell's center, and
    their exact integer inputs (sorted)."""
    if not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    candidates = np.unique((keys[:, None] + np.arange(-2, 3)[None, :]).ravel())
    cells = candidates - np.searchsorted(keys, candidates, side="right")
    value = grid._midpoints(name, candidates)
    split = value != cells * step
    x = np.rint((value[split] - mean) / std * 2.0**INPUT_BITS).astype(np.int64)
    return candidates[split].astype(np.int64), x


def _typical(kind: str, onehot: bool) -> float:
    """Typical magnitude of one state input column, in units of 2**-INPUT_BITS."""
    return (TYPICAL_STD if kind == "continuous" and not onehot else 1.0) * (1 << INPUT_BITS)


def _typical_context(codec: nn.Module, state: StateInput) -> np.ndarray:
    """Typical magnitudes of the context's input columns (for scales only; none without)."""
    if codec.context is None:
        return np.zeros(0)
    kinds = [codec.schema.features[j].kind for j in state.source.tolist()]
    prev = [_typical(k, o) for k, o in zip(kinds, state.onehot.tolist(), strict=True)]
    extra = 1 + (2 * codec.num_features if codec.context == "history" else 0)
    return np.concatenate([prev, np.full(extra, float(1 << INPUT_BITS))])


def _layer(
    w: np.ndarray,
    b: np.ndarray,
    typical: np.ndarray,
    out_unit: float,
    bits: int,
    clamp: tuple[int, int],
) -> IntLayer:
    """A float layer on integer inputs (``w`` already in input units, inputs of magnitude
    about ``typical``) -> IntLayer whose output is in ``out_unit``. The biases are rounded to
    ``2**bias_shift`` output units, 16x finer than the weight steps' effect on a typical input
    (so their rounding adds at most 1/256 to the quantization noise)."""
    qmax = (1 << (bits - 1)) - 1
    mult, shift = _steps(np.abs(w).max(axis=1, initial=0.0) / qmax / out_unit)
    step = mult / 2.0**shift  # per row: output units of one weight step times one input unit
    weight = np.rint(w / np.where(step > 0, step * out_unit, 1.0)[:, None])
    weight[step == 0] = 0
    effect = step[step > 0] * float(np.linalg.norm(typical)) / 16
    bias_shift = int(np.clip(np.floor(np.log2(effect.min())), 0, 40)) if effect.size else 0
    bias = np.rint(b / out_unit / 2.0**bias_shift)
    limit = BIAS_LIMIT >> bias_shift
    bias = np.clip(bias, -limit, limit).astype(np.int64)
    return IntLayer(weight.astype(np.int64), bias, mult, shift, *clamp, bias_shift)


def _steps(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, integer (mult, shift): the smallest ``mult / 2**shift >= ratio`` with mult in
    [2**(MULT_BITS - 1), 2**MULT_BITS); (0, 0) for a row whose step is negligible (or 0)."""
    mult = np.zeros(len(ratio), np.int64)
    shift = np.zeros(len(ratio), np.int64)
    for o, r in enumerate(ratio.tolist()):
        if r <= 0:
            continue
        s = MULT_BITS - 1 - math.floor(math.log2(r))
        if s < -62:
            raise ValueError(f"a layer's rescale {r:.3g} is too large for its multiplier")
        if s > 62:  # a step below 2**-55 output units: these weights cannot matter
            continue
        m = math.ceil(r * 2.0**s)
        if m >= 1 << MULT_BITS:
            m, s = m >> 1, s - 1  # 2**MULT_BITS / 2**s, still >= r
        mult[o], shift[o] = m, s
    return mult, shift


def _head(head: nn.Module, layout, unit: float, typical: np.ndarray, bits: int) -> IntHead:
    """A float ``_Head`` whose inputs are in ``unit`` (magnitudes about ``typical``) ->
    IntHead (logits in 2**-LOGIT_BITS bits)."""
    w = head.coef.weight.detach().double().cpu().numpy() * unit
    b = head.coef.bias.detach().double().cpu().numpy()
    logit_unit = math.log(2.0) * 2.0**-LOGIT_BITS  # natural-log logits
    coef = _layer(w, b, typical, logit_unit, bits, (-LOGIT_MAX, LOGIT_MAX))
    return IntHead(coef, layout, np.array(head.coefs, dtype=np.int64))
