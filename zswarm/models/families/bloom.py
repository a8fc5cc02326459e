"""BLOOM: ALiBi position biases instead of rotary, blocks at `transformer.h.N` (or `h.N`)."""

from __future__ import annotations

import torch
from torch import nn

from ..positions import AlibiTable, additive_mask
from .base import FamilyAdapter, StepInputs


class BloomEmbeddings(nn.Module):
    """BLOOM normalises its word embeddings before the first block."""

    def __init__(self, embeddings: nn.Embedding, layernorm: nn.LayerNorm):
        super().__init__()
        self.word_embeddings = embeddings
        self.word_embeddings_layernorm = layernorm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings_layernorm(self.word_embeddings(input_ids))


class BloomFamily(FamilyAdapter):
    name = "bloom"
    model_types = ("bloom",)
    base_prefixes = ("transformer.", "")  # bigscience checkpoints were saved from BloomModel, unprefixed
    blocks_key = "h"
    embed_key = "word_embeddings.weight"
    final_norm_key = "ln_f"
    attn_implementation = "eager"  # BLOOM's attention is its own eager code

    def block_class(self, config):
        from transformers.models.bloom import modeling_bloom  # on use: only BLOOM servers pay for it

        return modeling_bloom.BloomBlock

    def cache_heads_and_dim(self, config):
        return int(config.n_head), int(config.hidden_size // config.n_head)

    def build_final_norm(self, config):
        return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def client_tensors(self, index, config):
        names = super().client_tensors(index, config)
        base = self.base_prefix(index)
        names[f"{base}word_embeddings_layernorm.weight"] = (config.hidden_size,)
        names[f"{base}word_embeddings_layernorm.bias"] = (config.hidden_size,)
        return names

    def build_embeddings(self, config, tensors, base):
        embeddings = super().build_embeddings(config, tensors, base)
        with torch.device("meta"):
            norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        norm.load_state_dict({"weight": tensors[f"{base}word_embeddings_layernorm.weight"],
                              "bias": tensors[f"{base}word_embeddings_layernorm.bias"]}, assign=True)
        return BloomEmbeddings(embeddings, norm)

    def step_inputs(self, span, past, q, batch, left_pad=None):  # left_padding is False: never given one
        if span.alibi is None:
            span.alibi = AlibiTable(span.config.n_head, span.dtype, span.device)
        return StepInputs(past, q, masks={None: additive_mask(past, q, span.dtype, span.device)},
                          alibi=span.alibi.get(past + q, batch))

    def run_block(self, block, hidden, inputs, window, cache):
        return block(hidden, alibi=inputs.alibi, attention_mask=inputs.masks[None], layer_past=cache)[0]
