"""LoRA adapters on BlockSpans (zswarm.models.lora, lora_checkpoint) against peft on the whole HF model.

The ground truth is peft itself: the same adapter directory loaded with PeftModel.from_pretrained
on the tiny Llama. Spans carry the adapter alongside the base weights and use it only inside
`using_adapter(name)`; outside it they are the untouched base model.
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from zswarm.models import load_client_parts, load_span, resolve_model
from zswarm.models.errors import AdapterError
from zswarm.models.lora import LoraLinear, add_lora, adapters_on, using_adapter
from zswarm.models.lora_checkpoint import open_lora_adapter
from zswarm.models.testing import (load_reference_model, load_reference_peft_model, make_tiny_lora_adapter,
                                   populate_hub_cache)

TOL = 1e-5
SPLITS = ((0, 2), (2, 6))  # a client's view: two servers


@pytest.fixture(scope="module")
def lora(tiny_llama_dir, tmp_path_factory):
    """Two adapters of the tiny Llama: a plain one, and one with rsLoRA and per-module ranks/alphas."""
    root = tmp_path_factory.mktemp("lora")
    plain = make_tiny_lora_adapter(tiny_llama_dir, root / "plain", seed=1)
    fancy = make_tiny_lora_adapter(tiny_llama_dir, root / "fancy", seed=2, r=2, lora_alpha=3,
                                   target_modules=("q_proj", "o_proj", "gate_proj"), use_rslora=True,
                                   rank_pattern={"o_proj": 4}, alpha_pattern={"gate_proj": 5})
    source = resolve_model(str(tiny_llama_dir))
    spans = [load_span(source, a, b) for a, b in SPLITS]
    for directory in (plain, fancy):
        adapter = open_lora_adapter(str(directory), source)
        for span in spans:
            add_lora(span, adapter.name, adapter.load(span.start, span.end, dtype=span.dtype, device=span.device))
    return dict(source=source, spans=spans, parts=load_client_parts(source), dirs={"plain": plain, "fancy": fancy},
                root=root, checkpoint=tiny_llama_dir)


def run_chain(lora, input_ids, adapter):
    with using_adapter(adapter):
        hidden = lora["parts"].embed(input_ids)
        for span in lora["spans"]:
            hidden = span.forward(hidden)
    return lora["parts"].head(lora["parts"].norm(hidden))


def tokens(batch, seq, seed):
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["plain", "fancy"])
def test_spans_with_an_adapter_equal_peft_on_the_whole_model(lora, name):
    reference = load_reference_peft_model(lora["checkpoint"], lora["dirs"][name])
    input_ids = tokens(2, 9, seed=0)
    with torch.no_grad():
        expected = reference(input_ids, output_hidden_states=True)
    logits = run_chain(lora, input_ids, name)
    assert (logits - expected.logits).abs().max() <= TOL
    with using_adapter(name):  # the hidden state the first server hands the second
        hidden = lora["spans"][0].forward(lora["parts"].embed(input_ids))
    assert (hidden - expected.hidden_states[2]).abs().max() <= TOL
    base = load_reference_model(lora["checkpoint"])
    with torch.no_grad():
        assert (base(input_ids).logits - expected.logits).abs().max() > 1e-2  # the adapter does change the output


def test_prefill_then_decode_with_an_adapter_equals_peft_from_scratch(lora):
    reference = load_reference_peft_model(lora["checkpoint"], lora["dirs"]["plain"])
    parts, spans = lora["parts"], lora["spans"]
    history = tokens(1, 6, seed=3)
    caches = [span.new_cache(1) for span in spans]
    new = history
    with using_adapter("plain"):
        for _ in range(4):  # a 6-token prefill, then 3 decode steps
            hidden = parts.embed(new)
            for span, cache in zip(spans, caches):
                hidden = span.inference_step(hidden, cache)
            logits = parts.head(parts.norm(hidden))[:, -1]
            with torch.no_grad():
                expected = reference(history).logits[:, -1]
            assert (logits - expected).abs().max() <= TOL
            new = logits.argmax(-1, keepdim=True)
            history = torch.cat([history, new], dim=1)


def test_the_decode_graph_body_runs_the_active_adapter_as_eager_steps_do(lora):
    """What a CUDA decode graph captures (run here without capture): LoRA included, so a graph
    captured under an adapter (graphs are kept per adapter) replays that adapter."""
    from models_testlib import static_step

    span = lora["spans"][0]
    torch.manual_seed(12)
    prefill, tokens = torch.randn(1, 5, 64), [torch.randn(1, 1, 64) for _ in range(4)]
    eager, static = span.new_cache(1, max_length=16), span.new_cache(1, max_length=16)
    with using_adapter("fancy"), torch.inference_mode():
        span.inference_step(prefill, eager)
        span.inference_step(prefill, static)
        for token in tokens:
            expected = span.inference_step(token, eager)
            assert (static_step(span, static, token) - expected).abs().max() <= TOL


def test_without_an_adapter_spans_are_bit_identical_to_the_base_model(lora):
    input_ids = tokens(2, 7, seed=4)
    plain_spans = [load_span(lora["source"], a, b) for a, b in SPLITS]
    hidden = lora["parts"].embed(input_ids)
    expected = hidden
    for span in plain_spans:
        expected = span.forward(expected)
    got = hidden
    for span in lora["spans"]:
        got = span.forward(got)
    assert torch.equal(got, expected)
    assert torch.equal(run_chain(lora, input_ids, None), lora["parts"].head(lora["parts"].norm(expected)))
    assert adapters_on(lora["spans"][1]) == {"plain", "fancy"}


def test_input_gradients_flow_through_the_adapter_as_in_peft(lora):
    reference = load_reference_peft_model(lora["checkpoint"], lora["dirs"]["plain"])
    span = lora["spans"][1]  # blocks 2:6, then norm and head give a scalar loss
    hidden = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(5))
    grad_out = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(6))
    with using_adapter("plain"):
        grad, _ = span.backward(hidden, grad_out)
    leaf = hidden.clone().requires_grad_(True)
    layers = reference.base_model.model.model.layers[2:6]
    rotary = reference.base_model.model.model.rotary_emb
    positions = torch.arange(5)[None]
    x = leaf
    for layer in layers:
        x = layer(x, attention_mask=None, position_embeddings=rotary(x, positions), position_ids=positions)
        x = x[0] if isinstance(x, tuple) else x
    expected, = torch.autograd.grad(x, leaf, grad_out)
    assert (grad - expected).abs().max() <= 1e-4
    for module in span.modules():  # LoRA weights stay frozen plain tensors
        if isinstance(module, LoraLinear):
            assert all(not d.A.requires_grad and not d.B.requires_grad for d in module.adapters.values())


FAMILY_TARGETS = {"mistral": "all-linear", "qwen2": "all-linear", "bloom": "all-linear", "falcon": "all-linear",
                  "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj")}  # its experts are parameters, not layers


@pytest.mark.parametrize("family", sorted(FAMILY_TARGETS))
def test_every_family_with_an_adapter_on_its_linear_layers_equals_peft(family, request, tmp_path):
    checkpoint = request.getfixturevalue(f"tiny_{family}_dir")
    directory = make_tiny_lora_adapter(checkpoint, tmp_path / family, target_modules=FAMILY_TARGETS[family])
    source = resolve_model(str(checkpoint))
    adapter = open_lora_adapter(str(directory), source)
    spans = [load_span(source, a, b) for a, b in SPLITS]
    for span in spans:
        add_lora(span, adapter.name, adapter.load(span.start, span.end, dtype=span.dtype, device=span.device))
    parts = load_client_parts(source)
    input_ids = tokens(1, 20, seed=9)  # longer than mistral's sliding window
    with using_adapter(family):
        hidden = parts.embed(input_ids)
        for span in spans:
            hidden = span.forward(hidden)
    with torch.no_grad():
        expected = load_reference_peft_model(checkpoint, directory)(input_ids).logits
    assert (parts.head(parts.norm(hidden)) - expected).abs().max() <= TOL


def test_lora_on_mixtral_experts_parameters_is_refused(tiny_mixtral_dir, tmp_path):
    directory = make_tiny_lora_adapter(tiny_mixtral_dir, tmp_path / "experts", target_modules="all-linear")
    with pytest.raises(AdapterError, match="LoRA on parameters .target_parameters."):
        open_lora_adapter(str(directory), resolve_model(str(tiny_mixtral_dir)))


def test_load_reads_only_the_hosted_blocks_in_the_span_dtype(lora):
    adapter = open_lora_adapter(str(lora["dirs"]["plain"]), lora["source"])
    assert adapter.name == "plain" and adapter.targets == ["down_proj", "q_proj", "v_proj"]
    deltas = adapter.load(2, 4, dtype=torch.bfloat16, device="cpu")
    assert sorted(deltas) == [2, 3]
    assert sorted(deltas[2]) == ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert deltas[2]["self_attn.q_proj"].A.dtype == torch.bfloat16 and deltas[2]["self_attn.q_proj"].scale == 2.0


# ---- untrusted checkpoints ----------------------------------------------------------------------
def edit_config(**changes):
    def edit(directory):
        path = directory / "adapter_config.json"
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config))
    return edit


def edit_tensors(change):
    def edit(directory):
        path = directory / "adapter_model.safetensors"
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path))
    return edit


KEY = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"


def _rename(old, new):
    """Move the lora_A and lora_B weights of module `old` to the names of `new`."""
    def change(tensors):
        for ab in ("lora_A", "lora_B"):
            tensors[new.replace("lora_A", ab)] = tensors.pop(old.replace("lora_A", ab))
    return change


def _nan(tensors):
    tensors[KEY][0, 0] = float("nan")


def _pickle_only(directory):
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")


BAD = {
    "not LoRA": (edit_config(peft_type="IA3"), "peft_type is 'IA3'"),
    "DoRA": (edit_config(use_dora=True), "DoRA"),
    "trained biases": (edit_config(bias="all"), "bias='all'"),
    "unknown option": (edit_config(new_fancy_variant={"x": 1}), "new_fancy_variant"),
    "rank 0": (edit_config(r=0), "r must be an integer"),
    "config rank disagrees": (edit_config(r=8), "with r=8, so lora_A should be [8, "),
    "wrong shape": (edit_tensors(lambda t: t.update({KEY: t[KEY][:, :32].contiguous()})), "the file has [4, 32]"),
    "missing lora_B": (edit_tensors(lambda t: t.pop(KEY.replace("lora_A", "lora_B"))), "has no lora_B"),
    "module the block lacks": (edit_tensors(_rename(KEY, KEY.replace("q_proj", "zz_proj"))), "does not have"),
    "not a linear layer": (edit_tensors(_rename(KEY, KEY.replace("self_attn.q_proj", "input_layernorm"))),
                           "RMSNorm"),
    "outside the blocks": (edit_tensors(_rename(KEY, "base_model.model.lm_head.lora_A.weight")),
                           "not a LoRA weight inside a transformer block"),
    "block beyond the model": (edit_tensors(_rename(KEY, KEY.replace("layers.1.", "layers.9."))),
                               "has 6 blocks"),
    "integer tensor": (edit_tensors(lambda t: t.update({KEY: t[KEY].to(torch.int32)})), "not floating point"),
    "NaN": (edit_tensors(_nan), "NaN"),
    "pickle only": (_pickle_only, "never opens"),
    "bad JSON": (lambda d: (d / "adapter_config.json").write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_adapter_is_refused_with_a_message_that_names_the_problem(lora, tmp_path, case):
    edit, message = BAD[case]
    directory = tmp_path / "bad"
    shutil.copytree(lora["dirs"]["plain"], directory)
    edit(directory)
    with pytest.raises(AdapterError, match="adapter .*bad") as info:
        adapter = open_lora_adapter(str(directory), lora["source"])
        adapter.load(0, 6, dtype=torch.float32, device="cpu")  # NaNs are found when the values are read
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_adapter_that_cannot_be_found_gets_a_clear_error(lora, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError, match="neither an existing directory nor a Hugging Face hub id"):
        open_lora_adapter(str(tmp_path / "nowhere"), lora["source"])
    with pytest.raises(AdapterError, match="not in the hub cache and HF_HUB_OFFLINE is set"):
        open_lora_adapter("someone/some-lora", lora["source"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        open_lora_adapter(str(tmp_path / "empty"), lora["source"])


def test_a_hub_adapter_is_named_by_its_hub_id_and_read_from_the_hub_cache(lora, tmp_path):
    cache = tmp_path / "hub"
    populate_hub_cache(lora["dirs"]["plain"], "someone/tiny-lora", cache)
    adapter = open_lora_adapter("someone/tiny-lora", lora["source"], hub_cache_dir=str(cache))
    assert adapter.name == "someone/tiny-lora"
    deltas = adapter.load(0, 6, dtype=torch.float32, device="cpu")
    expected = open_lora_adapter(str(lora["dirs"]["plain"]), lora["source"]).load(0, 6, dtype=torch.float32,
                                                                                    device="cpu")
    assert torch.equal(deltas[5]["mlp.down_proj"].B, expected[5]["mlp.down_proj"].B)


def test_an_adapter_for_another_base_model_is_a_warning_when_its_shapes_fit(lora, tmp_path, caplog):
    directory = tmp_path / "other"
    shutil.copytree(lora["dirs"]["plain"], directory)
    edit_config(base_model_name_or_path="someone/another-model")(directory)
    adapter = open_lora_adapter(str(directory), lora["source"])
    assert adapter.name == "other"
    assert "was trained on 'someone/another-model'" in caplog.text


def test_the_same_adapter_cannot_be_added_twice_to_a_span(lora):
    adapter = open_lora_adapter(str(lora["dirs"]["plain"]), lora["source"])
    with pytest.raises(AdapterError, match="already on block"):
        add_lora(lora["spans"][0], "plain", adapter.load(0, 2, dtype=torch.float32, device="cpu"))
