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


def test_compression_can_be_set_per_tensor():
    zeros = [torch.zeros(1, 256, 256).half(), torch.zeros(1, 256, 256).half()]
    frames = encode_message(Message("forward", {}, zeros, 3), compression=["lz4", "none"])
    assert len(frames[1]) < zeros[0].nbytes // 10 and len(frames[2]) == zeros[1].nbytes
    back = decode_message([bytes(f) for f in frames])
    assert all(torch.equal(a, b) for a, b in zip(back.tensors, zeros))
    with pytest.raises(ValueError):
        encode_message(Message("forward", {}, zeros, 3), compression=["lz4"])


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


def test_large_tensor_crosses_a_real_socket_without_a_copy_on_either_end():
    """Sending hands libzmq the tensor's own memory; the received tensor is the zmq frame."""
    import zmq
    from wire.limits import DEFAULT_LIMITS
    from wire.sockets import configure_socket
    ctx = zmq.Context.instance()
    rx, tx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        for sock in (rx, tx):
            configure_socket(sock, DEFAULT_LIMITS)
        port = rx.bind_to_random_port("tcp://127.0.0.1")
        tx.connect(f"tcp://127.0.0.1:{port}")
        x = torch.randn(1, 512, 256).half()  # 256 KiB: over the copy threshold
        frames = encode_message(Message("echo", {}, [x], 7), compression="auto")
        assert frames[1].__array_interface__["data"][0] == x.data_ptr()  # a view, not a copy
        tx.send_multipart(frames, copy=False)
        got = rx.recv_multipart(copy=False)
        msg = decode_message(got)
        buf = got[1].buffer
        y = msg.tensors[0]
        assert torch.equal(y, x)
        buf[0:2] = b"\x00\x3c"  # write 1.0 into the frame: the tensor sees it
        assert y.view(-1)[0].item() == 1.0
    finally:
        rx.close(linger=0)
        tx.close(linger=0)
