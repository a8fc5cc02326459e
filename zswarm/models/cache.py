"""SpanCache: one inference session's rows in a span's KV pool (kv_pool.py).

A session owns whole pages of the pool: `page_table` ([rows, pages], a host tensor) says which.
With a `max_length` it takes every page it will need when it is made (a server's sessions:
the cache budget reserved them already); without one it takes pages as it grows. Its pages go
back to the pool when it is closed or garbage collected. `length` advances only when a whole
step has succeeded, so a step that fails half way leaves the session where it was.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch

from zswarm.blocks import format_blocks

from .errors import SpanInputError
from .kv_pool import PAGE_TOKENS, KVPool, pages_for
from .paged import PagedRows, contiguous_rows, slots


class SpanCache:
    def __init__(self, pool: KVPool, start: int, end: int, batch_size: int, *, max_length: int | None = None,
                 left_pad: torch.Tensor | None = None):
        self.pool = pool
        self.start, self.end = start, end
        self.batch_size = batch_size
        self.max_length = max_length
        # [batch] long (host), or None: row r's first left_pad[r] positions are padding (never
        # attended to; rotary positions count from the first real token). Reordered with the rows.
        self.left_pad = left_pad
        self.length = 0  # tokens held, the same for every layer
        self._owned: list[int] = []  # every page held, for the finalizer
        self._finalizer = weakref.finalize(self, pool.release, self._owned)
        self._table_on_device = None
        self.page_table = self._take_pages(batch_size, pages_for(max_length) if max_length else 0)
        self._left_pad_device = None if left_pad is None else left_pad.to(pool.device)

    @property
    def page_table(self) -> torch.Tensor:
        """[rows, pages] page ids, a host tensor (batched ticks build their rows from it)."""
        return self._page_table

    @page_table.setter
    def page_table(self, table: torch.Tensor) -> None:
        self._page_table = table
        self._table_on_device = None  # copied once when a step needs it, not once per step

    # ---- what a step needs ---------------------------------------------------------------------
    def rows_for_step(self, q: int) -> PagedRows:
        """The pool view of one step of `q` new tokens at `length` (taking pages if it must grow)."""
        end = self.length + q
        if self.max_length is not None and end > self.max_length:
            raise SpanInputError(f"{end} positions exceed this cache's max_length {self.max_length}")
        missing = pages_for(end) - self.page_table.shape[1]
        if missing > 0:
            self.page_table = torch.cat([self.page_table, self._take_pages(self.batch_size, missing)], dim=1)
        if self._table_on_device is None:
            self._table_on_device = self._page_table.to(self.pool.device)
        return contiguous_rows(self.pool, self._table_on_device, self.length, q)

    @property
    def left_pad_device(self) -> torch.Tensor | None:
        return self._left_pad_device

    @property
    def capacity(self) -> int:
        """Positions this session can hold without taking more pages."""
        return self.page_table.shape[1] * PAGE_TOKENS

    # ---- session control, called by BlockSpan and the server -------------------------------------
    def _begin_step(self, batch: int) -> int:
        if batch != self.batch_size:
            raise SpanInputError(f"hidden states have batch {batch} but the cache holds batch {self.batch_size}")
        return self.length

    def rollback(self, n: int) -> None:
        """Keep only the first `n` tokens (0 <= n <= length); later steps continue from position n."""
        if not 0 <= int(n) <= self.length:
            raise SpanInputError(f"cannot roll back to {n} tokens: the cache holds {self.length}")
        self.length = int(n)

    def reorder(self, hypo_ids: torch.Tensor | Sequence[int]) -> None:
        """Make row i of the cache a copy of row hypo_ids[i] (beam search); the batch becomes len(hypo_ids)."""
        ids = torch.as_tensor(hypo_ids)
        if ids.ndim != 1 or ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise SpanInputError("hypo_ids must be a non-empty 1-D integer tensor")
        if int(ids.min()) < 0 or int(ids.max()) >= self.batch_size:
            raise SpanInputError(f"hypo_ids must lie in [0, {self.batch_size})")
        ids = ids.to(torch.long).cpu()
        rows = int(ids.numel())
        old_table = self.page_table
        new_table = old_table if rows == self.batch_size else self._take_pages(rows, old_table.shape[1])
        if self.length:
            held = torch.arange(self.length)
            device = self.pool.device
            source = slots(old_table[ids], held).reshape(-1).to(device)
            target = slots(new_table, held).reshape(-1).to(device)
            with torch.inference_mode():
                for store in (self.pool.keys, self.pool.values):
                    for layer_idx in range(self.start, self.end):
                        buffer = store[layer_idx]
                        buffer.index_copy_(0, target, buffer.index_select(0, source))  # select copies first
        if rows != self.batch_size:
            self._give_back(old_table)
            self.page_table = new_table
        if self.left_pad is not None:
            self.left_pad = self.left_pad.index_select(0, ids)
            self._left_pad_device = self.left_pad.to(self.pool.device)
        self.batch_size = rows

    def close(self) -> None:
        """Give every page back to the pool now (also done when the cache is garbage collected)."""
        self._finalizer()

    @property
    def nbytes(self) -> int:
        """Bytes of the pool this session holds (whole pages, all layers of its span)."""
        per_token = 2 * self.pool.kv_heads * self.pool.head_dim * torch.empty((), dtype=self.pool.dtype).element_size()
        return len(self._owned) * PAGE_TOKENS * per_token * (self.end - self.start)

    # ---- pages ---------------------------------------------------------------------------------
    def _take_pages(self, rows: int, pages_per_row: int) -> torch.Tensor:
        pages = self.pool.allocate(rows * pages_per_row)
        self._owned.extend(pages)
        return torch.tensor(pages, dtype=torch.long).view(rows, pages_per_row)

    def _give_back(self, table: torch.Tensor) -> None:
        pages = set(table.reshape(-1).tolist())
        self._owned[:] = [p for p in self._owned if p not in pages]
        self.pool.release(sorted(pages))

    def __repr__(self) -> str:
        return f"SpanCache(blocks={format_blocks(self.start, self.end)}, batch={self.batch_size}, length={self.length})"
