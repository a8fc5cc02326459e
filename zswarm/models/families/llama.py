"""Llama, Mistral, Qwen2 and Mixtral: decoders stored as `model.layers.N`, rotary positions, RMSNorm.

They differ only in the layer class, the sliding window rule, and Mixtral's expert tensors (the
original checkpoints store one matrix per expert; transformers 5 fuses them into 3-D tensors).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from ..checkpoint import WeightIndex
from .base import FamilyAdapter

# model_type -> the prefix of its transformers classes; modeling_<type> is imported on first use,
# so a server pays only for its own family (`import zswarm.models` imports no modeling code).
_PREFIXES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "mixtral": "Mixtral"}


def _classes(model_type: str) -> tuple[type, type, type]:
    """(decoder layer, rotary embedding, RMSNorm) classes of a model type."""
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    prefix = _PREFIXES[model_type]
    return (getattr(module, f"{prefix}DecoderLayer"), getattr(module, f"{prefix}RotaryEmbedding"),
            getattr(module, f"{prefix}RMSNorm"))


class LlamaFamily(FamilyAdapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")
    decode_graphs = True
    left_padding = True  # SDPA attention takes per-row bool masks, rotary takes per-row cos/sin

    def block_class(self, config):
        return _classes(config.model_type)[0]

    def rotary_class(self, config):
        return _classes(config.model_type)[1]

    def build_final_norm(self, config) -> nn.Module:
        return _classes(config.model_type)[2](config.hidden_size, eps=config.rms_norm_eps)

    def sliding_window(self, config, layer_idx):
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and config.model_type == "qwen2":
            # Qwen2 applies the window only to layers marked "sliding_attention" (use_sliding_window)
            return window if layer_types[layer_idx] == "sliding_attention" else None
        return window if config.model_type in ("mistral", "mixtral") else None


class MixtralFamily(LlamaFamily):
    name = "mixtral"
    model_types = ("mixtral",)
    decode_graphs = False  # expert routing picks rows by value: shapes depend on the data
    experts_implementation = "grouped_mm"  # what transformers picks for the whole model by default

    def _legacy(self, index: WeightIndex, prefix: str) -> bool:
        return f"{prefix}block_sparse_moe.gate.weight" in index

    def block_tensors(self, index, block, layer_idx):
        prefix = f"{self.base_prefix(index)}{self.blocks_key}.{layer_idx}."
        expected = super().block_tensors(index, block, layer_idx)
        if not self._legacy(index, prefix):
            return expected
        # original layout: block_sparse_moe.{gate, experts.E.w1/w2/w3}
        config = block.self_attn.config
        hidden, inter = config.hidden_size, config.intermediate_size
        out = {name.replace(".mlp.", ".block_sparse_moe."): shape for name, shape in expected.items()
               if ".mlp.experts." not in name}
        for e in range(config.num_local_experts):
            for w, shape in (("w1", (inter, hidden)), ("w2", (hidden, inter)), ("w3", (inter, hidden))):
                out[f"{prefix}block_sparse_moe.experts.{e}.{w}.weight"] = torch.Size(shape)
        return out

    def block_state_dict(self, tensors, index, layer_idx):
        prefix = f"{self.base_prefix(index)}{self.blocks_key}.{layer_idx}."
        if not self._legacy(index, prefix):
            return super().block_state_dict(tensors, index, layer_idx)
        legacy = f"{prefix}block_sparse_moe."
        state = {name[len(prefix):].replace("block_sparse_moe.", "mlp."): t for name, t in tensors.items()
                 if ".experts." not in name}
        n = sum(1 for name in tensors if name.startswith(f"{legacy}experts.") and name.endswith(".w1.weight"))
        w = {k: [tensors.pop(f"{legacy}experts.{e}.{k}.weight") for e in range(n)] for k in ("w1", "w2", "w3")}
        # same fusion as transformers' conversion mapping: gate_up = cat(stack(w1), stack(w3), dim=1)
        state["mlp.experts.gate_up_proj"] = torch.cat([torch.stack(w["w1"]), torch.stack(w["w3"])], dim=1)
        state["mlp.experts.down_proj"] = torch.stack(w["w2"])
        return state
