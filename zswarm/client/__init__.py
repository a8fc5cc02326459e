"""zswarm.client: run a model whose blocks live in the swarm.

    from zswarm import AutoDistributedModelForCausalLM
    model = AutoDistributedModelForCausalLM.from_pretrained(MODEL, initial_peers=["host:port"])
    with model.inference_session(max_length=512) as session:
        out = model.generate(ids, max_new_tokens=64, session=session)

Fine-tuning: `from_pretrained(..., tuning_mode="ptune" | "deep_ptune", pre_seq_len=16)` makes
client-side prompts trainable (ptune); AutoDistributedModelForSequenceClassification adds a
trainable head (classification).

Modules: config (ClientConfig), bans, sequence_manager (DHT view, pings, routes), failures,
inference_session (steps with failover and replay), remote_sequential (forward/backward with
autograd, deep prompts, row groups over replicas), remote_cache (the transformers Cache of a
session), swarm (loop, transport, DHT), base (what the model classes share), model (the causal
LM class), classification, ptune (the trainable prompts).
"""
from zswarm.client.classification import AutoDistributedModelForSequenceClassification
from zswarm.client.config import ClientConfig
from zswarm.client.inference_session import InferenceSession
from zswarm.client.model import AutoDistributedModelForCausalLM
from zswarm.client.remote_sequential import RemoteSequential

__all__ = ["AutoDistributedModelForCausalLM", "AutoDistributedModelForSequenceClassification", "ClientConfig",
           "InferenceSession", "RemoteSequential"]
