"""Falcon with rotary positions (new decoder architecture, and multi-query 7B style), `transformer.h.N`.

The old ALiBi variant (falcon-rw) folds its biases into the mask in a way we do not reproduce,
so it is refused rather than run inexactly.
"""

from __future__ import annotations

from torch import nn

from .base import FamilyAdapter


class FalconFamily(FamilyAdapter):
    name = "falcon"
    model_types = ("falcon",)
    base_prefixes = ("transformer.",)
    blocks_key = "h"
    embed_key = "word_embeddings.weight"
    final_norm_key = "ln_f"

    def block_class(self, config):
        from transformers.models.falcon import modeling_falcon  # on use: only Falcon servers pay for it

        return modeling_falcon.FalconDecoderLayer

    def rotary_class(self, config):
        from transformers.models.falcon import modeling_falcon

        return modeling_falcon.FalconRotaryEmbedding

    def check_config(self, config):
        if getattr(config, "alibi", False):
            from ..errors import UnsupportedModelError

            raise UnsupportedModelError("Falcon with alibi=True (falcon-rw) is not supported; rotary Falcon models are")

    def cache_heads_and_dim(self, config):
        head_dim = config.hidden_size // config.num_attention_heads
        if config.new_decoder_architecture:
            return int(config.num_attention_heads), head_dim  # keys are broadcast to every head before caching
        return (1 if config.multi_query else int(config.num_attention_heads)), head_dim

    def build_final_norm(self, config):
        return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def run_block(self, block, hidden, inputs, window, cache):
        return block(hidden, alibi=None, attention_mask=inputs.masks[window], layer_past=cache,
                     position_embeddings=inputs.rope)[0]
