"""Model-family adapters, found by `config.model_type`.

An adapter imports its transformers modeling module when a checkpoint first needs its classes, so
importing this package (every server and client does) loads none of them.
"""

from __future__ import annotations

from .base import FamilyAdapter, StepInputs, unsupported
from .bloom import BloomFamily
from .falcon import FalconFamily
from .llama import LlamaFamily, MixtralFamily

FAMILIES: tuple[FamilyAdapter, ...] = (LlamaFamily(), MixtralFamily(), BloomFamily(), FalconFamily())
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
SUPPORTED_MODEL_TYPES = tuple(sorted(_BY_MODEL_TYPE))


def family_for(config) -> FamilyAdapter:
    """The adapter for a transformers config; UnsupportedModelError naming the supported types otherwise."""
    model_type = getattr(config, "model_type", None)
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise unsupported(str(model_type), list(SUPPORTED_MODEL_TYPES))
    family.check_config(config)
    return family


__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "FamilyAdapter", "StepInputs", "family_for"]
