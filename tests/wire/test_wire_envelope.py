"""Envelope: messages round-trip as header + one frame per tensor; validation order is cheap-first."""
import msgpack
import pytest
import torch

from wire.envelope import (PROTOCOL_VERSION, Message, decode_header, decode_message, encode_message)
from wire.errors import BadHeader, BadVersion, MessageTooLarge
from wire.limits import Limits


def test_message_round_trips_with_one_frame_per_tensor():
    tensors = [torch.randn(1, 3, 8).half(), torch.arange(3)]
    msg = Message("inference_step", {"session_id": "s", "position": 4, "names": ["a"]}, tensors, 42, "request")
    frames = encode_message(msg, compression="none")
    assert len(frames) == 3
    assert bytes(frames[1]) == tensors[0].numpy().tobytes()  # raw bytes, not inside msgpack
    back = decode_message([bytes(f) for f in frames])
    assert (back.method, back.meta, back.request_id, back.kind) == (msg.method, msg.meta, 42, "request")
    assert all(torch.equal(a, b) for a, b in zip(back.tensors, tensors))


def test_header_is_validated_before_payloads_are_touched():
    too_big = Limits(max_message_bytes=1000)
    with pytest.raises(MessageTooLarge):
        decode_header([b"x", b"\0" * 1000], too_big)
    with pytest.raises(MessageTooLarge):
        decode_header([b"x"] * 65)
    with pytest.raises(BadHeader):
        decode_header([msgpack.packb({"v": PROTOCOL_VERSION, "id": -1})])
    with pytest.raises(BadVersion) as err:
        decode_header([msgpack.packb({"v": 0, "id": 5})])
    assert err.value.request_id == 5
    with pytest.raises(BadHeader):
        decode_header([msgpack.packb({"v": PROTOCOL_VERSION, "id": 5, "k": "request", "m": "x" * 65})])
    with pytest.raises(BadHeader):
        decode_header([msgpack.packb({"v": PROTOCOL_VERSION, "id": 5, "k": "request", "m": "x", "meta": [1]})])
    with pytest.raises(BadHeader):
        decode_header([])
