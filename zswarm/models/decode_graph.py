"""Batched decode steps: one new token for each row of many sessions, in one pass over the blocks.

A decode tick takes the rows of every session waiting on a span (different lengths, left pads,
beams) and runs them together: each row writes its token's keys and values at its own position
in the KV pool and attends to its own pages, gathered into one [rows, heads, kv, dim] batch
with a per-row mask. Weights are read once per tick instead of once per session.

On a GPU the tick replays a CUDA graph. Why: a decode step of a 7B-class span is a few hundred
small kernels, and launched one at a time from Python their launch cost, not memory bandwidth,
sets the step time. A graph replays fixed addresses with fixed shapes, so it is captured per
bucket (rows rounded up to a power of two, kv pages rounded up to a power of two) over the
pool's store, which never moves: graphs live as long as the pool, across any number of
sessions, and are never freed while their memory pool is in use. Rows a bucket pads with
read and write only the pool's scratch page. The same body runs uncaptured (`run_uncaptured`):
that is how CPU tests check it gives the eager path's numbers.
"""

from __future__ import annotations

import logging

import torch

from .families.base import StepInputs
from .kv_pool import PAGE_TOKENS
from .lora import active_adapter
from .paged import PagedRows, slots
from .positions import row_mask

logger = logging.getLogger(__name__)

MAX_GRAPH_ROWS = 64  # the largest row bucket; larger ticks are split


def bucket(n: int) -> int:
    """The power of two >= n."""
    return 1 << max(0, int(n) - 1).bit_length()


