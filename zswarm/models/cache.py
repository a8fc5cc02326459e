"""SpanCache: the keys and values of one inference session over a span of blocks.

Buffers are preallocated per layer ([batch, heads, capacity, head_dim]) and grown by doubling,
so a decode step writes one position in place instead of concatenating the whole history (as
transformers' DynamicCache does). Transformers' attention layers call `update(...)` exactly as
they would on their own Cache; `length` advances only when a whole step has succeeded, so a
step that fails half way leaves the session where it was.

A decode graph (decode_graph.py) writes at a position held in a device tensor instead
(`static_writes`) and attends over the whole capacity; it stays valid while `generation` does
not change, so every reallocation of the buffers bumps it.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from .errors import SpanInputError


class SpanCache:
    def __init__(self, start: int, end: int, batch_size: int, *, capacity: int = 0,
                 left_pad: torch.Tensor | None = None):
        self.start, self.end = start, end
        self.batch_size = batch_size
        # [batch] long on the span's device, or None: row r's first left_pad[r] positions are padding
        # (never attended to; rotary positions count from the first real token). Fixed per session,
        # reordered with the rows; a decode graph reads it, so a same-batch reorder writes it in place.
        self.left_pad = left_pad
        self.length = 0  # tokens held, the same for every layer
        self._capacity_hint = capacity
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._write_at: int | None = None
        self._static_position: torch.Tensor | None = None
        self.generation = 0  # bumped whenever buffers are reallocated
        self.decode_graph = None  # set by BlockSpan on the first captured decode step

    # ---- the transformers Cache protocol, as the layers use it -----------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._static_position is not None:
            keys, values = self._keys[layer_idx], self._values[layer_idx]
            keys.index_copy_(2, self._static_position, key_states)
            values.index_copy_(2, self._static_position, value_states)
            return keys, values
        pos = self._write_at
        if pos is None:
            raise RuntimeError("SpanCache.update called outside BlockSpan.inference_step")
        end = pos + key_states.shape[-2]
        keys = self._keys.get(layer_idx)
        if keys is None or keys.shape[-2] < end:
            keys = self._keys[layer_idx] = self._grown(keys, key_states, pos, end)
            self._values[layer_idx] = self._grown(self._values.get(layer_idx), value_states, pos, end)
        values = self._values[layer_idx]
        keys[:, :, pos:end].copy_(key_states)
        values[:, :, pos:end].copy_(value_states)
        return keys[:, :, :end], values[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def _grown(self, old: torch.Tensor | None, new: torch.Tensor, pos: int, end: int) -> torch.Tensor:
        old_capacity = 0 if old is None else old.shape[-2]
        capacity = max(end, self._capacity_hint, 2 * old_capacity)
        batch, heads, _, dim = new.shape
        # zeros, not empty: a decode graph attends over the whole capacity with a mask, and a masked
        # NaN left in uninitialised memory still makes 0 * NaN = NaN (seen on an H200)
        buffer = torch.zeros(batch, heads, capacity, dim, dtype=new.dtype, device=new.device)
        self.generation += 1
        if old is not None and pos > 0:
            buffer[:, :, :pos].copy_(old[:, :, :pos])
        return buffer

    @property
    def capacity(self) -> int:
        """Positions every layer's buffers hold now (0 before the first step)."""
        if not self._keys:
            return 0
        return min(t.shape[-2] for t in self._keys.values())

    def holds_layers(self, layer_ids) -> bool:
        return all(i in self._keys for i in layer_ids)

    @contextlib.contextmanager
    def static_writes(self, position: torch.Tensor):
        """Within: `update` writes one position at the device tensor `position` and returns whole buffers."""
        self._static_position = position
        try:
            yield
        finally:
            self._static_position = None

    # ---- session control, called by BlockSpan and the server -------------------------------------
    def _begin_step(self, batch: int) -> int:
        if batch != self.batch_size:
            raise SpanInputError(f"hidden states have batch {batch} but the cache holds batch {self.batch_size}")
        self._write_at = self.length
        return self.length

    def _end_step(self, new_length: int | None) -> None:
        if new_length is not None:
            self.length = new_length
        self._write_at = None

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
        ids = ids.to(torch.long)
        same_batch = ids.numel() == self.batch_size
        if self._keys:  # a span's buffers share one device: copy ids there once, not once per layer
            ids = ids.to(next(iter(self._keys.values())).device)
        with torch.inference_mode():
            for store in (self._keys, self._values):
                for layer_idx, buffer in store.items():
                    if same_batch:  # in place: a decode graph keeps using these buffers
                        held = buffer[:, :, :self.length]
                        held.copy_(held.index_select(0, ids.to(buffer.device)))
                    else:
                        store[layer_idx] = buffer.index_select(0, ids.to(buffer.device))
        if self.left_pad is not None:
            pads = self.left_pad.index_select(0, ids.to(self.left_pad.device))
            if same_batch:
                self.left_pad.copy_(pads)
            else:
                self.left_pad = pads
        if not same_batch:
            self.generation += 1
        self.batch_size = int(ids.numel())

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers now (capacity, not just length)."""
        return sum(t.numel() * t.element_size() for store in (self._keys, self._values) for t in store.values())

    def __repr__(self) -> str:
        return f"SpanCache(blocks=[{self.start}, {self.end}), batch={self.batch_size}, length={self.length})"
