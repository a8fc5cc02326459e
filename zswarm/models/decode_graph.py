"""DecodeGraph: one decode step of a span (one new token per sequence) replayed as a CUDA graph.

Why: a decode step of a 7B-class span is a few hundred small kernels. Launched one at a time from
Python, their launch overhead (and any wait for the interpreter) sets the step time, far above
what memory bandwidth allows; a CUDA graph launches the whole step at once.

A graph replays fixed addresses with fixed shapes, so the step is rewritten to have both:
- the session's KV buffers are allocated at full capacity once (SpanCache with a capacity) and
  written at a position held in a device tensor (`index_copy_`), never grown while a graph uses
  them (a growth or a batch change bumps `cache.generation`, which retires the graph);
- attention runs over the whole capacity with a mask computed inside the graph from that
  position (and the sliding window, where the family has one);
- rotary cos/sin are gathered inside the graph from the span's table, which the graph keeps
  a reference to, so a later growth of the table cannot free memory the graph reads.
The same body also runs without capture (`StaticDecodeStep.run_eager`): that is how CPU tests
check it gives the eager path's numbers.
"""

from __future__ import annotations

import logging
import weakref

import torch

from .families.base import StepInputs
from .positions import causal_rule, positions_from_first_token, without_pads

logger = logging.getLogger(__name__)


class StaticDecodeStep:
    """The decode step of `span` over `cache` written with fixed shapes and addresses."""

    def __init__(self, span, cache):
        if span.rotary is None or span.rotary.dynamic:
            raise ValueError("decode graphs need a static rotary table")
        self.span = span
        self._cache = weakref.ref(cache)  # the cache owns its graph, not the other way round
        self.generation = cache.generation
        self.capacity = cache.capacity
        device = span.device
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.hidden = torch.zeros(cache.batch_size, 1, span.hidden_size, dtype=span.dtype, device=device)
        self.key_positions = torch.arange(self.capacity, device=device)
        self.cos, self.sin = span.rotary.get(0, self.capacity)  # held: see the module docstring
        # [batch] leading pads per row (left-padded batches) or None; a same-batch beam reorder
        # rewrites it in place, a batch change retires this step (new generation)
        self.pad = cache.left_pad

    def usable_for(self, cache) -> bool:
        """Whether `cache`'s buffers are still the ones this step was built on: a growth or a batch
        change bumps the generation (the cache holds this step, so it is always the same cache)."""
        return cache.generation == self.generation

    def body(self) -> torch.Tensor:
        span, position, pad, keys = self.span, self.position, self.pad, self.key_positions
        if pad is None:
            rope = (self.cos.index_select(1, position), self.sin.index_select(1, position))
        else:  # the eager path's rule (positions.py), at the device-side position
            rows = positions_from_first_token(position, pad).view(-1)
            rope = (self.cos[0].index_select(0, rows).unsqueeze(1), self.sin[0].index_select(0, rows).unsqueeze(1))
        masks = {}
        for window in span.windows_used:
            allowed = causal_rule(position, keys, window)  # [1, capacity]
            masks[window] = allowed[None, None] if pad is None else without_pads(allowed, position, keys, pad)
        inputs = StepInputs(past=-1, q=1, rope=rope, masks=masks)  # past: positions live on the device
        hidden, cache = self.hidden, self._cache()
        with cache.static_writes(position):
            for i, block in enumerate(span.blocks):
                hidden = span.family.run_block(block, hidden, inputs, span.windows[i], cache)
        return hidden

    def load(self, hidden: torch.Tensor, past: int) -> None:
        self.hidden.copy_(hidden)
        self.position.fill_(past)

    def run_eager(self, hidden: torch.Tensor, past: int) -> torch.Tensor:
        self.load(hidden, past)
        return self.body()


class DecodeGraph(StaticDecodeStep):
    """A captured StaticDecodeStep: `run(hidden, past)` replays it (CUDA only)."""

    def __init__(self, span, cache, pool=None):
        super().__init__(span, cache)
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool
        self.out: torch.Tensor | None = None  # the captured body's output buffer

    def capture(self, hidden: torch.Tensor, past: int) -> torch.Tensor:
        """Warm up on a side stream (as CUDA graphs require), capture, replay once; returns this step."""
        self.load(hidden, past)
        side = torch.cuda.Stream(device=self.span.device)
        side.wait_stream(torch.cuda.current_stream(self.span.device))
        with torch.cuda.stream(side):
            self.body()  # writes this step's keys/values: the replay below writes the same ones
        torch.cuda.current_stream(self.span.device).wait_stream(side)
        with torch.cuda.graph(self.graph, pool=self.pool, capture_error_mode="thread_local"):
            self.out = self.body()
        self.graph.replay()
        return self.out.clone()

    def run(self, hidden: torch.Tensor, past: int) -> torch.Tensor:
        self.load(hidden, past)
        self.graph.replay()
        return self.out.clone()


class GraphSettings:
    """Shared by a span and its sub-span views: whether to capture, and the graphs' memory pool."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.pool = None

    def disable(self, span, why: str) -> None:
        if self.enabled:
            logger.info("decode steps of %s run without CUDA graphs: %s", span, why)
        self.enabled = False


def decode_graphs_supported(span) -> str | None:
    """None if the span's decode steps can be captured, else why not (logged once by the span)."""
    if span.device.type != "cuda":
        return "not on a CUDA device"
    if not getattr(span.family, "decode_graphs", False):
        return f"the {span.family.name} family has data-dependent steps"
    if span.rotary is None or span.rotary.dynamic:
        return "its rotary embedding changes with the sequence length"
    return None
