"""Memory planning: how many blocks fit on a device, and how big the KV-cache budget is.

Pure arithmetic over a model config, except `free_device_bytes`, which asks the device.
Sizes are estimates of the weights of one decoder block of the common shape (attention with
grouped KV heads plus a gated MLP, the Llama/Mistral/Qwen/SmolLM family); they are used to plan,
never to allocate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zswarm.errors import InsufficientMemoryError

# bytes per weight; int8 and nf4 keep per-block scales (bitsandbytes), hence the small excess
WEIGHT_BYTES = {("float32", "none"): 4.0, ("float16", "none"): 2.0, ("bfloat16", "none"): 2.0}
QUANT_WEIGHT_BYTES = {"int8": 1.0 + 4 / 4096, "nf4": 0.5 + 4 / 64}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

DEFAULT_CACHE_TOKENS_CPU = 8192
DEFAULT_CACHE_TOKENS_GPU = 16384  # per server, shared by all sessions (Petals' default for GQA models)


@dataclass(frozen=True)
class BlockShape:
    """What memory planning needs to know about one block."""

    params: int  # weights of one block
    kv_heads: int  # heads stored per token in the KV cache
    head_dim: int

    @classmethod
    def from_source(cls, source) -> "BlockShape":
        """Exact: build block 0 on the meta device (no memory) and count its weights."""
        try:
            block = source.family.build_block(source.config, 0)
            params = sum(p.numel() for p in block.parameters())
            heads, head_dim = source.family.cache_heads_and_dim(source.config)
            return cls(int(params), int(heads), int(head_dim))
        except Exception:  # an adapter that cannot build on meta: fall back to the formula
            return cls.from_config(source.config)

    @classmethod
    def from_config(cls, config) -> "BlockShape":
        """Estimate for the common shape: attention with grouped KV heads plus a gated MLP."""
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        inter = int(getattr(config, "intermediate_size", None) or 4 * hidden)
        experts = int(getattr(config, "num_local_experts", None) or 1)
        attn = hidden * head_dim * (2 * heads + 2 * kv_heads)
        mlp = 3 * hidden * inter * experts
        return cls(attn + mlp + 2 * hidden, kv_heads, head_dim)

    def kv_bytes_per_token(self, dtype: str) -> int:
        """KV-cache bytes one token takes in one block."""
        return 2 * self.kv_heads * self.head_dim * DTYPE_BYTES[dtype]


def block_bytes(shape: BlockShape, dtype: str, quant: str = "none") -> int:
    """Weight bytes of one block at this dtype and quantization."""
    per_weight = QUANT_WEIGHT_BYTES[quant] if quant != "none" else WEIGHT_BYTES[(dtype, "none")]
    return int(math.ceil(shape.params * per_weight))


def cache_bytes(shape: BlockShape, dtype: str, tokens: int, num_blocks: int) -> int:
    """Bytes a KV cache of `tokens` tokens takes over `num_blocks` blocks."""
    return shape.kv_bytes_per_token(dtype) * tokens * num_blocks


def graph_workspace_bytes(shape: BlockShape, dtype: str, cache_tokens: int) -> int:
    """Device memory decode graphs keep (their private pool): a batched tick gathers each row's keys
    and values of one layer at a time, and a graph's bucket may gather up to twice the cache's tokens
    (zswarm.models.decode_graph), so twice one layer's cache, for keys and values, once more for the
    attention's copies of them."""
    return 2 * 2 * cache_bytes(shape, dtype, cache_tokens, 1)


def plan_num_blocks(
    free_bytes: int,
    shape: BlockShape,
    dtype: str,
    quant: str,
    cache_tokens: int,
    total_blocks: int,
    *,
    headroom: float = 0.9,
    reserve_bytes: int = 1 << 30,
) -> int:
    """How many blocks fit: each costs its weights plus its share of the cache budget, after the
    decode graphs' workspace (graph_workspace_bytes).

    `headroom` and `reserve_bytes` leave room for activations, the CUDA context and fragmentation.
    """
    usable = free_bytes * headroom - reserve_bytes - graph_workspace_bytes(shape, dtype, cache_tokens)
    per_block = block_bytes(shape, dtype, quant) + cache_bytes(shape, dtype, cache_tokens, 1)
    fits = int(usable // per_block) if usable > 0 else 0
    if fits < 1:
        need = (per_block + reserve_bytes) / headroom
        raise InsufficientMemoryError(
            f"one block needs about {need / 2**30:.2f} GiB ({dtype}, quant={quant}, "
            f"{cache_tokens} cache tokens) but only {free_bytes / 2**30:.2f} GiB is free; "
            "try --quant, a smaller --attn-cache-tokens, or another device"
        )
    return min(fits, total_blocks)


def fit_cache_tokens(free_bytes: int, shape: BlockShape, dtype: str, quant: str, num_blocks: int, wanted: int,
                     *, headroom: float = 0.9, reserve_bytes: int = 1 << 30) -> int:
    """The cache budget (tokens) that fits beside `num_blocks` blocks' weights: `wanted`, or less."""
    usable = free_bytes * headroom - reserve_bytes - num_blocks * block_bytes(shape, dtype, quant)
    per_token = cache_bytes(shape, dtype, 1, num_blocks) + graph_workspace_bytes(shape, dtype, 1)
    fits = int(usable // per_token) if usable > 0 else 0
    if fits < 1:
        raise InsufficientMemoryError(
            f"{num_blocks} blocks ({dtype}, quant={quant}) leave no room for a KV cache in "
            f"{free_bytes / 2**30:.2f} GiB free; host fewer blocks or use --quant")
    return min(wanted, fits)


def default_cache_tokens(device: str) -> int:
    return DEFAULT_CACHE_TOKENS_GPU if device.startswith("cuda") else DEFAULT_CACHE_TOKENS_CPU


def free_device_bytes(device: str) -> int:
    """Free memory of a cuda device in bytes (what the driver reports now)."""
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)
