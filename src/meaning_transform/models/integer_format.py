"""Bytes of an IntegerModel: compact, and safe to read from a file someone else wrote.

::

    b"MTIM" | version u8 | body length u32 | body CRC-32 u32 | LZMA2 (raw, lc=lp=pb=0) of it

(an ``IntegerEncoder``, which files do not carry: b"MTIE", the same way). A model's body:
context, state input, latent tables, decoder layers, absolute head, delta head (with context).

The body is a sequence of fields, little-endian: small integers as unsigned LEB128 varints,
integer arrays as (width code, count) then their zigzag integers: at least 64 of them below 32
(quantized weights up to 5 bits) range-coded under their own histogram, sent first as varints, so they cost
about their order-0 entropy (integer frequencies, kept exactly by constriction); others as byte
planes, low to high, of 1, 2, 4 or 8 bytes each (``benchmarks/integer_model.py`` reports bytes
per parameter).

``model_from_bytes`` checks the magic, the version, the body length (at most ``MAX_BODY``),
decompresses at most that many bytes and checks their CRC; every count is checked against what remains of the body
and against ``LIMITS`` before an array is allocated; then ``IntegerModel.check`` proves the
overflow and exactness bounds. Any failure is an ``IntegerModelError``, one line.
"""

from __future__ import annotations

import lzma
import struct
import zlib

import constriction
import numpy as np

from meaning_transform.errors import DataError
from meaning_transform.models.fixed_point import PRECISION
from meaning_transform.models.integer_model import (
    CONTEXTS,
    IntegerEncoder,
    IntegerModel,
    IntHead,
    IntLayer,
    StateInput,
)
from meaning_transform.models.lossless import HeadLayout

MAGIC = b"MTIM"
MAGIC_ENCODER = b"MTIE"
VERSION = 1
#: what a model may hold (checked before anything is allocated)
LIMITS = {
    "parameters": 2_000_000,  # stored integers of all layers together
    "width": 4096,  # hidden units per layer, input columns
    "layers": 16,
    "features": 1024,
    "latent": 256,
    "bins": 4096,  # bins of one feature in a head
    "head bins": 65536,  # bins of all features of a head (bounds the cosine tables' work)
    "table": 65536,  # values in one latent table, keys or split cells of one feature
}
#: the largest body (the parameters at 8 bytes each, and room for the tables)
MAX_BODY = 8 * LIMITS["parameters"] + (1 << 24)
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0}]
_WIDTHS = (1, 2, 4, 8)  # bytes per zigzag integer, by width code
#: arrays of at least _CODED_MIN values below _CODED_ALPHABET are range-coded (width code 4)
_CODED, _CODED_MIN, _CODED_ALPHABET = len(_WIDTHS), 64, 32


