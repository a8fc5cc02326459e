"""`ServerConfig`: every setting of a zswarm server and its default, in one place.

The CLI (`cli.py`) only parses arguments into this dataclass; it never writes a default of its
own, so the two cannot drift apart (Petals' did). Values are checked in `__post_init__`, so a
config that exists is a config the server can run with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from zswarm.blocks import format_blocks
from zswarm.defaults import DEFAULT_MODEL_ID as DEFAULT_MODEL
from zswarm.defaults import CLIENT_CACHE_SHARE, CLIENT_MAX_SESSIONS
from zswarm.defaults import STRATEGIES as PLACEMENTS
from zswarm.errors import ConfigError  # noqa: F401  (raised here, imported from here by many)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float16", "bfloat16", "float32")
QUANTS = ("none", "int8", "nf4")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The fields the RPC handlers enforce on every request (handlers.ServingState holds them).
SERVER_LIMITS = ("max_session_length", "max_batch_size", "max_request_tokens", "prefill_chunk_tokens",
                 "max_wait_timeout")


@dataclass
class ServerConfig:
    """How one zswarm server runs. Field comments are the CLI's help texts."""

    # --- what to serve -------------------------------------------------------------------
    model: str = DEFAULT_MODEL  # local checkpoint dir, hub id, or the embedded default
    num_blocks: Optional[int] = None  # how many blocks to host (chosen by placement); GPU: from free memory
    block_indices: Optional[tuple[int, int]] = None  # host exactly blocks [A, B) ("A:B"); pins the server
    placement: str = "latency"  # block-choice strategy passed to zswarm.placement: latency | petals
    balance_quality: float = 0.75  # move only if the swarm's weakest block would improve past this ratio
    rebalance: Optional[bool] = None  # check periodically whether to move; default: on unless --block-indices
    rebalance_period: float = 120.0  # mean seconds between rebalance checks (randomised +-50%)
    min_move_interval: float = 300.0  # hysteresis: seconds after a move (or start) before moving again
    adapters: tuple[str, ...] = ()  # LoRA adapters to serve (peft format): local dirs or hub ids; clients pick one per request

    # --- network -------------------------------------------------------------------------
    host: str = "127.0.0.1"  # interface the RPC server binds (0.0.0.0 for all)
    port: int = 0  # RPC port; 0 picks a free one
    public_host: Optional[str] = None  # host others reach us at, if not --host
    dht_port: int = 0  # DHT (UDP) port; 0 picks a free one
    initial_peers: tuple[str, ...] = ()  # HOST:PORT of DHT nodes of an existing swarm
    new_swarm: bool = False  # start a new swarm (own DHT) instead of joining one
    identity: Optional[str] = None  # file with this server's key; created if missing (stable peer id and CURVE key)
    insecure_plaintext: bool = False  # no CURVE encryption: serve and ping other servers in clear (benchmarks, tests only)
    public_name: str = ""  # a name shown to others (e.g. a URL or a nickname)
    reachability_check: bool = True  # ask another server to connect back before announcing; not announce while unreachable

    # --- compute -------------------------------------------------------------------------
    device: str = "auto"  # cuda | cpu | auto (cuda when available)
    dtype: str = "auto"  # weights and compute dtype; auto: the checkpoint's (bfloat16 -> float32 on cpu)
    quant: str = "none"  # weight quantization through bitsandbytes (cuda only): none | int8 | nf4
    cuda_graphs: bool = True  # replay one-token decode steps as CUDA graphs (Llama/Mistral/Qwen2 on cuda; not int8)
    throughput: Optional[float] = None  # announce this throughput (tokens/s) instead of measuring
    throughput_cache: Optional[str] = None  # measured-throughput cache file; default $ZSWARM_CACHE/throughput.json

    # --- sessions and limits ---------------------------------------------------------------
    attn_cache_tokens: Optional[int] = None  # KV-cache budget in tokens, all sessions; default: 16384 on GPU (less if free memory is short), 8192 on CPU
    max_session_length: int = 8192  # longest session (tokens, prompt included) a client may open
    max_batch_size: int = 64  # largest batch (beams) of one session or request
    max_request_tokens: int = 8192  # cap on batch x seq of one step, forward or backward
    prefill_chunk_tokens: int = 1024  # long prefills run in chunks of this many tokens per row
    session_idle_timeout: float = 300.0  # seconds an idle session keeps its cache before it expires
    max_wait_timeout: float = 60.0  # longest wait for cache room a client may ask for
    max_client_sessions: int = CLIENT_MAX_SESSIONS  # open sessions one client (connection; IP when remote) may hold
    client_cache_share: float = CLIENT_CACHE_SHARE  # share of the cache one client keeps while others wait (0-1]; beyond it its newest sessions are ended for them

    # --- announcing and lifecycle --------------------------------------------------------
    update_period: float = 60.0  # seconds between announcements in the DHT
    expiration_periods: float = 3.0  # records expire after this many update periods
    drain_timeout: float = 10.0  # seconds to let open sessions finish on shutdown or a move
    metrics_port: Optional[int] = None  # serve Prometheus metrics at http://HOST:PORT/metrics (on --host; 0 picks a port); off when not given
    ready_file: Optional[str] = None  # once serving, write {address, dht_address, peer_id, start, end} here as JSON (rewritten after a move)
    log_level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR

    def __post_init__(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("quant", self.quant, QUANTS)
        _choice("placement", self.placement, PLACEMENTS)
        self.log_level = str(self.log_level).upper()
        _choice("log_level", self.log_level, LOG_LEVELS)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model must be a non-empty string")
        if self.num_blocks is not None and self.block_indices is not None:
            raise ConfigError("give --num-blocks or --block-indices, not both")
        if self.num_blocks is not None:
            _positive_int("num_blocks", self.num_blocks)
        if self.block_indices is not None:
            self.block_indices = tuple(self.block_indices)
            if len(self.block_indices) != 2:
                raise ConfigError(f"block_indices must be (start, end), got {self.block_indices!r}")
            start, end = self.block_indices
            if not (_is_int(start) and _is_int(end)) or not 0 <= start < end:
                raise ConfigError(f"block_indices must satisfy 0 <= start < end, got {format_blocks(start, end)}")
        if self.new_swarm and self.initial_peers:
            raise ConfigError("give --new-swarm or --initial-peers, not both")
        self.initial_peers = tuple(self.initial_peers)
        for peer in self.initial_peers:
            parse_host_port(peer)
        self.adapters = tuple(self.adapters)
        for ref in self.adapters:
            if not isinstance(ref, str) or not ref:
                raise ConfigError(f"each adapter must be a directory or hub id, got {ref!r}")
        if len(set(self.adapters)) != len(self.adapters):
            raise ConfigError(f"an adapter is given twice: {', '.join(self.adapters)}")
        if not 0 < self.balance_quality <= 1:
            raise ConfigError(f"balance_quality must be in (0, 1], got {self.balance_quality}")
        for name in ("port", "dht_port", "metrics_port"):
            value = getattr(self, name)
            if value is None and name == "metrics_port":
                continue
            if not _is_int(value) or not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be a port number 0..65535, got {value!r}")
        if self.throughput is not None and not (math.isfinite(self.throughput) and self.throughput > 0):
            raise ConfigError(f"throughput must be a positive number, got {self.throughput}")
        if self.attn_cache_tokens is not None:
            _positive_int("attn_cache_tokens", self.attn_cache_tokens)
        if not (isinstance(self.client_cache_share, (int, float)) and 0 < self.client_cache_share <= 1):
            raise ConfigError(f"client_cache_share must be in (0, 1], got {self.client_cache_share!r}")
        for name in ("max_session_length", "max_batch_size", "max_request_tokens", "prefill_chunk_tokens",
                     "max_client_sessions"):
            _positive_int(name, getattr(self, name))
        for name in ("rebalance_period", "update_period", "expiration_periods", "session_idle_timeout"):
            _positive_number(name, getattr(self, name))
        for name in ("min_move_interval", "max_wait_timeout", "drain_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.quant != "none" and self.device == "cpu":
            raise ConfigError(f"--quant {self.quant} needs a cuda device (bitsandbytes); got --device cpu")

    @property
    def record_ttl(self) -> float:
        """Seconds a DHT record of ours stays valid: a few update periods."""
        return self.update_period * self.expiration_periods

    @property
    def rebalance_enabled(self) -> bool:
        return (self.block_indices is None) if self.rebalance is None else bool(self.rebalance)

    def replace(self, **changes) -> "ServerConfig":
        return dataclasses.replace(self, **changes)


def parse_host_port(text: str) -> tuple[str, int]:
    """'host:port' -> (host, port), with a clear error for anything else."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive_int(name: str, value) -> None:
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _positive_number(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
