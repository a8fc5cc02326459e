"""Tensor codec: a torch tensor <-> (descriptor dict, raw byte buffer), bit-exact.

The descriptor is what goes into the msgpack header: ``{"dtype": "float16", "shape": [1, 1, 4096],
"codec": "none" | "lz4" | "lz4s"}`` -- ``lz4s`` is lz4 after a byte-shuffle (byte 0 of every
element, then byte 1, ...), which groups the slowly varying exponent bytes of floats together.
The payload travels as its own ZeroMQ frame; it is never copied into msgpack.

Compression is chosen per tensor (``compression="auto"``), from the dtype and then a probe:
tensors under ``AUTO_MIN_BYTES`` are sent raw (too small to pay anywhere), fp16 ones too (see
below), others are compressed only if lz4 on a sample of ``PROBE_BYTES`` shrinks it to at most
``AUTO_MAX_RATIO``. ``"lz4"`` forces it, ``"none"`` turns it off. tools/bench_wire.py measures
where it pays. On the 2-core dev box: fp16 activations do not compress at all (ratio 1.00: a
5-bit exponent leaves no redundant byte plane), bf16 ones reach ~0.84 after the shuffle at ~20 ms
of CPU per 4 MiB round trip, which pays on links below ~200-250 Mbit/s. Hence the default
``"auto"``: it costs a decode step nothing (under AUTO_MIN_BYTES), an fp16 prefill nothing (no
probe: it would cost ~20 us per message on each end to learn what the dtype already says), and
compresses bf16 prefills -- right for volunteers on home links; force ``"none"`` on a LAN.
"""
from __future__ import annotations

from typing import NamedTuple

import lz4.block
import numpy as np
import torch

from .errors import BadTensor, CorruptPayload
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DTYPES", "COMPRESSIONS", "encode_tensor", "wire_tensor", "plan_compression", "decode_tensor", "check_descriptor", "decode_checked", "Checked",
    "to_wire_dtype", "FP16_MAX", "AUTO_MIN_BYTES", "AUTO_MAX_RATIO", "AUTO_RAW_DTYPES",
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
AUTO_MAX_RATIO = 0.9        # compress only if the probe saves at least 10%
PROBE_BYTES = 32 << 10
# dtypes "auto" never compresses, without probing: fp16 activations measured ratio 1.00
AUTO_RAW_DTYPES = frozenset({"float16"})


