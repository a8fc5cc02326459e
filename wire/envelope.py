"""Envelope: one request or reply as ZeroMQ frames.

Frame 0 is a msgpack map ``{"v": PROTOCOL_VERSION, "id": request id, "k": kind, "m": method,
"meta": {...}, "t": [tensor descriptors]}``; frames 1..n are the tensors' raw (or lz4) bytes, one
frame each, so large payloads are never copied into msgpack. An error reply is kind ``"error"``
with ``meta = {"code": str, "message": str}``.

Receiving validates in order of cost -- frame count, total bytes, header size, header fields,
every descriptor, the sum of decoded sizes and each lz4 payload's ratio -- before anything large
is allocated. What a receiver then decompresses is bounded by the declared sizes (codec.py); a
server also checks those against its handler's own limits first (server.py, ``admit``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack
import torch
import zmq

from .codec import check_descriptor, decode_checked, encode_tensor
from .errors import BadHeader, BadVersion, CorruptPayload, MessageTooLarge, ProtocolError
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "PROTOCOL_VERSION", "KINDS", "Message", "Limits", "DEFAULT_LIMITS", "encode_message",
    "decode_message", "decode_header", "decode_tensors", "error_message", "with_request_id",
]

PROTOCOL_VERSION = 1
KINDS = ("request", "reply", "error")
_MAX_REQUEST_ID = (1 << 64) - 1
# lz4's block format spends at least one byte per 255 bytes of a match: no payload decodes to more
MAX_LZ4_RATIO = 256


@dataclass
class Message:
    method: str
    meta: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    request_id: int = 0
    kind: str = "request"


@dataclass
class PendingTensors:
    """Validated descriptors and their payload buffers, not yet turned into tensors."""
    checked: list
    payloads: list
    compressed_bytes: int = 0


def error_message(request_id: int, code: str, message: str, method: str = "") -> Message:
    return Message(method, {"code": code, "message": message}, [], request_id, "error")


def encode_message(msg: Message, *, compression: str | Sequence[str] = "auto") -> list:
    """Frames for ``msg``: the msgpack header, then one payload buffer per tensor.
    ``compression``: one setting for every tensor, or one per tensor (see codec.plan_compression)."""
    descs, frames = [], [b""]
    per_tensor = [compression] * len(msg.tensors) if isinstance(compression, str) else compression
    if len(per_tensor) != len(msg.tensors):
        raise ValueError(f"{len(per_tensor)} compression settings for {len(msg.tensors)} tensors")
    for t, tensor_compression in zip(msg.tensors, per_tensor):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors must be torch.Tensor, got {type(t).__name__}")
        desc, payload = encode_tensor(t, compression=tensor_compression)
        descs.append(desc)
        frames.append(payload)
    frames[0] = msgpack.packb({"v": PROTOCOL_VERSION, "id": msg.request_id, "k": msg.kind,
                               "m": msg.method, "meta": msg.meta, "t": descs}, use_bin_type=True)
    return frames


_Frame = zmq.Frame


def _buffer(frame) -> Any:
    return frame.buffer if isinstance(frame, _Frame) else frame


def with_request_id(exc: ProtocolError, request_id: int) -> ProtocolError:
    exc.request_id = request_id  # lets a server answer the right request even for bad input
    return exc


def decode_header(frames: Sequence, limits: Limits = DEFAULT_LIMITS) -> tuple[Message, PendingTensors]:
    """Validate everything but the payload contents; raise a ProtocolError (with ``.request_id``
    set to the request's id when the header got that far, else 0)."""
    if not frames:
        raise with_request_id(BadHeader("empty message"), 0)
    if len(frames) > limits.max_frames:
        raise with_request_id(MessageTooLarge(f"{len(frames)} frames, limit {limits.max_frames}"), 0)
    # len() of zmq.Frame, bytes, and the flat uint8 arrays encode_message makes is the byte count
    lengths = [len(f) for f in frames]
    total = sum(lengths)
    if total > limits.max_message_bytes:
        raise with_request_id(MessageTooLarge(f"{total} bytes, limit {limits.max_message_bytes}"), 0)
    header_frame = frames[0]
    if lengths[0] > limits.max_header_bytes:
        raise with_request_id(MessageTooLarge(f"header of {lengths[0]} bytes, limit {limits.max_header_bytes}"), 0)
    try:  # unpacking bytes is faster than a memoryview, and a header is small
        header = msgpack.unpackb(header_frame.bytes if isinstance(header_frame, _Frame) else header_frame,
                                 raw=False)
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same here
        raise with_request_id(BadHeader(f"header is not valid msgpack: {exc}"), 0) from exc
    if not isinstance(header, dict):
        raise with_request_id(BadHeader(f"header must be a map, got {type(header).__name__}"), 0)
    rid = header.get("id")
    if type(rid) is not int or not 0 <= rid <= _MAX_REQUEST_ID:
        raise with_request_id(BadHeader(f"request id must be an unsigned 64-bit int, got {rid!r:.40}"), 0)
    if header.get("v") != PROTOCOL_VERSION:
        raise with_request_id(BadVersion(f"protocol version {header.get('v')!r:.40} is not {PROTOCOL_VERSION}"), rid)
    kind, method, meta, descs = header.get("k"), header.get("m"), header.get("meta", {}), header.get("t", [])
    if kind not in KINDS:
        raise with_request_id(BadHeader(f"kind must be one of {KINDS}, got {kind!r:.40}"), rid)
    if not isinstance(method, str) or len(method) > limits.max_method_len:
        raise with_request_id(BadHeader(f"method must be a string of at most {limits.max_method_len} chars"), rid)
    if not isinstance(meta, dict):
        raise with_request_id(BadHeader(f"meta must be a map, got {type(meta).__name__}"), rid)
    if not isinstance(descs, list) or len(descs) != len(frames) - 1:
        raise with_request_id(BadHeader(f"header describes {len(descs) if isinstance(descs, list) else '?'} "
                              f"tensors but {len(frames) - 1} payload frames came"), rid)
    decoded_total, compressed, checked = 0, 0, []
    for desc, length in zip(descs, lengths[1:]):
        try:
            c = check_descriptor(desc, limits)
        except ProtocolError as exc:
            raise with_request_id(exc, rid) from None
        checked.append(c)
        decoded_total += c.nbytes
        if c.codec != "none":
            compressed += length
    if decoded_total > limits.max_message_bytes:
        raise with_request_id(MessageTooLarge(f"tensors decode to {decoded_total} bytes, limit {limits.max_message_bytes}"), rid)
    for c, length in zip(checked, lengths[1:]):
        if c.codec != "none" and c.nbytes > MAX_LZ4_RATIO * length + 64:
            raise with_request_id(CorruptPayload(
                f"lz4 payload of {length} bytes cannot decode to {c.nbytes} bytes (lz4 packs at most "
                f"{MAX_LZ4_RATIO}:1)"), rid)
    msg = Message(method, meta, [], rid, kind)
    return msg, PendingTensors(checked, [_buffer(f) for f in frames[1:]], compressed)


def decode_tensors(pending: PendingTensors, limits: Limits = DEFAULT_LIMITS, request_id: int = 0) -> list:
    try:
        return [decode_checked(c, p) for c, p in zip(pending.checked, pending.payloads)]
    except ProtocolError as exc:
        raise with_request_id(exc, request_id) from None


def decode_message(frames: Sequence, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate and decode ``frames`` (zmq.Frame objects or bytes-like) into a Message."""
    msg, pending = decode_header(frames, limits)
    msg.tensors = decode_tensors(pending, limits, msg.request_id)
    return msg
