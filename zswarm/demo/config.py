"""DemoConfig: everything zswarm-demo can be told, with its defaults written once, here."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from zswarm.defaults import DEFAULT_MODEL_ID as DEFAULT_MODEL
from zswarm.errors import DemoError  # noqa: F401  (imported from here by the demo)

EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class DemoConfig:
    """Everything zswarm-demo can be told; the CLI parses into this and writes no default itself."""

    prompt: str | None = None  # one question; without one (or with --interactive) a conversation starts
    interactive: bool = False  # a prompt loop in one inference session; an empty line ends it
    model: str = DEFAULT_MODEL  # local checkpoint dir, hub id, or the embedded default
    servers: int = 3  # server processes; the blocks are split evenly between them
    max_new_tokens: int = 128  # longest reply, in tokens
    max_length: int = 2048  # tokens one conversation may hold (--interactive)
    temperature: float = 0.0  # 0: greedy (the same answer every time); above 0: sampling with top-p 0.9
    port: int = 0  # base port: bootstrap DHT (UDP) on it, server i on port+1+i (TCP and UDP); 0: free ports
    device: str = "cpu"  # the servers' device: cpu | cuda | auto
    dtype: str = "float32"  # the servers' weights; float32 is faster than bfloat16 on most CPUs
    threads_per_server: int = 1  # torch threads per server: one token at a time uses one core well
    startup_timeout: float = 300.0  # seconds for all servers to come online
    stop_timeout: float = 20.0  # seconds a server gets to leave cleanly before it is killed
    workdir: str | None = None  # where logs and keys go (kept); default a temporary dir, removed at exit
    verbose: bool = False  # show the client's and the DHT's log lines

    def __post_init__(self):
        if self.servers < 1:
            raise ValueError("--servers must be at least 1")
        if self.max_new_tokens < 1 or self.max_length < 2:
            raise ValueError("--max-new-tokens must be at least 1 and --max-length at least 2")
        if not 0 <= self.port <= 65535 - self.servers - 1:
            raise ValueError(f"--port must leave room for {self.servers + 1} ports below 65536")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")
        from zswarm.server.config import DEVICES, DTYPES

        if self.device not in DEVICES or self.dtype not in DTYPES:
            raise ValueError(f"--device must be one of {', '.join(DEVICES)} and --dtype one of {', '.join(DTYPES)}")


def say(text: str) -> None:
    """A progress line (stderr, so stdout holds only the conversation)."""
    print(f"zswarm-demo: {text}", file=sys.stderr, flush=True)
