"""Family variants beyond the tiny defaults: other Falcon layouts, Qwen2 sliding layers, rope types, Mixtral layouts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

from models_testlib import TOL, Pipeline, reference
from zswarm.models import UnsupportedModelError, load_span, resolve_model
from zswarm.models.testing import make_tiny_checkpoint

SPLITS = ((0, 1), (1, 3), (3, 4))
VARIANTS = {
    "falcon-multi-query": ("falcon", dict(new_decoder_architecture=False, multi_query=True, num_kv_heads=None)),
    "falcon-sequential": ("falcon", dict(new_decoder_architecture=False, multi_query=False, parallel_attn=False,
                                         bias=True, num_kv_heads=None)),
    "qwen2-sliding-layers": ("qwen2", dict(use_sliding_window=True, sliding_window=6, max_window_layers=2)),
    "llama-dynamic-rope": ("llama", dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                          "factor": 2.0}, max_position_embeddings=16)),
    "llama-yarn-rope": ("llama", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                       "original_max_position_embeddings": 16})),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_spans_match_whole_model_over_prefill_and_decode(tmp_path, variant):
    family, overrides = VARIANTS[variant]
    path = make_tiny_checkpoint(family, tmp_path / variant, num_layers=4, **overrides)
    pipe, model = Pipeline(path, splits=SPLITS), reference(path)
    torch.manual_seed(7)
    tokens = torch.randint(0, 256, (2, 28))
    pipe.new_session(2)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        for a, b in [(0, 12)] + [(t, t + 1) for t in range(12, 28)]:
            ours = pipe.step(tokens[:, a:b])
            theirs = model(tokens[:, a:b], past_key_values=cache, use_cache=True).logits
            assert (ours - theirs).abs().max() <= TOL, f"positions [{a}, {b})"


def test_falcon_with_alibi_is_refused_by_name(tmp_path):
    path = make_tiny_checkpoint("falcon", tmp_path / "rw", num_layers=1, alibi=True,
                                new_decoder_architecture=False, multi_query=False, num_kv_heads=None)
    with pytest.raises(UnsupportedModelError, match="alibi"):
        resolve_model(str(path))


def test_mixtral_fused_expert_layout_loads_the_same_as_per_expert_layout(tmp_path, tiny_mixtral_dir):
    """transformers 5 fuses experts into 3-D tensors; checkpoints in either layout give the same block."""
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    (fused_dir / "config.json").write_text((tiny_mixtral_dir / "config.json").read_text())
    tensors = {}
    for shard in sorted(tiny_mixtral_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    config = json.loads((tiny_mixtral_dir / "config.json").read_text())
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}.block_sparse_moe."
        w = {k: torch.stack([tensors.pop(f"{p}experts.{e}.{k}.weight") for e in range(config["num_local_experts"])])
             for k in ("w1", "w2", "w3")}
        tensors[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat([w["w1"], w["w3"]], dim=1)
        tensors[f"model.layers.{i}.mlp.experts.down_proj"] = w["w2"]
        tensors[f"model.layers.{i}.mlp.gate.weight"] = tensors.pop(f"{p}gate.weight")
    save_file(tensors, str(fused_dir / "model.safetensors"))
    hidden = torch.randn(2, 7, config["hidden_size"])
    legacy = load_span(resolve_model(str(tiny_mixtral_dir)), 1, 4).forward(hidden)
    fused = load_span(resolve_model(str(fused_dir)), 1, 4).forward(hidden)
    assert torch.equal(legacy, fused)
