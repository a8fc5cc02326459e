"""Loading the hosted blocks: one block at a time (for progress and bounded peak memory),
quantized as they arrive when --quant asks for it, then joined into one BlockSpan."""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import torch
from torch import nn

from zswarm.dtypes import as_torch_dtype
from zswarm.models import BlockSpan, load_span
from zswarm.server.config import ConfigError
from zswarm.server.quant import quantize_module_

logger = logging.getLogger(__name__)


def resolve_dtype(requested: str, config, device: str) -> torch.dtype:
    """--dtype auto: the checkpoint's dtype; on a CPU, half precision becomes float32 (CPU kernels
    for fp16/bf16 are slow or missing)."""
    if requested != "auto":
        return getattr(torch, requested)
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = as_torch_dtype(stored)
    if stored not in (torch.float16, torch.bfloat16, torch.float32):
        stored = torch.float32
    if not device.startswith("cuda"):
        return torch.float32
    return stored


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested} was asked for, but torch sees no CUDA device")
    return requested


def load_blocks(source, start: int, end: int, *, dtype: torch.dtype, device: str, quant: str = "none",
                cuda_graphs: bool = True, progress: Callable[[str], None] = logger.info) -> BlockSpan:
    """Blocks [start, end) as one BlockSpan, logging progress after each block."""
    span = _load_blocks(source, start, end, dtype=dtype, device=device, quant=quant, progress=progress)
    why_not = graphs_refused(cuda_graphs, quant)
    if why_not:
        span.graphs.disable(span, why_not)
    return span


def graphs_refused(cuda_graphs: bool, quant: str) -> Optional[str]:
    """Why the server's settings keep decode graphs off its spans, or None where they allow them."""
    if not cuda_graphs:
        return "--no-cuda-graphs"
    if quant == "int8":
        # bitsandbytes' int8 layers pick outlier columns by value (a host sync): capture fails (seen on an H200)
        return "int8 layers cannot be captured"
    return None


def _load_blocks(source, start: int, end: int, *, dtype: torch.dtype, device: str, quant: str,
                 progress: Callable[[str], None]) -> BlockSpan:
    total = end - start
    began = time.monotonic()
    load_device = "cpu" if quant != "none" else device  # bitsandbytes quantizes on the move to the GPU
    target = torch.device(device)
    parts = []
    for i, layer in enumerate(range(start, end)):
        part = load_span(source, layer, layer + 1, dtype=dtype, device=load_device)
        if quant != "none":
            quantize_module_(part.blocks, quant, target, dtype)
            part.blocks.to(target)  # norms and other small tensors
        parts.append(part)
        elapsed = time.monotonic() - began
        eta = elapsed / (i + 1) * (total - i - 1)
        progress(f"loading weights: {_bar(i + 1, total)} block {layer} ({i + 1}/{total}), "
                 f"{elapsed:.1f}s elapsed, ~{eta:.0f}s left")
    first = parts[0]
    if len(parts) == 1 and quant == "none":
        return first
    blocks = nn.ModuleList([p.blocks[0] for p in parts])
    rotary = first.rotary if quant == "none" else first.family.build_rotary(first.config, dtype, target)
    span = BlockSpan(first.family, first.config, start, end, blocks, dtype, target, rotary=rotary)
    span.eval()
    return span


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(1, total))
    return "[" + "#" * filled + "." * (width - filled) + "]"
