"""`InferenceSession`: one conversation with the swarm, which survives the death of its servers.

The session keeps ONE global position (tokens every block has seen) and, for each boundary
block `b` of its route, the hidden states it has sent into block `b` at every position
(`history[b]`, `[batch, position, hidden]`). A route span `[start, end)` runs on one server
session that holds `span.position` tokens. When a server dies, times out or answers an error,
the session bans it, routes `[start, end)` again -- the replacement may split it differently,
since any sub-range of a server's blocks can be asked for -- and sends each new server the
history it lacks in the same request as the current step:

    inputs = cat(history[start][:, span.position:position], new hidden)   position = span.position

Positions are absolute (`position` in every inference_step), so a replacement's cache lines up
with the others'. Petals' per-server sessions counted from zero and broke here (its #587).
The outputs of a fresh span's replay become the history of a fresh internal boundary.

Beam search reorders rows: the history is reordered at once; servers that hold a cache get the
`hypo_ids` with their next step, servers rebuilt from the history need none.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Callable

import torch

from wire.codec import to_wire_dtype
from zswarm.blocks import format_blocks
from zswarm.client.config import ClientConfig
from zswarm.client.failures import RetryBudget, ServerUnavailable, describe, is_server_fault
from zswarm.client.sequence_manager import SequenceManager
from zswarm.client.spot_checks import SpotChecks
from zswarm.client.verification import check_reply
from zswarm.errors import (ImplausibleReplyError, NoRouteError, RetractedResultsError, SessionClosedError,
                           SessionLengthError)

logger = logging.getLogger(__name__)


@dataclass
class SpanSession:
    """Blocks [start, end) of the route on one server's session."""

    peer_id: str
    address: str
    start: int
    end: int
    session_id: str | None = None
    position: int = 0                         # tokens the server holds for us
    pending_hypo_ids: torch.Tensor | None = None


class BoundaryHistory:
    """The hidden states sent into one boundary block, `[batch, positions, hidden]`, in a buffer
    grown by doubling, so that a token step writes in place instead of copying the past.
    `producers[p]`: (peer_id, start block) of the span that computed position p (None: the
    client's own input), so spot checks know whom a recorded output vouches for."""

    def __init__(self, batch: int, hidden_size: int, dtype: torch.dtype, capacity: int = 64):
        self.buffer = torch.empty(batch, capacity, hidden_size, dtype=dtype)
        self.length = 0
        self.producers: list[tuple[str, int] | None] = []

    def write(self, position: int, states: torch.Tensor, producer: tuple[str, int] | None = None) -> None:
        if position > self.length:
            raise RuntimeError(f"history gap: writing at {position}, holding {self.length}")  # a bug
        end = position + states.shape[1]
        if end > self.buffer.shape[1]:
            grown = self.buffer.new_empty(self.buffer.shape[0], max(end, 2 * self.buffer.shape[1]),
                                          self.buffer.shape[2])
            grown[:, :position] = self.buffer[:, :position]
            self.buffer = grown
        self.buffer[:, position:end] = states
        self.length = end
        del self.producers[position:]
        self.producers.extend([producer] * states.shape[1])

    def read(self, start: int, end: int) -> torch.Tensor:
        return self.buffer[:, start:end]

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)
        del self.producers[self.length:]

    def reorder(self, hypo_ids: torch.Tensor) -> None:
        self.buffer[:, :self.length] = self.buffer[hypo_ids, :self.length]


