"""PagedRows: one step's view of the KV pool, as transformers' attention layers call a Cache.

A step runs some rows (of one session, or of many in a batched decode tick) through the blocks.
For every layer the attention calls `update(keys, values, layer_idx)`: the new tokens' keys and
values are written at `write_slots` of the pool, and the keys and values each row attends to
are gathered from `read_slots` ([rows, kv_length]) into [rows, heads, kv_length, head_dim],
the shape the layers' attention expects. The slots are computed once per step, not per layer.

Slot arithmetic (kv_pool.py): position j of a row lives at slot page_table[j // PAGE] * PAGE + j % PAGE.
"""

from __future__ import annotations

import torch

from .kv_pool import PAGE_TOKENS


class PagedRows:
    def __init__(self, pool, write_slots: torch.Tensor, read_slots: torch.Tensor):
        self.pool = pool
        self.write_slots = write_slots  # [rows * new_tokens], row-major
        self.read_slots = read_slots    # [rows, kv_length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        rows, heads, q, dim = key_states.shape
        kv_length = self.read_slots.shape[1]
        out = []
        for store, new in ((self.pool.keys[layer_idx], key_states), (self.pool.values[layer_idx], value_states)):
            store.index_copy_(0, self.write_slots, new.transpose(1, 2).reshape(rows * q, heads, dim))
            held = store.index_select(0, self.read_slots.view(-1)).view(rows, kv_length, heads, dim)
            out.append(held.transpose(1, 2))
        return out[0], out[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.read_slots.shape[1])


def slots(page_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[rows, n] pool slots of positions ([n], or [rows, n]) in rows with page tables [rows, pages]."""
    if positions.ndim == 1:
        positions = positions.expand(page_table.shape[0], -1)
    return page_table.gather(1, positions // PAGE_TOKENS) * PAGE_TOKENS + positions % PAGE_TOKENS


def contiguous_rows(pool, page_table: torch.Tensor, past: int, q: int) -> PagedRows:
    """Rows that all hold positions [0, past) and add [past, past + q): one session's step.

    `page_table` lives on the pool's device: the slots are computed there, with no copy from the
    host (whose wait for the device would cost every eager step a sync)."""
    positions = torch.arange(past + q, device=page_table.device)
    read = slots(page_table, positions)
    return PagedRows(pool, read[:, past:].reshape(-1), read)
