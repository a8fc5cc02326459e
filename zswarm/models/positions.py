"""Position inputs for a span: rotary tables, causal masks and ALiBi biases.

These reproduce what the whole Hugging Face model builds before its first layer, but for an
arbitrary (past length, new tokens) pair, and cheaply on the decode path: rotary cos/sin come
from a table grown on demand, and no mask is built when attention over every cached token is
already right (a single new token, or a prefill into an empty cache that SDPA runs as causal).
"""

from __future__ import annotations

import threading

import torch
from torch import nn

# rope types whose inverse frequencies change with sequence length: those call the module each step
_DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")


class RotaryTable:
    """cos/sin of the model's own rotary module for positions [past, past+q), shaped [1, q, dim]."""

    def __init__(self, rotary: nn.Module, dtype: torch.dtype, device: torch.device):
        self.rotary = rotary
        self.dtype = dtype
        self.device = device
        rope_type = getattr(rotary, "rope_type", "default")
        self.dynamic = any(kind in str(rope_type) for kind in _DYNAMIC_ROPE_TYPES)
        self._cos = self._sin = None
        self._lock = threading.Lock()

    def _compute(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # normal tensors even when called under inference_mode: backward() reuses the table
        with torch.inference_mode(False), torch.no_grad():
            probe = torch.empty(0, device=self.device, dtype=self.dtype)  # only its dtype/device are read
            return self.rotary(probe, position_ids=position_ids)

    def get(self, past: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = past + q
        if self.dynamic:
            return self._compute(torch.arange(past, end, device=self.device)[None])
        cos = self._cos
        if cos is None or cos.shape[1] < end:
            with self._lock:
                if self._cos is None or self._cos.shape[1] < end:
                    size = max(end, 256, 2 * (0 if self._cos is None else self._cos.shape[1]))
                    cos, sin = self._compute(torch.arange(size, device=self.device)[None])
                    self._sin, self._cos = sin, cos  # sin first: readers check _cos
        return self._cos[:, past:end], self._sin[:, past:end]

    def get_rows(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for per-row positions [batch, q] (left-padded batches), shaped [batch, q, dim]."""
        if self.dynamic:
            return self._compute(positions)
        self.get(0, int(positions.max()) + 1)  # grows the table to cover them
        cos, sin = self._cos, self._sin
        return cos[0][positions], sin[0][positions]


def positions_from_first_token(absolute: torch.Tensor, left_pad: torch.Tensor) -> torch.Tensor:
    """[batch, q] rotary positions of absolute positions [q] in rows with `left_pad` leading pads:
    counted from each row's first real token, as transformers' generate computes position_ids
    (cumsum(mask) - 1, pads at 0). `absolute` may be a device tensor (the decode graph's position)."""
    return (absolute[None, :] - left_pad[:, None]).clamp_(min=0)


def padded_positions(past: int, q: int, left_pad: torch.Tensor) -> torch.Tensor:
    """[batch, q] rotary positions of absolute positions [past, past+q) (positions_from_first_token)."""
    return positions_from_first_token(torch.arange(past, past + q, device=left_pad.device), left_pad)


def causal_rule(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[q, kv] bool: True where a query at absolute position q_pos[i] may attend key k_pos[j].
    Shared by the eager masks and the decode graph's (whose query position is a device tensor)."""
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window  # same rule as transformers' sliding_window_overlay
    return allowed


def without_pads(allowed: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, left_pad: torch.Tensor
                 ) -> torch.Tensor:
    """[batch, 1, q, kv] bool: `allowed` ([q, kv], causal_rule) less each row's leading pads.

    A pad position attends to itself alone: a row with nothing to attend to would give NaN, and
    a NaN that reaches the cache poisons later steps even where it is masked (0 * NaN)."""
    real = k_pos[None, :] >= left_pad[:, None]      # [batch, kv]
    itself = k_pos[None, :] == q_pos[:, None]       # [q, kv]
    return allowed & (real[:, None, None, :] | itself[None, None])


def row_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, left_pad: torch.Tensor) -> torch.Tensor:
    """[rows, 1, 1, kv] bool for one new token per row at q_pos[r] (a batched decode step): the causal
    (and window) rule, less each row's leading pads. Rows of different lengths share one kv range;
    keys past a row's own position are masked by the causal rule."""
    allowed = causal_rule(q_pos, k_pos, window)                    # [rows, kv]
    real = k_pos[None, :] >= left_pad[:, None]
    itself = k_pos[None, :] == q_pos[:, None]
    return (allowed & (real | itself))[:, None, None, :]


def padded_mask(past: int, q: int, window: int | None, left_pad: torch.Tensor) -> torch.Tensor:
    """[batch, 1, q, past+q] bool: the causal (and window) mask, less each row's leading pads."""
    device = left_pad.device
    q_pos, k_pos = torch.arange(past, past + q, device=device), torch.arange(past + q, device=device)
    return without_pads(causal_rule(q_pos, k_pos, window), q_pos, k_pos, left_pad)


def bool_causal_mask(past: int, q: int, window: int | None, device: torch.device) -> torch.Tensor:
    """[1, 1, q, past+q]: True where query (absolute position past+i) may attend key j."""
    q_pos, k_pos = torch.arange(past, past + q, device=device), torch.arange(past + q, device=device)
    return causal_rule(q_pos, k_pos, window)[None, None]


def sdpa_mask(past: int, q: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """The mask for transformers' SDPA attention, or None where SDPA's own rule is already exact.

    None means: attend to everything cached (q == 1) or run causal on an empty cache (past == 0,
    SDPA's is_causal), both right only while a sliding window does not cut anything off.
    """
    if (window is None or past + q <= window) and (q == 1 or past == 0):
        return None
    return bool_causal_mask(past, q, window, device)


def additive_mask(past: int, q: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Causal mask for eager attentions that add it to the scores (BLOOM); None for one new token."""
    if q == 1:
        return None
    allowed = bool_causal_mask(past, q, None, device)
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi head slopes (Press et al., 2021), as BLOOM computes them."""
    import math

    closest = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        remaining = min(closest, num_heads - closest)
        slopes = torch.cat([slopes, torch.pow(extra_base, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))])
    return slopes


class AlibiTable:
    """ALiBi biases for key positions [0, kv), shaped [batch*heads, 1, kv] as BLOOM's blocks expect."""

    def __init__(self, num_heads: int, dtype: torch.dtype, device: torch.device):
        self.num_heads = num_heads
        self.dtype = dtype
        self.device = device
        self.slopes = alibi_slopes(num_heads).to(device)
        self._table = None

    def get(self, kv: int, batch: int) -> torch.Tensor:
        table = self._table
        if table is None or table.shape[-1] < kv:
            size = max(kv, 256, 2 * (0 if table is None else table.shape[-1]))
            with torch.inference_mode(False), torch.no_grad():
                table = (self.slopes[:, None, None] * torch.arange(size, device=self.device)).to(self.dtype)
            self._table = table
        return table[:, :, :kv].repeat(batch, 1, 1)
