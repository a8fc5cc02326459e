"""zswarm.models: run any span of a Hugging Face model's blocks exactly, loading only its weights.

    source = resolve_model("zswarm/SmolLM2-135M-Instruct-Q4_1")   # or a directory, or a hub id
    span = load_span(source, 0, 10, dtype=torch.float16, device="cuda")
    cache = span.new_cache(batch_size=1)
    hidden = span.inference_step(hidden, cache)                      # prefill, then one token a step
    parts = load_client_parts(source)                                # embed / norm / head

The contract is docs/architecture.md, section zswarm/models.
"""

from .cache import SpanCache
from .client_parts import ClientParts, load_client_parts
from .default_model import DEFAULT_MODEL_ID, default_model_dir, prepare_default_model
from .errors import (
    CheckpointError,
    ConfigMismatchError,
    MissingTensorError,
    ModelError,
    ModelNotFoundError,
    SpanInputError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)
from .families import SUPPORTED_MODEL_TYPES, FamilyAdapter
from .source import ModelSource, resolve_model, zswarm_cache_dir
from .span import BlockSpan, load_span

__all__ = [
    "BlockSpan",
    "CheckpointError",
    "ClientParts",
    "ConfigMismatchError",
    "DEFAULT_MODEL_ID",
    "FamilyAdapter",
    "MissingTensorError",
    "ModelError",
    "ModelNotFoundError",
    "ModelSource",
    "SUPPORTED_MODEL_TYPES",
    "SpanCache",
    "SpanInputError",
    "UnsafeCheckpointError",
    "UnsupportedModelError",
    "default_model_dir",
    "load_client_parts",
    "load_span",
    "prepare_default_model",
    "resolve_model",
    "zswarm_cache_dir",
]
