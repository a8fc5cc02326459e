"""zswarm.client: run a model whose blocks live in the swarm.

    from zswarm import AutoDistributedModelForCausalLM
    model = AutoDistributedModelForCausalLM.from_pretrained(MODEL, initial_peers=["host:port"])
    with model.inference_session(max_length=512) as session:
        out = model.generate(ids, max_new_tokens=64, session=session)

Modules: config (ClientConfig), bans, sequence_manager (DHT view, pings, routes), failures,
inference_session (steps with failover and replay), remote_sequential (forward/backward with
autograd), remote_cache (the transformers Cache of a session), swarm (loop, transport, DHT),
model (the transformers model class).
"""
from zswarm.client.config import ClientConfig
from zswarm.client.inference_session import InferenceSession
from zswarm.client.model import AutoDistributedModelForCausalLM
from zswarm.client.remote_sequential import RemoteSequential

__all__ = ["AutoDistributedModelForCausalLM", "ClientConfig", "InferenceSession", "RemoteSequential"]
