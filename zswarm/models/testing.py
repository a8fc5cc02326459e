"""Tiny random-weight checkpoints of every supported family, for tests and local experiments.

    make_tiny_checkpoint("llama", "/tmp/tiny-llama")        # sharded safetensors + index
    populate_hub_cache("/tmp/tiny-llama", "org/tiny", cache)  # the layout huggingface_hub reads offline
    make_tiny_lora_adapter("/tmp/tiny-llama", "/tmp/my-lora")  # a random peft LoRA adapter (needs peft)

Shared pytest fixtures built on these live in tests/conftest.py (`tiny_llama_dir`, ...).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

# Small but not degenerate: GQA, several heads, rope scaling, a sliding window that bites.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 32}),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, sliding_window=16,
                    tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=True),
    "mixtral": dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=None, tie_word_embeddings=False),
    "bloom": dict(model_type="bloom", hidden_size=64, n_head=4, vocab_size=256, tie_word_embeddings=True),
    "falcon": dict(model_type="falcon", hidden_size=64, num_attention_heads=4, num_kv_heads=2, vocab_size=256,
                   new_decoder_architecture=True, alibi=False, parallel_attn=True, bias=False,
                   max_position_embeddings=256, tie_word_embeddings=True),
}
FAMILY_NAMES = tuple(TINY_CONFIGS)
_LAYER_KEY = {"bloom": "n_layer"}


def tiny_config(family: str, *, num_layers: int = 6, initializer_range: float = 0.15, **overrides):
    from transformers import AutoConfig

    if family not in TINY_CONFIGS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILY_NAMES)}")
    fields = dict(TINY_CONFIGS[family])
    model_type = fields.pop("model_type")
    fields[_LAYER_KEY.get(family, "num_hidden_layers")] = num_layers
    fields["initializer_range"] = initializer_range
    fields.update(overrides)
    return AutoConfig.for_model(model_type, **fields)


def make_tiny_checkpoint(family: str, out_dir: str | os.PathLike, *, num_layers: int = 6, seed: int = 0,
                         max_shard_size: int | str = 100_000, **config_overrides) -> Path:
    """Save a random-weight `family` model with `num_layers` blocks as sharded safetensors in out_dir."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, num_layers=num_layers, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), max_shard_size=max_shard_size)
    return out


def load_reference_model(checkpoint_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """The whole Hugging Face model, as the ground truth for tests."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), dtype=dtype).eval()


def populate_hub_cache(checkpoint_dir: str | os.PathLike, repo_id: str, cache_dir: str | os.PathLike,
                       files: list[str] | None = None, commit: str = "0" * 40) -> Path:
    """Copy checkpoint files into huggingface_hub's cache layout, as if downloaded from `repo_id`."""
    repo_dir = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    source = Path(checkpoint_dir)
    for name in files if files is not None else sorted(p.name for p in source.iterdir() if p.is_file()):
        shutil.copyfile(source / name, snapshot / name)
    return snapshot


def make_tiny_lora_adapter(checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike, *, r: int = 4,
                           lora_alpha: float = 8, target_modules=("q_proj", "v_proj", "down_proj"), seed: int = 1,
                           **lora_options) -> Path:
    """Save a random LoRA adapter (peft format, non-zero lora_B) for a tiny checkpoint in out_dir.

    Needs peft (the `test` extra); servers never import it.
    """
    from peft import LoraConfig, get_peft_model

    model = load_reference_model(checkpoint_dir)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)  # "all-linear" too
    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=targets, init_lora_weights=False,
                        **lora_options)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    out = Path(out_dir)
    peft_model.save_pretrained(str(out))
    return out


def load_reference_peft_model(checkpoint_dir: str | os.PathLike, adapter_dir: str | os.PathLike):
    """The whole Hugging Face model with a peft adapter on top, as the ground truth for tests."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_reference_model(checkpoint_dir), str(adapter_dir)).eval()