def decode_body(span, pool, hidden: torch.Tensor, q_pos: torch.Tensor, pad: torch.Tensor, table: torch.Tensor,
                kv_length: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One token per row through `span`. Device tensors: hidden [rows, 1, H], q_pos/pad [rows],
    table [rows, pages] (pages * PAGE_TOKENS >= kv_length); rope: cos/sin tables [1, >= kv_length, dim]."""
    keys = torch.arange(kv_length, device=hidden.device)
    rope_pos = (q_pos - pad).clamp(min=0)  # counted from each row's first real token (positions.py)
    cos, sin = rope
    inputs = StepInputs(past=-1, q=1,  # past: positions differ per row and live on the device
                        rope=(cos[0].index_select(0, rope_pos).unsqueeze(1), sin[0].index_select(0, rope_pos).unsqueeze(1)),
                        masks={w: row_mask(q_pos, keys, w, pad) for w in span.windows_used})
    rows = PagedRows(pool, slots(table, q_pos[:, None]).view(-1), slots(table, keys))
    for i, block in enumerate(span.blocks):
        hidden = span.family.run_block(block, hidden, inputs, span.windows[i], rows)
    return hidden


class RowBatch:
    """The host-side description of one tick's rows, stacked in session order: each row's
    position (where its new token goes), its leading pads and its page table."""

    def __init__(self, q_pos: torch.Tensor, pad: torch.Tensor, table: torch.Tensor, caches=()):
        self.q_pos, self.pad, self.table, self.caches = q_pos, pad, table, list(caches)
        self.kv_length = int(q_pos.max()) + 1

    @classmethod
    def of(cls, caches) -> "RowBatch":
        positions, pads = [], []
        for c in caches:
            positions += [c.length] * c.batch_size
            pads += c.left_pad.tolist() if c.left_pad is not None else [0] * c.batch_size
        width = max(c.page_table.shape[1] for c in caches)
        table = torch.cat([torch.nn.functional.pad(c.page_table, (0, width - c.page_table.shape[1])) for c in caches])
        return cls(torch.tensor(positions), torch.tensor(pads), table, caches)

    @classmethod
    def scratch(cls, rows: int) -> "RowBatch":
        """`rows` rows at position 0 of the scratch page: what a graph is captured on before any session."""
        zeros = torch.zeros(rows, dtype=torch.long)
        return cls(zeros, zeros.clone(), torch.zeros(rows, 1, dtype=torch.long))

    @property
    def rows(self) -> int:
        return int(self.q_pos.numel())

    def pages(self) -> int:
        return -(-self.kv_length // PAGE_TOKENS)


def run_uncaptured(span, pool, hidden: torch.Tensor, batch: RowBatch) -> torch.Tensor:
    """The tick without a graph: exact shapes (no bucket), slots sent to the device once."""
    device = span.device
    table = batch.table[:, :batch.pages()]  # every cache holds pages up to its new position
    rope = span.rotary.get(0, batch.kv_length)
    return decode_body(span, pool, hidden.to(device=device, dtype=span.dtype), batch.q_pos.to(device),
                       batch.pad.to(device), table.to(device), batch.kv_length, rope)


class BucketStep:
    """The tick of one bucket (rows, pages) of one span over one pool, with fixed shapes and addresses."""

    def __init__(self, span, pool, rows: int, pages: int):
        self.span, self.pool = span, pool
        self.rows, self.pages = rows, pages
        self.kv_length = pages * PAGE_TOKENS
        device = span.device
        self.hidden = torch.zeros(rows, 1, span.hidden_size, dtype=span.dtype, device=device)
        # positions, pads and page table in one buffer: one host-to-device copy per replay
        self.meta = torch.zeros(rows * (2 + pages), dtype=torch.long, device=device)
        self.staging = torch.zeros(self.meta.shape, dtype=torch.long, pin_memory=device.type == "cuda")
        self.copied = torch.cuda.Event() if device.type == "cuda" else None  # when staging may be rewritten
        self.rope = span.rotary.get(0, self.kv_length)  # held: a later growth of the table makes a new one

    def _views(self, meta):
        rows, pages = self.rows, self.pages
        return meta[:rows], meta[rows:2 * rows], meta[2 * rows:].view(rows, pages)

    def _load(self, hidden: torch.Tensor, batch: RowBatch) -> None:
        n = batch.rows
        if self.copied is not None:
            # the last tick's copy out of the pinned staging buffer may not have run yet (nothing
            # synchronises between ticks unless the caller reads the output): rewriting it now
            # would hand that tick this tick's positions and pages
            self.copied.synchronize()
        self.staging.zero_()  # padding rows: position 0 of the scratch page
        q_pos, pad, table = self._views(self.staging)
        q_pos[:n], pad[:n] = batch.q_pos, batch.pad
        width = min(self.pages, batch.table.shape[1])
        table[:n, :width] = batch.table[:, :width]
        self.meta.copy_(self.staging, non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        self.hidden[:n].copy_(hidden)

    def _body(self) -> torch.Tensor:
        q_pos, pad, table = self._views(self.meta)
        return decode_body(self.span, self.pool, self.hidden, q_pos, pad, table, self.kv_length, self.rope)

    def run_uncaptured(self, hidden: torch.Tensor, batch: RowBatch) -> torch.Tensor:
        """The body a graph captures, run eagerly (CPU tests check it against the eager path)."""
        self._load(hidden, batch)
        return self._body()[:batch.rows]


class DecodeGraph(BucketStep):
    """A captured BucketStep (CUDA only): `run` replays it."""

    def __init__(self, span, pool, rows: int, pages: int):
        super().__init__(span, pool, rows, pages)
        self.graph = torch.cuda.CUDAGraph()
        self.out: torch.Tensor | None = None

    def capture(self, hidden: torch.Tensor, batch: RowBatch) -> torch.Tensor:
        """Warm up on a side stream (as CUDA graphs require), capture, replay once."""
        device = self.span.device
        if self.pool.graph_memory is None:
            self.pool.graph_memory = torch.cuda.graph_pool_handle()  # one per pool, for its graphs' lifetime
        self._load(hidden, batch)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._body()  # writes this tick's keys/values: the replay below writes the same ones
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.cuda.graph(self.graph, pool=self.pool.graph_memory, capture_error_mode="thread_local"):
            self.out = self._body()
        self.graph.replay()
        return self.out[:batch.rows]

    def run(self, hidden: torch.Tensor, batch: RowBatch) -> torch.Tensor:
        self._load(hidden, batch)
        self.graph.replay()
        return self.out[:batch.rows]


def run_tick(span, pool, hidden: torch.Tensor, batch: RowBatch) -> torch.Tensor:
    """One tick of `batch`'s rows: a graph replay where the span allows one, else uncaptured.

    The result may be a graph's output buffer: read it (e.g. copy it to the host) before the next tick."""
    rows, pages = bucket(batch.rows), bucket(batch.pages())
    if not _graph_allowed(span, pool, rows, pages):
        return run_uncaptured(span, pool, hidden, batch)
    key = (span.start, span.end, rows, pages, active_adapter())  # a graph records the adapter it ran with
    graph = pool.graphs.get(key)
    if graph is not None:
        return graph.run(hidden, batch)
    graph = DecodeGraph(span, pool, rows, pages)
    try:
        out = graph.capture(hidden, batch)
    except Exception as exc:  # an op that cannot be captured (e.g. some quantized layers)
        span.graphs.disable(span, f"capture failed: {type(exc).__name__}: {exc}")
        return run_uncaptured(span, pool, hidden, batch)
    pool.graphs[key] = graph
    logger.debug("captured a decode graph for %s: %d rows, %d kv positions (%d graphs)", span, rows,
                 graph.kv_length, len(pool.graphs))
    return out


def capture_buckets(span, max_tokens: int, progress=None) -> int:
    """Capture every bucket's graph before serving (serving engines do the same): a capture costs
    a few eager steps, and paid on the ticks where a bucket is first met it would slow the first
    minutes of a server's life. Buckets: rows 1..MAX_GRAPH_ROWS, kv pages up to `max_tokens` (a
    session's longest), within the pool's bound. Returns how many graphs the pool holds."""
    pool = span.kv_pool
    wanted = [(rows, pages) for rows in _powers(MAX_GRAPH_ROWS) for pages in _powers(bucket(-(-max_tokens // PAGE_TOKENS)))
              if _graph_allowed(span, pool, rows, pages)]
    for done, (rows, pages) in enumerate(wanted, 1):
        key = (span.start, span.end, rows, pages, active_adapter())
        if key not in pool.graphs:
            batch = RowBatch.scratch(rows)
            graph = DecodeGraph(span, pool, rows, pages)
            try:
                graph.capture(graph.hidden[:rows], batch)
            except Exception as exc:
                span.graphs.disable(span, f"capture failed: {type(exc).__name__}: {exc}")
                return 0
            pool.graphs[key] = graph
        if progress is not None and (done == len(wanted) or done % 8 == 0):
            progress(f"capturing decode graphs: {done}/{len(wanted)} buckets")
    return len(pool.graphs)


def _powers(limit: int) -> list[int]:
    return [1 << i for i in range(max(1, limit).bit_length()) if 1 << i <= limit]


def _graph_allowed(span, pool, rows: int, pages: int) -> bool:
    if not span.graphs.enabled or rows > MAX_GRAPH_ROWS:
        return False
    why = decode_graphs_supported(span)
    if why is not None:
        span.graphs.disable(span, why)
        return False
    # a graph's gathered keys and values are rows x kv positions per layer: bounded by the pool's size
    return rows * pages * PAGE_TOKENS <= max(2 * pool.capacity_tokens, MAX_GRAPH_ROWS * PAGE_TOKENS)


class GraphSettings:
    """Shared by a span and its sub-span views: whether decode ticks may replay as CUDA graphs."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

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
