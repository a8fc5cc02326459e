"""Continuous batching: the one-token steps of every session waiting on the server run as one tick.

A decode step that arrives is queued here; if no tick is queued on the compute thread yet, one
is. When the tick runs it takes every step queued by then, groups them by span range and LoRA
adapter, and runs each group as one batched step (`BlockSpan.decode_tick`): sessions of any
length, beams and left pads together, joining and leaving between any two ticks. Steps that
arrive while a tick runs wait for the next one, so at most one tick's time. Prompt chunks
(handlers.py) are queued on the compute thread one chunk at a time at the same priority, so a
long prompt and the ticks take turns and never stall each other by more than one chunk.

A group whose batched step fails is run again one session at a time, so a step that cannot run
fails alone and the others still get their tokens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from wire.codec import to_wire_dtype
from zswarm.errors import UnknownSessionError
from zswarm.models.lora import using_adapter
from zswarm.server import compute as priorities

logger = logging.getLogger(__name__)


@dataclass
class DecodeStep:
    """One session's one-token step, validated by the handler."""

    session: Any  # a ServerSession
    hidden: torch.Tensor  # [batch, 1, hidden] as received (host)
    position: int
    hypo_ids: Optional[torch.Tensor] = None
    future: Optional[asyncio.Future] = field(default=None, repr=False)


class DecodeBatcher:
    def __init__(self, compute):
        self.compute = compute
        self.ticks = 0  # batched steps run
        self.rows = 0   # session rows they carried
        self._queued: list[DecodeStep] = []
        self._lock = threading.Lock()
        self._tick_queued = False

    async def step(self, step: DecodeStep) -> torch.Tensor:
        """Run `step` in the next tick; its output rows, in the request's dtype, on the host."""
        step.future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queued.append(step)
            start_tick = not self._tick_queued
            self._tick_queued = True
        if start_tick:
            asyncio.ensure_future(self._tick())
        return await step.future

    async def _tick(self) -> None:
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
        with self._lock:
            steps, self._queued, self._tick_queued = self._queued, [], False
        steps = [s for s in steps if not s.future.cancelled()]
        outcomes = {}
        ready = []
        for step in steps:
            try:
                _prepare(step)
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


def _prepare(step: DecodeStep) -> None:
    """The session's cache at the step's position: made on its first step, rolled back, beams reordered."""
    session = step.session
    if session.closed:
        raise UnknownSessionError(f"session {session.session_id[:8]} was closed while its step waited")
    ensure_cache(session)
    if step.position < session.cache.length:
        session.cache.rollback(step.position)
    if step.hypo_ids is not None:
        session.cache.reorder(step.hypo_ids)


def ensure_cache(session) -> None:
    """Make the session's cache on its first step (on the compute thread: it takes pool pages)."""
    if session.cache is None:
        # the whole max_length at once: the budget already reserved it, and the pool never moves
        session.cache = session.span.new_cache(session.batch_size, session.max_length, left_pad=session.left_pad)
