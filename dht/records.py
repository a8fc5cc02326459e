"""The swarm's vocabulary on top of the DHT: which server serves which blocks of which model.

Keys (one entry per server under each, signed by that server):
    zswarm/v1/<model_id>/block/<i>   -> ServerRecord of every server holding block i
    zswarm/v1/models                 -> {model_id, num_blocks} of every server: the model index

A ServerRecord travels as a msgpack map with short keys and a version; fields it does not know
are kept in `extra` and written back unchanged, so newer servers can add fields without breaking
older clients. A record is only believed when its peer_id is that of the key that signed it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields
from enum import IntEnum

import msgpack

from dht.errors import RecordError
from dht.protocol import LogOnce

log = logging.getLogger(__name__)
_log_once = LogOnce(log)

RECORD_VERSION = 1
MODELS_KEY = "zswarm/v1/models"
MAX_BLOCKS = 1 << 16  # more blocks than any model has; bounds the keys one call may touch
_MAX_STR = 256
_MAX_ITEMS = 64


class ServerState(IntEnum):
    OFFLINE = 0
    JOINING = 1
    ONLINE = 2


@dataclass
class ServerRecord:
    peer_id: str
    address: str  # "tcp://host:port" of the server's RpcServer
    model_id: str
    start: int  # blocks [start, end)
    end: int
    state: ServerState = ServerState.ONLINE
    throughput: float = 0.0  # tokens/s the whole server can do (Petals' sense)
    inference_rps: float = 0.0  # per-block single-token inference steps/s
    forward_rps: float = 0.0  # per-block forward tokens/s on long batches
    dtype: str = "float16"
    quant: str = "none"  # "none" | "int8" | "nf4"
    cache_tokens_left: int = 0
    adapters: tuple[str, ...] = ()
    version: str = ""
    public_name: str = ""
    next_pings: dict[str, float] = field(default_factory=dict)  # peer_id -> RTT s to servers of block `end`
    extra: dict = field(default_factory=dict)  # fields this version does not know, kept verbatim

    def to_bytes(self) -> bytes:
        data = dict(self.extra)
        data["v"] = RECORD_VERSION
        for name, short, _ in _WIRE:
            value = getattr(self, name)
            data[short] = int(value) if name == "state" else list(value) if name == "adapters" else value
        return msgpack.packb(data, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ServerRecord":
        """Parse and validate; raises RecordError on the wrong schema or version."""
        try:
            raw = msgpack.unpackb(data, raw=False, max_map_len=256, max_array_len=256, max_ext_len=0)
        except Exception as exc:  # msgpack raises several unrelated types on junk
            raise RecordError(f"record is not valid msgpack ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise RecordError("record is not a map")
        if raw.get("v") != RECORD_VERSION:
            raise RecordError(f"record version {raw.get('v')!r} is not {RECORD_VERSION}")
        kwargs = {}
        for name, short, check in _WIRE:
            if short in raw:
                kwargs[name] = check(name, raw[short])
            elif name in _REQUIRED:
                raise RecordError(f"record lacks {name}")
        known = {short for _, short, _ in _WIRE} | {"v"}
        kwargs["extra"] = {k: v for k, v in raw.items() if k not in known}
        record = cls(**kwargs)
        if not record.start < record.end <= MAX_BLOCKS:
            raise RecordError(f"bad block range [{record.start}, {record.end})")
        return record


def _str(name, v):
    if not isinstance(v, str) or len(v) > _MAX_STR:
        raise RecordError(f"{name} must be a string of at most {_MAX_STR} characters")
    return v


def _int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RecordError(f"{name} must be a non-negative integer")
    return v


def _float(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise RecordError(f"{name} must be a finite non-negative number")
    return float(v)


def _state(name, v):
    try:
        return ServerState(_int(name, v))
    except ValueError:
        raise RecordError(f"unknown server state {v!r}") from None


def _adapters(name, v):
    if not isinstance(v, list) or len(v) > _MAX_ITEMS:
        raise RecordError(f"{name} must be a list of at most {_MAX_ITEMS} names")
    return tuple(_str(name, a) for a in v)


def _pings(name, v):
    if not isinstance(v, dict) or len(v) > _MAX_ITEMS:
        raise RecordError(f"{name} must be a map of at most {_MAX_ITEMS} peers")
    return {_str(name, k): _float(name, x) for k, x in v.items()}


# (field, wire key, validator): short keys keep 30 records of one block inside one datagram.
_WIRE = [
    ("peer_id", "p", _str), ("address", "a", _str), ("model_id", "m", _str),
    ("start", "s", _int), ("end", "e", _int), ("state", "st", _state),
    ("throughput", "tp", _float), ("inference_rps", "ir", _float), ("forward_rps", "fr", _float),
    ("dtype", "dt", _str), ("quant", "q", _str), ("cache_tokens_left", "ct", _int),
    ("adapters", "ad", _adapters), ("version", "ver", _str), ("public_name", "n", _str),
    ("next_pings", "np", _pings),
]
_REQUIRED = {"peer_id", "address", "model_id", "start", "end"}
assert [n for n, _, _ in _WIRE] == [f.name for f in fields(ServerRecord)][:-1]


def block_key(model_id: str, block: int) -> str:
    return f"zswarm/v1/{model_id}/block/{block}"


def _check_range(start: int, end: int) -> None:
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= MAX_BLOCKS):
        raise ValueError(f"block range [{start}, {end}) is empty or out of range")


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
                raise RecordError(f"record for {record.model_id}[{record.start}:{record.end}] under block {block} of {model_id}")
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
            model_id = _str("model_id", raw.get("m"))
            nb = raw.get("nb")
            if nb is not None:
                nb = _int("num_blocks", nb)
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
