"""Fine-tuning on the client, the parts that need no real server: settings are checked, row
groups spread over replicas, padding rules, shapes of deep prompts, the prompt offset of a
session's cache length. (Exactness against local HF is test_tuning_swarm.py's job.)"""
from collections import Counter

import pytest
import torch

from zswarm.client import AutoDistributedModelForSequenceClassification, ClientConfig
from zswarm.client.base import check_attention_mask
from zswarm.client.remote_cache import RemoteCache
from zswarm.client.sequence_manager import prefer_idle
from zswarm.routing import RouteCandidate

IDS = torch.tensor([[1, 5, 9, 33, 7, 2]])


@pytest.mark.parametrize("fields, message", [
    (dict(tuning_mode="lora"), "tuning_mode"), (dict(tuning_mode="ptune", pre_seq_len=0), "pre_seq_len"),
    (dict(pre_seq_len=2.5), "pre_seq_len"), (dict(pre_seq_len=True), "pre_seq_len")])
def test_tuning_settings_are_checked_with_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        ClientConfig(**fields)


def test_from_pretrained_names_an_unknown_argument_before_joining_anything():
    from zswarm import AutoDistributedModelForCausalLM

    with pytest.raises(TypeError, match="num_labels"):
        AutoDistributedModelForCausalLM.from_pretrained("unused", initial_peers=["h:1"], num_labels=2)


def test_classification_checks_num_labels(llama_source):
    with pytest.raises(ValueError, match="num_labels"):
        AutoDistributedModelForSequenceClassification.prepare_config(llama_source.config, num_labels=0)


def test_right_padding_is_allowed_without_a_cache_and_left_padding_never():
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    check_attention_mask(right, cached=False)
    with pytest.raises(NotImplementedError, match="right padding"):
        check_attention_mask(torch.tensor([[0, 1, 1]]), cached=False)
    with pytest.raises(NotImplementedError, match="sessions"):
        check_attention_mask(right, cached=True)


def _candidate(peer, start, end, throughput=100.0):
    return RouteCandidate(peer_id=peer, start=start, end=end, inference_rps=10.0, rtt_from_client=0.01,
                          next_pings={}, cache_room=True, throughput=throughput)


def test_prefer_idle_keeps_busy_servers_only_where_no_idle_one_holds_the_blocks():
    a, b, b2 = _candidate("a", 0, 3), _candidate("b", 3, 6), _candidate("b2", 3, 6)
    chosen = prefer_idle([a, b, b2], 0, 6, Counter(a=1, b=1))
    assert sorted(c.peer_id for c in chosen) == ["a", "b2"]
    assert next(c for c in chosen if c.peer_id == "a").throughput == 50.0   # still needed, at half weight
    assert prefer_idle([a, b, b2], 0, 6, Counter()) == [a, b, b2]


def test_row_groups_of_one_batch_land_on_different_replicas(swarm, connect):
    for _ in range(3):
        swarm.add(0, 6)
    model = connect(max_request_tokens=IDS.shape[1])   # one row a request
    model(IDS.repeat(3, 1))
    assert len({route[0].peer_id for route in model.blocks.last_routes}) == 3


def test_deep_prompts_of_the_wrong_shape_are_refused_before_any_request(swarm, connect):
    swarm.add(0, 6)
    model = connect()
    hidden = torch.zeros(2, 6, 64)
    for shape in [(5, 1, 2, 64), (6, 3, 2, 64), (6, 1, 7, 64), (6, 1, 2, 32), (6, 2, 64)]:
        with pytest.raises(ValueError, match="deep prompts"):
            model.blocks(hidden, torch.zeros(shape))


def test_only_the_prompts_are_trainable_and_without_tuning_nothing_is(swarm, connect):
    swarm.add(0, 6)
    assert not any(p.requires_grad for p in connect().parameters())
    model = connect(tuning_mode="deep_ptune", pre_seq_len=3)
    trainable = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"tuning.prompts": (3, 64), "tuning.deep_prompts": (6, 3, 64)}
    assert not model.tuning.deep_prompts.detach().any()   # zero at the start, as in Petals
    assert model(IDS).logits.shape == (1, 6, 256)           # the prompt positions are not in the output


def test_a_session_cache_length_leaves_out_the_prompts_at_its_start(swarm, connect):
    swarm.add(0, 6)
    model = connect()
    session = model.inference_session(max_length=10)
    session.prefix_length = 4
    session.position = 7
    cache = RemoteCache(session)
    assert cache.get_seq_length() == 3 and cache.get_mask_sizes(1) == (4, 0)
    cache.crop(-2)
    assert session.position == 5


def test_prompts_start_as_embeddings_of_real_tokens_in_a_family_whose_embedding_has_a_norm(tiny_bloom_dir):
    from inprocess_swarm import InProcessSwarm, client_model, load_source

    source = load_source(tiny_bloom_dir)
    swarm = InProcessSwarm(source)
    swarm.add(0, source.num_blocks)
    connection = swarm.connect(tuning_mode="ptune", pre_seq_len=3)
    try:
        model = client_model(source, connection)
        # Bloom's embedding is word embeddings + a LayerNorm: each prompt row is normalised like an input's.
        assert torch.allclose(model.tuning.prompts.mean(dim=-1), torch.zeros(3), atol=1e-3)
        assert model(IDS).logits.shape == (1, 6, source.config.vocab_size)
    finally:
        connection.close()


@pytest.mark.parametrize("search", [dict(), dict(num_beams=3, num_return_sequences=2)])
def test_generate_with_tuned_prompts_equals_local_hf_given_the_prompts_as_embeddings(swarm, connect, llama_reference,
                                                                                     search):
    # ptune sends nothing new to servers (the prompts are ordinary input positions), so the
    # in-process servers compute exactly what real ones do.
    swarm.add(0, 3), swarm.add(3, 6)
    torch.manual_seed(5)
    model = connect(tuning_mode="ptune", pre_seq_len=3)
    out = model.generate(IDS, max_new_tokens=5, **search)
    with torch.no_grad():
        embeds = torch.cat([model.tuning.prompts[None], llama_reference.get_input_embeddings()(IDS)], dim=1)
        new = llama_reference.generate(inputs_embeds=embeds, max_new_tokens=5, **search)
    assert torch.equal(out[:, :IDS.shape[1]], IDS.expand(out.shape[0], -1))
    assert torch.equal(out[:, IDS.shape[1]:], new[:, -5:])
