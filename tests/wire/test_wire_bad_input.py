"""Every bad-input class, sent raw to a live server socket, gets an error reply with its code --
and the server then still serves a good request on the same connection."""
import msgpack
import pytest
import torch
import zmq

from wire import CurveKeys
from wire.endpoint import split_endpoint
from wire.envelope import PROTOCOL_VERSION, Message, decode_message, encode_message

RECV_TIMEOUT_MS = 5000


def header(**fields) -> bytes:
    h = {"v": PROTOCOL_VERSION, "id": 7, "k": "request", "m": "echo", "meta": {}, "t": []}
    h.update(fields)
    return msgpack.packb(h)


def tensor_desc(dtype="float16", shape=(2,), codec="none") -> dict:
    return {"dtype": dtype, "shape": list(shape), "codec": codec}


BAD_INPUTS = {
    "wrong protocol version": ([header(v=PROTOCOL_VERSION + 1)], "bad_version"),
    "unknown method": ([header(m="no_such_method")], "unknown_method"),
    "unknown dtype": ([header(t=[tensor_desc(dtype="float8")]), b"\0\0"], "bad_tensor"),
    "shape does not match bytes": ([header(t=[tensor_desc(shape=(3,))]), b"\0\0\0\0"], "bad_tensor"),
    "negative dimension": ([header(t=[tensor_desc(shape=(-2,))]), b""], "bad_tensor"),
    "absurd dimensions": ([header(t=[tensor_desc(shape=(1 << 40, 1 << 40))]), b""], "bad_tensor"),
    "too many frames": ([header(t=[tensor_desc(shape=(1,))] * 9)] + [b"\0\0"] * 9, "message_too_large"),
    "header not a map": ([msgpack.packb([1, 2, 3])], "bad_header"),
    "header not msgpack": ([b"\xc1\xc1garbage"], "bad_header"),
    "reply sent as request": ([header(k="reply")], "bad_header"),
    "descriptor count differs from frames": ([header(t=[tensor_desc()])], "bad_header"),
    "message over the size cap": ([header(t=[tensor_desc("int32", (100_000,))] * 3)]
                                  + [b"\0" * 400_000] * 3, "message_too_large"),
    "decodes over the size cap": ([header(t=[tensor_desc("int32", (300_000,), "lz4")])] + [b"\0" * 10],
                                  "message_too_large"),
    "corrupt lz4": ([header(t=[tensor_desc("float32", (1024,), "lz4")]), b"\xff" * 100], "corrupt_payload"),
    "truncated lz4": ([header(t=[tensor_desc("float32", (1024,), "lz4")]), b"\x1f\x00\x01\x00"],
                      "corrupt_payload"),
}


@pytest.fixture
def raw_dealer(live_server):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    # a stranger with a key of its own: CURVE keeps out no one who dials with the server's key
    address, server_key = split_endpoint(live_server.address)
    mine = CurveKeys.generate()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, mine.public, mine.secret
    sock.connect(address)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def good_request_is_served(sock) -> bool:
    x = torch.arange(6, dtype=torch.float16)
    sock.send_multipart(encode_message(Message("echo", {"n": 1}, [x], request_id=99)))
    reply = decode_message(sock.recv_multipart())
    return reply.kind == "reply" and reply.request_id == 99 and torch.equal(reply.tensors[0], x)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gets_error_reply_then_server_still_serves(raw_dealer, name):
    frames, code = BAD_INPUTS[name]
    raw_dealer.send_multipart(frames)
    reply = decode_message(raw_dealer.recv_multipart())
    assert reply.kind == "error"
    assert reply.meta["code"] == code, reply.meta
    assert isinstance(reply.meta["message"], str) and reply.meta["message"]
    if code not in ("bad_header", "message_too_large") or name == "reply sent as request":
        assert reply.request_id == 7  # the sender can tell which request failed
    assert good_request_is_served(raw_dealer)


def test_frame_over_libzmq_max_size_drops_sender_and_server_keeps_serving(raw_dealer, live_server):
    raw_dealer.send_multipart([header(), b"\0" * (live_server.limits.max_message_bytes + 1)])
    # libzmq cut the connection before the server saw the frame; the DEALER reconnects by itself
    assert good_request_is_served(raw_dealer)
