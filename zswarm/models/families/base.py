"""What a model family must tell zswarm: where its tensors live and how to call one block.

An adapter never reimplements a layer: blocks are transformers' own classes, built on the meta
device with their global layer index and then given the checkpoint's tensors. Subclasses set
the class attributes and override the few methods where their family differs.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checkpoint import WeightIndex
from ..errors import CheckpointError, UnsupportedModelError
from ..positions import RotaryTable, padded_mask, padded_positions, sdpa_mask


@dataclass
class StepInputs:
    """Everything a block needs besides hidden states for one call at positions [past, past+q)."""

    past: int
    q: int
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    masks: dict[int | None, torch.Tensor | None] = field(default_factory=dict)  # by sliding window
    alibi: torch.Tensor | None = None


class FamilyAdapter:
    name: str = ""
    model_types: tuple[str, ...] = ()
    base_prefixes: tuple[str, ...] = ("model.",)  # where the decoder lives; the first one present wins
    blocks_key: str = "layers"                    # blocks are f"{base}{blocks_key}.{i}."
    embed_key: str = "embed_tokens.weight"        # relative to the base prefix
    final_norm_key: str = "norm"                  # module prefix, relative to the base prefix
    lm_head_key: str = "lm_head.weight"           # absolute
    attn_implementation: str = "sdpa"
    experts_implementation: str | None = None     # for mixture-of-experts layers
    decode_graphs: bool = False                   # one-token steps capturable as CUDA graphs (no host syncs)
    left_padding: bool = False                    # step_inputs honours left-padded rows (per-row rope and mask)

    # ---- classes and config -------------------------------------------------------------------
    def block_class(self, config) -> type[nn.Module]:
        raise NotImplementedError

    def rotary_class(self, config) -> type[nn.Module] | None:
        return None

    def check_config(self, config) -> None:
        """Raise UnsupportedModelError for variants of the family the adapter cannot run exactly."""

    def num_blocks(self, config) -> int:
        return int(config.num_hidden_layers)

    def sliding_window(self, config, layer_idx: int) -> int | None:
        return None

    def cache_heads_and_dim(self, config) -> tuple[int, int]:
        """(heads stored per token in the KV cache, head dim), for cache memory accounting."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads), int(head_dim)

    # ---- checkpoint names ---------------------------------------------------------------------
    def base_prefix(self, index: WeightIndex) -> str:
        cached = index.memo.get("base_prefix")
        if cached is not None:
            return cached
        for prefix in self.base_prefixes:
            if any(n.startswith(f"{prefix}{self.blocks_key}.") or n == f"{prefix}{self.embed_key}"
                   for n in index.weight_map):
                index.memo["base_prefix"] = prefix
                return prefix
        raise CheckpointError(
            f"{index.files.description}: no tensors under {[p + self.blocks_key for p in self.base_prefixes]}; "
            f"is this a {self.name} checkpoint?")

    def block_tensors(self, index: WeightIndex, block: nn.Module, layer_idx: int) -> dict[str, torch.Size | None]:
        """Checkpoint tensor name -> expected shape, for one block."""
        prefix = f"{self.base_prefix(index)}{self.blocks_key}.{layer_idx}."
        return {prefix + name: t.shape for name, t in block.state_dict().items()}

    def block_state_dict(self, tensors: dict[str, torch.Tensor], index: WeightIndex, layer_idx: int
                         ) -> dict[str, torch.Tensor]:
        """Checkpoint tensors (as read) -> the block module's state dict."""
        prefix = f"{self.base_prefix(index)}{self.blocks_key}.{layer_idx}."
        return {name[len(prefix):]: t for name, t in tensors.items()}

    # ---- building -----------------------------------------------------------------------------
    def build_block(self, config, layer_idx: int) -> nn.Module:
        with torch.device("meta"):
            return self.block_class(config)(config, layer_idx)

    def build_rotary(self, config, dtype: torch.dtype, device: torch.device) -> RotaryTable | None:
        cls = self.rotary_class(config)
        if cls is None:
            return None
        # inverse frequencies are computed on the CPU, as when transformers builds the whole model
        with torch.device("cpu"):
            rotary = cls(config=config)
        return RotaryTable(rotary.to(device), dtype, device)

    def build_embeddings(self, config, tensors: dict[str, torch.Tensor], base: str) -> nn.Module:
        weight = tensors[base + self.embed_key]
        return nn.Embedding.from_pretrained(weight, freeze=True)

    def client_tensors(self, index: WeightIndex, config) -> dict[str, torch.Size | None]:
        base = self.base_prefix(index)
        names = {base + self.embed_key: (config.vocab_size, config.hidden_size)}
        for name in index.names_with_prefix(f"{base}{self.final_norm_key}."):
            names[name] = None
        if not self.tied(config):
            names[self.lm_head_key] = (config.vocab_size, config.hidden_size)
        return names

    def tied(self, config) -> bool:
        return bool(getattr(config, "tie_word_embeddings", False))

    def build_final_norm(self, config) -> nn.Module:
        raise NotImplementedError

    # ---- running ------------------------------------------------------------------------------
    def step_inputs(self, span: Any, past: int, q: int, batch: int, left_pad: torch.Tensor | None = None
                    ) -> StepInputs:
        """Rotary cos/sin and masks; with `left_pad` ([batch], see SpanCache) per row: [batch, q, dim]
        cos/sin and [batch, 1, q, kv] masks. Without it, exactly the unpadded path."""
        inputs = StepInputs(past, q)
        if left_pad is not None:
            if span.rotary is not None:
                inputs.rope = span.rotary.get_rows(padded_positions(past, q, left_pad))
            for window in span.windows_used:
                inputs.masks[window] = padded_mask(past, q, window, left_pad)
            return inputs
        if span.rotary is not None:
            inputs.rope = span.rotary.get(past, q)
        for window in span.windows_used:
            inputs.masks[window] = sdpa_mask(past, q, window, span.device)
        return inputs

    def run_block(self, block: nn.Module, hidden: torch.Tensor, inputs: StepInputs, window: int | None,
                  cache: Any) -> torch.Tensor:
        return block(hidden, attention_mask=inputs.masks[window], position_embeddings=inputs.rope,
                     **{cache_keyword(type(block)): cache})


@functools.cache
def cache_keyword(block_class: type) -> str:
    """transformers 5.24 renamed the layers' `past_key_values` to `cache` (the old name warns on every call)."""
    return "cache" if "cache" in inspect.signature(block_class.forward).parameters else "past_key_values"


def unsupported(model_type: str, supported: list[str]) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"model_type {model_type!r} is not supported; zswarm runs: {', '.join(sorted(supported))}")
