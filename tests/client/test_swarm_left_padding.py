"""Left-padded batched generation on real processes: zswarm-server processes on loopback, a real
DHT, the tiny llama. Servers: a 0-3, and b, b2 3-6 (replicas, so one can be killed mid-generation).

A batch padded on the left (tokenizer.padding_side = "left") gives, row by row, the tokens of local
transformers' generate of the same padded batch, and of each row generated alone; a replacement
server, rebuilt from the history, gets the same pads; servers refuse bad pads with a typed error.
"""
import pytest
import torch
from transformers import StoppingCriteriaList

from conftest import AtStep, local_swarm
from zswarm import AutoDistributedModelForCausalLM
from zswarm.errors import BadInputError

PAD = 0
ROWS = [[1, 5, 9, 33, 7, 2, 40], [11, 12], [60, 61, 62, 63]]  # 0, 5 and 3 pads on the left
FAST_FAILOVER = dict(wire_dtype="float32", ping_timeout=1.0, liveness_interval_s=0.5, step_timeout=20.0,
                     max_retries=3, retry_backoff_s=0.1)


def _left_padded(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.fixture(scope="module")
def swarm(tiny_llama_dir, tmp_path_factory):
    with local_swarm(tiny_llama_dir, tmp_path_factory.mktemp("left-pad"), ("a", 0, 3), ("b", 3, 6),
                     ("b2", 3, 6)) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def model(swarm, tiny_llama_dir):
    model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_llama_dir), initial_peers=swarm.initial_peers,
                                                            **FAST_FAILOVER)
    yield model
    model.close()


def test_left_padded_greedy_batch_equals_local_generate_and_each_row_alone(model, llama_reference):
    ids, mask = _left_padded(ROWS)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, pad_token_id=PAD)
    assert torch.equal(out, llama_reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12,
                                                     pad_token_id=PAD))
    width = ids.shape[1]
    for r, row in enumerate(ROWS):
        alone = model.generate(torch.tensor([row]), max_new_tokens=12, pad_token_id=PAD)
        assert torch.equal(out[r:r + 1, width - len(row):], alone), f"row {r}"


def test_left_padded_chat_continues_and_a_replacement_server_gets_the_same_pads(model, swarm, llama_reference):
    ids, mask = _left_padded(ROWS)
    more = torch.tensor([[40, 41], [42, 43], [44, 45]])
    with model.inference_session(max_length=40) as session:
        first = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, pad_token_id=PAD,
                               session=session)
        assert session.left_pad == [0, 5, 3]
        victim = next(s for s in swarm.servers.values() if s.peer_id == session.spans[1].peer_id)
        second = model.generate(more, max_new_tokens=8, pad_token_id=PAD, session=session,
                                stopping_criteria=StoppingCriteriaList([AtStep(3, lambda: swarm.kill(victim))]))
        assert not victim.alive and session.failovers >= 1
    full = torch.cat([first, more], dim=1)
    full_mask = torch.cat([mask, torch.ones(3, first.shape[1] - ids.shape[1] + 2, dtype=torch.long)], dim=1)
    expected = llama_reference.generate(input_ids=full, attention_mask=full_mask, max_new_tokens=8,
                                        pad_token_id=PAD)
    assert torch.equal(torch.cat([first, second], dim=1), expected)


@pytest.mark.parametrize("left_pad, fragment", [([1, 0], "list of 3 integers"), ([0, -1, 2], "must lie in"),
                                                ([0, 1, 16], "must lie in"), ([0, "1", 2], "list of 3 integers")])
def test_a_server_refuses_bad_pads_with_bad_input(model, swarm, left_pad, fragment):
    meta = dict(start=0, end=3, max_length=16, batch_size=3, left_pad=left_pad)
    call = model.swarm.manager.transport.call(swarm.servers["a"].address, "open_session", meta, timeout=10)
    with pytest.raises(BadInputError, match=fragment):
        model.swarm.run(call)


def test_masks_a_session_cannot_take_are_refused_before_any_server_sees_them(model):
    ids, mask = _left_padded(ROWS)
    with pytest.raises(NotImplementedError, match="left padding only"):
        model.generate(input_ids=ids, attention_mask=mask.flip(1), max_new_tokens=2, pad_token_id=PAD)
    with pytest.raises(ValueError, match="all zeros"):
        model.generate(input_ids=ids, attention_mask=mask * torch.tensor([[1], [0], [1]]), max_new_tokens=2,
                       pad_token_id=PAD)


def test_left_padded_beam_search_equals_local_beam_search(model, llama_reference):
    ids, mask = _left_padded(ROWS)
    args = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2,
                pad_token_id=PAD)
    assert torch.equal(model.generate(**args), llama_reference.generate(**args))