def to_wire_dtype(t: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Cast hidden states for the wire. To fp16, values beyond +-65504 (inf included) are
    clamped to +-65504 instead of becoming inf; NaN stays NaN. Other casts are plain ``.to``."""
    if dtype == torch.float16 and t.dtype in (torch.float32, torch.bfloat16, torch.float64):
        t = t.clamp(-FP16_MAX, FP16_MAX)
    return t.to(dtype)


def _raw_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a flat uint8 array sharing its memory (t: contiguous, on the CPU).
    numpy has no bfloat16: its bytes are taken as int16."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().reshape(-1).view(np.uint8)


def _shuffle(u8: np.ndarray, itemsize: int) -> np.ndarray:
    # numpy, single-threaded: torch's strided uint8 copies are ~15x slower, worse on busy cores
    return np.ascontiguousarray(u8.reshape(-1, itemsize).T)


def _unshuffle(u8: np.ndarray, itemsize: int) -> np.ndarray:
    # one strided column write per byte plane: ascontiguousarray(planes.T) is ~20x slower here
    planes = u8.reshape(itemsize, -1)
    out = np.empty((planes.shape[1], itemsize), dtype=np.uint8)
    for i in range(itemsize):
        out[:, i] = planes[i]
    return out


def _compress(u8: np.ndarray, itemsize: int) -> tuple[str, bytes]:
    if itemsize > 1:
        return "lz4s", lz4.block.compress(_shuffle(u8, itemsize), store_size=False)
    return "lz4", lz4.block.compress(u8, store_size=False)


def _probe_pays(u8: np.ndarray, itemsize: int) -> bool:
    sample = u8[: PROBE_BYTES - PROBE_BYTES % itemsize]
    _, packed = _compress(sample, itemsize)
    return len(packed) <= AUTO_MAX_RATIO * sample.size


def wire_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the wire sends it: detached, on the CPU, contiguous (itself when it already is)."""
    if t.requires_grad:
        t = t.detach()
    if not t.is_cpu:
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    return t


def plan_compression(t: torch.Tensor, compression: str = "auto") -> str:
    """``"lz4"`` or ``"none"``: what encoding does with ``t`` (a wire_tensor); ``"auto"`` decides
    here, from the dtype, the size and the probe. Lets a caller that knows lz4 will run (it
    costs milliseconds per MiB) move the encoding off its event loop, without probing twice."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    name = _DTYPE_NAMES.get(t.dtype)
    if compression == "none" or name is None or t.nbytes == 0:
        return "none"
    if compression == "lz4":
        return "lz4"
    if t.nbytes < AUTO_MIN_BYTES or name in AUTO_RAW_DTYPES:
        return "none"
    return "lz4" if _probe_pays(_raw_bytes(t), _ITEMSIZE[name]) else "none"


def encode_tensor(t: torch.Tensor, *, compression: str = "auto") -> tuple[dict, object]:
    """Return ``(descriptor, payload)``; the payload is a buffer (numpy array or bytes). An
    uncompressed payload shares memory with the tensor when it is contiguous and on the CPU."""
    name = _DTYPE_NAMES.get(t.dtype)
    if name is None:
        raise BadTensor(f"dtype {t.dtype} cannot go on the wire (supported: {', '.join(DTYPES)})")
    t = wire_tensor(t)
    desc = {"dtype": name, "shape": list(t.shape), "codec": "none"}
    if t.nbytes == 0:
        return desc, b""
    if plan_compression(t, compression) == "lz4":
        desc["codec"], packed = _compress(_raw_bytes(t), _ITEMSIZE[name])
        return desc, packed
    return desc, _raw_bytes(t)  # flat uint8, so len() is the byte count


class Checked(NamedTuple):
    dtype: torch.dtype
    shape: list
    codec: str
    nbytes: int      # decoded size
    itemsize: int
    name: str


def check_descriptor(desc, limits: Limits = DEFAULT_LIMITS) -> Checked:
    """Validate a descriptor from the network; return what decoding needs, incl. the decoded size."""
    if not isinstance(desc, dict):
        raise BadTensor(f"tensor descriptor must be a map, got {type(desc).__name__}")
    name, shape, codec = desc.get("dtype"), desc.get("shape"), desc.get("codec", "none")
    if name not in DTYPES:
        raise BadTensor(f"unknown dtype {name!r:.40} (supported: {', '.join(DTYPES)})")
    if codec not in _CODECS:
        raise BadTensor(f"unknown codec {codec!r:.40} (supported: {', '.join(_CODECS)})")
    if type(shape) is not list or len(shape) > limits.max_dims:
        raise BadTensor(f"shape must be a list of at most {limits.max_dims} dims, got {shape!r:.80}")
    numel = 1
    for dim in shape:
        if type(dim) is not int or dim < 0 or dim > limits.max_elements:
            raise BadTensor(f"bad dimension {dim!r:.40} in shape (must be an int in 0..{limits.max_elements})")
        numel *= dim
    if numel > limits.max_elements:
        raise BadTensor(f"tensor of {numel} elements is over the limit of {limits.max_elements}")
    itemsize = _ITEMSIZE[name]
    return Checked(DTYPES[name], shape, codec, numel * itemsize, itemsize, name)


def decode_tensor(desc, payload, *, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """Rebuild a tensor. Uncompressed payloads are wrapped without copying when the buffer is
    writable and aligned (the tensor then keeps the buffer -- e.g. a ZeroMQ frame -- alive)."""
    return decode_checked(check_descriptor(desc, limits), payload)


def decode_checked(checked: Checked, payload) -> torch.Tensor:
    dtype, shape, codec, nbytes, itemsize, name = checked
    view = memoryview(payload)
    if view.itemsize != 1 or view.ndim != 1:
        view = view.cast("B")
    size = view.nbytes
    if codec == "none":
        if size != nbytes:
            raise BadTensor(f"shape {shape} of {name} needs {nbytes} bytes, payload has {size}")
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        if view.readonly:  # torch tensors must be writable: copy (only when not fed by zmq)
            view = bytearray(view)
        t = torch.frombuffer(view, dtype=dtype)
        if t.data_ptr() % itemsize:  # small zmq frames may sit unaligned in a receive buffer
            t = t.clone()
        return t.view(shape)
    if nbytes == 0:
        if size:
            raise CorruptPayload("compressed payload for an empty tensor is not empty")
        return torch.empty(shape, dtype=dtype)
    # lz4 never expands by more than this; a longer payload cannot be honest
    if size == 0 or size > nbytes + nbytes // 255 + 16:
        raise CorruptPayload(f"lz4 payload of {size} bytes cannot decode to {nbytes} bytes")
    try:
        raw = lz4.block.decompress(view, uncompressed_size=nbytes, return_bytearray=True)
    except lz4.block.LZ4BlockError as exc:
        raise CorruptPayload(f"corrupt lz4 payload: {exc}") from exc
    if len(raw) != nbytes:
        raise CorruptPayload(f"lz4 payload decoded to {len(raw)} bytes, expected {nbytes}")
    if codec == "lz4s":
        raw = _unshuffle(np.frombuffer(raw, dtype=np.uint8), itemsize)
    return torch.frombuffer(raw, dtype=dtype).view(shape)
