"""A Llama checkpoint of a named shape with random fp16 weights, one safetensors shard per block,
so a 7B-shaped model can be benchmarked without downloading one."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

SHAPES = {  # LlamaConfig keywords
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096),
    "small": dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=8,
                  num_hidden_layers=4, vocab_size=1000, max_position_embeddings=1024),
}


def make_random_llama(out: Path, shape: str, device: str) -> Path:
    """A Llama checkpoint of the given shape with random fp16 weights, one safetensors shard per block."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, dtype="float16")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(0)
    groups: dict = {}
    for name, size in shapes.items():
        match = re.match(r"model\.layers\.(\d+)\.", name)
        groups.setdefault(f"block{int(match.group(1)):03d}" if match else "rest", []).append((name, size))
    weight_map, total = {}, 0
    for group, items in groups.items():
        tensors = {}
        for name, size in items:
            if name.endswith("norm.weight"):
                t = torch.ones(size, dtype=torch.float16)
            else:
                t = (torch.randn(size, generator=gen, device=device, dtype=torch.float16) * 0.02).cpu()
            tensors[name] = t
            total += t.numel() * 2
        filename = f"model-{group}.safetensors"
        save_file(tensors, str(out / filename), metadata={"format": "pt"})
        weight_map.update({name: filename for name in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    config.save_pretrained(str(out))
    return out
