"""Proof of fine-tuning through the swarm on real processes: zswarm-server processes on
loopback, a real DHT, the tiny fp32 llama, hidden states in float32 on the wire.

Servers: a 0-3, b and b2 3-6 (replicas), and spares d 3-4, e 4-6 that only the kill test uses
(the others block them). The reference is the local Hugging Face model with the
same prompts applied the same way: ptune prompts prepended to the input embeddings; deep
prompts added, before block i, to the hidden states of positions < pre_seq_len (forward
pre-hooks on the HF layers, as zswarm/models/span.py add_prompt does on the servers).
The kill test runs last.
"""
import pytest
import torch

from conftest import local_swarm
from zswarm.client import AutoDistributedModelForSequenceClassification
from zswarm import AutoDistributedModelForCausalLM

PRE_SEQ_LEN = 4
IDS = torch.tensor([[1, 5, 9, 33, 7, 2], [4, 8, 15, 16, 23, 42], [100, 3, 3, 7, 90, 11], [6, 6, 6, 1, 2, 3]])
CONFIG = dict(wire_dtype="float32", ping_timeout=1.0, liveness_interval_s=0.5, max_retries=3, retry_backoff_s=0.1,
              pre_seq_len=PRE_SEQ_LEN)


@pytest.fixture(scope="module")
def swarm(tiny_llama_dir, tmp_path_factory):
    with local_swarm(tiny_llama_dir, tmp_path_factory.mktemp("tuning-swarm"), ("a", 0, 3), ("b", 3, 6), ("b2", 3, 6),
                     ("d", 3, 4), ("e", 4, 6)) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def connect(swarm, tiny_llama_dir):
    made = []

    def make(cls=AutoDistributedModelForCausalLM, **kwargs):
        spares = tuple(swarm.servers[name].peer_id for name in ("d", "e"))
        model = cls.from_pretrained(str(tiny_llama_dir), initial_peers=swarm.initial_peers,
                                    **{**CONFIG, "blocked_servers": spares, **kwargs})
        made.append(model)
        return model

    yield make
    for model in made:
        model.close()


def reference_logits(reference, ids, prompts, deep_prompts=None):
    """The local HF model with the prompts: logits of the positions of `ids` only."""
    hooks = []
    if deep_prompts is not None:
        for layer, prompt in zip(reference.model.layers, deep_prompts):
            hooks.append(layer.register_forward_pre_hook(_adding(prompt), with_kwargs=True))
    try:
        embeds = reference.get_input_embeddings()(ids)
        embeds = torch.cat([prompts.unsqueeze(0).expand(ids.shape[0], -1, -1), embeds], dim=1)
        return reference(inputs_embeds=embeds, use_cache=False).logits[:, prompts.shape[0]:]
    finally:
        for hook in hooks:
            hook.remove()


def _adding(prompt):
    def hook(module, args, kwargs):
        if args:
            hidden = args[0]
            return (_add(hidden, prompt), *args[1:]), kwargs
        return args, dict(kwargs, hidden_states=_add(kwargs["hidden_states"], prompt))
    return hook


def _add(hidden, prompt):
    k = prompt.shape[0]
    return torch.cat([hidden[:, :k] + prompt, hidden[:, k:]], dim=1)


def _loss(logits, ids):
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _reference_grads(llama_reference, model, ids):
    prompts = model.tuning.prompts.detach().clone().requires_grad_(True)
    deep = None
    if model.tuning.deep_prompts is not None:
        deep = model.tuning.deep_prompts.detach().clone().requires_grad_(True)
    loss = _loss(reference_logits(llama_reference, ids, prompts, deep), ids)
    loss.backward()
    return loss, prompts.grad, None if deep is None else deep.grad


@pytest.mark.parametrize("mode", ["ptune", "deep_ptune"])
def test_prompt_gradients_through_real_servers_equal_local_hf(connect, llama_reference, mode):
    torch.manual_seed(0)
    # 20 tokens a request: the batch of 4 goes in two row groups, which land on both replicas.
    model = connect(tuning_mode=mode, max_request_tokens=2 * (IDS.shape[1] + PRE_SEQ_LEN))
    if mode == "deep_ptune":
        with torch.no_grad():
            model.tuning.deep_prompts.normal_(std=0.5)   # zero by default; any value must give exact grads
    assert {name for name, p in model.named_parameters() if p.requires_grad} == (
        {"tuning.prompts", "tuning.deep_prompts"} if mode == "deep_ptune" else {"tuning.prompts"})

    out = model(IDS, labels=IDS)
    out.loss.backward()
    expected_loss, expected_prompts, expected_deep = _reference_grads(llama_reference, model, IDS)

    assert out.logits.shape == (*IDS.shape, 256)
    torch.testing.assert_close(out.loss, expected_loss, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.tuning.prompts.grad, expected_prompts, atol=1e-4, rtol=0)
    assert expected_prompts.abs().max() > 1e-3
    if mode == "deep_ptune":
        torch.testing.assert_close(model.tuning.deep_prompts.grad, expected_deep, atol=1e-4, rtol=0)
        assert (expected_deep.abs().amax(dim=(1, 2)) > 1e-4).all()   # every block's prompt gets a gradient
    replicas = {route[-1].peer_id for route in model.blocks.last_routes}
    assert len(model.blocks.last_routes) == 2 and len(replicas) == 2