class InferenceSession:
    """Async methods (`astep`, `aclose`) run on the client's event loop; their synchronous twins
    (`step`, `close`, the context manager) hand them to it through `run`."""

    def __init__(self, manager: SequenceManager, config: ClientConfig, *, max_length: int,
                 wire_dtype: torch.dtype, run: Callable | None = None, start: int = 0, end: int | None = None,
                 prompts: torch.Tensor | None = None, prefix_length: int = 0):
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self.manager = manager
        self._run_sync = run
        self.config = config
        self.max_length = int(max_length)
        self.wire_dtype = wire_dtype
        self.start = start
        self.end = manager.num_blocks if end is None else end
        # Deep prompts [end - start, 1 or batch, pre_seq_len, hidden]: each step that writes a
        # position < pre_seq_len (the first one, and any replay to a fresh server) carries them.
        if prompts is not None and (prompts.ndim != 4 or prompts.shape[0] != self.end - self.start):
            raise ValueError(f"deep prompts must be [{self.end - self.start}, batch or 1, pre_seq_len, hidden], "
                             f"got {tuple(prompts.shape)}")
        self.prompts = None if prompts is None else to_wire_dtype(prompts.detach().cpu(), wire_dtype)
        # Tokens at the start of the session that are the client's tuned prompts, not the caller's
        # ids: generate's cache length leaves them out (RemoteCache).
        self.prefix_length = prefix_length
        self.position = 0
        self.batch_size: int | None = None
        self.spans: list[SpanSession] = []
        self.history: dict[int, BoundaryHistory] = {}
        self.closed = False
        self.failovers = 0                     # servers replaced so far
        # (time.monotonic() when noticed, peer_id, what happened) per failure, for tools and tests
        self.failures: list[tuple[float, str, str]] = []
        self._closing: set[asyncio.Task] = set()   # close_session calls to replaced servers
        # Token ids of earlier generate() calls, the last one not yet through the blocks:
        # generate(session=...) prepends them so the next call continues the conversation.
        self.output_ids: torch.Tensor | None = None
        # Leading pads per row of a left-padded batch (None: no padding). Every server session is
        # opened with them (replacements too, in the rows' current order): see set_left_pad.
        self.left_pad: list[int] | None = None
        self.checks = SpotChecks(self, config.spot_check_rate)  # verification of results (spot_checks.py)

    # ---- synchronous twins ----------------------------------------------------------------
    def step(self, hidden: torch.Tensor, *, hypo_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._sync(self.astep(hidden, hypo_ids=hypo_ids))

    def close(self) -> None:
        if not self.closed:
            self._sync(self.aclose())

    def __enter__(self) -> "InferenceSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sync(self, coro):
        if self._run_sync is None:
            coro.close()
            raise RuntimeError("this session was made without a loop to run on; use its async methods")
        return self._run_sync(coro)

    # ---- public (async) -------------------------------------------------------------------
    async def astep(self, hidden: torch.Tensor, *, hypo_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run `hidden` ([batch, n, hidden_size]) through every block at positions
        `position..position+n`; returns the last block's output in the input's dtype."""
        if self.closed:
            raise SessionClosedError("this inference session is closed")
        if hidden.ndim != 3:
            raise ValueError(f"hidden states must be [batch, seq, hidden], got {tuple(hidden.shape)}")
        batch, n, _ = hidden.shape
        if self.batch_size is None:
            self.batch_size = batch
        elif batch != self.batch_size:
            raise ValueError(f"this session holds {self.batch_size} sequences; a step of {batch} cannot continue it "
                             "(beam search and batch changes need a new session)")
        if self.position + n > self.max_length:
            raise SessionLengthError(f"the session would hold {self.position + n} tokens, over its max_length="
                                     f"{self.max_length}; open it with a larger max_length")
        if hypo_ids is not None:
            self.reorder(hypo_ids)
        outputs = []
        wire = to_wire_dtype(hidden.detach().cpu(), self.wire_dtype)
        per_row = self._tokens_per_row()
        # A long prefill goes in pieces that each fit a server's cap on tokens per request.
        for piece in (wire,) if n <= per_row else wire.split(per_row, dim=1):
            outputs.append(await self._through_route(piece))
            self.position += piece.shape[1]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)  # a token step: no copy
        return out.to(hidden.device, hidden.dtype)

    def _tokens_per_row(self) -> int:
        return max(1, self.config.max_request_tokens // (self.batch_size or 1))

    def reorder(self, hypo_ids: torch.Tensor) -> None:
        """Beam search picked rows `hypo_ids` (row i continues old row hypo_ids[i])."""
        hypo_ids = hypo_ids.detach().to("cpu", torch.int64)
        if self.batch_size is not None and hypo_ids.shape != (self.batch_size,):
            raise ValueError(f"hypo_ids must have shape ({self.batch_size},), got {tuple(hypo_ids.shape)}")
        if torch.equal(hypo_ids, torch.arange(len(hypo_ids))):
            return
        for past in self.history.values():
            past.reorder(hypo_ids)
        self.checks.forget()
        if self.left_pad is not None:
            self.left_pad = [self.left_pad[i] for i in hypo_ids.tolist()]
        for span in self.spans:
            # a server session holds the rows' pads from its opening, so even one with no tokens reorders
            if span.session_id is not None and (span.position > 0 or self.left_pad is not None):
                # Two reorders before a step compose: cache[p1][p2] == cache[p1[p2]].
                previous = span.pending_hypo_ids
                span.pending_hypo_ids = hypo_ids if previous is None else previous[hypo_ids]

    def set_left_pad(self, left_pad: list[int] | None) -> None:
        """Rows are left-padded: row r's first left_pad[r] tokens are pads, never attended to, and
        its positions count from its first real token. Fixed once a server session is open."""
        left_pad = [int(p) for p in left_pad] if left_pad and any(left_pad) else None
        if left_pad == self.left_pad:
            return
        if any(span.session_id is not None for span in self.spans):
            raise ValueError(f"this session's rows were padded with {self.left_pad or 'nothing'} when it began; "
                             f"a batch padded with {left_pad or 'nothing'} needs a new session")
        if left_pad is not None and self.batch_size is not None and len(left_pad) != self.batch_size:
            raise ValueError(f"left_pad has {len(left_pad)} rows, this session holds {self.batch_size}")
        self.left_pad = left_pad

    def rollback(self, position: int) -> None:
        """Forget tokens from `position` on; servers roll back with the next step."""
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot roll back to {position}: the session holds {self.position} tokens")
        self.position = position
        for past in self.history.values():
            past.truncate(position)
        for span in self.spans:
            span.position = min(span.position, position)
        self.checks.rollback(position)

    async def aclose(self) -> None:
        """Free the servers' caches (a client that vanishes is cleaned up by server timeouts)."""
        if self.closed:
            return
        self.closed = True
        await self._close_servers(self.spans + self.checks.close())
        await asyncio.gather(*self._closing, return_exceptions=True)
        self.spans = []

    # ---- the step loop with failover ------------------------------------------------------
    async def _through_route(self, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden` at positions position.. through blocks [start, end); the retry budget
        (`max_retries` failed attempts) is for the whole of this step."""
        budget = RetryBudget(self.config, self.manager.model_id)
        if not self.spans:
            self.spans = await self._route(self.start, self.end, budget)
            self._log_route()
        block = self.start
        producer = None  # (peer_id, start) of the span that computed `hidden`; None: the caller
        if self._can_push():
            block, hidden = await self._push_step(hidden, budget)
        while block < self.end:
            index = self._span_index_at(block)
            span = self.spans[index]
            try:
                replayed_from, replayed, out = await self.checks.step(span, hidden)
            except RetractedResultsError as exc:
                self._drop_route()
                self.rollback(exc.position)
                raise
            except Exception as exc:
                if not is_server_fault(exc):
                    raise
                self.failures.append((time.monotonic(), span.peer_id, describe(exc)))
                self.manager.on_failure(span.peer_id, exc)
                budget.fail(exc, span.start, span.end)
                await self._replace(index, budget, cause=exc)
                continue
            self.manager.on_success(span.peer_id)
            self._history_at(block, hidden).write(self.position, hidden, producer)
            producer = (span.peer_id, span.start)
            if replayed is not None:
                # A fresh span's replay outputs are the history of a fresh boundary after it.
                past = self._history_at(span.end, replayed)
                if past.length < self.position:
                    past.write(replayed_from, replayed, producer)
            hidden = out
            block = span.end
        # The last span's outputs too, so that spot checks can audit them later.
        self._history_at(self.end, hidden).write(self.position, hidden, producer)
        return hidden

    # ---- server-to-server push (relay="server") -------------------------------------------
    def _can_push(self) -> bool:
        """Push when every span holds exactly the session's tokens (nothing to replay), no beam
        reorder is pending and no deep prompts travel: the step is then the same on every span."""
        if self.config.relay != "server" or len(self.spans) < 2 or self.prompts is not None:
            return False
        return all(span.pending_hypo_ids is None and span.position == self.position
                   and (span.session_id is not None or self.position == 0) for span in self.spans)

    async def _push_step(self, hidden: torch.Tensor, budget: RetryBudget) -> tuple[int, torch.Tensor]:
        """One step that the servers hand on to each other (client -> s1 -> s2 -> ...); the client
        asks each later server for its output (`step_result`) at the same time, so it keeps the
        history it replays from. Returns where the client-relayed loop goes on: (self.end, the
        last output) when every span answered, else (the failed span's start, its input) after
        the failed server was replaced; spans before it hold the step."""
        n, position = hidden.shape[1], self.position
        spans = list(self.spans)
        hops = []
        for span in spans[1:]:
            hop = {"address": span.address, "session_id": span.session_id or secrets.token_hex(16)}
            if span.session_id is None:
                hop["open"] = self._open_meta(span)
            hops.append(hop)
        first = spans[0]
        meta = self.manager.request_meta(session_id=first.session_id, position=position, tensor_names=["hidden"],
                                         push=hops)
        if first.session_id is None:
            self._open_with(meta, first)
        slow = n > 1 or any(span.session_id is None for span in spans)
        timeout = self.config.request_timeout if slow else self.config.step_timeout
        calls = [self.manager.call(first.address, "inference_step", meta, [hidden], timeout=timeout)]
        calls += [self.manager.call(span.address, "step_result", self.manager.request_meta(
            session_id=hop["session_id"], position=position, wait_timeout=timeout), timeout=timeout)
            for span, hop in zip(spans[1:], hops)]
        tasks = [asyncio.ensure_future(call) for call in calls]
        inputs = hidden
        try:
            for i, (span, task) in enumerate(zip(spans, tasks)):
                try:
                    reply = await task
                    out = reply_hidden(reply, inputs, peer_id=span.peer_id, start=span.start, end=span.end)
                    if span.session_id is None:
                        span.session_id = _session_id(reply, span.peer_id) if i == 0 else hops[i - 1]["session_id"]
                except Exception as exc:
                    if not is_server_fault(exc):
                        raise
                    # Later spans did not get this step, or may have: their positions say they did
                    # not, and a step at that position rolls theirs back. Ones the push was to open
                    # open afresh (a session the push did open there expires unused).
                    self.failures.append((time.monotonic(), span.peer_id, describe(exc)))
                    self.manager.on_failure(span.peer_id, exc)
                    budget.fail(exc, span.start, span.end)
                    await self._replace(self.spans.index(span), budget, cause=exc)
                    return span.start, inputs
                span.position += n
                self.manager.on_success(span.peer_id)
                self._history_at(span.start, inputs).write(position, inputs)
                inputs = out
            return self.end, inputs
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # a later span's failure after an earlier one's is not news: do not log it as lost

    async def _step_span(self, span: SpanSession, hidden: torch.Tensor):
        """One step on `span`, preceded by the history it lacks (a fresh server: all of it).
        Returns (position the replay started at, replay outputs or None if nothing was replayed,
        step outputs)."""
        if span.session_id is None:
            span.position, span.pending_hypo_ids = 0, None  # the server session opens with the first send
        if span.position > self.position:
            raise RuntimeError("a span never holds more than the session")  # rollback keeps this true
        replayed_from, replayed = span.position, []
        past = self.history.get(span.start)
        if span.position < self.position and (past is None or past.length < self.position):
            raise RuntimeError(f"no history to rebuild blocks {format_blocks(span.start, span.end)} from")  # a bug
        per_row = self._tokens_per_row()
        # Replay in pieces of at most per_row tokens; the last one travels with the new tokens.
        while span.position < self.position and self.position - span.position + hidden.shape[1] > per_row:
            replayed.append(await self._send(span, past.read(span.position, min(span.position + per_row,
                                                                                self.position))))
        lag = self.position - span.position
        inputs = torch.cat([past.read(span.position, self.position), hidden], dim=1) if lag else hidden
        out = await self._send(span, inputs)
        if not lag and not replayed:  # the usual token step: no slicing, no copies
            return replayed_from, None, out
        replayed.append(out[:, :lag])
        return replayed_from, torch.cat(replayed, dim=1), out[:, lag:]

    async def _send(self, span: SpanSession, inputs: torch.Tensor) -> torch.Tensor:
        """inference_step of `inputs` at the span's position; the span then holds them too."""
        meta = self.manager.request_meta(session_id=span.session_id, position=span.position,
                                         tensor_names=["hidden"])
        opening = span.session_id is None
        if opening:  # the server opens the session with this step: one round trip, not two
            self._open_with(meta, span)
        tensors = [inputs]
        if span.pending_hypo_ids is not None:
            meta["tensor_names"].append("hypo_ids")
            tensors.append(span.pending_hypo_ids)
        if self.prompts is not None and span.position < self.prompts.shape[2]:
            meta["tensor_names"].append("prompts")
            prompts = self.prompts[span.start - self.start:span.end - self.start]
            tensors.append(prompts.expand(-1, inputs.shape[0], -1, -1).contiguous())
        timeout = self.config.step_timeout if inputs.shape[1] == 1 and not opening else self.config.request_timeout
        began = time.perf_counter()
        reply = await self.manager.call(span.address, "inference_step", meta, tensors, timeout=timeout)
        if inputs.shape[1] == 1 and not opening:  # a decode step: what routing prices (SequenceManager.measured_rps)
            self.manager.on_step_time(span.peer_id, span.end - span.start, time.perf_counter() - began)
        out = reply_hidden(reply, inputs, peer_id=span.peer_id, start=span.start, end=span.end)
        if opening:
            span.session_id = _session_id(reply, span.peer_id)
        span.pending_hypo_ids = None
        span.position += inputs.shape[1]
        return out

    def _open_with(self, meta: dict, span: SpanSession) -> None:
        """Make the step of `meta` open `span`'s server session. With relay="server" we name it:
        a session we named is stepped by whoever holds its id, so the previous server can push
        to it (one the server names is bound to our connection and refuses pushes)."""
        meta["open"] = self._open_meta(span)
        if self.config.relay == "server":
            meta["session_id"] = secrets.token_hex(16)

    def _open_meta(self, span: SpanSession) -> dict:
        """open_session's fields for `span`, sent as the `open` of its first inference_step."""
        meta = self.manager.request_meta(start=span.start, end=span.end, max_length=self.max_length,
                                         batch_size=self.batch_size, wait_timeout=self.config.cache_wait_timeout)
        if self.left_pad is not None:
            meta["left_pad"] = list(self.left_pad)  # in the rows' current order (reorder keeps it so)
        return meta

    # ---- routing and replacement ----------------------------------------------------------
    async def _route(self, start: int, end: int, budget: RetryBudget) -> list[SpanSession]:
        """Route [start, end) within the retry budget; returns the new span sessions."""
        budget.new_route()
        while True:
            try:
                route = await self.manager.make_inference_route(
                    start, end, batch_size=self.batch_size or 1, max_length=self.max_length)
                break
            except (NoRouteError, ServerUnavailable) as exc:
                await budget.no_route(exc, start, end, self.manager.update)
        return [SpanSession(r.peer_id, self.manager.address(r.peer_id), r.start, r.end) for r in route]

    async def _replace(self, index: int, budget: RetryBudget, *, cause: BaseException) -> None:
        failed = self.spans[index]
        self.failovers += 1
        logger.warning("server %s failed on blocks %s (%s); rerouting (%s)", failed.peer_id,
                       format_blocks(failed.start, failed.end), describe(cause), budget)
        # Route from what we know at once (the failed server is banned now); the manager refreshes
        # from the DHT in the background, and `_route` waits for a refresh if this view has no route.
        new = await self._route(failed.start, failed.end, budget)
        if any(self.manager.bans.is_banned(s.peer_id) for s in new):
            await budget.backoff()  # only just-failed servers left
        self.spans[index:index + 1] = new
        # Free the failed server's cache if it is still there, without waiting on a dead server.
        task = asyncio.ensure_future(self._close_servers([failed]))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        # Boundaries that no longer exist would go stale: drop their history.
        starts = {span.start for span in self.spans} | {self.end}
        self.history = {block: past for block, past in self.history.items() if block in starts}
        self._log_route()

    def _drop_route(self) -> None:
        """Route afresh at the next step (the old servers' caches are freed in the background)."""
        task = asyncio.ensure_future(self._close_servers(self.spans))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self.spans = []

    def _log_route(self) -> None:
        level = logging.INFO if self.config.show_route else logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(level, "route for blocks %s of %s: %s", format_blocks(self.start, self.end),
                       self.manager.model_id,
                       " -> ".join(f"{format_blocks(s.start, s.end)} @ {s.peer_id[:12]} ({s.address})"
                                   for s in self.spans))

    # ---- history --------------------------------------------------------------------------
    def _span_index_at(self, block: int) -> int:
        for i, span in enumerate(self.spans):
            if span.start == block:
                return i
        raise RuntimeError(f"no route span starts at block {block}")  # a bug: spans tile [start, end)

    def _history_at(self, block: int, like: torch.Tensor) -> "BoundaryHistory":
        past = self.history.get(block)
        if past is None:
            past = self.history[block] = BoundaryHistory(like.shape[0], like.shape[2], like.dtype)
        return past

    # ---- cleanup --------------------------------------------------------------------------
    async def _close_servers(self, spans: list[SpanSession]) -> None:
        async def close_one(span: SpanSession):
            if span.session_id is None:
                return
            try:
                await self.manager.transport.call(span.address, "close_session", {"session_id": span.session_id},
                                                  timeout=self.config.ping_timeout)
            except Exception as exc:  # a dead server frees nothing; its timeouts clean up
                logger.debug("close_session on %s failed: %s", span.peer_id, describe(exc))

        await asyncio.gather(*(close_one(s) for s in spans))


def reply_hidden(reply, inputs: torch.Tensor, *, peer_id: str, start: int, end: int) -> torch.Tensor:
    """The one hidden-states tensor of an inference_step reply, checked (verification.check_reply)."""
    if len(reply.tensors) != 1:
        raise ImplausibleReplyError(peer_id, f"answered {len(reply.tensors)} tensors, expected one",
                                    blocks=(start, end))
    check_reply(inputs, reply.tensors[0], peer_id=peer_id, start=start, end=end)
    return reply.tensors[0]


def _session_id(reply, peer: str):
    session_id = reply.meta.get("session_id")
    if not isinstance(session_id, (str, int)):
        raise ServerUnavailable(f"{peer} answered the first step without a session_id")
    return session_id

