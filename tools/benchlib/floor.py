"""The memory-bandwidth floor of a decode step: the weights one step must read, over the bandwidth
this device's memory gives a plain device-to-device copy (bytes read plus bytes written).

A step reads every weight once whatever the batch (the KV cache reads, small at these lengths,
are left out), except the input embedding table, of which it reads one row per token.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def copy_bandwidth(device: str, nbytes: int, repeats: int = 10) -> float:
    """Bytes per second moved by `dst.copy_(src)` of nbytes (read + written), median of repeats."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    cuda = device.startswith("cuda")
    for _ in range(3):
        dst.copy_(src)
    samples = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            dst.copy_(src)
            samples.append(time.perf_counter() - began)
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    samples.sort()
    return 2 * nbytes / samples[len(samples) // 2]


def step_weight_bytes(model_dir: str, config: dict) -> int:
    """Bytes of the checkpoint's weights (fp16, as written) less the input embedding table."""
    total = json.loads((Path(model_dir) / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    return total - config["vocab_size"] * config["hidden_size"] * 2


def floor(model_dir: str, config: dict, device: str, batches: list) -> dict:
    nbytes = (2 << 30) if device.startswith("cuda") else (64 << 20)
    bandwidth = copy_bandwidth(device, nbytes)
    weights = step_weight_bytes(model_dir, config)
    step_ms = weights / bandwidth * 1e3
    return {"copy_bytes": nbytes, "copy_bandwidth_GBps": bandwidth / 1e9, "weight_bytes_per_step": weights,
            "ms_per_step": step_ms, "tokens_per_s": {str(b): b / step_ms * 1e3 for b in batches}}
