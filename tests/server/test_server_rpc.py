"""The RPC handlers on a real RpcServer and ZmqTransport over loopback, with a real tiny model.

Outputs are compared with the same BlockSpan called in-process; every bad input gets a typed
error that names the problem, and the server keeps serving afterwards.
"""
import threading

import pytest
import torch

from wire import BackgroundLoop, RpcServer, ZmqTransport
from zswarm.errors import (BadInputError, BadPositionError, BlocksNotServedError, CacheFullError,
                           TooManyTokensError, UnknownAdapterError, UnknownSessionError)
from zswarm.server.cache_budget import CacheBudget
from zswarm.server.compute import ComputeQueue
from zswarm.server.handlers import ServerRPC, ServingState
from zswarm.server.sessions import ServerSessions

TINY_LAYERS = 6  # conftest's tiny model
CACHE_TOKENS = 256
HOSTED = (1, 5)  # a server in the middle of the model: blocks 0 and 5 are not ours


class Live:
    """An in-process server for blocks HOSTED of the tiny model, and a client to call it."""

    def __init__(self, span):
        self.loop = BackgroundLoop(name="server-rpc-test")
        self.span = span.sub(*HOSTED)
        self.compute = ComputeQueue()
        self.sessions = ServerSessions(CacheBudget(CACHE_TOKENS), idle_timeout=60)
        self.state = ServingState(model_id="tiny", num_blocks=TINY_LAYERS, hidden_size=span.hidden_size,
                                  dtype="float32", quant="none", peer_id="me", version="test",
                                  start=HOSTED[0], end=HOSTED[1], span=self.span, max_session_length=128,
                                  max_batch_size=4, max_request_tokens=64, prefill_chunk_tokens=4)
        self.rpc = ServerRPC(self.state, self.sessions, self.compute)

        async def up():
            self.server = RpcServer(self.rpc.handlers())
            await self.server.start()
            self.transport = ZmqTransport()
        self.loop.run(up(), timeout=10)

    def call(self, method, meta=None, tensors=(), timeout=10):
        return self.loop.run(self.transport.call(self.server.address, method, meta or {}, list(tensors),
                                                 timeout=timeout), timeout=timeout + 5)

    def open(self, **meta):
        meta = {"start": HOSTED[0], "end": HOSTED[1], "max_length": 32, "batch_size": 1, **meta}
        return self.call("open_session", meta).meta["session_id"]

    def step(self, session_id, hidden, position, **extra):
        names, tensors = ["hidden"], [hidden]
        for name in ("prompts", "hypo_ids"):
            if name in extra:
                names.append(name)
                tensors.append(extra.pop(name))
        meta = {"session_id": session_id, "position": position, "tensor_names": names, **extra}
        return self.call("inference_step", meta, tensors).tensors[0]

    def close(self):
        async def down():
            await self.transport.close()
            await self.server.stop()
        self.loop.run(down(), timeout=10)
        self.compute.close()
        self.loop.close()


@pytest.fixture(scope="module")
def live(tiny_span):
    server = Live(tiny_span)
    try:
        yield server
    finally:
        server.close()


def hidden_states(batch, seq, seed, size=64, dtype=torch.float32):
    return torch.randn(batch, seq, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def local_steps(span, chunks, batch=1):
    cache = span.new_cache(batch)
    return [span.inference_step(x, cache) for x in chunks]


def test_info_and_ping_describe_the_server(live):
    info = live.call("info").meta
    assert (info["start"], info["end"], info["num_blocks"], info["hidden_size"]) == (*HOSTED, TINY_LAYERS, 64)
    assert info["cache_tokens_left"] <= CACHE_TOKENS and "load" in info
    assert live.call("ping").meta == {}


def test_inference_through_the_server_matches_the_span_in_process(live):
    prefill, token = hidden_states(1, 9, 1), hidden_states(1, 1, 2)  # 9 > prefill chunk: runs in 3 chunks
    sid = live.open()
    remote = [live.step(sid, prefill, 0), live.step(sid, token, 9)]
    local = local_steps(live.span, [prefill, token])
    for r, l in zip(remote, local):
        torch.testing.assert_close(r, l, rtol=1e-5, atol=1e-5)
    live.call("close_session", {"session_id": sid})


def test_any_sub_range_of_the_hosted_blocks_is_served(live):
    x = hidden_states(1, 3, 3)
    sid = live.open(start=2, end=4)
    torch.testing.assert_close(live.step(sid, x, 0), local_steps(live.span.sub(2, 4), [x])[0], rtol=1e-5, atol=1e-5)
    out = live.call("forward", {"start": 3, "end": 5}, [x]).tensors[0]
    torch.testing.assert_close(out, live.span.sub(3, 5).forward(x), rtol=1e-5, atol=1e-5)
    live.call("close_session", {"session_id": sid})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hidden_states_are_answered_in_the_requests_dtype(live, dtype):
    x = hidden_states(1, 2, 4, dtype=dtype)
    sid = live.open()
    out = live.step(sid, x, 0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), local_steps(live.span, [x.float()])[0], rtol=2e-2, atol=2e-2)
    assert live.call("forward", {}, [x]).tensors[0].dtype == dtype
    live.call("close_session", {"session_id": sid})


