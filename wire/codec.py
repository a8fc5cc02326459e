"""Tensor codec: a torch tensor <-> (descriptor dict, raw byte buffer), bit-exact.

The descriptor is what goes into the msgpack header: ``{"dtype": "float16", "shape": [1, 1, 4096],
"codec": "none" | "lz4" | "lz4s"}`` -- ``lz4s`` is lz4 after a byte-shuffle (byte 0 of every
element, then byte 1, ...), which groups the slowly varying exponent bytes of floats together.
The payload travels as its own ZeroMQ frame; it is never copied into msgpack.

Compression is chosen per tensor (``compression="auto"``): tensors under ``AUTO_MIN_BYTES`` are
sent raw (too small to pay anywhere), others are compressed only if lz4 on a sample of
``PROBE_BYTES`` shrinks it to at most ``AUTO_MAX_RATIO``. ``"lz4"`` forces it, ``"none"`` turns it
off. tools/bench_wire.py measures where it pays (see docs/architecture.md, wire section).
"""
from __future__ import annotations

import lz4.block
import torch

from .errors import BadTensor, CorruptPayload
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DTYPES", "COMPRESSIONS", "encode_tensor", "decode_tensor", "check_descriptor",
    "to_wire_dtype", "FP16_MAX", "AUTO_MIN_BYTES", "AUTO_MAX_RATIO",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
}
_DTYPE_NAMES = {dt: name for name, dt in DTYPES.items()}
_ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}
COMPRESSIONS = ("auto", "lz4", "none")
_CODECS = ("none", "lz4", "lz4s")

FP16_MAX = 65504.0
AUTO_MIN_BYTES = 64 << 10   # below this lz4 cannot win back its fixed cost on any real link
AUTO_MAX_RATIO = 0.85       # compress only if the probe saves at least 15%
PROBE_BYTES = 32 << 10


def to_wire_dtype(t: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Cast hidden states for the wire. To fp16, values beyond +-65504 (inf included) are
    clamped to +-65504 instead of becoming inf; NaN stays NaN. Other casts are plain ``.to``."""
    if dtype == torch.float16 and t.dtype in (torch.float32, torch.bfloat16, torch.float64):
        t = t.clamp(-FP16_MAX, FP16_MAX)
    return t.to(dtype)


def _raw_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat contiguous uint8 tensor (no copy if already contiguous)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().reshape(-1).view(torch.uint8)


def _shuffle(u8: torch.Tensor, itemsize: int) -> torch.Tensor:
    return u8.view(-1, itemsize).t().contiguous().view(-1)


def _unshuffle(u8: torch.Tensor, itemsize: int) -> torch.Tensor:
    return u8.view(itemsize, -1).t().contiguous().view(-1)


def _compress(u8: torch.Tensor, itemsize: int) -> tuple[str, bytes]:
    if itemsize > 1:
        return "lz4s", lz4.block.compress(_shuffle(u8, itemsize).numpy(), store_size=False)
    return "lz4", lz4.block.compress(u8.numpy(), store_size=False)


def _probe_pays(u8: torch.Tensor, itemsize: int) -> bool:
    sample = u8[: PROBE_BYTES - PROBE_BYTES % itemsize]
    _, packed = _compress(sample, itemsize)
    return len(packed) <= AUTO_MAX_RATIO * sample.numel()


def encode_tensor(t: torch.Tensor, *, compression: str = "auto") -> tuple[dict, memoryview | bytes]:
    """Return ``(descriptor, payload)``. The payload shares memory with a contiguous CPU tensor."""
    name = _DTYPE_NAMES.get(t.dtype)
    if name is None:
        raise BadTensor(f"dtype {t.dtype} cannot go on the wire (supported: {', '.join(DTYPES)})")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    u8 = _raw_bytes(t)
    desc = {"dtype": name, "shape": list(t.shape), "codec": "none"}
    nbytes = u8.numel()
    if nbytes and (compression == "lz4" or (
            compression == "auto" and nbytes >= AUTO_MIN_BYTES and _probe_pays(u8, _ITEMSIZE[name]))):
        desc["codec"], packed = _compress(u8, _ITEMSIZE[name])
        return desc, packed
    return desc, memoryview(u8.numpy())


def check_descriptor(desc, limits: Limits = DEFAULT_LIMITS) -> tuple[torch.dtype, list[int], str, int]:
    """Validate a descriptor from the network; return (dtype, shape, codec, decoded byte count)."""
    if not isinstance(desc, dict):
        raise BadTensor(f"tensor descriptor must be a map, got {type(desc).__name__}")
    name, shape, codec = desc.get("dtype"), desc.get("shape"), desc.get("codec", "none")
    if not isinstance(name, str) or name not in DTYPES:
        raise BadTensor(f"unknown dtype {name!r} (supported: {', '.join(DTYPES)})")
    if codec not in _CODECS:
        raise BadTensor(f"unknown codec {codec!r} (supported: {', '.join(_CODECS)})")
    if not isinstance(shape, list) or len(shape) > limits.max_dims:
        raise BadTensor(f"shape must be a list of at most {limits.max_dims} dims, got {shape!r:.80}")
    numel = 1
    for dim in shape:
        if type(dim) is not int or dim < 0 or dim > limits.max_elements:
            raise BadTensor(f"bad dimension {dim!r:.40} in shape (must be an int in 0..{limits.max_elements})")
        numel *= dim
    if numel > limits.max_elements:
        raise BadTensor(f"tensor of {numel} elements is over the limit of {limits.max_elements}")
    return DTYPES[name], shape, codec, numel * _ITEMSIZE[name]


def _as_byte_view(payload) -> memoryview:
    view = memoryview(payload)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def decode_tensor(desc, payload, *, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """Rebuild a tensor. Uncompressed payloads are wrapped without copying when the buffer is
    writable and aligned (the tensor then keeps the buffer -- e.g. a ZeroMQ frame -- alive)."""
    dtype, shape, codec, nbytes = check_descriptor(desc, limits)
    view = _as_byte_view(payload)
    if codec == "none":
        if view.nbytes != nbytes:
            raise BadTensor(f"shape {shape} of {desc['dtype']} needs {nbytes} bytes, payload has {view.nbytes}")
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        if view.readonly:  # torch tensors must be writable: copy (only when not fed by zmq)
            view = memoryview(bytearray(view))
    else:
        if nbytes == 0:
            if view.nbytes:
                raise CorruptPayload("compressed payload for an empty tensor is not empty")
            return torch.empty(shape, dtype=dtype)
        # lz4 never expands by more than this; a longer payload cannot be honest
        if view.nbytes == 0 or view.nbytes > nbytes + nbytes // 255 + 16:
            raise CorruptPayload(f"lz4 payload of {view.nbytes} bytes cannot decode to {nbytes} bytes")
        try:
            raw = lz4.block.decompress(view, uncompressed_size=nbytes, return_bytearray=True)
        except lz4.block.LZ4BlockError as exc:
            raise CorruptPayload(f"corrupt lz4 payload: {exc}") from exc
        if len(raw) != nbytes:
            raise CorruptPayload(f"lz4 payload decoded to {len(raw)} bytes, expected {nbytes}")
        view = memoryview(raw)
    u8 = torch.frombuffer(view, dtype=torch.uint8)
    itemsize = _ITEMSIZE[desc["dtype"]]
    if codec == "lz4s" and itemsize > 1:
        u8 = _unshuffle(u8, itemsize)
    elif u8.data_ptr() % itemsize:  # tiny zmq frames may sit unaligned inside the message struct
        u8 = u8.clone()
    return u8.view(dtype).view(shape)

