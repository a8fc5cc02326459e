"""KVPool: the keys and values of every session of a span, in fixed pages of one shared store.

Why pages: sessions of any length share one store sized once (from the server's cache budget),
a session's memory returns the moment it closes, and nothing is reallocated while sessions come
and go, so decode steps captured as CUDA graphs (decode_graph.py) stay valid for the life of
the span, not of one session (PagedAttention, Kwon et al. 2023, section 4.1).

Layout: per layer, keys and values are [pages * PAGE_TOKENS, kv_heads, head_dim]; token slot s
of page p is row p * PAGE_TOKENS + s. Page 0 is scratch: it is never given to a session, and
the rows a batched step pads with (graph buckets) read and write only there. Pages are zeroed
when handed out: attention masks positions it must not see, but a masked NaN still turns into
NaN (0 * NaN), so no page may carry what an earlier session left there.

A pool made for local use (no fixed size) grows when it runs out; growing reallocates the store
and bumps `generation`, which retires captured graphs. A server's pool never grows: the cache
budget hands out no more than it holds.
"""

from __future__ import annotations

import threading

import torch

from zswarm.blocks import format_blocks

from .errors import SpanInputError

PAGE_TOKENS = 16  # tokens per page: small enough that rounding a session up wastes little


def pages_for(tokens: int) -> int:
    """Pages that hold `tokens` positions of one row."""
    return -(-int(tokens) // PAGE_TOKENS)


def reserved_tokens(batch_size: int, max_length: int) -> int:
    """Cache-budget tokens a session of `batch_size` rows and `max_length` positions takes (whole pages)."""
    return int(batch_size) * pages_for(max_length) * PAGE_TOKENS


class PoolExhausted(SpanInputError):
    """A fixed-size pool has no free page left (the cache budget should have refused first)."""


class KVPool:
    """Pages of keys and values for layers [start, end)."""

    def __init__(self, start: int, end: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype,
                 device: torch.device, tokens: int | None = None):
        self.start, self.end = start, end
        self.kv_heads, self.head_dim = int(kv_heads), int(head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.fixed = tokens is not None  # a server's pool: sized once, never grown
        self.generation = 0  # bumped when the store is reallocated (graphs over it are retired)
        self.graphs: dict = {}  # decode graphs over this store (decode_graph.py), by bucket
        self.graph_memory = None  # the CUDA graphs' private memory pool, made on the first capture
        self._lock = threading.Lock()  # pages are handed out on the compute thread, freed from any
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.num_pages = 0
        self._free: list[int] = []
        self._allocate_store(1 + pages_for(tokens if tokens is not None else 4 * PAGE_TOKENS))

    # ---- pages ---------------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        """Tokens sessions can hold (page 0, the scratch page, excluded)."""
        return (self.num_pages - 1) * PAGE_TOKENS

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[int]:
        """`count` zeroed pages for one session; grows a local pool, raises PoolExhausted on a fixed one."""
        with self._lock:
            if count > len(self._free):
                if self.fixed:
                    raise PoolExhausted(f"the KV pool has {len(self._free)} free pages, {count} asked")
                self._grow(self.num_pages + count)
            pages = [self._free.pop() for _ in range(count)]
        if pages:
            index = torch.tensor(pages, device=self.device)
            # the store may have been made under inference_mode (a pool grown in a step): writing
            # to it is allowed only there
            with torch.inference_mode():
                for store in (self.keys, self.values):
                    for buffer in store.values():
                        buffer.view(self.num_pages, PAGE_TOKENS, self.kv_heads, self.head_dim).index_fill_(0, index, 0)
        return pages

    def release(self, pages) -> None:
        with self._lock:
            self._free.extend(pages)

    # ---- the store -----------------------------------------------------------------------------
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for store in (self.keys, self.values) for t in store.values())

    def _allocate_store(self, num_pages: int) -> None:
        shape = (num_pages * PAGE_TOKENS, self.kv_heads, self.head_dim)
        old_keys, old_values, old_pages = self.keys, self.values, self.num_pages
        self.keys = {i: torch.zeros(shape, dtype=self.dtype, device=self.device) for i in range(self.start, self.end)}
        self.values = {i: torch.zeros(shape, dtype=self.dtype, device=self.device) for i in range(self.start, self.end)}
        if old_pages:
            used = old_pages * PAGE_TOKENS
            for old, new in ((old_keys, self.keys), (old_values, self.values)):
                for i in old:
                    new[i][:used].copy_(old[i])
        self._free.extend(range(num_pages - 1, max(old_pages, 1) - 1, -1))  # low pages are handed out first
        self.num_pages = num_pages
        self.generation += 1
        self.graphs.clear()

    def _grow(self, at_least: int) -> None:
        self._allocate_store(max(at_least, 2 * self.num_pages))

    def __repr__(self) -> str:
        return (f"KVPool(blocks={format_blocks(self.start, self.end)}, {self.num_pages - 1} pages of {PAGE_TOKENS} tokens, "
                f"{len(self._free)} free)")
