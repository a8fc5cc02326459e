"""Loading reads only what a span needs, refuses what it must, and says clearly what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import zswarm.models.checkpoint as checkpoint_module
from zswarm.models import (
    CheckpointError,
    ConfigMismatchError,
    MissingTensorError,
    ModelNotFoundError,
    SpanInputError,
    UnsafeCheckpointError,
    UnsupportedModelError,
    load_client_parts,
    load_span,
    resolve_model,
)
from zswarm.models.testing import make_tiny_checkpoint, populate_hub_cache

# 30 blocks of ~6 MB each (fp32), one block per shard or so: big enough to see what is read
BIG = dict(num_layers=30, hidden_size=384, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2,
           max_shard_size=8_000_000)


@pytest.fixture(scope="module")
def big_llama_dir(tmp_path_factory):
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("big-llama"), **BIG)


def _shards_of(index_path: Path, prefixes) -> set[str]:
    weight_map = json.loads(index_path.read_text())["weight_map"]
    return {f for n, f in weight_map.items() if n.startswith(tuple(prefixes))}


def test_loading_3_of_30_blocks_opens_only_the_shards_holding_them(big_llama_dir, monkeypatch):
    opened = []
    real_safe_open = checkpoint_module.safe_open
    monkeypatch.setattr(checkpoint_module, "safe_open", lambda path, *a, **k: (opened.append(Path(path).name),
                                                                                 real_safe_open(path, *a, **k))[1])
    source = resolve_model(str(big_llama_dir))
    span = load_span(source, 12, 15)
    needed = _shards_of(big_llama_dir / "model.safetensors.index.json", [f"model.layers.{i}." for i in (12, 13, 14)])
    all_shards = {p.name for p in big_llama_dir.glob("*.safetensors")}
    assert set(opened) == needed and len(needed) < len(all_shards) / 3
    assert span.start == 12 and span.end == 15 and len(span.blocks) == 3


def test_peak_memory_of_loading_a_span_is_near_its_weight_bytes(big_llama_dir):
    # A fresh process: resets the peak-RSS counter (clear_refs 5) just before loading.
    script = textwrap.dedent(f"""
        import json, resource, torch
        from zswarm.models import resolve_model, load_span
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith(("VmRSS", "VmHWM")):
                    yield line.split()[0], int(line.split()[1]) * 1024
        source = resolve_model({str(big_llama_dir)!r})
        _ = source.weights
        torch.ones(1) @ torch.ones(1)  # warm the allocator and kernels
        before = dict(rss())["VmRSS:"]
        open("/proc/self/clear_refs", "w").write("5")
        span = load_span(source, 12, 15)
        peak = dict(rss())["VmHWM:"]
        nbytes = sum(p.numel() * p.element_size() for p in span.parameters())
        print(json.dumps({{"extra_peak": peak - before, "span_bytes": nbytes}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    model_bytes = sum(p.stat().st_size for p in big_llama_dir.glob("*.safetensors"))
    assert numbers["span_bytes"] * 8 < model_bytes  # the test means something: 3 of 30 blocks
    assert numbers["extra_peak"] < 2 * numbers["span_bytes"] + 48 * 2**20, numbers


def test_single_file_checkpoint_loads(tmp_path):
    path = make_tiny_checkpoint("qwen2", tmp_path / "one", num_layers=2, max_shard_size="1GB")
    assert (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").exists()
    source = resolve_model(str(path))
    assert source.model_id == "one" and source.num_blocks == 2 and source.family.name == "llama"
    span = load_span(source, 0, 2)
    assert span.forward(torch.randn(1, 3, 64)).shape == (1, 3, 64)
    assert load_client_parts(source).head(torch.randn(1, 64)).shape == (1, 256)


def test_pickle_checkpoint_is_refused_without_being_opened(tmp_path, tiny_llama_dir):
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_span(resolve_model(str(tmp_path)), 0, 1)


def test_missing_shard_is_named(tmp_path, tiny_llama_dir):
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (tmp_path / "m" / shard).unlink()
    source = resolve_model(str(tmp_path / "m"))
    with pytest.raises(CheckpointError, match=shard):
        load_span(source, 0, 2)


def test_missing_tensor_is_named(tmp_path, tiny_llama_dir):
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    index_path = tmp_path / "m" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.layers.4.self_attn.k_proj.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(MissingTensorError, match=r"model\.layers\.4\.self_attn\.k_proj\.weight"):
        load_span(resolve_model(str(tmp_path / "m")), 3, 5)


def test_config_that_disagrees_with_tensors_names_tensor_and_file(tmp_path, tiny_llama_dir):
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 100
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigMismatchError, match=r"model\.layers\.0\.mlp\..*_proj\.weight.*safetensors"):
        load_span(resolve_model(str(tmp_path / "m")), 0, 1)


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="bloom, falcon, llama, mistral, mixtral, qwen2"):
        resolve_model(str(tmp_path))


def test_unknown_reference_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model("no-such-org/no-such-model", hub_cache_dir=str(tmp_path / "empty-hub"))


def test_hub_id_loads_offline_from_a_prepopulated_cache_fetching_only_needed_shards(tmp_path, tiny_llama_dir):
    index = json.loads((tiny_llama_dir / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {f for n, f in index.items() if n.startswith(("model.layers.0.", "model.layers.1."))}
    cache = tmp_path / "hub"
    populate_hub_cache(tiny_llama_dir, "tiny-org/tiny-llama", cache,
                       files=["config.json", "model.safetensors.index.json", *sorted(needed)])
    source = resolve_model("tiny-org/tiny-llama", hub_cache_dir=str(cache))
    assert source.model_id == "tiny-org/tiny-llama" and source.num_blocks == 6
    span = load_span(source, 0, 2)
    assert span.forward(torch.randn(1, 2, 64)).shape == (1, 2, 64)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        load_span(source, 4, 6)  # its shards are not cached, and we are offline


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_spans_keep_their_dtype_and_stay_close_to_fp32(tiny_llama_dir, dtype):
    source = resolve_model(str(tiny_llama_dir))
    full, half = load_span(source, 0, 6), load_span(source, 0, 6, dtype=dtype)
    hidden = torch.randn(1, 5, 64)
    out = half.forward(hidden.to(dtype))
    assert out.dtype == dtype and all(p.dtype == dtype for p in half.parameters())
    assert (out.float() - full.forward(hidden)).abs().max() < 0.1 * full.forward(hidden).abs().max()


def test_sub_span_shares_weights_and_computes_the_same(tiny_llama_dir):
    span = load_span(resolve_model(str(tiny_llama_dir)), 1, 5)
    sub = span.sub(2, 4)
    assert sub.blocks[0] is span.blocks[1]
    hidden = torch.randn(2, 4, 64)
    whole = span.forward(hidden)
    parts = span.sub(4, 5).forward(sub.forward(span.sub(1, 2).forward(hidden)))
    assert torch.allclose(whole, parts, atol=1e-6)
    cache = sub.new_cache(2)
    sub.inference_step(hidden, cache)
    with pytest.raises(SpanInputError):
        span.inference_step(hidden, cache)  # a cache belongs to the span it was made by


def test_bad_inputs_raise_span_input_errors_with_the_bad_input_code(tiny_llama_dir):
    span = load_span(resolve_model(str(tiny_llama_dir)), 0, 2)
    cache = span.new_cache(2)
    for bad in (torch.randn(2, 3), torch.randn(2, 3, 65), torch.zeros(2, 3, 64, dtype=torch.long),
                torch.randn(2, 0, 64)):
        with pytest.raises(SpanInputError) as info:
            span.inference_step(bad, cache)
        assert info.value.code == "bad_input"
    with pytest.raises(SpanInputError):
        span.inference_step(torch.randn(3, 1, 64), cache)  # batch differs from the cache's
    with pytest.raises(SpanInputError):
        span.forward(torch.randn(2, 3, 64), prompts=torch.randn(3, 2, 4, 64))  # 3 prompt blocks for 2
    span.inference_step(torch.randn(2, 4, 64), cache)
    with pytest.raises(SpanInputError):
        cache.rollback(5)
    with pytest.raises(SpanInputError):
        cache.reorder(torch.tensor([0, 2]))
    assert cache.length == 4
