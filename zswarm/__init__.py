"""zswarm: large language models split across a swarm of servers.

    from zswarm import AutoDistributedModelForCausalLM
    model = AutoDistributedModelForCausalLM.from_pretrained(MODEL, initial_peers=["host:port"])
"""

__version__ = "0.1.0"

from zswarm.errors import NoRouteError, ServerError, SessionClosedError, SessionLengthError, ZswarmError

__all__ = [
    "AutoDistributedModelForCausalLM",
    "AutoDistributedModelForSequenceClassification",
    "ClientConfig",
    "NoRouteError",
    "ServerError",
    "SessionClosedError",
    "SessionLengthError",
    "ZswarmError",
]


def __getattr__(name):
    # The client pulls in transformers' model classes; servers and tools that only need
    # `zswarm.errors` or `zswarm.models` should not pay for that import.
    if name in ("AutoDistributedModelForCausalLM", "AutoDistributedModelForSequenceClassification", "ClientConfig"):
        import zswarm.client

        return getattr(zswarm.client, name)
    raise AttributeError(f"module 'zswarm' has no attribute {name!r}")
