"""RpcServer's admit hook sees a request's declared tensors before any payload is decoded: its
refusal is the reply (with its code) even for a payload that would not decode, the handler never
runs, and lz4 payloads that claim more than lz4 can pack are refused from their lengths alone."""
import msgpack
import pytest
import zmq

from wire import RpcServer
from wire.envelope import PROTOCOL_VERSION, decode_message

from wire import Limits

SMALL_LIMITS = Limits(max_message_bytes=1 << 20, max_frames=8, max_header_bytes=64 << 10)


class Refused(Exception):
    code = "refused_here"


def header(method="echo", descs=(), request_id=5) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "id": request_id, "k": "request", "m": method, "meta": {},
                          "t": list(descs)}, use_bin_type=True)


@pytest.fixture
def admitting_server(background_loop):
    seen, served = [], []

    def admit(method, meta, declared):
        seen.append((method, [(str(c.dtype), c.shape, c.codec) for c in declared]))
        if any(c.nbytes > 1024 for c in declared):
            raise Refused(f"{method}: {declared[0].nbytes} bytes declared")

    async def echo(request):
        served.append(request.method)
        return {}, request.tensors

    async def make():
        server = RpcServer({"echo": echo}, limits=SMALL_LIMITS, admit=admit, insecure_plaintext=True)  # raw sockets below
        await server.start()
        return server
    server = background_loop.run(make(), timeout=10)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(server.address)
    try:
        yield sock, seen, served
    finally:
        sock.close(linger=0)
        background_loop.run(server.stop(), timeout=10)


def test_admit_refuses_on_declared_shape_before_a_corrupt_payload_is_decoded(admitting_server):
    sock, seen, served = admitting_server
    desc = {"dtype": "float32", "shape": [1, 4096], "codec": "lz4"}
    sock.send_multipart([header(descs=[desc]), b"\xff" * 100])  # corrupt lz4: decoding would say corrupt_payload
    reply = decode_message(sock.recv_multipart())
    assert (reply.kind, reply.meta["code"], reply.request_id) == ("error", "refused_here", 5)
    assert seen == [("echo", [("torch.float32", [1, 4096], "lz4")])] and served == []


def test_admitted_requests_are_decoded_and_served(admitting_server):
    sock, seen, served = admitting_server
    sock.send_multipart([header(descs=[{"dtype": "int32", "shape": [2], "codec": "none"}]), b"\1\0\0\0\2\0\0\0"])
    reply = decode_message(sock.recv_multipart())
    assert reply.kind == "reply" and reply.tensors[0].tolist() == [1, 2] and served == ["echo"]


def test_lz4_payload_claiming_more_than_lz4_can_pack_is_corrupt_before_admission(admitting_server):
    sock, seen, served = admitting_server
    desc = {"dtype": "int32", "shape": [100_000], "codec": "lz4"}  # 400 kB from 100 bytes: over 256:1
    sock.send_multipart([header(descs=[desc]), b"\0" * 100])
    reply = decode_message(sock.recv_multipart())
    assert reply.kind == "error" and reply.meta["code"] == "corrupt_payload" and seen == []
