"""Server records in the DHT: which server serves which blocks of which model.

Keys (one entry per server under each, signed by that server):
    zswarm/v1/<model_id>/block/<i>   -> ServerRecord of every server holding block i
    zswarm/v1/models                 -> {model_id, num_blocks} of every server: the model index

The record itself is zswarm.swarm_info's `ServerRecord`; dht/ only stores signed, expiring
entries and knows nothing of what is in them. A record is only believed when its peer_id is
that of the key that signed it, and when it was found under a block it says it serves.
"""

from __future__ import annotations

import logging
import time

import msgpack

from dht.log_once import LogOnce
from zswarm.blocks import format_blocks
from zswarm.errors import RecordError
from zswarm.swarm_info import MAX_BLOCKS, RECORD_VERSION, ServerRecord, check_int, check_str

__all__ = ["MODELS_KEY", "block_key", "announce_blocks", "aannounce_blocks", "fetch_block_servers",
           "afetch_block_servers", "list_models", "alist_models"]

log = logging.getLogger(__name__)
_log_once = LogOnce(log)

MODELS_KEY = "zswarm/v1/models"


def block_key(model_id: str, block: int) -> str:
    return f"zswarm/v1/{model_id}/block/{block}"


def _check_range(start: int, end: int) -> None:
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= MAX_BLOCKS):
        raise ValueError(f"block range {format_blocks(start, end)} is empty or out of range")


def _announcement(record: ServerRecord, ttl: float, num_blocks: int | None):
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    _check_range(record.start, record.end)
    value = record.to_bytes()
    items = {block_key(record.model_id, i): value for i in range(record.start, record.end)}
    items[MODELS_KEY] = msgpack.packb({"v": RECORD_VERSION, "m": record.model_id, "nb": num_blocks})
    return items, time.time() + ttl


def announce_blocks(node, record: ServerRecord, ttl: float, *, num_blocks: int | None = None) -> bool:
    """Publish `record` under each of its blocks and in the model index, expiring after `ttl`
    seconds. True when every key was accepted by at least one holder."""
    items, expiration = _announcement(record, ttl, num_blocks)
    return all(node.store_many(items, expiration).values())


async def aannounce_blocks(node, record: ServerRecord, ttl: float, *, num_blocks: int | None = None) -> bool:
    items, expiration = _announcement(record, ttl, num_blocks)
    return all((await node.astore_many(items, expiration)).values())


def _parse_block(model_id: str, block: int, entries, parsed: dict) -> dict[str, ServerRecord]:
    """`parsed` memoizes records by their bytes within one fetch: a server announces the same
    record under each of its blocks, so 80 blocks x 6 servers are 6 parses, not 480."""
    out = {}
    for peer_id, entry in entries.items():
        try:
            record = parsed.get(entry.value)
            if record is None:
                record = parsed[entry.value] = ServerRecord.from_bytes(entry.value)
            if record.peer_id != peer_id:
                raise RecordError(f"record claims peer {record.peer_id!r} but is signed by {peer_id!r}")
            if record.model_id != model_id or not record.start <= block < record.end:
                raise RecordError(f"record for {record.model_id}[{format_blocks(record.start, record.end)}] "
                                  f"under block {block} of {model_id}")
        except RecordError as exc:
            _log_once(peer_id, "server record", str(exc))
            continue
        out[peer_id] = record
    return out


def fetch_block_servers(node, model_id: str, start: int, end: int) -> list[dict[str, ServerRecord]]:
    """Servers of each block in [start, end), one dict per block in order, in one concurrent
    lookup. Expired entries and records that fail validation are left out. A server's record is
    the same object in every block it serves (treat records as read-only)."""
    _check_range(start, end)
    keys = [block_key(model_id, i) for i in range(start, end)]
    found = node.get_many(keys)
    parsed: dict = {}
    return [_parse_block(model_id, start + j, found[k], parsed) for j, k in enumerate(keys)]


async def afetch_block_servers(node, model_id: str, start: int, end: int) -> list[dict[str, ServerRecord]]:
    _check_range(start, end)
    keys = [block_key(model_id, i) for i in range(start, end)]
    found = await node.aget_many(keys)
    parsed: dict = {}
    return [_parse_block(model_id, start + j, found[k], parsed) for j, k in enumerate(keys)]


def _parse_models(entries) -> dict[str, int | None]:
    models: dict[str, int | None] = {}
    for peer_id, entry in entries.items():
        try:
            raw = msgpack.unpackb(entry.value, raw=False, max_map_len=16, max_array_len=0, max_ext_len=0)
            if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
                raise RecordError("model index entry has the wrong version or shape")
            model_id = check_str("model_id", raw.get("m"))
            nb = raw.get("nb")
            if nb is not None:
                nb = check_int("num_blocks", nb)
        except (RecordError, ValueError, TypeError, msgpack.UnpackException) as exc:
            _log_once(peer_id, "model index entry", str(exc))
            continue
        known = models.get(model_id)
        models[model_id] = nb if known is None else known if nb is None else max(known, nb)
    return models


def list_models(node) -> dict[str, int | None]:
    """Models some live server announced, with their block count where a server gave it."""
    return _parse_models(node.get(MODELS_KEY))


async def alist_models(node) -> dict[str, int | None]:
    return _parse_models(await node.aget(MODELS_KEY))
