"""Inference sessions on an in-process swarm of real model spans (MockTransport): outputs equal
local Hugging Face generation, including when servers vanish mid-generation and the replacement
splits the blocks differently. Real server processes: test_swarm_processes.py."""
import pytest
import torch
from transformers import StoppingCriteriaList

from conftest import AtStep
from zswarm.errors import NoRouteError, SessionClosedError, SessionLengthError

PROMPT = torch.tensor([[1, 5, 9, 33, 7]])


def test_greedy_through_three_spans_equals_local_generate(swarm, connect, llama_reference):
    swarm.add(0, 2), swarm.add(2, 4), swarm.add(4, 6)
    model = connect()
    out = model.generate(PROMPT, max_new_tokens=12)
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=12))


def test_replica_takes_over_when_a_server_vanishes_mid_generation(swarm, connect, llama_reference):
    first, middle, last = swarm.add(0, 2), swarm.add(2, 4), swarm.add(4, 6)
    model = connect()
    with model.inference_session(max_length=32) as session:
        out = model.generate(PROMPT, max_new_tokens=2, session=session)
        spare = swarm.add(2, 4)
        victim = next(s for s in (middle, spare) if s.peer_id == session.spans[1].peer_id)
        more = model.generate(None, max_new_tokens=10, session=session,
                              stopping_criteria=StoppingCriteriaList([AtStep(4, lambda: swarm.kill(victim))]))
        assert session.failovers == 1 and victim.peer_id not in {s.peer_id for s in session.spans}
    expected = llama_reference.generate(PROMPT, max_new_tokens=12)
    assert torch.equal(torch.cat([out, more], dim=1), expected)


def test_replacement_with_other_span_boundaries_rebuilds_every_new_cache(swarm, connect, llama_reference):
    first, middle, last = swarm.add(0, 2), swarm.add(2, 5), swarm.add(5, 6)
    model = connect()
    with model.inference_session(max_length=32) as session:
        out = model.generate(PROMPT, max_new_tokens=3, session=session)
        assert [(s.start, s.end) for s in session.spans] == [(0, 2), (2, 5), (5, 6)]
        swarm.add(2, 3), swarm.add(3, 6)       # the blocks of `middle` now come split in two
        more = model.generate(None, max_new_tokens=9, session=session,
                              stopping_criteria=StoppingCriteriaList([AtStep(3, lambda: swarm.kill(middle))]))
        assert [(s.start, s.end) for s in session.spans] == [(0, 2), (2, 3), (3, 5), (5, 6)]
    expected = llama_reference.generate(PROMPT, max_new_tokens=12)
    assert torch.equal(torch.cat([out, more], dim=1), expected)


def test_beam_search_reorders_server_caches_and_survives_a_failover(swarm, connect, llama_reference):
    swarm.add(0, 3)
    middle = swarm.add(3, 6)
    model = connect()
    expected = llama_reference.generate(PROMPT, max_new_tokens=8, num_beams=3)
    assert torch.equal(model.generate(PROMPT, max_new_tokens=8, num_beams=3), expected)
    swarm.add(3, 6)
    out = model.generate(PROMPT, max_new_tokens=8, num_beams=3,
                         stopping_criteria=StoppingCriteriaList([AtStep(4, lambda: swarm.kill(middle))]))
    assert torch.equal(out, expected)


def test_only_server_of_some_blocks_vanishing_raises_no_route_error_naming_them(swarm, connect):
    swarm.add(0, 4)
    lonely = swarm.add(4, 6)
    model = connect(max_retries=2)
    with pytest.raises(NoRouteError, match=r"blocks 4:6 of tiny-llama\w* are served by no one.*3 failed attempts"):
        model.generate(PROMPT, max_new_tokens=6,
                       stopping_criteria=StoppingCriteriaList([AtStep(2, lambda: swarm.kill(lonely))]))


def test_a_full_server_surfaces_as_cache_full_naming_the_blocks_not_as_served_by_no_one(swarm, connect):
    import asyncio

    from zswarm.errors import CacheFullError
    from inprocess_swarm import CACHE_TOKENS

    server = swarm.add(0, 6)
    hog = asyncio.run(swarm.transport.call(server.address, "open_session", {"max_length": CACHE_TOKENS}, timeout=10))
    assert hog.meta["session_id"] and server.sessions.budget.free == 0
    model = connect(max_retries=2, cache_wait_timeout=0.05)
    with pytest.raises(CacheFullError, match=r"blocks 0:6 of tiny-llama\w* are served, but .*cache full: 1 sessions"):
        model.generate(PROMPT, max_new_tokens=2)


def test_session_refuses_steps_past_max_length_and_after_close(swarm, connect):
    swarm.add(0, 6)
    model = connect()
    session = model.inference_session(max_length=6)
    with pytest.raises(SessionLengthError, match="max_length=6"):
        model.generate(PROMPT, max_new_tokens=4, session=session)
    session.close()
    with pytest.raises(SessionClosedError):
        session.step(torch.zeros(1, 1, 64))


def test_rollback_then_new_tokens_equals_running_them_fresh(swarm, connect, llama_source):
    swarm.add(0, 3), swarm.add(3, 6)
    model = connect()
    hidden = torch.randn(1, 6, 64)
    with model.inference_session(max_length=16) as session:
        session.step(hidden[:, :4])
        session.rollback(2)
        tail = session.step(hidden[:, 2:6])
    with model.inference_session(max_length=16) as fresh:
        expected = fresh.step(hidden)[:, 2:6]
    torch.testing.assert_close(tail, expected, atol=1e-4, rtol=1e-4)


def test_long_prefill_and_replay_go_in_requests_under_the_token_cap(swarm, connect, llama_reference):
    swarm.add(0, 3)
    middle = swarm.add(3, 6)
    model = connect(max_request_tokens=4)
    spare = swarm.add(3, 6)
    out = model.generate(PROMPT, max_new_tokens=10,
                         stopping_criteria=StoppingCriteriaList([AtStep(6, lambda: swarm.kill(middle))]))
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=10))
    # killed holding 10 tokens: the spare gets them as 4 + 4 + (2 + the new one), then 3 more steps
    assert spare.steps == 3 + 3


def test_closing_a_session_frees_the_server_sessions(swarm, connect):
    servers = swarm.add(0, 3), swarm.add(3, 6)
    model = connect()
    with model.inference_session(max_length=16) as session:
        session.step(torch.randn(1, 3, 64))
        assert all(len(server.sessions) == 1 for server in servers)
    assert all(len(server.sessions) == 0 for server in servers)