def test_a_smaller_position_rolls_back_and_replays(live):
    a, b, c = hidden_states(1, 3, 5), hidden_states(1, 1, 6), hidden_states(1, 1, 7)
    sid = live.open()
    live.step(sid, a, 0)
    live.step(sid, b, 3)
    replayed = live.step(sid, c, 2)  # forget position 2 onwards, then apply c there
    expected = local_steps(live.span, [a[:, :2], c])[1]
    torch.testing.assert_close(replayed, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(BadPositionError, match="holds only 3 tokens"):
        live.step(sid, c, 5)
    live.call("close_session", {"session_id": sid})


def test_hypo_ids_reorder_the_cache_like_beam_search(live):
    x, y = hidden_states(2, 3, 8), hidden_states(2, 1, 9)
    ids = torch.tensor([1, 1])
    sid = live.open(batch_size=2)
    live.step(sid, x, 0)
    out = live.step(sid, y, 3, hypo_ids=ids)
    cache = live.span.new_cache(2)
    live.span.inference_step(x, cache)
    cache.reorder(ids)
    torch.testing.assert_close(out, live.span.inference_step(y, cache), rtol=1e-5, atol=1e-5)
    live.call("close_session", {"session_id": sid})


def test_deep_prompts_go_into_steps_forward_and_backward(live):
    x = hidden_states(1, 4, 10)
    prompts = hidden_states(4, 2, 11).reshape(4, 1, 2, 64) * 0.1
    sid = live.open()
    out = live.step(sid, x, 0, prompts=prompts)
    cache = live.span.new_cache(1)
    torch.testing.assert_close(out, live.span.inference_step(x, cache, prompts=prompts), rtol=1e-5, atol=1e-5)
    fwd = live.call("forward", {}, [x, prompts]).tensors[0]
    torch.testing.assert_close(fwd, live.span.forward(x, prompts=prompts), rtol=1e-5, atol=1e-5)
    grad_out = hidden_states(1, 4, 12)
    grads = live.call("backward", {}, [x, grad_out, prompts]).tensors
    expected = live.span.backward(x, grad_out, prompts=prompts)
    assert len(grads) == 2
    torch.testing.assert_close(grads[0], expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], expected[1], rtol=1e-4, atol=1e-5)
    live.call("close_session", {"session_id": sid})


def test_ping_is_answered_while_a_long_computation_runs(live):
    gate = threading.Event()
    blocker = live.loop.submit(live.compute.run(lambda: gate.wait(10)))
    try:
        assert live.call("ping", timeout=5).meta == {}
        assert not blocker.done()
    finally:
        gate.set()
    blocker.result(10)