def _histogram_model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The coding model of an array's histogram, in integers (``fixed_point.frequencies``'
    construction: weights summing to 2**24 - N that constriction keeps exactly)."""
    free = (1 << PRECISION) - len(counts)
    q = counts * free // max(int(counts.sum()), 1)
    q[np.argmax(counts)] += free - q.sum()
    return constriction.stream.model.Categorical(q.astype(np.float32), perfect=False)


class IntegerModelError(DataError):
    """The bytes are not a valid integer coding model (truncated, corrupted, over a limit)."""


# ---------------------------------------------------------------------- writing
class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    @classmethod
    def start(cls, context: str | None, state: StateInput) -> _Writer:
        """A body that opens, as models' and encoders' do, with the context and state input."""
        w = cls()
        w.uint(CONTEXTS.index(context))
        w.state(state)
        return w

    def uint(self, value: int) -> None:
        value = int(value)
        assert value >= 0
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
        self.parts.append(bytes(out))

    def sint(self, value: int) -> None:
        value = int(value)
        self.uint(2 * value if value >= 0 else -2 * value - 1)

    def array(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.int64).ravel()
        zig = ((v << 1) ^ (v >> 63)).astype(np.uint64)  # zigzag: small magnitudes, small codes
        top = int(zig.max(initial=0))
        if len(v) >= _CODED_MIN and top < _CODED_ALPHABET:
            self._coded(zig.astype(np.int64), top + 1)
            return
        code = next(i for i, w in enumerate(_WIDTHS) if top < 1 << (8 * w))
        self.uint(code)
        self.uint(len(v))
        planes = zig.astype("<u8").view(np.uint8).reshape(-1, 8)[:, : _WIDTHS[code]]
        self.parts.append(np.ascontiguousarray(planes.T).tobytes())

    def _coded(self, symbols: np.ndarray, alphabet: int) -> None:
        """Range-coded under the array's own histogram (sent first): about its entropy."""
        counts = np.bincount(symbols, minlength=alphabet)
        self.uint(_CODED), self.uint(len(symbols)), self.uint(alphabet)
        for c in counts.tolist():
            self.uint(c)
        words = np.zeros(0, dtype=np.uint32)
        if alphabet > 1:
            encoder = constriction.stream.queue.RangeEncoder()
            encoder.encode(symbols.astype(np.int32), _histogram_model(counts))
            words = encoder.get_compressed()
        self.uint(len(words))
        self.parts.append(words.astype("<u4").tobytes())

    def layer(self, layer: IntLayer) -> None:
        self.uint(layer.weight.shape[0]), self.uint(layer.weight.shape[1])
        for values in (layer.weight, layer.bias, layer.mult, layer.shift):
            self.array(values)
        self.sint(layer.lo), self.sint(layer.hi), self.uint(layer.bias_shift)

    def state(self, state: StateInput) -> None:
        self.uint(state.num_features)
        for values in (state.source, state.onehot, state.a, state.b, state.shift):
            self.array(values)
        for tables in (state.keys, state.split, state.split_x):
            for t in tables:
                self.array(t)

    def layers(self, layers: tuple[IntLayer, ...]) -> None:
        self.uint(len(layers))
        for layer in layers:
            self.layer(layer)

    def pack(self, magic: bytes) -> bytes:
        body = b"".join(self.parts)
        packed = lzma.compress(body, format=lzma.FORMAT_RAW, filters=_FILTERS)
        return magic + struct.pack("<BII", VERSION, len(body), zlib.crc32(body)) + packed

    def head(self, head: IntHead) -> None:
        layout = head.layout
        for values in (layout.lo, layout.n, layout.escape, layout.modulo, head.coefs):
            self.array(values)
        self.layer(head.coef)


def model_to_bytes(model: IntegerModel) -> bytes:
    """The serialized model (see the module docstring)."""
    w = _Writer.start(model.context, model.state)
    w.uint(model.latent_dim)
    w.array(model.latent_lowest)
    for table in model.latent_weights:
        w.array(table)
    w.layers(model.body)
    w.head(model.absolute)
    if model.delta is not None:
        w.head(model.delta)
    return _readable(w.pack(MAGIC), model_from_bytes)


def encoder_to_bytes(encoder: IntegerEncoder) -> bytes:
    """The serialized encoder (same layout as a model's, its own magic)."""
    w = _Writer.start(encoder.context, encoder.state)
    w.layers(encoder.body)
    w.layer(encoder.out)
    w.array(encoder.centers)
    return _readable(w.pack(MAGIC_ENCODER), encoder_from_bytes)


def _readable(data: bytes, read) -> bytes:
    """``data`` after reading it back: what is written is what a reader accepts (LIMITS)."""
    try:
        read(data)
    except IntegerModelError as e:
        raise ValueError(f"the integer model exceeds what its format allows: {e}") from None
    return data


