"""Continuous batching: the one-token steps of every session waiting on the server run as one tick.

A decode step that arrives is queued here; if no tick is queued on the compute thread yet, one
is. When the tick runs it takes every step queued by then, groups them by span range and LoRA
adapter, and runs each group as one batched step (`BlockSpan.decode_tick`): sessions of any
length, beams and left pads together, joining and leaving between any two ticks. Steps that
arrive while a tick runs wait for the next one, so at most one tick's time. Prompt chunks
(handlers.py) are queued on the compute thread one chunk at a time at the same priority, so a
long prompt and the ticks take turns and never stall each other by more than one chunk.

Ticks gather: a tick that would start while sessions that stepped a moment ago have not sent
their next step yet waits for them, up to half a tick's time (never more than GATHER_MAX_S).
Without that, sessions whose steps arrive a little apart fall into alternating phases (A's
tick runs while B's step is in flight, then B's while A's is) and every tick carries one
session: measured on the CPU, 2 sessions made 60 ticks of 1 row for 60 steps.

A group whose batched step fails is run again one session at a time, so a step that cannot run
fails alone and the others still get their tokens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from wire.codec import to_wire_dtype
from zswarm.errors import UnknownSessionError
from zswarm.models.lora import using_adapter
from zswarm.server import compute as priorities

logger = logging.getLogger(__name__)

GATHER_MAX_S = 0.005  # the longest a tick waits for the steps of sessions that are mid-step elsewhere
GATHER_SHARE = 1.0    # ... as a share of how long a tick takes
ACTIVE_TICKS = 20     # a session that stepped within this many tick times is expected back soon


@dataclass
class DecodeStep:
    """One session's one-token step, validated by the handler."""

    session: Any  # a ServerSession
    hidden: torch.Tensor  # [batch, 1, hidden] as received (host)
    position: int
    hypo_ids: Optional[torch.Tensor] = None
    future: Optional[asyncio.Future] = field(default=None, repr=False)


class DecodeBatcher:
    def __init__(self, compute, clock=time.monotonic):
        self.compute = compute
        self.clock = clock
        self.ticks = 0  # batched steps run
        self.rows = 0   # session rows they carried
        self.tick_seconds = 0.0  # moving average of a tick's compute time
        self._queued: list[DecodeStep] = []
        self._lock = threading.Lock()
        self._tick_queued = False
        self._arrived = asyncio.Event()
        self._last_step: dict[str, float] = {}  # session id -> when its last decode step finished

    async def step(self, step: DecodeStep) -> torch.Tensor:
        """Run `step` in the next tick; its output rows, in the request's dtype, on the host."""
        step.future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queued.append(step)
            start_tick = not self._tick_queued
            self._tick_queued = True
        self._arrived.set()
        if start_tick:
            asyncio.ensure_future(self._tick())
        try:
            return await step.future
        finally:
            self._last_step[step.session.session_id] = self.clock()

    def forget(self, session_id: str) -> None:
        """A closed session is no longer waited for."""
        self._last_step.pop(session_id, None)

    async def _gather(self) -> None:
        """Wait (briefly) for the steps of sessions that stepped a moment ago, so they join this tick."""
        if self.compute.inflight or not self.tick_seconds:
            return  # a tick is running: this one queues behind it and gathers meanwhile
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(GATHER_MAX_S, GATHER_SHARE * self.tick_seconds)
        while True:
            now = self.clock()
            recent = now - ACTIVE_TICKS * self.tick_seconds
            with self._lock:
                queued = {step.session.session_id for step in self._queued}
            for session_id in [sid for sid, at in self._last_step.items() if at < recent]:
                del self._last_step[session_id]
            if all(sid in queued for sid in self._last_step):
                return
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _tick(self) -> None:
        await self._gather()
        try:
            outcomes = await self.compute.run(self._run_queued, priorities.INFERENCE)
        except BaseException as exc:  # the compute thread is closed: nothing queued will run
            with self._lock:
                steps, self._queued, self._tick_queued = self._queued, [], False
            outcomes = [(step, None, exc) for step in steps]
        for step, result, error in outcomes:
            if step.future.done():
                continue
            if error is not None:
                step.future.set_exception(error)
            else:
                step.future.set_result(result)

    # ---- on the compute thread ---------------------------------------------------------------
    def _run_queued(self) -> list:
        began = time.perf_counter()
        try:
            return self._run_steps()
        finally:
            elapsed = time.perf_counter() - began
            self.tick_seconds = elapsed if not self.tick_seconds else 0.8 * self.tick_seconds + 0.2 * elapsed

    def _run_steps(self) -> list:
        with self._lock:
            steps, self._queued, self._tick_queued = self._queued, [], False
        steps = [s for s in steps if not s.future.cancelled()]
        outcomes = {}
        ready = []
        for step in steps:
            try:
                prepare_session(step.session, step.position, step.hypo_ids)
                ready.append(step)
            except BaseException as exc:
                outcomes[id(step)] = (None, exc)
        groups: dict[tuple, list[DecodeStep]] = {}
        for step in ready:
            s = step.session
            groups.setdefault((s.start, s.end, s.adapter), []).append(step)
        for group in groups.values():
            try:
                for step, out in zip(group, self._run_group(group)):
                    outcomes[id(step)] = (out, None)
            except Exception as exc:
                if len(group) == 1:
                    outcomes[id(group[0])] = (None, exc)
                    continue
                logger.warning("a batched step of %d sessions failed (%s: %s); running them one at a time",
                               len(group), type(exc).__name__, exc)
                for step in group:
                    try:
                        outcomes[id(step)] = (self._run_group([step])[0], None)
                    except Exception as alone:
                        outcomes[id(step)] = (None, alone)
        return [(step, *outcomes[id(step)]) for step in steps]

    def _run_group(self, group: list[DecodeStep]) -> list[torch.Tensor]:
        span = group[0].session.span
        caches = [step.session.cache for step in group]
        try:
            with torch.inference_mode(), using_adapter(group[0].session.adapter):
                out = span.decode_tick([step.hidden.to(span.dtype) for step in group], caches).to("cpu")
        except BaseException:
            for step, cache in zip(group, caches):  # a failed tick leaves every session where it was
                if cache.length > step.position:
                    cache.rollback(step.position)
            raise
        self.ticks += 1
        self.rows += out.shape[0]
        results, row = [], 0
        for step in group:
            rows = step.hidden.shape[0]
            results.append(to_wire_dtype(out[row:row + rows], step.hidden.dtype))
            row += rows
        return results


def prepare_session(session, position: int, hypo_ids=None) -> None:
    """On the compute thread, before a session's step: its cache made on its first step (it takes
    pool pages; the whole max_length at once, which the budget already reserved), rolled back to
    the step's position, beams reordered. A session closed while its step waited takes nothing."""
    if session.closed:
        raise UnknownSessionError(f"session {session.session_id[:8]} was closed while its step waited")
    if session.cache is None:
        session.cache = session.span.new_cache(session.batch_size, session.max_length, left_pad=session.left_pad)
    if position < session.cache.length:
        session.cache.rollback(position)
    if hypo_ids is not None:
        session.cache.reorder(hypo_ids)
