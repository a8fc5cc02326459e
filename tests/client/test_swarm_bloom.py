"""Proof on real processes for a second family: the tiny BLOOM (ALiBi positions, fused QKV, tied
head). Servers x 0-2, y 2-4, z and z2 4-6 (replicas) as zswarm-server processes on loopback."""
import pytest
import torch
from transformers import StoppingCriteriaList

from conftest import AtStep, local_swarm
from zswarm import AutoDistributedModelForCausalLM

PROMPT = torch.tensor([[3, 14, 15, 92, 65]])


@pytest.fixture(scope="module")
def bloom_reference(tiny_bloom_dir):
    from zswarm.models.testing import load_reference_model

    return load_reference_model(tiny_bloom_dir)


@pytest.fixture(scope="module")
def swarm(tiny_bloom_dir, tmp_path_factory):
    with local_swarm(tiny_bloom_dir, tmp_path_factory.mktemp("bloom-swarm"), ("x", 0, 2), ("y", 2, 4), ("z", 4, 6),
                     ("z2", 4, 6)) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def model(swarm, tiny_bloom_dir):
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_bloom_dir), initial_peers=swarm.initial_peers, wire_dtype="float32", ping_timeout=1.0,
        liveness_interval_s=0.5, max_retries=3, retry_backoff_s=0.1)
    yield model
    model.close()


def test_bloom_greedy_through_three_servers_equals_local_generate(model, bloom_reference):
    with model.inference_session(max_length=32) as session:
        out = model.generate(PROMPT, max_new_tokens=14, session=session)
        assert [(s.start, s.end) for s in session.spans] == [(0, 2), (2, 4), (4, 6)]
    assert torch.equal(out, bloom_reference.generate(PROMPT, max_new_tokens=14))


def test_bloom_kill_9_of_a_server_with_a_replica_mid_generation_gives_identical_tokens(model, swarm, bloom_reference):
    with model.inference_session(max_length=32) as session:
        first = model.generate(PROMPT, max_new_tokens=2, session=session)
        victim = next(s for s in swarm.servers.values() if s.peer_id == session.spans[-1].peer_id)
        more = model.generate(None, max_new_tokens=12, session=session,
                              stopping_criteria=StoppingCriteriaList([AtStep(6, lambda: swarm.kill(victim))]))
        assert not victim.alive and session.failovers >= 1
    assert torch.equal(torch.cat([first, more], dim=1), bloom_reference.generate(PROMPT, max_new_tokens=14))
