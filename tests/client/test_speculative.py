"""Speculative decoding through the swarm: transformers drafts tokens by prompt lookup, the
swarm checks them in one multi-token step, and the servers' caches roll back the rejected tail
(RemoteCache.crop -> InferenceSession.rollback -> the next step's smaller position)."""
import torch

REPETITIVE = torch.tensor([[1, 5, 9, 33, 7, 1, 5, 9, 33, 7, 1, 5, 9]])


def test_prompt_lookup_through_two_servers_equals_plain_greedy(swarm, connect, llama_reference):
    swarm.add(0, 3), swarm.add(3, 6)
    model = connect(wire_dtype="float32")
    with model.inference_session(max_length=40) as session:
        out = model.generate(REPETITIVE, max_new_tokens=12, prompt_lookup_num_tokens=4, do_sample=False,
                             session=session)
        steps = session.position  # what the servers hold: every accepted token, no rejected one
    assert torch.equal(out, llama_reference.generate(REPETITIVE, max_new_tokens=12, do_sample=False))
    assert steps == out.shape[1] - 1


def test_prompt_lookup_without_a_session_has_room_for_its_drafts(swarm, connect, llama_reference):
    swarm.add(0, 6)
    model = connect(wire_dtype="float32")
    # two new tokens, four drafted: the check runs past the last position generate keeps
    out = model.generate(REPETITIVE, max_new_tokens=2, min_new_tokens=2, prompt_lookup_num_tokens=4, do_sample=False)
    assert torch.equal(out, llama_reference.generate(REPETITIVE, max_new_tokens=2, min_new_tokens=2, do_sample=False))
