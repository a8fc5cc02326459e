"""LoRA adapters saved by peft (adapter_config.json + adapter_model.safetensors), read as untrusted input.

    adapter = open_lora_adapter("path/or/hub-id", source)     # config and tensor header, all checked
    deltas = adapter.load(start, end, dtype=..., device=...)  # only the tensors of blocks [start, end)
    add_lora(span, adapter.name, deltas)                       # zswarm.models.lora

An adapter's name is its directory name, or its hub id. Everything is checked before a server
serves it: LoRA only, none of the peft options that change what a layer computes, every tensor
inside a transformer block and on a linear layer of the model, shapes and ranks that agree with
the config and the model, finite values. A base model other than ours is only warned about (a
local copy of a model has another name); the shapes are what must agree.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .checkpoint import read_json
from .errors import AdapterError, CheckpointError
from .lora import LoraDelta
from .source import HUB_ID, ModelSource
from .span import block_config

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
MAX_CONFIG_BYTES = 1 << 20
MAX_RANK = 4096
MAX_NAME_CHARS = 128
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}

# peft options that change what a LoRA layer computes (or touch more than LoRA deltas on linear
# layers inside the blocks); an adapter that turns one on is refused rather than served wrongly
UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA", "lora_bias": "a bias on lora_B", "fan_in_fan_out": "fan_in_fan_out (Conv1D layers)",
    "modules_to_save": "modules_to_save (whole trained modules)", "layer_replication": "layer replication",
    "use_qalora": "QA-LoRA", "alora_invocation_tokens": "activated LoRA", "target_parameters": "LoRA on parameters",
    "trainable_token_indices": "trainable tokens", "megatron_config": "Megatron layers",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA", "monteclora_config": "MonteCLoRA", "use_bdlora": "block-diagonal LoRA",
    "velora_config": "VeLoRA",
}
# options that only shape training or initialisation, or are bookkeeping; any other option that is
# set is unknown to us (a newer peft's variant, say) and refused too
HARMLESS_OPTIONS = {
    "peft_type", "task_type", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "r",
    "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "init_lora_weights", "layers_to_transform",
    "layers_pattern", "rank_pattern", "alpha_pattern", "use_rslora", "bias", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "megatron_core", "qalora_group_size", "peft_version", "ensure_weight_tying",
    "runtime_config",
}


@dataclass
class LoraAdapter:
    """A checked peft LoRA checkpoint; `load` reads the tensors of some blocks."""

    name: str
    where: str                     # the directory or hub id it came from, for messages
    weights_path: Path
    rank: int                      # the config's r (rank_pattern may differ per module)
    alpha: float
    use_rslora: bool
    # layer index -> module path inside the block -> (lora_A key, lora_B key, scale)
    layers: dict[int, dict[str, tuple[str, str, float]]] = field(repr=False)

    @property
    def targets(self) -> list[str]:
        """Module names it adapts, e.g. ['q_proj', 'v_proj']."""
        return sorted({path.rsplit(".", 1)[-1] for modules in self.layers.values() for path in modules})

    def describe(self, start: int, end: int) -> str:
        hosted = [i for i in self.layers if start <= i < end]
        scale = "rsLoRA alpha/sqrt(r)" if self.use_rslora else "alpha/r"
        return (f"LoRA r={self.rank} alpha={self.alpha:g} ({scale}) on {', '.join(self.targets)}; "
                f"weights for {len(hosted)} of blocks {start}:{end}")

    def load(self, start: int, end: int, *, dtype: torch.dtype, device: torch.device | str
             ) -> dict[int, dict[str, LoraDelta]]:
        """The deltas of blocks [start, end) in `dtype` on `device`; other blocks' tensors are not read."""
        out: dict[int, dict[str, LoraDelta]] = {}
        try:
            with safe_open(str(self.weights_path), framework="pt", device="cpu") as f:
                for layer_idx, modules in self.layers.items():
                    if not start <= layer_idx < end:
                        continue
                    for path, (key_a, key_b, scale) in modules.items():
                        a, b = (_finite(f.get_tensor(k), k, self.where).to(device=device, dtype=dtype)
                                for k in (key_a, key_b))
                        out.setdefault(layer_idx, {})[path] = LoraDelta(a, b, scale)
        except AdapterError:
            raise
        except Exception as exc:  # safetensors' own errors for a file that changed or is corrupt
            raise AdapterError(f"adapter {self.where}: cannot read {WEIGHTS_NAME}: {exc}") from exc
        return out


