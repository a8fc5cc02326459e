"""A server among strangers (issue 14), on one real server process and raw DEALER sockets:

- resources bounded before work: a request is judged on the tensors it declares before any payload
  is decompressed. Eight ~1 MiB lz4 messages that each declare a [1, 1048576, 64] float32 tensor
  (256 MiB decoded) get a typed error each, and the server's peak RSS (VmHWM) stays within 64 MiB
  of where it was before them; the session they named is untouched;
- sessions belong to their opener: a second connection that knows a session id can neither step
  nor close it;
- a squatting peer holding the whole cache budget keeps a second client out for no longer than
  that client's open: the squatter's session over its share is ended for it."""
import asyncio
import time

import lz4.block
import msgpack
import numpy as np
import pytest
import torch
import zmq

from wire import CurveKeys, ZmqTransport
from wire.endpoint import split_endpoint
from wire.envelope import PROTOCOL_VERSION, Message, decode_message, encode_message

COMMON = ["--new-swarm", "--block-indices", "0:6", "--throughput", 100, "--no-rebalance", "--device", "cpu",
          "--attn-cache-tokens", 1024, "--max-session-length", 1024]
HIDDEN = 64
BOMB_SHAPE = [1, 1 << 20, HIDDEN]  # float32: 256 MiB decoded, wire's whole max_message_bytes
RSS_SLACK = 64 << 20
RECV_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tiny_model_dir, spawn_server):
    return spawn_server(tiny_model_dir, *COMMON).wait_serving()


@pytest.fixture
def connect(server):
    """connect() -> a new DEALER to the server: a connection of its own (a routing id of its own)."""
    socks = []

    def make():
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        address, server_key = split_endpoint(server.address)  # a stranger dials with CURVE, as anyone must
        mine = CurveKeys.generate()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, mine.public, mine.secret
        sock.connect(address)
        socks.append(sock)
        return sock
    try:
        yield make
    finally:
        for sock in socks:
            sock.close(linger=0)


@pytest.fixture
def dealer(connect):
    return connect()


def call(sock, method, meta, tensors=(), request_id=1) -> Message:
    sock.send_multipart(encode_message(Message(method, meta, list(tensors), request_id)))
    return decode_message(sock.recv_multipart())


def peak_rss(pid: int) -> int:
    """VmHWM: the process's peak resident set since it started, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM in /proc status")


def bomb_frames(method: str, meta: dict, request_id: int, payload: bytes) -> list:
    header = {"v": PROTOCOL_VERSION, "id": request_id, "k": "request", "m": method, "meta": meta,
              "t": [{"dtype": "float32", "shape": BOMB_SHAPE, "codec": "lz4"}]}
    return [msgpack.packb(header, use_bin_type=True), payload]


def test_eight_lz4_bombs_get_typed_errors_and_leave_peak_rss_within_64_mib(server, dealer):
    x = torch.randn(1, 4, HIDDEN)
    assert call(dealer, "forward", {}, [x]).kind == "reply"  # warm: first-request allocations happen here
    opened = call(dealer, "open_session", {"max_length": 64})
    assert opened.kind == "reply", opened.meta
    session = opened.meta["session_id"]
    assert call(dealer, "inference_step", {"session_id": session, "position": 0}, [x]).kind == "reply"
    idle = peak_rss(server.popen.pid)

    payload = lz4.block.compress(np.zeros(int(np.prod(BOMB_SHAPE)) * 4, dtype=np.uint8), store_size=False)
    assert len(payload) < (1 << 20) + (64 << 10)  # ~1 MiB on the wire, 256 MiB once decoded
    bombs = [("forward", {}), ("inference_step", {"session_id": session, "position": 4})] * 4
    for i, (method, meta) in enumerate(bombs):  # all eight in flight at once
        dealer.send_multipart(bomb_frames(method, meta, 100 + i, payload))
    replies = {}
    for _ in bombs:
        reply = decode_message(dealer.recv_multipart())
        replies[reply.request_id] = reply
    assert sorted(replies) == list(range(100, 108))
    for reply in replies.values():
        assert reply.kind == "error" and reply.meta["code"] == "too_many_tokens", reply.meta
    grown = peak_rss(server.popen.pid) - idle
    print(f"peak RSS {idle / 2**20:.0f} MiB idle, +{grown / 2**20:.1f} MiB after 8 bombs")
    assert grown <= RSS_SLACK, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    # and the session the bombs named is untouched: its next step is served at its position
    step = call(dealer, "inference_step", {"session_id": session, "position": 4}, [torch.randn(1, 1, HIDDEN)], 9)
    assert step.kind == "reply" and list(step.tensors[0].shape) == [1, 1, HIDDEN]
    assert call(dealer, "close_session", {"session_id": session}).kind == "reply"


def test_a_method_without_tensors_refuses_declared_ones_before_decoding(dealer):
    reply = call(dealer, "ping", {}, [torch.zeros(4)])
    assert reply.kind == "error" and reply.meta["code"] == "bad_input"
    assert "takes no tensors" in reply.meta["message"]


def test_a_second_connection_that_knows_a_session_id_can_neither_step_nor_close_it(connect):
    owner, stranger = connect(), connect()
    session = call(owner, "open_session", {"max_length": 16}).meta["session_id"]
    x = torch.randn(1, 2, HIDDEN)
    for method, meta, tensors in [("inference_step", {"session_id": session, "position": 0}, [x]),
                                  ("close_session", {"session_id": session}, [])]:
        refused = call(stranger, method, meta, tensors)
        assert refused.kind == "error" and refused.meta["code"] == "foreign_session", refused.meta
    step = call(owner, "inference_step", {"session_id": session, "position": 0}, [x])  # nothing was taken
    assert step.kind == "reply" and list(step.tensors[0].shape) == [1, 2, HIDDEN]
    assert call(owner, "close_session", {"session_id": session}).kind == "reply"


def test_a_squatting_peer_cannot_keep_a_second_client_out_beyond_its_share(connect, server):
    squatter = connect()
    free = call(squatter, "info", {}).meta["cache_tokens_left"]
    squat = call(squatter, "open_session", {"max_length": free})  # the whole budget, then idle
    assert squat.kind == "reply", squat.meta
    assert call(squatter, "info", {}).meta["cache_tokens_left"] == 0

    async def second_client():
        transport = ZmqTransport()
        try:
            began = time.monotonic()
            reply = await transport.call(server.address, "open_session", {"max_length": 64, "wait_timeout": 20},
                                         timeout=30)
            waited = time.monotonic() - began
            sid = reply.meta["session_id"]
            step = await transport.call(server.address, "inference_step", {"session_id": sid, "position": 0},
                                        [torch.randn(1, 3, HIDDEN)], timeout=30)
            return sid, waited, step
        finally:
            await transport.close()
    sid, waited, step = asyncio.run(second_client())
    print(f"second client got a session after {waited:.2f} s of its 20 s wait")
    assert list(step.tensors[0].shape) == [1, 3, HIDDEN]
    ended = call(squatter, "inference_step", {"session_id": squat.meta["session_id"], "position": 0},
                 [torch.randn(1, 1, HIDDEN)])
    assert ended.kind == "error" and ended.meta["code"] == "unknown_session"
    assert "more than its share of the cache" in ended.meta["message"]
    # squatting again: over its own share, it waits and gets a clear cache_full; no one is ended for it
    again = call(squatter, "open_session", {"max_length": free, "wait_timeout": 0.2})
    assert again.kind == "error" and again.meta["code"] == "cache_full"
    assert again.meta["message"].startswith("cache full: 1 sessions hold 64 of 1024 tokens (0 of them yours)")
