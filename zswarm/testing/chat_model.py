"""A tiny random-weight chat model: the tiny llama with a real byte-level tokenizer and a ChatML
chat template beside it, for tests and benchmarks that go through text (zswarm-api, chat).

    make_tiny_chat_checkpoint("/tmp/tiny-chat")   # config, safetensors, tokenizer, chat template

The tokenizer has one token per byte (GPT-2's byte-level alphabet, no merges) and three special
tokens, so any text round-trips and the model's vocabulary is just those 259 ids.
"""

from __future__ import annotations

import os
from pathlib import Path

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# ChatML, the template SmolLM2 and Qwen2 use (shortened: no default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}" + IM_START + "{{ message['role'] }}\n{{ message['content'] }}" + IM_END
    + "\n{% endfor %}{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)


def make_byte_tokenizer():
    """A transformers fast tokenizer: 256 byte tokens, then <|im_start|>, <|im_end|> (eos), <|endoftext|> (pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([IM_START, IM_END, END_OF_TEXT])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=END_OF_TEXT)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_chat_checkpoint(out_dir: str | os.PathLike, *, num_layers: int = 6, seed: int = 0) -> Path:
    """The tiny llama (zswarm.models.testing) sized to the byte tokenizer, saved with it in out_dir."""
    from transformers import GenerationConfig

    from zswarm.models.testing import make_tiny_checkpoint

    tokenizer = make_byte_tokenizer()
    out = make_tiny_checkpoint("llama", out_dir, num_layers=num_layers, seed=seed, vocab_size=len(tokenizer),
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=None)
    tokenizer.save_pretrained(str(out))
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(str(out))
    return out
