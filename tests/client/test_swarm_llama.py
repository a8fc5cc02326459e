"""Proof on real processes: zswarm-server processes on loopback, a real DHT, the tiny llama.

Servers: a 0-2, b and b2 2-4 (replicas), c 4-6, and two slow spares d 2-3, e 3-6 that the
router avoids until nothing else holds blocks 2-3. Tests that kill servers run last, in order:
replica takeover, then a replacement with other span boundaries, then the death of the only
server of blocks 0-1.
"""
import pytest
import torch
from transformers import StoppingCriteriaList

from conftest import AtStep, local_swarm
from zswarm import AutoDistributedModelForCausalLM, NoRouteError

PROMPT = torch.tensor([[1, 5, 9, 33, 7, 2]])
# No wire_dtype: "auto" must keep a float32 model's greedy output exactly local HF's.
FAST_FAILOVER = dict(ping_timeout=1.0, liveness_interval_s=0.5, step_timeout=20.0,
                     max_retries=3, retry_backoff_s=0.1)


@pytest.fixture(scope="module")
def swarm(tiny_llama_dir, tmp_path_factory):
    with local_swarm(tiny_llama_dir, tmp_path_factory.mktemp("llama-swarm"), ("a", 0, 2), ("b", 2, 4), ("b2", 2, 4),
                     ("c", 4, 6), ("d", 2, 3, {"throughput": 2}), ("e", 3, 6, {"throughput": 2})) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def model(swarm, tiny_llama_dir):
    model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_llama_dir), initial_peers=swarm.initial_peers,
                                                            **FAST_FAILOVER)
    yield model
    model.close()


@pytest.fixture(scope="module")
def push_model(swarm, tiny_llama_dir):
    model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_llama_dir), initial_peers=swarm.initial_peers,
                                                            relay="server", **FAST_FAILOVER)
    yield model
    model.close()


def _pushed_steps(model, swarm) -> int:
    transport = model.swarm.manager.transport
    return sum(model.swarm.run(transport.call(s.address, "info", {}, timeout=10)).meta["load"]["pushed_steps"]
               for s in swarm.servers.values() if s.alive)


def _peer(swarm, name):
    return swarm.servers[name].peer_id


def test_greedy_through_three_servers_equals_local_generate(model, swarm, llama_reference):
    assert model.wire_dtype is torch.float32  # the tiny checkpoint is float32: "auto" follows it
    with model.inference_session(max_length=32) as session:
        out = model.generate(PROMPT, max_new_tokens=16, session=session)
        route = [(s.start, s.end) for s in session.spans]
    assert route == [(0, 2), (2, 4), (4, 6)]
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=16))


def test_seeded_sampling_equals_local_seeded_sampling(model, llama_reference):
    args = dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.2)
    torch.manual_seed(11)
    out = model.generate(PROMPT, **args)
    torch.manual_seed(11)
    assert torch.equal(out, llama_reference.generate(PROMPT, **args))


def test_beam_search_equals_local_beam_search(model, llama_reference):
    out = model.generate(PROMPT, max_new_tokens=8, num_beams=4, num_return_sequences=2)
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=8, num_beams=4, num_return_sequences=2))


def test_two_call_chat_session_equals_one_generate_of_the_concatenation(model, llama_reference):
    more = torch.tensor([[40, 41, 42]])
    with model.inference_session(max_length=48) as session:
        first = model.generate(PROMPT, max_new_tokens=6, session=session)
        second = model.generate(more, max_new_tokens=7, session=session)
    expected = llama_reference.generate(torch.cat([first, more], dim=1), max_new_tokens=7)
    assert torch.equal(torch.cat([first, second], dim=1), expected)


def test_servers_pushing_steps_to_each_other_give_local_generate_tokens(push_model, swarm, llama_reference):
    before = _pushed_steps(push_model, swarm)
    with push_model.inference_session(max_length=40) as session:
        out = push_model.generate(PROMPT, max_new_tokens=8, session=session)
        hops = len(session.spans)
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=8))
    # the prompt and every token but the last went server to server past the first span
    assert hops >= 2 and _pushed_steps(push_model, swarm) - before == 8 * (hops - 1)


def test_kill_9_of_a_server_with_a_replica_mid_generation_gives_identical_tokens(push_model, swarm, llama_reference):
    """With push (relay="server"): the client hears of the death from its step_result call to
    the killed server, reroutes and replays through the client; tokens stay identical."""
    model = push_model
    with model.inference_session(max_length=40) as session:
        out = model.generate(PROMPT, max_new_tokens=3, session=session)
        victim = next(s for s in swarm.servers.values() if s.peer_id == session.spans[1].peer_id)
        assert victim.name in ("b", "b2")
        more = model.generate(None, max_new_tokens=13, session=session,
                              stopping_criteria=StoppingCriteriaList([AtStep(5, lambda: swarm.kill(victim))]))
        assert not victim.alive and session.failovers >= 1
        # noticed from the dropped (then refused) connection, not from a missed ping or a timeout
        assert session.failures[0][1] == victim.peer_id and "ConnectionLost" in session.failures[0][2]
        assert [(s.start, s.end) for s in session.spans] == [(0, 2), (2, 4), (4, 6)]
        assert session.spans[1].peer_id == _peer(swarm, "b2" if victim.name == "b" else "b")
    assert torch.equal(torch.cat([out, more], dim=1), llama_reference.generate(PROMPT, max_new_tokens=16))


def test_kill_9_where_the_replacement_has_other_span_boundaries_gives_identical_tokens(model, swarm, llama_reference):
    with model.inference_session(max_length=40) as session:
        out = model.generate(PROMPT, max_new_tokens=3, session=session)
        for name in ("b", "b2"):      # keep only the one on the route: after it, only d and e hold 2-3
            if swarm.servers[name].peer_id != session.spans[1].peer_id:
                swarm.kill(swarm.servers[name])
        victim = next(s for s in swarm.servers.values() if s.peer_id == session.spans[1].peer_id)
        more = model.generate(None, max_new_tokens=13, session=session,
                              stopping_criteria=StoppingCriteriaList([AtStep(4, lambda: swarm.kill(victim))]))
        assert [(s.start, s.end) for s in session.spans] == [(0, 2), (2, 3), (3, 4), (4, 6)]
        assert [s.peer_id for s in session.spans[1:3]] == [_peer(swarm, "d"), _peer(swarm, "e")]
    assert torch.equal(torch.cat([out, more], dim=1), llama_reference.generate(PROMPT, max_new_tokens=16))


def test_death_of_the_only_server_of_some_blocks_raises_no_route_error_naming_them(model, swarm):
    with pytest.raises(NoRouteError, match=r"blocks 0:2 of \S+ are served by no one .*4 failed attempts"):
        model.generate(PROMPT, max_new_tokens=10,
                       stopping_criteria=StoppingCriteriaList([AtStep(3, lambda: swarm.kill(swarm.servers["a"]))]))
