"""`ApiConfig`: every knob of zswarm-api, with its default, in one place. The CLI only parses into
it; each flag's help is the comment beside its field (zswarm.field_help)."""
from __future__ import annotations

from dataclasses import dataclass, field

from zswarm.defaults import HEALTH_REFRESH_S, REPORT_CACHE_S

# The client keeps each model's embeddings and LM head here and runs its blocks in the swarm; a
# request's `model` is the id servers announce (a directory's name, or the hub id).


@dataclass
class ApiConfig:
    models: tuple[str, ...] = ()  # models to answer for: local checkpoint dirs or hub ids, with their tokenizers
    initial_peers: tuple[str, ...] = ()  # DHT address HOST:PORT of any node of the swarm
    host: str = "127.0.0.1"  # interface to listen on (0.0.0.0: every one)
    port: int = 8000  # TCP port to listen on (0: a free one, written to --ready-file)
    default_max_tokens: int = 256  # completion tokens when a request gives no max_tokens (clipped to the context)
    max_n: int = 8  # most completions one request may ask for (n); each is a row of one batched session
    max_concurrent: int = 32  # most requests generating at once (each a session in the swarm); more wait
    report_cache_s: float = REPORT_CACHE_S  # seconds a swarm report (health page, /v1/models) is reused
    health_refresh_s: int = HEALTH_REFRESH_S  # the health page reloads itself every this many seconds
    ready_file: str = ""  # write {"url": ...} here once serving (tests and tools wait for it)
    # ClientConfig fields for the models (wire_dtype, step_timeout...): their defaults stay ClientConfig's.
    client: dict = field(default_factory=dict)

    def __post_init__(self):
        self.models = tuple(self.models)
        self.initial_peers = tuple(self.initial_peers)
        for name in ("default_max_tokens", "max_n", "max_concurrent", "health_refresh_s"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.report_cache_s >= 0:
            raise ValueError("report_cache_s must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
