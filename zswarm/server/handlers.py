"""The RPC methods of a server (docs/architecture.md, "The RPC protocol"): `rpc_<method>`.

Handlers validate on the event loop (cheap), then run the math on the compute thread. Hidden
states come back in the request's dtype. `ServingState` is what the handlers read; the server
owns it and swaps `span`, `start`, `end` when it loads or moves blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from wire.codec import to_wire_dtype
from zswarm.errors import BadInputError, BadPositionError, BlocksNotServedError, ShuttingDownError, \
    TooManyTokensError, UnknownAdapterError
from zswarm.models.lora import using_adapter
from zswarm.models.span import prompts_apply
from zswarm.server import compute as priorities
from zswarm.server.admission import TENSOR_NAMES, admit
from zswarm.server.batching import DecodeBatcher, DecodeStep, prepare_session
from zswarm.server.compute import ComputeClosed, ComputeQueue
from zswarm.server.config import SERVER_LIMITS, ServerConfig
from zswarm.server.push import PushRendezvous
from zswarm.server.push_targets import push_hops
from zswarm.server.sessions import ServerSession, ServerSessions
from zswarm.server.validation import block_range, check_batch, check_hidden, check_hypo_ids, check_prompts, \
    check_same, check_tokens, meta_float, meta_int, meta_left_pad, meta_session_id, meta_str, named_tensors

logger = logging.getLogger(__name__)

_LIMIT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerConfig) if f.name in SERVER_LIMITS}


@dataclass
class ServingState:
    """What the handlers need to know about the server right now."""

    model_id: str
    num_blocks: int  # of the whole model
    hidden_size: int
    dtype: str  # weights/compute dtype name
    quant: str
    peer_id: str
    version: str
    start: int = 0
    end: int = 0
    span: Any = None  # BlockSpan over [start, end); None while loading or moving
    throughput: float = 0.0
    inference_rps: float = 0.0
    forward_rps: float = 0.0
    adapters: tuple[str, ...] = ()
    # the limits (SERVER_LIMITS), defaulting to ServerConfig's: written once, there
    max_session_length: int = _LIMIT_DEFAULTS["max_session_length"]
    max_batch_size: int = _LIMIT_DEFAULTS["max_batch_size"]
    max_request_tokens: int = _LIMIT_DEFAULTS["max_request_tokens"]
    prefill_chunk_tokens: int = _LIMIT_DEFAULTS["prefill_chunk_tokens"]
    max_wait_timeout: float = _LIMIT_DEFAULTS["max_wait_timeout"]
    stats: dict = field(default_factory=lambda: {"inference_steps": 0, "forward": 0, "backward": 0, "pushed_steps": 0})


class ServerRPC:
    def __init__(self, state: ServingState, sessions: ServerSessions, compute: ComputeQueue, transport=None,
                 connect_back=None, push_targets=None):
        self.state = state
        self.push_targets = push_targets  # push_targets.PushTargets: where steps may be pushed (None: anywhere)
        self.connect_back = connect_back  # reachability.ConnectBack: checks for servers that ask (None: refused)
        self.sessions = sessions
        self.compute = compute
        self.batcher = DecodeBatcher(compute)
        self.transport = transport  # for pushing steps on to the next server (None: no push from here)
        self.rendezvous = PushRendezvous()
        self._pushing: set = set()

    def handlers(self) -> dict:
        return {name[len("rpc_"):]: getattr(self, name) for name in dir(self) if name.startswith("rpc_")}

    def admit(self, method: str, meta: dict, declared) -> None:
        """wire's admission hook: refuse a request on its declared tensors, before they are decoded."""
        admit(self.state, method, meta, declared)

    # ---- helpers -----------------------------------------------------------------------------
    def _span_for(self, start: int, end: int):
        state = self.state
        span = state.span
        if span is None:
            raise BlocksNotServedError(f"blocks {start}:{end} are not loaded here yet (loading or moving)")
        if (start, end) == (state.start, state.end):
            return span
        return span.sub(start, end)

    def _check_adapter(self, meta: dict) -> Optional[str]:
        """The request's LoRA adapter (None: the base model); unknown_adapter if we do not serve it."""
        adapter = meta_str(meta, "adapter")
        if adapter and adapter not in self.state.adapters:
            served = ", ".join(self.state.adapters) or "none"
            raise UnknownAdapterError(f"adapter {adapter!r} is not served here (served: {served})")
        return adapter or None

    async def _run(self, fn, priority: int):
        try:
            return await self.compute.run(fn, priority)
        except ComputeClosed as exc:
            raise ShuttingDownError(str(exc)) from None

    # ---- info and ping -----------------------------------------------------------------------
    async def rpc_ping(self, request):
        return {}, []

    async def rpc_check_reachable(self, request):
        """Connect back to the asking server's RPC and DHT addresses (reachability.py)."""
        if self.connect_back is None:
            raise BadInputError("this server does not run reachability checks")
        return await self.connect_back.check(request.meta, request.peer_address), []

    async def rpc_info(self, request):
        s = self.state
        elapsed = max(1e-9, time.monotonic() - self.compute.started_at)
        return {
            "version": s.version, "model_id": s.model_id, "start": s.start, "end": s.end,
            "num_blocks": s.num_blocks, "hidden_size": s.hidden_size, "dtype": s.dtype, "quant": s.quant,
            "throughput": s.throughput, "inference_rps": s.inference_rps, "forward_rps": s.forward_rps,
            "cache_tokens_left": self.sessions.budget.free, "sessions": len(self.sessions),
            "load": {"queued": self.compute.pending, "busy_fraction": round(self.compute.busy_seconds / elapsed, 4),
                     "waiting_for_cache": self.sessions.budget.waiting, "decode_ticks": self.batcher.ticks,
                     "decode_rows": self.batcher.rows,
                     "decode_tick_ms": round(self.batcher.tick_seconds * 1e3, 3), **s.stats},
            "adapters": list(s.adapters), "peer_id": s.peer_id, "ready": s.span is not None,
            "max_session_length": s.max_session_length, "max_request_tokens": s.max_request_tokens,
        }, []

    # ---- inference sessions ------------------------------------------------------------------
    async def rpc_open_session(self, request):
        session = await self._open_session(request.meta, request.peer, request.peer_address)
        return {"session_id": session.session_id}, []

    async def _open_session(self, meta, peer, peer_address: str = "", session_id: Optional[str] = None) -> ServerSession:
        """A new session from `meta` (open_session's, or the `open` of a first inference_step or
        push_step); `session_id`: the one its client chose (push_step), else a fresh one."""
        s = self.state
        if not isinstance(meta, dict):
            raise BadInputError(f"'open' must be a map of open_session's fields, got {type(meta).__name__}")
        start, end = block_range(meta, s.start, s.end)
        adapter = self._check_adapter(meta)
        max_length = meta_int(meta, "max_length", low=1)
        if max_length > s.max_session_length:
            raise TooManyTokensError(f"max_length {max_length} exceeds this server's limit of {s.max_session_length}")
        batch_size = meta_int(meta, "batch_size", low=1, default=1)
        if batch_size > s.max_batch_size:
            raise TooManyTokensError(f"batch_size {batch_size} exceeds this server's limit of {s.max_batch_size}")
        wait = meta_float(meta, "wait_timeout", default=0.0, high=s.max_wait_timeout)
        span = self._span_for(start, end)
        left_pad = meta_left_pad(meta, batch_size, max_length, span.family)
        return await self.sessions.open(start=start, end=end, max_length=max_length, batch_size=batch_size,
                                        wait_timeout=wait, span=span, peer=peer, peer_address=peer_address,
                                        adapter=adapter, left_pad=left_pad, session_id=session_id)

    async def rpc_close_session(self, request):
        session_id = request.meta.get("session_id")
        if self.sessions.ended(session_id):  # closing twice is fine; a made-up id is not
            return {}, []
        self.sessions.get(session_id, request.peer)  # unknown, or another connection's: refused
        self.sessions.close(session_id, why="was closed by its client")
        self.batcher.forget(session_id)  # ticks no longer wait for its next step
        return {}, []

    async def rpc_inference_step(self, request):
        meta = request.meta
        hops = await self._push_hops(meta)
        if "open" in meta:
            # A client that lets servers push to this session names it: see ServerSessions.open.
            chosen = meta_session_id(meta) if meta.get("session_id") is not None else None
            reply = await self._open_and_step(request, session_id=chosen)
        else:
            reply = await self._step(request)
        self._push_on(hops, meta, reply[1][0])
        return reply

    async def _step(self, request):
        # Take the session's lock before any other await: steps pipelined on one connection are
        # then served in the order they were sent (see wire/server.py).
        session = self.sessions.get(request.meta.get("session_id"), request.peer)
        async with session.lock:
            session = self.sessions.get(session.session_id)  # closed or expired while we queued?
            return await self._inference_step(session, request.meta, request.tensors)

    # ---- server-to-server push (push.py) ------------------------------------------------------
    async def rpc_push_step(self, request):
        """A step pushed by the previous server of a client's route: run it (opening the session
        under the client's id with its first step), leave its output for the client's
        step_result, and push it on to the next server."""
        meta = request.meta
        session_id = meta_session_id(meta)
        position = meta_int(meta, "position")
        try:
            hops = await self._push_hops(meta)
            if "open" in meta:
                reply = await self._open_and_step(request, session_id=session_id)
            else:
                reply = await self._step(request)
        except Exception as exc:
            self.rendezvous.deliver(session_id, position, error=exc)  # the client hears of it there
            raise
        self.rendezvous.deliver(session_id, position, reply[1][0])
        self.state.stats["pushed_steps"] += 1
        self._push_on(hops, meta, reply[1][0])
        return {}, []

    async def rpc_step_result(self, request):
        """The output of a pushed step of `session_id` at `position`, once it has run here."""
        meta = request.meta
        session_id = meta_session_id(meta)
        position = meta_int(meta, "position")
        wait = meta_float(meta, "wait_timeout", default=self.state.max_wait_timeout, high=self.state.max_wait_timeout)
        try:
            output = await self.rendezvous.wait(session_id, position, wait)
        except asyncio.TimeoutError:
            raise BadPositionError(f"no step of session {session_id[:16]} at position {position} reached this "
                                   f"server within {wait:g} s (the previous server did not push it)") from None
        return {}, [output]

    async def _push_hops(self, meta: dict) -> list:
        """The step's `push` hops, checked before the step runs: a hop this server would not dial
        fails the request, not the step after it has run."""
        hops = push_hops(meta)
        if hops and self.transport is None:
            raise BadInputError("this server does not push steps on (no transport)")
        if hops and self.push_targets is not None:
            await self.push_targets.check(hops[0]["address"])
        return hops

    def _push_on(self, hops: list, meta: dict, output) -> None:
        """Send `output` on to the first of `hops` as its push_step, without waiting for it: the
        client hears of a failure there from its step_result call to that server."""
        if not hops:
            return
        first, rest = hops[0], hops[1:]
        pushed = {"session_id": first["session_id"], "position": meta.get("position"), "tensor_names": ["hidden"],
                  "push": rest}
        if "open" in first:
            pushed["open"] = first["open"]
        call = self.transport.start_call(first["address"], "push_step", pushed, [output],
                                         timeout=self.state.max_wait_timeout)
        self._pushing.add(call)
        call.add_done_callback(self._pushed)

    def _pushed(self, call) -> None:
        self._pushing.discard(call)
        if not call.cancelled() and call.exception() is not None:
            logger.info("pushing a step on failed: %s", call.exception())

    async def _open_and_step(self, request, session_id: Optional[str] = None):
        """A session's first step with its opening (`meta["open"]`: open_session's fields): the
        first token then costs the client one round trip per server, not two. A step that fails
        closes the session it opened: the client never learnt its id."""
        session = await self._open_session(request.meta["open"], request.peer, request.peer_address,
                                           session_id=session_id)
        try:
            async with session.lock:
                _, outputs = await self._inference_step(session, request.meta, request.tensors)
        except BaseException:
            if self.sessions.close(session.session_id, why="failed its first step"):
                self.batcher.forget(session.session_id)
            raise
        return {"session_id": session.session_id}, outputs

    async def _inference_step(self, session: ServerSession, meta: dict, tensors):
        s = self.state
        found = named_tensors(meta, tensors, *TENSOR_NAMES["inference_step"])
        hidden = check_hidden(found["hidden"], s.hidden_size)
        batch, seq, _ = hidden.shape
        if batch != session.batch_size:
            raise BadInputError(f"hidden states have batch {batch}, the session was opened with {session.batch_size}")
        check_tokens(batch, seq, s.max_request_tokens, "inference step")
        position = meta_int(meta, "position", default=None)
        held = session.length
        if position > held:
            raise BadPositionError(
                f"step at position {position}, but this session holds only {held} tokens (positions would be skipped)")
        if position + seq > session.max_length:
            raise TooManyTokensError(
                f"position {position} + {seq} new tokens exceeds the session's max_length {session.max_length}")
        prompts = found.get("prompts")
        if prompts is not None:
            check_prompts(prompts, session.end - session.start, hidden, session.max_length)
        hypo_ids = found.get("hypo_ids")
        if hypo_ids is not None:
            hypo_ids = check_hypo_ids(hypo_ids, batch)
        if seq == 1 and not prompts_apply(prompts, position, 1):
            output = await self.batcher.step(DecodeStep(session, hidden, position, hypo_ids))
        else:
            output = await self._prompt_step(session, hidden, prompts, hypo_ids, position)
        session.steps += 1
        session.last_used = self.sessions.clock()
        s.stats["inference_steps"] += 1
        return {}, [output]

    async def _prompt_step(self, session: ServerSession, hidden, prompts, hypo_ids, position: int):
        """New tokens of one session in chunks, each queued on its own so that decode ticks of other
        sessions run between them (batching.py)."""
        chunk = max(1, self.state.prefill_chunk_tokens // hidden.shape[0])
        outputs = []

        def run_chunk(begin: int):
            span = session.span
            with torch.inference_mode(), using_adapter(session.adapter):
                if begin == 0:
                    prepare_session(session, position, hypo_ids)
                out = span.inference_step(_to_span(hidden[:, begin:begin + chunk], span), session.cache,
                                          prompts=_to_span(prompts, span))
                return to_wire_dtype(out.to("cpu"), hidden.dtype)

        try:
            for begin in range(0, hidden.shape[1], chunk):
                outputs.append(await self._run(lambda b=begin: run_chunk(b), priorities.INFERENCE))
        except BaseException:
            cache = session.cache
            if cache is not None and cache.length > position:  # a later chunk failed: forget the earlier ones too
                cache.rollback(position)
            raise
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    # ---- forward and backward (no cache) ------------------------------------------------------
    async def rpc_forward(self, request):
        s, meta = self.state, request.meta
        start, end = block_range(meta, s.start, s.end)
        adapter = self._check_adapter(meta)
        found = named_tensors(meta, request.tensors, *TENSOR_NAMES["forward"])
        hidden = check_hidden(found["hidden"], s.hidden_size)
        check_tokens(hidden.shape[0], hidden.shape[1], s.max_request_tokens, "forward")
        check_batch(hidden.shape[0], s.max_batch_size)
        prompts = found.get("prompts")
        if prompts is not None:
            check_prompts(prompts, end - start, hidden, hidden.shape[1])
        span = self._span_for(start, end)

        def forward():
            with torch.inference_mode(), using_adapter(adapter):
                out = span.forward(_to_span(hidden, span), prompts=_to_span(prompts, span))
                return to_wire_dtype(out.to("cpu"), hidden.dtype)

        output = await self._run(forward, priorities.FORWARD)
        s.stats["forward"] += 1
        return {}, [output]

    async def rpc_backward(self, request):
        s, meta = self.state, request.meta
        start, end = block_range(meta, s.start, s.end)
        adapter = self._check_adapter(meta)
        found = named_tensors(meta, request.tensors, *TENSOR_NAMES["backward"])
        hidden = check_hidden(found["hidden"], s.hidden_size)
        grad_out = found["grad_out"]
        check_same(grad_out, hidden, "grad_out")
        check_tokens(hidden.shape[0], hidden.shape[1], s.max_request_tokens, "backward")
        check_batch(hidden.shape[0], s.max_batch_size)
        prompts = found.get("prompts")
        if prompts is not None:
            check_prompts(prompts, end - start, hidden, hidden.shape[1])
        span = self._span_for(start, end)

        def backward():
            with using_adapter(adapter):  # LoRA weights stay frozen; gradients flow through them to the inputs
                grad_hidden, grad_prompts = span.backward(
                    _to_span(hidden, span), _to_span(grad_out, span), prompts=_to_span(prompts, span))
            grads = [to_wire_dtype(grad_hidden.detach().to("cpu"), hidden.dtype)]
            if prompts is not None and grad_prompts is not None:
                grads.append(to_wire_dtype(grad_prompts.detach().to("cpu"), prompts.dtype))
            elif prompts is not None:  # prompts that touched no position still get a (zero) gradient
                grads.append(torch.zeros_like(prompts))
            return grads

        grads = await self._run(backward, priorities.BACKWARD)
        s.stats["backward"] += 1
        return {}, grads


def _to_span(t: Optional[torch.Tensor], span) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return t.to(device=span.device, dtype=span.dtype)