def test_full_cache_makes_open_wait_then_fail_and_succeed_once_a_session_closes(live):
    hog = live.open(max_length=CACHE_TOKENS // 2)
    hog2 = live.open(max_length=CACHE_TOKENS // 2)
    with pytest.raises(CacheFullError, match="cache full"):
        live.open(max_length=8, wait_timeout=0.2)
    waiting = live.loop.submit(live.transport.call(
        live.server.address, "open_session",
        {"start": HOSTED[0], "end": HOSTED[1], "max_length": 8, "batch_size": 1, "wait_timeout": 10}, timeout=15))
    live.call("close_session", {"session_id": hog})
    sid = waiting.result(15).meta["session_id"]
    for s in (sid, hog2):
        live.call("close_session", {"session_id": s})


BAD_REQUESTS = [
    # (name, method, meta, tensors, error class, message fragment)
    ("wrong hidden size", "forward", {}, [torch.zeros(1, 2, 32)], BadInputError, "hidden size 32"),
    ("integer hidden", "forward", {}, [torch.zeros(1, 2, 64, dtype=torch.int32)], BadInputError, "float16, bfloat16 or float32"),
    ("2-d hidden", "forward", {}, [torch.zeros(2, 64)], BadInputError, "[batch, seq, hidden]"),
    ("NaN", "forward", {}, [torch.full((1, 2, 64), float("nan"))], BadInputError, "NaN or inf"),
    ("inf", "forward", {}, [torch.full((1, 2, 64), float("inf"))], BadInputError, "NaN or inf"),
    ("too many tokens", "forward", {}, [torch.zeros(1, 65, 64)], TooManyTokensError, "exceeds this server's cap"),
    ("blocks not held", "forward", {"start": 0, "end": 2}, [torch.zeros(1, 2, 64)], BlocksNotServedError, "holds blocks 1:5"),
    ("empty range", "forward", {"start": 3, "end": 3}, [torch.zeros(1, 2, 64)], BadInputError, "empty block range"),
    ("no tensors", "forward", {}, [], BadInputError, "missing tensor"),
    ("junk tensor_names", "forward", {"tensor_names": ["hidden", "x"]}, [torch.zeros(1, 1, 64)] * 2, BadInputError, "tensor_names"),
    ("prompts wrong shape", "forward", {}, [torch.zeros(1, 2, 64), torch.zeros(3, 1, 2, 64)], BadInputError, "prompts must be [4, 1"),
    ("prompts wrong dtype", "forward", {}, [torch.zeros(1, 2, 64), torch.zeros(4, 1, 2, 64, dtype=torch.float16)], BadInputError, "prompts must have"),
    ("grad_out mismatch", "backward", {}, [torch.zeros(1, 2, 64), torch.zeros(1, 3, 64)], BadInputError, "grad_out must match"),
    ("unknown adapter", "forward", {"adapter": "lora-x"}, [torch.zeros(1, 1, 64)], UnknownAdapterError, "lora-x"),
    ("start not an int", "forward", {"start": "1"}, [torch.zeros(1, 1, 64)], BadInputError, "'start' must be an integer"),
    ("open beyond max length", "open_session", {"max_length": 129}, [], TooManyTokensError, "max_length 129"),
    ("open without max length", "open_session", {}, [], BadInputError, "'max_length' is required"),
    ("open blocks not held", "open_session", {"start": 4, "end": 6, "max_length": 4}, [], BlocksNotServedError, "4:6"),
    ("open huge batch", "open_session", {"max_length": 4, "batch_size": 5}, [], TooManyTokensError, "batch_size 5"),
    ("unknown session", "inference_step", {"session_id": "nope", "position": 0}, [torch.zeros(1, 1, 64)], UnknownSessionError, "unknown"),
    ("session id not a string", "inference_step", {"session_id": 7, "position": 0}, [torch.zeros(1, 1, 64)], UnknownSessionError, "unknown"),
    ("close unknown session", "close_session", {"session_id": "nope"}, [], UnknownSessionError, "unknown"),
]


@pytest.mark.parametrize("name, method, meta, tensors, error, fragment", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_request_gets_a_typed_error_naming_the_problem(live, name, method, meta, tensors, error, fragment):
    with pytest.raises(error) as info:
        live.call(method, meta, tensors)
    assert fragment in info.value.message


def test_bad_steps_in_a_session_fail_alone_and_the_session_goes_on(live):
    sid = live.open(max_length=8, batch_size=2)
    good = hidden_states(2, 2, 13)
    first = live.step(sid, good, 0)
    bad_steps = [
        (dict(hidden=torch.zeros(1, 1, 64), position=2), BadInputError, "batch 1"),
        (dict(hidden=torch.zeros(2, 7, 64), position=2), TooManyTokensError, "max_length 8"),
        (dict(hidden=hidden_states(2, 1, 14), position=3), BadPositionError, "holds only 2"),
        (dict(hidden=hidden_states(2, 1, 14), position=2, hypo_ids=torch.tensor([0, 2])), BadInputError, "hypo_ids"),
        (dict(hidden=hidden_states(2, 1, 14), position=2, prompts=torch.zeros(4, 2, 1, 32)), BadInputError, "prompts"),
        (dict(hidden=torch.full((2, 1, 64), float("nan")), position=2), BadInputError, "NaN"),
    ]
    for kwargs, error, fragment in bad_steps:
        with pytest.raises(error, match=fragment):
            live.step(sid, kwargs.pop("hidden"), kwargs.pop("position"), **kwargs)
    with pytest.raises(BadInputError, match="'position' is required"):
        live.call("inference_step", {"session_id": sid}, [good])
    nxt = hidden_states(2, 1, 15)
    out = live.step(sid, nxt, 2)
    torch.testing.assert_close(out, local_steps(live.span, [good, nxt], batch=2)[1], rtol=1e-5, atol=1e-5)
    live.call("close_session", {"session_id": sid})
    live.call("close_session", {"session_id": sid})  # closing twice is harmless
    with pytest.raises(UnknownSessionError, match="was closed"):
        live.step(sid, nxt, 3)
    torch.testing.assert_close(first, local_steps(live.span, [good], batch=2)[0], rtol=1e-5, atol=1e-5)


def test_a_first_step_that_opens_its_session_matches_open_then_step(live):
    """The first token in one round trip: inference_step with `open` and no session_id opens the
    session, runs the step and names the session in its reply; later steps use that id."""
    prompt, token = hidden_states(1, 5, seed=31), hidden_states(1, 1, seed=32)
    sid = live.open()
    expected = [live.step(sid, prompt, 0), live.step(sid, token, 5)]
    live.call("close_session", {"session_id": sid})
    opened = {"start": HOSTED[0], "end": HOSTED[1], "max_length": 32, "batch_size": 1}
    reply = live.call("inference_step", {"session_id": None, "open": opened, "position": 0,
                                         "tensor_names": ["hidden"]}, [prompt])
    new_sid = reply.meta["session_id"]
    assert new_sid != sid and torch.equal(reply.tensors[0], expected[0])
    assert torch.equal(live.step(new_sid, token, 5), expected[1])
    live.call("close_session", {"session_id": new_sid})


def test_a_first_step_that_fails_closes_the_session_it_opened(live):
    free, held = live.sessions.budget.free, len(live.sessions)
    opened = {"start": HOSTED[0], "end": HOSTED[1], "max_length": 32, "batch_size": 1}
    with pytest.raises(BadInputError):  # hidden states of the wrong size: the step fails after the open
        live.call("inference_step", {"open": opened, "position": 0, "tensor_names": ["hidden"]},
                  [hidden_states(1, 2, seed=33, size=8)])
    with pytest.raises(BadInputError, match="'open' must be a map"):
        live.call("inference_step", {"open": [1, 2], "position": 0, "tensor_names": ["hidden"]},
                  [hidden_states(1, 2, seed=33)])
    assert (live.sessions.budget.free, len(live.sessions)) == (free, held)
    sid = live.open()  # and the server goes on serving
    assert live.step(sid, hidden_states(1, 1, seed=34), 0).shape == (1, 1, 64)
    live.call("close_session", {"session_id": sid})


@pytest.mark.parametrize("push, fragment", [("tcp://x:1", "list of at most"), ([{"address": "ipc:///x"}], "tcp://"),
                                            ([{"address": "tcp://127.0.0.1:1", "session_id": "../../"}], "session_id"),
                                            ([{"address": "tcp://127.0.0.1:1", "session_id": "a" * 16, "open": 3}],
                                             "'open' must be a map")])
def test_a_bad_push_list_is_refused_before_the_step_runs(live, push, fragment):
    sid = live.open()
    with pytest.raises(BadInputError, match=fragment):
        live.step(sid, hidden_states(1, 1, seed=35), 0, push=push)
    assert live.step(sid, hidden_states(1, 1, seed=35), 0).shape == (1, 1, 64)  # nothing was stepped
    live.call("close_session", {"session_id": sid})


def test_a_step_result_nobody_pushes_ends_at_its_wait_with_a_typed_error(live):
    with pytest.raises(BadPositionError, match="did not push it"):
        live.call("step_result", {"session_id": "b" * 32, "position": 0, "wait_timeout": 0.2})
    with pytest.raises(BadInputError, match="session_id"):
        live.call("step_result", {"session_id": 5, "position": 0})
    assert len(live.rpc.rendezvous) <= 1  # a wait that ended leaves at most its own slot, dropped later