def open_lora_adapter(ref: str, source: ModelSource, *, hub_cache_dir: str | None = None) -> LoraAdapter:
    """A local peft adapter directory or a hub id -> a LoraAdapter checked against `source`."""
    name, config_path, weights_path = _adapter_files(ref, hub_cache_dir)
    config = _read_config(config_path, ref)
    _check_options(config, ref)
    base = config.get("base_model_name_or_path")
    if isinstance(base, str) and base and not _same_model(base, source.model_id):
        logger.warning("adapter %s was trained on %r, this server hosts %r; serving it because its shapes fit",
                       ref, base, source.model_id)
    rank = _positive(config.get("r"), "r", ref)
    alpha = _number(config.get("lora_alpha", 8), "lora_alpha", ref)
    use_rslora = bool(config.get("use_rslora", False))
    rank_pattern = _patterns(config, "rank_pattern", ref)
    alpha_pattern = _patterns(config, "alpha_pattern", ref)

    shapes = _tensor_header(weights_path, ref)
    pairs = _pairs_by_module(shapes, source, ref)
    config_for_blocks = block_config(source)
    blocks: dict[int, nn.Module] = {}
    layers: dict[int, dict[str, tuple[str, str, float]]] = {}
    for (layer_idx, path), keys in sorted(pairs.items()):
        if set(keys) != {"A", "B"}:
            missing = "lora_B" if "A" in keys else "lora_A"
            raise AdapterError(f"adapter {ref}: block {layer_idx} {path} has no {missing} weight")
        if layer_idx not in blocks:
            blocks[layer_idx] = _meta_block(source, config_for_blocks, layer_idx)
        linear = _linear(blocks[layer_idx], path, layer_idx, ref)
        module_name = f"{source.family.base_prefix(source.weights)}{source.family.blocks_key}.{layer_idx}.{path}"
        r = _positive(_pattern_value(rank_pattern, module_name, rank), "rank_pattern", ref)
        a_shape, b_shape = shapes[keys["A"]], shapes[keys["B"]]
        if a_shape != (r, linear.in_features) or b_shape != (linear.out_features, r):
            raise AdapterError(
                f"adapter {ref}: block {layer_idx} {path} is {linear.in_features}->{linear.out_features} with r={r}, "
                f"so lora_A should be {[r, linear.in_features]} and lora_B {[linear.out_features, r]}; "
                f"the file has {list(a_shape)} and {list(b_shape)}")
        if r > min(MAX_RANK, linear.in_features, linear.out_features):
            raise AdapterError(f"adapter {ref}: rank {r} of block {layer_idx} {path} exceeds "
                               f"min({MAX_RANK}, {linear.in_features}, {linear.out_features})")
        module_alpha = _number(_pattern_value(alpha_pattern, module_name, alpha), "alpha_pattern", ref)
        scale = module_alpha / math.sqrt(r) if use_rslora else module_alpha / r
        layers.setdefault(layer_idx, {})[path] = (keys["A"], keys["B"], scale)
    return LoraAdapter(name=name, where=str(ref), weights_path=weights_path, rank=rank, alpha=alpha,
                       use_rslora=use_rslora, layers=layers)


# ---- files ------------------------------------------------------------------------------------
def _adapter_files(ref: str, hub_cache_dir: str | None) -> tuple[str, Path, Path]:
    local = Path(ref).expanduser()
    if local.is_dir():
        name = local.resolve().name
        config_path, weights_path = local / CONFIG_NAME, local / WEIGHTS_NAME
        if not config_path.is_file():
            raise AdapterError(f"adapter {ref}: no {CONFIG_NAME} in this directory; is it a peft adapter?")
        if not weights_path.is_file():
            if (local / PICKLE_WEIGHTS).is_file():
                raise AdapterError(f"adapter {ref}: only {PICKLE_WEIGHTS} (pickle), which zswarm never opens; "
                                   f"save it with save_pretrained(dir, safe_serialization=True)")
            raise AdapterError(f"adapter {ref}: no {WEIGHTS_NAME} in this directory")
    elif str(ref).startswith((".", "/", "~")) or not HUB_ID.match(str(ref)):
        raise AdapterError(f"adapter {ref!r} is neither an existing directory nor a Hugging Face hub id")
    else:
        from .hub import HubFiles

        name, files = str(ref), HubFiles(str(ref), cache_dir=hub_cache_dir)
        try:
            config_path, weights_path = files.fetch(CONFIG_NAME), files.fetch(WEIGHTS_NAME)
        except CheckpointError as exc:
            raise AdapterError(f"adapter {ref!r} is not a local directory, and as a hub id: {exc}") from None
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise AdapterError(f"adapter {ref!r}: its name {name[:40]!r} must be printable and at most "
                           f"{MAX_NAME_CHARS} characters (rename the directory)")
    return name, config_path, weights_path


def _read_config(path: Path, ref: str) -> dict:
    config = read_json(path, MAX_CONFIG_BYTES, f"adapter {ref}: {CONFIG_NAME}", AdapterError)
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {ref}: {CONFIG_NAME} is not a JSON object")
    return config


