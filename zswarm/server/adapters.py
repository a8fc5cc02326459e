"""The LoRA adapters a server serves (--adapters): checked once at start, put on every span it loads.

Checking happens before the server joins the swarm, so a bad adapter stops the start with one
line that says what is wrong. Each span the server loads (at start, and after a move) gets the
adapters' tensors for its own blocks only. Requests name an adapter in their meta; the handlers
run their computation inside `zswarm.models.lora.using_adapter(name)`.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from zswarm.models.errors import AdapterError
from zswarm.models.lora import add_lora
from zswarm.models.lora_checkpoint import LoraAdapter, open_lora_adapter

logger = logging.getLogger(__name__)

# The names travel in our DHT record, which must fit one ~3.9 KB DHT value beside the rest of it
# (up to ~1.4 KB with 16 next_pings and the longest model id and public name); records from
# other servers with more than 64 adapters are refused by dht/records.py.
MAX_ADAPTERS = 64
MAX_NAME_BYTES_TOTAL = 2000


def open_adapters(refs: Sequence[str], source) -> list[LoraAdapter]:
    """Check every adapter against the model; AdapterError (one line) for the first bad one."""
    adapters: list[LoraAdapter] = []
    for ref in refs:
        adapter = open_lora_adapter(ref, source)
        if any(a.name == adapter.name for a in adapters):
            raise AdapterError(f"two adapters are named {adapter.name!r} (names are directory names or hub ids); "
                               f"rename one directory")
        adapters.append(adapter)
    total = sum(len(a.name.encode()) + 2 for a in adapters)
    if len(adapters) > MAX_ADAPTERS or total > MAX_NAME_BYTES_TOTAL:
        raise AdapterError(f"{len(adapters)} adapters with {total} bytes of names do not fit this server's DHT record "
                           f"(at most {MAX_ADAPTERS} adapters, {MAX_NAME_BYTES_TOTAL} bytes of names); serve fewer, "
                           f"or give their directories shorter names")
    return adapters


def attach_adapters(span, adapters: Sequence[LoraAdapter]) -> None:
    """Load each adapter's tensors for the span's blocks (span dtype and device) and add them."""
    for adapter in adapters:
        began = time.monotonic()
        deltas = adapter.load(span.start, span.end, dtype=span.dtype, device=span.device)
        layers = add_lora(span, adapter.name, deltas)
        size = sum(d.A.numel() + d.B.numel() for modules in deltas.values() for d in modules.values())
        logger.info("adapter %s: %s; %d layers, %.2f MB, loaded in %.1fs from %s", adapter.name,
                    adapter.describe(span.start, span.end), layers, size * span.dtype.itemsize / 1e6,
                    time.monotonic() - began, adapter.where)
