"""The public API of zswarm.models is exactly what docs/architecture.md promises (plus its helpers)."""

import inspect

import zswarm.models as models


def test_public_names_are_pinned():
    assert sorted(models.__all__) == sorted([
        "BlockSpan", "CheckpointError", "ClientParts", "ConfigMismatchError", "DEFAULT_MODEL_ID", "FamilyAdapter",
        "MissingTensorError", "ModelError", "ModelNotFoundError", "ModelSource", "SUPPORTED_MODEL_TYPES",
        "SpanCache", "SpanInputError", "UnsafeCheckpointError", "UnsupportedModelError", "default_model_dir",
        "load_client_parts", "load_span", "prepare_default_model", "resolve_model", "zswarm_cache_dir"])
    for name in models.__all__:
        assert hasattr(models, name)


def test_contract_signatures():
    assert list(inspect.signature(models.load_span).parameters) == ["source", "start", "end", "dtype", "device"]
    assert list(inspect.signature(models.load_client_parts).parameters) == ["source", "dtype", "device"]
    for method in ("new_cache", "inference_step", "forward", "backward", "sub"):
        assert callable(getattr(models.BlockSpan, method))
    for method in ("rollback", "reorder"):
        assert callable(getattr(models.SpanCache, method))
    assert {"model_id", "config", "family", "num_blocks", "path"} <= set(models.ModelSource.__dataclass_fields__)
    assert issubclass(models.SpanInputError, ValueError) and models.SpanInputError.code == "bad_input"