def test_generate_with_deep_prompts_equals_local_greedy_with_the_same_prompts(connect, llama_reference):
    torch.manual_seed(1)
    model = connect(tuning_mode="deep_ptune")
    with torch.no_grad():
        model.tuning.deep_prompts.normal_(std=0.5)
        prompts, deep = model.tuning.prompts.clone(), model.tuning.deep_prompts.clone()
        ids = IDS[:1]
        for _ in range(6):   # greedy, recomputing everything each token: no cache to get wrong
            next_id = reference_logits(llama_reference, ids, prompts, deep)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(model.generate(IDS[:1], max_new_tokens=6), ids)
    with model.inference_session(max_length=20) as session:   # a session continues after the prompts
        first = model.generate(IDS[:1], max_new_tokens=3, session=session)
        second = model.generate(None, max_new_tokens=3, session=session)
    assert torch.equal(torch.cat([first, second], dim=1), ids)


def test_thirty_steps_of_deep_prompt_tuning_through_the_swarm_lower_the_loss(connect):
    torch.manual_seed(2)
    model = connect(tuning_mode="deep_ptune")
    # The task: after any input, always say token 7.
    inputs = IDS[:, :4]
    ids = torch.cat([inputs, torch.full((inputs.shape[0], 1), 7)], dim=1)
    labels = torch.cat([torch.full_like(inputs, -100), torch.full((inputs.shape[0], 1), 7)], dim=1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_classification_head_gets_a_gradient_and_learns_through_the_swarm(connect, llama_reference):
    torch.manual_seed(3)
    model = connect(AutoDistributedModelForSequenceClassification, tuning_mode="ptune", num_labels=2)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"tuning.prompts", "score.weight"}
    # Label 1: the sequence holds token 200; rows of several lengths, padded on the right.
    ids = torch.tensor([[10, 200, 12, 0, 0], [10, 11, 12, 13, 0], [200, 30, 0, 0, 0], [31, 32, 33, 34, 35],
                        [40, 41, 200, 43, 44], [50, 51, 0, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([3, 4, 2, 5, 5, 2]).unsqueeze(1)).long()
    labels = torch.tensor([1, 0, 1, 0, 1, 0])

    # Padding on the right changes nothing: a padded row's logits are those of the row alone.
    with torch.no_grad():
        alone = model(ids[:1, :3]).logits
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[:1], alone, atol=1e-5, rtol=0)

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(15):
        loss = model(ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert model.score.weight.grad.abs().max() > 0 and model.tuning.prompts.grad.abs().max() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_kill_9_between_forward_and_backward_reroutes_backward_over_two_other_servers(connect, swarm,
                                                                                      llama_reference):
    """b dies after the forward that used it; its blocks 3-5 are then d 3-4 + e 4-6: backward
    recomputes the input of e with a forward on d, and the gradients are still exact."""
    torch.manual_seed(4)
    model = connect(tuning_mode="deep_ptune", blocked_servers=(swarm.servers["b2"].peer_id,))
    with torch.no_grad():
        model.tuning.deep_prompts.normal_(std=0.5)
    for _ in range(30):  # forward routes are drawn at random (b, or d + e): take one that used b
        out = model(IDS, labels=IDS)
        (route,) = model.blocks.last_routes
        if route[-1].peer_id == swarm.servers["b"].peer_id:
            break
    assert route[-1].peer_id == swarm.servers["b"].peer_id
    swarm.kill(swarm.servers["b"])
    out.loss.backward()
    _, expected_prompts, expected_deep = _reference_grads(llama_reference, model, IDS)
    torch.testing.assert_close(model.tuning.prompts.grad, expected_prompts, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.tuning.deep_prompts.grad, expected_deep, atol=1e-4, rtol=0)
    assert model.swarm.manager.bans.failures(swarm.servers["b"].peer_id) >= 1