# ---------------------------------------------------------------------- reading
class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.parameters = 0

    def _take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise IntegerModelError(f"integer model is truncated (in {what})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, what: str, limit: int) -> int:
        value, shift = 0, 0
        while True:
            byte = self._take(1, what)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 63:
                raise IntegerModelError(f"integer model: {what} is not a valid number")
        if value > limit:
            raise IntegerModelError(f"integer model: {what} is {value}, more than {limit}")
        return value

    def sint(self, what: str) -> int:
        z = self.uint(what, (1 << 64) - 1)
        return z >> 1 if not z & 1 else -(z >> 1) - 1

    def array(self, what: str, count: int | None = None, limit: int = 0) -> np.ndarray:
        code = self.uint(f"{what} width", _CODED)
        n = self.uint(f"{what} length", count if count is not None else limit)
        if count is not None and n != count:
            raise IntegerModelError(f"integer model: {what} has {n} values, expected {count}")
        if code == _CODED:
            zig = self._coded(what, n)
            return (zig >> 1) ^ -(zig & 1)
        width = _WIDTHS[code]
        raw = np.frombuffer(self._take(n * width, what), dtype=np.uint8).reshape(width, n)
        planes = np.zeros((n, 8), dtype=np.uint8)
        planes[:, :width] = raw.T
        zig = planes.view("<u8").ravel()
        return ((zig >> np.uint64(1)).astype(np.int64)) ^ -(zig & np.uint64(1)).astype(np.int64)

    def _coded(self, what: str, n: int) -> np.ndarray:
        alphabet = self.uint(f"{what} alphabet", _CODED_ALPHABET)
        counts = np.array([self.uint(f"{what} count", n) for _ in range(alphabet)], np.int64)
        if alphabet < 1 or int(counts.sum()) != n:
            raise IntegerModelError(f"integer model: {what} histogram does not add up")
        words = np.frombuffer(self._take(4 * self.uint(f"{what} words", n), what), "<u4")
        if alphabet == 1:
            return np.zeros(n, dtype=np.int64)
        try:
            decoder = constriction.stream.queue.RangeDecoder(words.astype(np.uint32))
            return decoder.decode(_histogram_model(counts), n).astype(np.int64)
        except Exception as e:  # noqa: BLE001 - any failure is the data's
            raise IntegerModelError(f"integer model: {what} does not decode ({e})") from None

    def layer(self, what: str, width: int | None) -> IntLayer:
        out = self.uint(f"{what} outputs", LIMITS["parameters"])
        n_in = self.uint(f"{what} inputs", LIMITS["width"])
        if width is not None and n_in != width:
            raise IntegerModelError(f"integer model: {what} reads {n_in} inputs, not {width}")
        self.parameters += out * (n_in + 3)
        if self.parameters > LIMITS["parameters"]:
            raise IntegerModelError(
                f"integer model has more than {LIMITS['parameters']} parameters"
            )
        weight = self.array(f"{what} weights", out * n_in).reshape(out, n_in)
        bias, mult, shift = (self.array(f"{what} {k}", out) for k in ("biases", "mult", "shift"))
        lo, hi = self.sint(f"{what} lo"), self.sint(f"{what} hi")
        return IntLayer(weight, bias, mult, shift, lo, hi, self.uint(f"{what} bias shift", 40))

    def state(self) -> StateInput:
        features = self.uint("features", LIMITS["features"])
        source = self.array("input sources", limit=LIMITS["width"])
        onehot, a, b, shift = (
            self.array(f"input {k}", len(source)) for k in ("onehot", "a", "b", "shift")
        )
        keys, split, split_x = (
            tuple(self.array(k, limit=LIMITS["table"]) for _ in range(features))
            for k in ("crossing keys", "split cells", "split inputs")
        )
        if ((onehot != 0) & (onehot != 1)).any():
            raise IntegerModelError("integer model: one-hot flags must be 0 or 1")
        return StateInput(source, onehot.astype(bool), a, b, shift, keys, split, split_x)

    def layers(self, what: str) -> tuple[IntLayer, ...]:
        n_layers = self.uint(f"{what} layers", LIMITS["layers"])
        if n_layers < 1:
            raise IntegerModelError(f"integer model: the {what} has no layers")
        body, width = [], None
        for i in range(n_layers):
            layer = self.layer(f"{what} layer {i + 1}", width)
            body.append(layer)
            width = layer.weight.shape[0]
            if width > LIMITS["width"]:
                raise IntegerModelError(
                    f"integer model: {what} layer {i + 1} is wider than {LIMITS['width']}"
                )
        return tuple(body)

    def head(self, what: str, features: int, width: int) -> IntHead:
        lo, n, escape, modulo, coefs = (
            self.array(f"{what} {k}", features) for k in ("lo", "n", "escape", "modulo", "coefs")
        )
        if (n < 1).any() or (n > LIMITS["bins"]).any() or ((escape != 0) & (escape != 1)).any():
            raise IntegerModelError(f"integer model: {what} bins out of range")
        if int(n.sum()) > LIMITS["head bins"]:
            raise IntegerModelError(
                f"integer model: {what} has more than {LIMITS['head bins']} bins"
            )
        layout = HeadLayout(lo, n, escape.astype(bool), modulo)
        return IntHead(self.layer(f"{what} coefficients", width), layout, coefs)


def _unpack(data: bytes, magic: bytes, what: str) -> _Reader:
    """A reader of the body of ``data`` after checking its magic, version and length."""
    header = len(magic) + 9
    if len(data) < header or data[: len(magic)] != magic:
        raise IntegerModelError(f"not an integer coding {what} (bad magic)")
    version, size, crc = struct.unpack_from("<BII", data, len(magic))
    if version != VERSION:
        raise IntegerModelError(
            f"integer {what} has format version {version}; this reads {VERSION}"
        )
    if size > MAX_BODY:
        raise IntegerModelError(f"integer {what} body of {size} bytes is over the limit")
    try:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS)
        body = dec.decompress(data[header:], max_length=size)
    except lzma.LZMAError as e:
        raise IntegerModelError(f"integer {what} is corrupted ({e})") from None
    if len(body) != size:
        raise IntegerModelError(f"integer {what} is truncated (body shorter than recorded)")
    if zlib.crc32(body) != crc:
        raise IntegerModelError(f"integer {what} is corrupted (CRC mismatch)")
    return _Reader(body)


