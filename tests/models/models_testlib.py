"""Shared pieces of the zswarm.models tests: the whole HF model as ground truth, and a 3-span pipeline."""

from __future__ import annotations

import torch

from zswarm.models import load_client_parts, load_span, resolve_model
from zswarm.models.decode_graph import BucketStep, RowBatch, bucket
from zswarm.models.testing import load_reference_model

SPLITS = ((0, 2), (2, 3), (3, 6))  # three spans of a 6-block tiny model, uneven on purpose
TOL = 1e-4


class Pipeline:
    """embeddings -> spans -> norm -> head, as a client and three servers would run it (in process)."""

    def __init__(self, checkpoint_dir, splits=SPLITS, dtype=torch.float32):
        self.source = resolve_model(str(checkpoint_dir))
        self.spans = [load_span(self.source, a, b, dtype=dtype) for a, b in splits]
        self.parts = load_client_parts(self.source, dtype=dtype)
        self.caches = None

    def new_session(self, batch_size: int):
        self.caches = [span.new_cache(batch_size) for span in self.spans]

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.parts.embed(input_ids)
        for span, cache in zip(self.spans, self.caches):
            hidden = span.inference_step(hidden, cache)
        return self.parts.head(self.parts.norm(hidden))

    def reorder(self, hypo_ids):
        for cache in self.caches:
            cache.reorder(hypo_ids)

    def rollback(self, n: int):
        for cache in self.caches:
            cache.rollback(n)


def reference(checkpoint_dir):
    return load_reference_model(checkpoint_dir)


@torch.no_grad()
def reference_last_logits(model, token_history: torch.Tensor) -> torch.Tensor:
    """What the whole model predicts after this exact history, computed from scratch (no cache)."""
    return model(token_history).logits[:, -1]


def eager_and_static(span, prefill: torch.Tensor, max_length: int, left_pad=None):
    """Two caches after the same prefill: one for eager steps, one for the bucketed tick a graph captures."""
    eager = span.new_cache(prefill.shape[0], max_length=max_length, left_pad=left_pad)
    static = span.new_cache(prefill.shape[0], max_length=max_length, left_pad=left_pad)
    span.inference_step(prefill, eager)
    span.inference_step(prefill, static)
    return eager, static


def bucket_tick(span, caches, tokens, rows: int | None = None, pages: int | None = None) -> torch.Tensor:
    """One token per row of `caches` through the fixed-shape tick a CUDA graph captures (uncaptured,
    bucketed: padding rows and pages included); every cache then advances as inference_step's does."""
    for cache in caches:
        cache.rows_for_step(1)
    batch = RowBatch.of(caches)
    step = BucketStep(span, span.kv_pool, rows or bucket(batch.rows), pages or bucket(batch.pages()))
    with torch.inference_mode():
        out = step.run_uncaptured(torch.cat(tokens), batch).clone()
    for cache in caches:
        cache.length += 1
    return out


def static_step(span, cache, token: torch.Tensor) -> torch.Tensor:
    """One token of one session through the fixed-shape tick."""
    return bucket_tick(span, [cache], [token])
