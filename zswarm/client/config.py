"""`ClientConfig`: every knob of the client, with its default, in one place.

`AutoDistributedModelForCausalLM.from_pretrained(MODEL, initial_peers=[...], **fields)` fills it
from keyword arguments; nothing else writes a default (Petals' class and CLI defaults drifted).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dht.errors import AddressError
from dht.node import parse_address
from zswarm.defaults import HOP_OVERHEAD_S, NO_CACHE_PENALTY_S, SPOT_CHECK_RATE, UNKNOWN_RTT_S
from zswarm.errors import ConfigError

WIRE_DTYPES = ("auto", "float16", "bfloat16", "float32")
TUNING_MODES = (None, "ptune", "deep_ptune")
RELAYS = ("client", "server")


@dataclass
class ClientConfig:
    # Where to join the swarm: DHT bootstrap addresses "host:port".
    initial_peers: tuple[str, ...] = ()
    # The name the servers announce the model under (the DHT key prefix). None: the resolved
    # model's own `model_id` (a local directory's name, or the hub id).
    model_id: str | None = None

    # Also talk to servers that announce no CURVE key (their --insecure-plaintext), in clear:
    # hidden states, tokens' traces and session ids readable and forgeable on the way. Servers
    # that announce a key are always dialled with it. For benchmarks and tests only.
    insecure_plaintext: bool = False

    # Hidden states on the wire. "auto": the model's own dtype (float32 when its config names
    # none), so the swarm's greedy output is local HF's; "float16" halves the bytes of a float32
    # model at the cost of rounding between servers. The model's `wire_dtype` attribute (and an
    # INFO log line when it loads) says which one a session uses.
    wire_dtype: str = "auto"

    # Seconds to wait for one inference step of one span. Past it the server counts as failed:
    # the session bans it, reroutes and replays; so it bounds how long a dead server stalls us.
    step_timeout: float = 30.0
    # Seconds for open_session, forward, backward and a replay of the session's history.
    request_timeout: float = 60.0
    # Seconds for a ping; also the probe that decides whether a banned last server is back.
    ping_timeout: float = 3.0
    # While waiting for a reply longer than this, ping the server every this many seconds; one
    # missed ping (ping_timeout) fails the request at once: how fast a kill -9 is noticed.
    liveness_interval_s: float = 1.0
    # Seconds a server may make us wait for cache room when a session opens (sent to it).
    cache_wait_timeout: float = 1.0

    # Most tokens (batch x sequence) one request carries: longer prefills, replays and forward
    # batches are split. Below the servers' own cap (their --max-request-tokens, 8192 by default).
    max_request_tokens: int = 4096

    # Retry budget: failed attempts in a row at one operation (a step, a forward of one span)
    # before the client gives up with NoRouteError. Each failure bans the server it blamed.
    max_retries: int = 5
    # Ban of a failing server: ban_base_s, doubled on each failure in a row, at most ban_max_s.
    ban_base_s: float = 1.0
    ban_max_s: float = 60.0
    # Sleep before a retry whose route can only use a just-failed server (the last one of its
    # blocks): min(retry_backoff_s * 2**(attempt - 1), ban_max_s), so retries do not spin.
    retry_backoff_s: float = 0.25

    # Background refresh of the DHT records and of the client->server RTTs, in seconds.
    refresh_period_s: float = 30.0

    # Who carries a decode step's hidden states from one server of the route to the next:
    # "client" (each span is a call from the client: one client round trip per server) or
    # "server" (servers push the step on to each other, the client gets every span's output
    # back beside it: about (servers + 1) / 2 client round trips a token). Steps that replay
    # history, reorder beams or carry deep prompts go through the client either way.
    relay: str = "client"

    # Routing: the extra seconds per token one more hop costs beyond its RTT (serialisation,
    # queueing), and the penalty for a server that said it has no cache room.
    hop_overhead_s: float = HOP_OVERHEAD_S
    no_cache_penalty_s: float = NO_CACHE_PENALTY_S
    # RTT assumed for a server not pinged yet (seconds): far rather than near.
    unknown_rtt_s: float = UNKNOWN_RTT_S

    # Verification of results (zswarm.client.verification): the fraction of each route span's
    # steps recomputed on a replica holding the same blocks and compared (0: none). A server
    # whose outputs differ is distrusted for the rest of this connection and reported.
    spot_check_rate: float = SPOT_CHECK_RATE
    # Where reports of lying servers are appended, one JSON object a line (`zswarm-inspect
    # reports PATH` shows them); None: only logged and kept in memory (SequenceManager.reports).
    report_path: str | None = None

    # Only these peer ids (None: any), never these.
    allowed_servers: tuple[str, ...] | None = None
    blocked_servers: tuple[str, ...] = ()
    # Log the chosen route at INFO (one line per route); DEBUG otherwise.
    show_route: bool = True

    # Prompt tuning (Petals' "ptune" / "deep_ptune"): None, or "ptune" for `pre_seq_len` trainable
    # prompt embeddings prepended to the input on the client, or "deep_ptune" for those plus
    # trainable per-block prompts that travel with each request. Server weights never change.
    tuning_mode: str | None = None
    pre_seq_len: int = 16

    # A server-side LoRA adapter to run every request with (None: the base model). Sent as the
    # meta "adapter" of each request; routes use only servers whose record lists it.
    active_adapter: str | None = None

    def __post_init__(self):
        if isinstance(self.initial_peers, str):  # one address, not its characters
            self.initial_peers = (self.initial_peers,)
        self.initial_peers = tuple(self.initial_peers)
        for peer in self.initial_peers:
            try:
                parse_address(peer)
            except AddressError as exc:
                raise ConfigError(f"initial_peers: {exc}") from None
        self.blocked_servers = tuple(self.blocked_servers)
        if self.allowed_servers is not None:
            self.allowed_servers = tuple(self.allowed_servers)
        if self.wire_dtype not in WIRE_DTYPES:
            raise ConfigError(f"wire_dtype must be one of {WIRE_DTYPES}, not {self.wire_dtype!r}")
        if self.active_adapter is not None and (not isinstance(self.active_adapter, str) or not self.active_adapter):
            raise ConfigError(f"active_adapter must be a non-empty adapter name or None, not {self.active_adapter!r}")
        if self.relay not in RELAYS:
            raise ConfigError(f"relay must be one of {RELAYS}, not {self.relay!r}")
        if self.tuning_mode not in TUNING_MODES:
            raise ConfigError(f"tuning_mode must be one of {TUNING_MODES}, not {self.tuning_mode!r}")
        if isinstance(self.pre_seq_len, bool) or not isinstance(self.pre_seq_len, int) or self.pre_seq_len < 1:
            raise ConfigError(f"pre_seq_len must be a positive int (prompt tokens), not {self.pre_seq_len!r}")
        if self.max_request_tokens < 1:
            raise ConfigError("max_request_tokens must be at least 1")
        if not 0.0 <= self.spot_check_rate <= 1.0:
            raise ConfigError(f"spot_check_rate must be within [0, 1], not {self.spot_check_rate!r}")
        if self.max_retries < 0:
            raise ConfigError("max_retries must be >= 0")
        for name in ("step_timeout", "request_timeout", "ping_timeout", "liveness_interval_s", "refresh_period_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> tuple["ClientConfig", dict]:
        """Split `kwargs` into a ClientConfig (its fields) and the rest, untouched."""
        names = {f.name for f in dataclasses.fields(cls)}
        mine = {k: kwargs[k] for k in kwargs if k in names}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        return cls(**mine), rest
