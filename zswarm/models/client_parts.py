"""ClientParts: what a client runs locally — embeddings, final norm and LM head (tied or not)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .span import as_dtype

if TYPE_CHECKING:
    from .source import ModelSource


class ClientParts(nn.Module):
    """`.embed(input_ids) -> hidden`, `.norm(hidden)`, `.head(hidden) -> logits`, `.config`. Weights frozen."""

    def __init__(self, config, embeddings: nn.Module, final_norm: nn.Module, lm_head: nn.Linear):
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.requires_grad_(False)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(input_ids)

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final_norm(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device


def load_client_parts(source: "ModelSource", *, dtype: torch.dtype | str = torch.float32,
                      device: torch.device | str = "cpu") -> ClientParts:
    """Load only the embeddings, final norm and LM head (the head shares the embedding if tied)."""
    dtype, device = as_dtype(dtype), torch.device(device)
    family, config, index = source.family, source.config, source.weights
    tensors = index.load(family.client_tensors(index, config), dtype=dtype, device=device)
    base = family.base_prefix(index)
    embeddings = family.build_embeddings(config, tensors, base)

    with torch.device("meta"):
        final_norm = family.build_final_norm(config)
    norm_prefix = f"{base}{family.final_norm_key}."
    from .span import _assign

    _assign(final_norm, {n[len(norm_prefix):]: t for n, t in tensors.items() if n.startswith(norm_prefix)},
            "final norm", index.files.description)

    head_weight = tensors[f"{base}{family.embed_key}"] if family.tied(config) else tensors[family.lm_head_key]
    with torch.device("meta"):
        lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    lm_head.weight = nn.Parameter(head_weight, requires_grad=False)
    parts = ClientParts(config, embeddings, final_norm, lm_head)
    return parts.eval()