def _finish(r: _Reader, read, what: str):
    """``read(r)``, its ValueErrors as one-line IntegerModelErrors, all of the body used."""
    try:
        out = read(r)
        out.check()
    except IntegerModelError:
        raise
    except (ValueError, OverflowError) as e:
        raise IntegerModelError(f"integer {what} is not valid ({e})") from None
    if r.pos != len(r.data):
        raise IntegerModelError(f"integer {what} has bytes past its end")
    return out


def model_from_bytes(data: bytes) -> IntegerModel:
    """Read ``model_to_bytes``'s bytes, checking every count and bound (module docstring)."""
    return _finish(_unpack(data, MAGIC, "model"), _read_model, "model")


def encoder_from_bytes(data: bytes) -> IntegerEncoder:
    """Read ``encoder_to_bytes``'s bytes, checking every count and bound."""
    return _finish(_unpack(data, MAGIC_ENCODER, "encoder"), _read_encoder, "encoder")


def _read_model(r: _Reader) -> IntegerModel:
    context = CONTEXTS[r.uint("context", len(CONTEXTS) - 1)]
    state = r.state()
    latent = r.uint("latent channels", LIMITS["latent"])
    lowest = r.array("latent lowest", latent)
    tables = tuple(r.array("latent table", limit=LIMITS["table"]) for _ in range(latent))
    body = r.layers("decoder")
    width = body[-1].weight.shape[0]
    absolute = r.head("absolute head", state.num_features, width)
    delta = r.head("delta head", state.num_features, width) if context is not None else None
    return IntegerModel(context, lowest, tables, state, body, absolute, delta)


def _read_encoder(r: _Reader) -> IntegerEncoder:
    context = CONTEXTS[r.uint("context", len(CONTEXTS) - 1)]
    state = r.state()
    body = r.layers("encoder")
    out = r.layer("encoder output", body[-1].weight.shape[0])
    return IntegerEncoder(context, state, body, out, r.array("centers", len(out.bias)))
