"""The swarm's vocabulary: what a server offers, as one plain type. Pure (no I/O, no network).

`ServerRecord` is "a server" for everyone past the DHT: a server builds one to announce itself
(zswarm.records publishes it under each of its blocks), and a client, zswarm-inspect and the
rebalancer read them back from there. What each of them derives is built from a record in one
place, by field name, never by hand-copying fields:

    ServerRecord ──► zswarm.routing.candidates          -> RouteCandidate  (the client, inspect)
                 ──► zswarm.placement.SwarmView.from_records -> ServerSpan (the rebalancer)
                 ──► zswarm.inspect.views.ServerRow.from_record            (zswarm-inspect)

A record travels as a msgpack map with short keys and a version; fields it does not know are
kept in `extra` and written back unchanged, so newer servers can add fields without breaking
older clients. Announced numbers are validated on the way in (`from_bytes`) and, for data that
did not come that way (the simulator, tests), made usable by `finite_nonneg`: the one place
both are written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import IntEnum

import msgpack

from wire.endpoint import CURVE_MARK, KEY_BYTES, endpoint
from zswarm.blocks import format_blocks
from zswarm.errors import RecordError

__all__ = ["ServerState", "ServerRecord", "RECORD_VERSION", "MAX_BLOCKS", "finite_nonneg", "live_records"]

RECORD_VERSION = 1
MAX_BLOCKS = 1 << 16  # more blocks than any model has; bounds the keys one call may touch
_MAX_STR = 256
_MAX_ITEMS = 64


class ServerState(IntEnum):
    OFFLINE = 0
    JOINING = 1
    ONLINE = 2


def finite_nonneg(value, fallback: float) -> float:
    """An announced number as a usable one: `value` as a float when it is finite and >= 0, else
    `fallback` (NaN, inf, negative, not a number)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return fallback
    return value if math.isfinite(value) and value >= 0 else fallback


@dataclass
class ServerRecord:
    """One server: its blocks [start, end), how fast it is, its cache room, its adapters, where it
    listens, its state and versions, as it announced them."""

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
    started_at: float = 0.0  # unix time the server process started (uptime = now - this); 0: not announced
    # Its CURVE public key (32 bytes; b"" for an --insecure-plaintext server). Signed with the rest
    # of the record by the peer's identity, so only that peer can say which key answers for it.
    curve_key: bytes = b""
    extra: dict = field(default_factory=dict)  # fields this version does not know, kept verbatim

    @property
    def endpoint(self) -> str:
        """What a client dials: `address` naming `curve_key` (wire.curve), so that only the holder
        of the announced key can answer there."""
        return endpoint(self.address, self.curve_key)

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
            raise RecordError(f"bad block range {format_blocks(record.start, record.end)}")
        return record


def live_records(blocks, exclude: str | None = None) -> dict[str, ServerRecord]:
    """One record per server that is not OFFLINE, from per-block {peer_id: record} dicts (the
    first one seen wins), leaving out `exclude`."""
    servers: dict[str, ServerRecord] = {}
    for per_block in blocks:
        for peer_id, record in per_block.items():
            if peer_id != exclude and record.state != ServerState.OFFLINE:
                servers.setdefault(peer_id, record)
    return servers


# ---- validation of what a record announces ------------------------------------------------------

def check_str(name, v):
    if not isinstance(v, str) or len(v) > _MAX_STR:
        raise RecordError(f"{name} must be a string of at most {_MAX_STR} characters")
    return v


def check_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RecordError(f"{name} must be a non-negative integer")
    return v


def _float(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or finite_nonneg(v, -1.0) < 0:
        raise RecordError(f"{name} must be a finite non-negative number")
    return float(v)


def _state(name, v):
    try:
        return ServerState(check_int(name, v))
    except ValueError:
        raise RecordError(f"unknown server state {v!r}") from None


def _adapters(name, v):
    if not isinstance(v, list) or len(v) > _MAX_ITEMS:
        raise RecordError(f"{name} must be a list of at most {_MAX_ITEMS} names")
    return tuple(check_str(name, a) for a in v)


def _address(name, v):
    # the key of an endpoint comes from curve_key alone: an address may not bring one of its own
    if CURVE_MARK in check_str(name, v):
        raise RecordError(f"{name} must be tcp://host:port, without {CURVE_MARK!r}")
    return v


def _curve_key(name, v):
    if not isinstance(v, bytes) or len(v) not in (0, KEY_BYTES):
        raise RecordError(f"{name} must be {KEY_BYTES} bytes (or empty: a plaintext server)")
    return v


def _pings(name, v):
    if not isinstance(v, dict) or len(v) > _MAX_ITEMS:
        raise RecordError(f"{name} must be a map of at most {_MAX_ITEMS} peers")
    return {check_str(name, k): _float(name, x) for k, x in v.items()}


# (field, wire key, validator): short keys keep 30 records of one block inside one datagram.
_WIRE = [
    ("peer_id", "p", check_str), ("address", "a", _address), ("model_id", "m", check_str),
    ("start", "s", check_int), ("end", "e", check_int), ("state", "st", _state),
    ("throughput", "tp", _float), ("inference_rps", "ir", _float), ("forward_rps", "fr", _float),
    ("dtype", "dt", check_str), ("quant", "q", check_str), ("cache_tokens_left", "ct", check_int),
    ("adapters", "ad", _adapters), ("version", "ver", check_str), ("public_name", "n", check_str),
    ("next_pings", "np", _pings), ("started_at", "t0", _float), ("curve_key", "ck", _curve_key),
]
_REQUIRED = {"peer_id", "address", "model_id", "start", "end"}
assert [n for n, _, _ in _WIRE] == [f.name for f in fields(ServerRecord)][:-1]
