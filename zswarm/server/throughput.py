"""Throughput: measured on the real block type, dtype and device; cached in a versioned file.

Two rates are measured on one block:
- `inference_rps`: single-token inference steps per second with a growing cache (decoding);
- `forward_rps`: tokens per second of a forward pass over a long batch (prefill, training).
The server's `throughput` (Petals' sense: tokens/s the whole server can push through all of
its blocks) is `forward_rps / num_blocks`.

The cache file is JSON (never pickle) keyed by model, device, dtype and quantization; a file of
another version or shape is ignored and rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

logger = logging.getLogger(__name__)

CACHE_FORMAT = "zswarm-throughput"
CACHE_VERSION = 1
MAX_CACHE_BYTES = 1 << 20


@dataclass(frozen=True)
class Rates:
    inference_rps: float  # per block, single-token steps/s
    forward_rps: float  # per block, tokens/s on a long batch

    def throughput(self, num_blocks: int) -> float:
        return self.forward_rps / max(1, num_blocks)


def default_cache_path() -> Path:
    root = os.environ.get("ZSWARM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zswarm")
    return Path(root) / "throughput.json"


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return "cuda:" + torch.cuda.get_device_name(torch.device(device))
    return f"cpu:{platform.machine()}:{os.cpu_count()}cores:{torch.get_num_threads()}threads"


def cache_key(model_id: str, device: str, dtype: str, quant: str) -> str:
    import torch

    return f"{model_id}|{device_description(device)}|{dtype}|{quant}|torch-{torch.__version__}"


def read_cache(path: Path) -> dict[str, Rates]:
    """Entries of a valid cache file; {} for a missing, foreign, old or malformed one."""
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            logger.warning("throughput cache %s is too large; ignoring it", path)
            return {}
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("throughput cache %s is unreadable (%s); ignoring it", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
        logger.info("throughput cache %s has another format or version; it will be rewritten", path)
        return {}
    entries = {}
    for key, value in (data.get("entries") or {}).items() if isinstance(data.get("entries"), dict) else ():
        try:
            rates = Rates(float(value["inference_rps"]), float(value["forward_rps"]))
        except (TypeError, KeyError, ValueError):
            continue
        if rates.inference_rps > 0 and rates.forward_rps > 0:
            entries[key] = rates
    return entries


def write_cache(path: Path, key: str, rates: Rates) -> None:
    entries = read_cache(path)
    entries[key] = rates
    data = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION,
        "entries": {k: {"inference_rps": r.inference_rps, "forward_rps": r.forward_rps} for k, r in entries.items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(data, tmp, indent=1, sort_keys=True)
        os.replace(tmp.name, path)  # atomic: two servers starting at once never see half a file
    except OSError as exc:
        logger.warning("cannot write throughput cache %s: %s", path, exc)


def measure_rates(span, *, inference_steps: Optional[int] = None, forward_tokens: Optional[int] = None,
                  progress: Callable[[str], None] = logger.info) -> Rates:
    """Time one block: decoding steps with a growing cache, then a forward pass on a long batch."""
    import torch

    on_gpu = span.device.type == "cuda"
    inference_steps = inference_steps or (64 if on_gpu else 16)
    forward_tokens = forward_tokens or (1024 if on_gpu else 128)
    hidden_size = span.hidden_size
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def noise(seq: int):
        return (torch.randn(1, seq, hidden_size, generator=gen) * 0.1).to(device=span.device, dtype=span.dtype)

    with torch.inference_mode():
        cache = span.new_cache(1, inference_steps + 2)  # sized as sessions are: decode graphs apply
        for _ in range(2):  # warm-up: kernels, allocator, and the decode graph's capture
            span.inference_step(noise(1), cache)
        sync()
        tokens = [noise(1) for _ in range(inference_steps)]
        started = time.perf_counter()
        for i, token in enumerate(tokens):
            span.inference_step(token, cache)
            if (i + 1) % max(1, inference_steps // 4) == 0:
                progress(f"measuring throughput: inference {i + 1}/{inference_steps} steps")
        sync()
        inference_rps = inference_steps / (time.perf_counter() - started)

        batch = noise(forward_tokens)
        span.forward(batch[:, : min(16, forward_tokens)])  # warm-up
        sync()
        repeats = 3
        started = time.perf_counter()
        for i in range(repeats):
            span.forward(batch)
            progress(f"measuring throughput: forward {i + 1}/{repeats} batches of {forward_tokens} tokens")
        sync()
        forward_rps = repeats * forward_tokens / (time.perf_counter() - started)
    return Rates(inference_rps=inference_rps, forward_rps=forward_rps)


def get_rates(model_id: str, device: str, dtype: str, quant: str, load_one_block: Callable[[], object],
              cache_path: Optional[Path] = None) -> Rates:
    """Rates from the cache file, or measured on `load_one_block()` and cached."""
    path = Path(cache_path) if cache_path else default_cache_path()
    key = cache_key(model_id, device, dtype, quant)
    cached = read_cache(path).get(key)
    if cached is not None:
        logger.info("throughput from cache %s: %.1f inference steps/s, %.0f forward tokens/s per block",
                    path, cached.inference_rps, cached.forward_rps)
        return cached
    logger.info("measuring throughput of one block (%s, %s, quant=%s) ...", device, dtype, quant)
    span = load_one_block()
    rates = measure_rates(span)
    del span
    logger.info("measured %.1f inference steps/s, %.0f forward tokens/s per block; caching in %s",
                rates.inference_rps, rates.forward_rps, path)
    write_cache(path, key, rates)
    return rates