def _check_options(config: dict, ref: str) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(f"adapter {ref}: peft_type is {peft_type!r}; zswarm servers serve LORA adapters only")
    for option, value in config.items():
        if option in UNSUPPORTED_OPTIONS and value:
            raise AdapterError(f"adapter {ref}: uses {UNSUPPORTED_OPTIONS[option]} ({option}), "
                               f"which zswarm servers do not support")
        if option not in HARMLESS_OPTIONS and option not in UNSUPPORTED_OPTIONS and value:
            raise AdapterError(f"adapter {ref}: sets {option}={str(value)[:60]}, an option zswarm servers do not know; "
                               f"refused rather than served wrongly")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"adapter {ref}: trains biases (bias={config['bias']!r}); only bias='none' is supported")


def _tensor_header(path: Path, ref: str) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            shapes = {}
            for key in f.keys():
                piece = f.get_slice(key)
                if piece.get_dtype() not in FLOAT_DTYPES:
                    raise AdapterError(
                        f"adapter {ref}: tensor {key!r} has dtype {piece.get_dtype()}, not floating point")
                shapes[key] = tuple(piece.get_shape())
            return shapes
    except AdapterError:
        raise
    except Exception as exc:  # safetensors' own error types for a corrupt header
        raise AdapterError(f"adapter {ref}: cannot read {WEIGHTS_NAME}: {exc}") from None


def _finite(tensor: torch.Tensor, key: str, ref: str) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise AdapterError(f"adapter {ref}: tensor {key!r} holds NaN or infinite values")
    return tensor


# ---- the model's side -------------------------------------------------------------------------
def _pairs_by_module(shapes: dict[str, tuple[int, ...]], source: ModelSource, ref: str
                     ) -> dict[tuple[int, str], dict[str, str]]:
    """(layer index, module path in the block) -> {"A": key, "B": key}; every key must be one of those."""
    block_prefix = f"{PEFT_PREFIX}{source.family.base_prefix(source.weights)}{source.family.blocks_key}."
    key_re = re.compile(rf"^{re.escape(block_prefix)}(\d+)\.(.+)$")
    pairs: dict[tuple[int, str], dict[str, str]] = {}
    for key in shapes:
        parsed = LORA_KEY.match(key)
        where = key_re.match(parsed.group("module")) if parsed else None
        if where is None:
            raise AdapterError(f"adapter {ref}: tensor {key!r} is not a LoRA weight inside a transformer block "
                               f"(expected {block_prefix}N.<module>.lora_A.weight); servers apply only those")
        layer_idx, path = int(where.group(1)), where.group(2)
        if layer_idx >= source.num_blocks:
            raise AdapterError(f"adapter {ref}: tensor {key!r} is for block {layer_idx}, "
                               f"but {source.model_id} has {source.num_blocks} blocks")
        pairs.setdefault((layer_idx, path), {})[parsed.group("ab")] = key
    if not pairs:
        raise AdapterError(f"adapter {ref}: {WEIGHTS_NAME} holds no LoRA weights")
    return pairs


def _meta_block(source: ModelSource, config, layer_idx: int) -> nn.Module:
    """Block `layer_idx` without weights (meta device): its module names and linear shapes."""
    return source.family.build_block(config, layer_idx)


def _linear(block: nn.Module, path: str, layer_idx: int, ref: str) -> nn.Linear:
    try:
        module = block.get_submodule(path)
    except AttributeError:
        raise AdapterError(f"adapter {ref}: targets {path!r}, which block {layer_idx} does not have") from None
    if not isinstance(module, nn.Linear):
        raise AdapterError(f"adapter {ref}: targets block {layer_idx} {path}, a {type(module).__name__}; "
                           f"only linear layers are supported")
    return module


def _same_model(base: str, model_id: str) -> bool:
    return base == model_id or base.rstrip("/").rsplit("/", 1)[-1] == model_id.rstrip("/").rsplit("/", 1)[-1]


def _patterns(config: dict, option: str, ref: str) -> dict[str, object]:
    value = config.get(option) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise AdapterError(f"adapter {ref}: {option} must map module names to numbers")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise AdapterError(f"adapter {ref}: {option} key {pattern!r} is not a valid pattern ({exc})") from None
    return value


def _pattern_value(patterns: dict[str, object], module_name: str, default):
    """peft's rule (utils.other.get_pattern_key): the first key matching a suffix of the module name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return value
    return default


def _positive(value, what: str, ref: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RANK:
        raise AdapterError(f"adapter {ref}: {what} must be an integer in 1..{MAX_RANK}, got {value!r}")
    return value


def _number(value, what: str, ref: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterError(f"adapter {ref}: {what} must be a finite number, got {value!r}")
    return float(value)
