"""How many blocks fit, from block bytes by dtype/quantization plus each block's share of the cache."""
import pytest

from zswarm.server.memory import (BlockShape, InsufficientMemoryError, block_bytes, cache_bytes, fit_cache_tokens,
                                  graph_workspace_bytes, plan_num_blocks)

GIB = 1 << 30
LLAMA_7B = BlockShape(params=202_383_360, kv_heads=32, head_dim=128)


def test_block_shape_counts_exactly_the_weights_of_a_loaded_block(tiny_source, tiny_span):
    shape = BlockShape.from_source(tiny_source)
    assert shape.params == sum(p.numel() for p in tiny_span.blocks[0].parameters())
    assert shape.kv_bytes_per_token("float32") == tiny_span.sub(0, 1).cache_bytes_per_token()


def test_config_formula_matches_llama_7b_block():
    class Config:
        hidden_size, num_attention_heads, num_key_value_heads, intermediate_size = 4096, 32, 32, 11008

    assert BlockShape.from_config(Config()).params == LLAMA_7B.params


def test_quantization_shrinks_blocks_in_the_expected_ratio():
    fp16 = block_bytes(LLAMA_7B, "float16")
    assert block_bytes(LLAMA_7B, "float32") == 2 * fp16
    assert 0.5 < block_bytes(LLAMA_7B, "float16", "int8") / fp16 < 0.52
    assert 0.25 < block_bytes(LLAMA_7B, "float16", "nf4") / fp16 < 0.3


def test_plan_counts_weights_and_cache_share_per_block():
    per_block = block_bytes(LLAMA_7B, "float16") + cache_bytes(LLAMA_7B, "float16", 8192, 1)
    free = int((10 * per_block + graph_workspace_bytes(LLAMA_7B, "float16", 8192) + GIB) / 0.9) + 1000
    assert plan_num_blocks(free, LLAMA_7B, "float16", "none", 8192, 32) == 10
    assert plan_num_blocks(free, LLAMA_7B, "float16", "nf4", 8192, 32) > 10
    assert plan_num_blocks(free * 100, LLAMA_7B, "float16", "none", 8192, 32) == 32  # capped at the model


def test_plan_says_what_to_do_when_nothing_fits():
    with pytest.raises(InsufficientMemoryError, match="--quant"):
        plan_num_blocks(GIB, LLAMA_7B, "float16", "none", 8192, 32)


def test_default_cache_budget_shrinks_to_what_fits_beside_the_weights():
    weights = 16 * block_bytes(LLAMA_7B, "float16")
    per_token = cache_bytes(LLAMA_7B, "float16", 1, 16) + graph_workspace_bytes(LLAMA_7B, "float16", 1)
    free = int((weights + 1000 * per_token + GIB) / 0.9) + 1
    assert fit_cache_tokens(free, LLAMA_7B, "float16", "none", 16, wanted=16384) == 1000
    assert fit_cache_tokens(free * 10, LLAMA_7B, "float16", "none", 16, wanted=16384) == 16384
    with pytest.raises(InsufficientMemoryError, match="no room for a KV cache"):
        fit_cache_tokens(int((weights + GIB) / 0.9), LLAMA_7B, "float16", "none", 16, wanted=16384)
