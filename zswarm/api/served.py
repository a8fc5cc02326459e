"""The models one zswarm-api answers for: each a swarm client (embeddings and LM head here, blocks
in the swarm) with its tokenizer, and what a request's text becomes before it is generated.

One `ServedModel` serves every request for its model at once: each request opens its own
inference session on the one swarm connection (sessions are independent; see
tests/client/test_swarm_concurrent.py), so requests are not serialized.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from zswarm.errors import ApiBadRequest, ApiModelNotFound

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    model_id: str  # as servers announce it, and as requests name it
    model: object  # AutoDistributedModelForCausalLM
    tokenizer: object
    context_length: int  # prompt + completion tokens the model can attend over
    eos_ids: tuple[int, ...]
    created: int  # unix time it was loaded (OpenAI's `created` of a model)

    @classmethod
    def load(cls, model_ref: str, initial_peers, client_kwargs: dict) -> "ServedModel":
        from transformers import AutoTokenizer

        from zswarm.client import AutoDistributedModelForCausalLM
        from zswarm.models import resolve_model

        source = resolve_model(model_ref)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        model = AutoDistributedModelForCausalLM.from_pretrained(model_ref, initial_peers=list(initial_peers),
                                                                **client_kwargs)
        eos = model.generation_config.eos_token_id
        eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        if tokenizer.eos_token_id is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        context = int(getattr(source.config, "max_position_embeddings", 0) or getattr(tokenizer, "model_max_length", 0)
                      or 2048)
        logger.info("serving %s (%d blocks, context %d tokens, wire %s)", model.swarm.model_id, source.num_blocks,
                    context, str(model.wire_dtype).replace("torch.", ""))
        return cls(model.swarm.model_id, model, tokenizer, context, tuple(sorted(eos_ids)), int(time.time()))

    def close(self) -> None:
        self.model.close()

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    # ---- requests' text -> prompt ids ------------------------------------------------------------
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiBadRequest(f"{self.model_id} has no chat template: use /v1/completions", param="messages")
        try:
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except Exception as exc:  # a template may refuse a conversation (jinja raise_exception)
            raise ApiBadRequest(f"the chat template of {self.model_id} refused these messages: {exc}",
                                param="messages") from None
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(i) for i in ids]

    def text_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return [int(i) for i in self.tokenizer(prompt)["input_ids"]]
        if any(not 0 <= t < self.vocab_size for t in prompt):
            raise ApiBadRequest(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
        return list(prompt)

    def max_tokens_for(self, prompt_length: int, asked: int | None, default: int) -> int:
        """The completion length: as asked, or `default` clipped to the context; 400 past the context."""
        if prompt_length == 0:
            raise ApiBadRequest("the prompt is empty", param="prompt")
        room = self.context_length - prompt_length
        if asked is None:
            if room < 1:
                raise ApiBadRequest(f"the prompt has {prompt_length} tokens: no room left in {self.model_id}'s "
                                    f"context of {self.context_length}", code="context_length_exceeded")
            return min(default, room)
        if asked > room:
            raise ApiBadRequest(f"{prompt_length} prompt tokens + max_tokens {asked} exceed {self.model_id}'s "
                                f"context of {self.context_length} tokens", code="context_length_exceeded",
                                param="max_tokens")
        return asked


class ServedModels:
    """model id -> ServedModel, loaded at start."""

    def __init__(self, models: list[ServedModel]):
        self.by_id = {m.model_id: m for m in models}

    @classmethod
    def load(cls, model_refs, initial_peers, client_kwargs: dict) -> "ServedModels":
        loaded: list[ServedModel] = []
        try:
            for ref in model_refs:
                loaded.append(ServedModel.load(ref, initial_peers, client_kwargs))
        except BaseException:
            for model in loaded:
                model.close()
            raise
        return cls(loaded)

    def get(self, model_id: str) -> ServedModel:
        try:
            return self.by_id[model_id]
        except KeyError:
            served = ", ".join(sorted(self.by_id)) or "none"
            raise ApiModelNotFound(f"the model {model_id!r} is not served by this API (it serves: {served}); "
                                   f"start zswarm-api with --model for it") from None

    def close(self) -> None:
        for model in self.by_id.values():
            model.close()
