"""Errors raised by zswarm.models.

    ModelError (a zswarm.errors.ZswarmError)
    ├── UnsupportedModelError     model_type we have no adapter for (names the supported ones)
    ├── ModelNotFoundError        a local path or hub id that cannot be found or fetched
    ├── CheckpointError           a checkpoint that cannot be used as it is
    │   ├── UnsafeCheckpointError     .bin / pickle checkpoints (refused, never unpickled)
    │   ├── MissingTensorError        a tensor the config needs is absent (names tensor and file)
    │   ├── ConfigMismatchError       a tensor whose shape disagrees with the config
    │   └── AdapterError              a LoRA adapter that cannot be served on this model's blocks
    └── SpanInputError (ValueError)   bad hidden states / prompts / cache given to a BlockSpan

`SpanInputError` carries `code = "bad_input"`, so a server handler that lets it escape answers
with the protocol's `bad_input` error code (see docs/architecture.md).
"""

from __future__ import annotations

from zswarm.errors import ZswarmError


class ModelError(ZswarmError):
    """Base class for every error raised by zswarm.models."""


class UnsupportedModelError(ModelError):
    pass


class ModelNotFoundError(ModelError):
    pass


class CheckpointError(ModelError):
    pass


class UnsafeCheckpointError(CheckpointError):
    pass


class MissingTensorError(CheckpointError):
    pass


class ConfigMismatchError(CheckpointError):
    pass


class AdapterError(CheckpointError):
    pass


class SpanInputError(ModelError, ValueError):
    code = "bad_input"
