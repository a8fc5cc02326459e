"""`RemoteCache`: the transformers `Cache` that stands for an inference session's server caches.

`generate` only asks a cache how long it is, to reorder it (beam search) and to crop it; the
keys and values themselves live on the servers. So this cache holds no layers: its length is the
session's position (less the tuned prompts at its start), a reorder becomes the `hypo_ids` of the next step, a crop a rollback.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from zswarm.client.inference_session import InferenceSession


class RemoteCache(Cache):
    def __init__(self, session: InferenceSession):
        super().__init__(layers=[])
        self.session = session

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens of the caller's ids the servers hold (the tuned prompts before them not counted)."""
        return max(self.session.position - self.session.prefix_length, 0)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.session.reorder(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        # transformers' convention: a negative count of tokens to drop from the end.
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove:
            self.session.rollback(self.session.position + tokens_to_remove)

    def reset(self) -> None:
        self.session.rollback(0)

    # transformers 5.2x asks which layers are "linear" (recurrent state, never sliced) and would
    # treat an empty list as "all linear": then it stops cutting the already cached ids off a
    # continued conversation's input. One attention-like layer stands for all of ours.
    @property
    def is_linear(self) -> list[bool]:
        return [False]

    @property
    def is_sliding(self) -> list[bool]:
        return [False]

    @property
    def batch_size(self) -> int:
        return self.session.batch_size or -1

    def __repr__(self) -> str:
        return f"RemoteCache(position={self.session.position})"
