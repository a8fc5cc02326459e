"""`AutoDistributedModelForCausalLM`: a transformers causal LM whose blocks run in the swarm.

    model = AutoDistributedModelForCausalLM.from_pretrained(MODEL, initial_peers=["host:port"])
    with model.inference_session(max_length=512) as session:
        out = model.generate(ids, max_new_tokens=64, session=session)
        out2 = model.generate(more_ids, max_new_tokens=64, session=session)   # continues the chat

Only the embeddings, final norm and LM head are loaded here. `forward` is embed -> [tuned
prompts] -> remote blocks -> norm -> head (see base.py); with a `RemoteCache` (one per inference session) the blocks run as an
inference step on the servers' caches, without one as a forward with autograd. transformers'
own `generate` runs on top unchanged: every decoding strategy only sees logits and a cache.
"""
from __future__ import annotations

import inspect
import logging

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from zswarm.client.base import DistributedModelBase, choose_wire_dtype  # noqa: F401 (tests import it here)
from zswarm.client.base import left_pad_mask
from zswarm.client.inference_session import InferenceSession
from zswarm.client.remote_cache import RemoteCache
from zswarm.errors import RetractedResultsError

logger = logging.getLogger(__name__)

# transformers 5.2x calls the cache `cache` (it renames `past_key_values` with a warning); 4.x
# calls it `past_key_values`. Our forward takes either.
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
    else "past_key_values"
OUTPUT_CACHE_FIELD = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) \
    else "past_key_values"


class AutoDistributedModelForCausalLM(DistributedModelBase, GenerationMixin):
    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None, *,
                 session: InferenceSession | None = None, **kwargs):
        """transformers' generate, with the blocks' caches on the servers. With `session`, the
        ids of earlier calls in it are prepended (the servers already hold them, so only the new
        ids travel); the result holds this call's input ids and the new tokens."""
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if kwargs.get("use_cache") is False or kwargs.get("past_key_values") is not None \
                or kwargs.get("cache") is not None:
            if session is not None:
                raise ValueError("a session is a cache: do not pass use_cache=False or past_key_values with it")
            return super().generate(inputs, generation_config, **kwargs)
        temporary = session is None
        if temporary:
            session = self.inference_session(self._session_length(inputs, generation_config, kwargs))
        position_before = session.position
        try:
            done = 0
            if session.output_ids is not None:
                if (generation_config.num_beams if generation_config else kwargs.get("num_beams", 1)) > 1:
                    raise ValueError("beam search cannot continue a session: open a new one")
                done = session.output_ids.shape[1]
                previous = session.output_ids.to(inputs.device) if inputs is not None else session.output_ids
                inputs = previous if inputs is None else torch.cat([previous, inputs], dim=1)
                mask = kwargs.get("attention_mask")
                if mask is None and session.left_pad is not None:
                    mask = torch.ones(inputs.shape[0], inputs.shape[1] - done, dtype=torch.long, device=inputs.device)
                if mask is not None and mask.shape[1] == inputs.shape[1] - done:
                    # the earlier calls' part: ones, less the pads of a left-padded session's first call
                    past = left_pad_mask(session.left_pad, mask.shape[0], done).to(mask.device, mask.dtype)
                    kwargs["attention_mask"] = torch.cat([past, mask], dim=1)
            result = self._generate_verified(session, position_before, inputs, generation_config, kwargs)
            sequences = result.sequences if isinstance(result, ModelOutput) else result
            session.output_ids = sequences
            if isinstance(result, ModelOutput):
                result.sequences = sequences[:, done:]
                return result
            return sequences[:, done:]
        except Exception:
            if not temporary and not session.closed:
                # Leave the session as this call found it, so the chat can go on from there.
                session.rollback(position_before)
            raise
        finally:
            if temporary:
                session.close()

    def _generate_verified(self, session: InferenceSession, position_before: int, inputs, generation_config,
                           kwargs):
        """transformers' generate on `session`; run again from the call's start whenever a spot
        check retracts outputs of this call (a liar was found and routed around: the tokens made
        from its outputs are dropped, so the caller gets the tokens an honest swarm makes)."""
        for attempt in range(self.client_config.max_retries + 1):
            try:
                return super().generate(inputs, generation_config, **{CACHE_KWARG: RemoteCache(session)}, **kwargs)
            except RetractedResultsError as exc:
                if exc.position < position_before or attempt == self.client_config.max_retries:
                    raise  # outputs of an earlier call were wrong too: only the caller can redo those
                logger.warning("%s; generating this call's tokens again", exc)
                session.rollback(position_before)

    def _session_length(self, inputs, generation_config, kwargs) -> int:
        config = generation_config or self.generation_config
        prompt = inputs.shape[1] if inputs is not None else 1
        max_new = kwargs.get("max_new_tokens", config.max_new_tokens)
        # Speculative decoding checks its drafts past the last token it will keep: room for them.
        drafts = kwargs.get("prompt_lookup_num_tokens") or getattr(config, "prompt_lookup_num_tokens", None) or 0
        if kwargs.get("assistant_model") is not None:
            drafts = max(drafts, int(getattr(config, "num_assistant_tokens", 20) or 20))
        if max_new is not None and "max_length" not in kwargs:
            return prompt + max_new + drafts
        return max(kwargs.get("max_length") or config.max_length or 20, prompt + 1) + drafts

    # ---- forward -------------------------------------------------------------------------------
    def get_output_embeddings(self):
        return self.parts.lm_head

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: RemoteCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, return_dict: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits (and the loss of `labels`) for the caller's positions; tuned prompts, if any,
        are in front of them on the servers but not in the output."""
        past_key_values = past_key_values if past_key_values is not None else kwargs.pop("cache", None)
        session = None
        if past_key_values is not None:
            if not isinstance(past_key_values, RemoteCache):
                raise TypeError(f"past_key_values must be a RemoteCache (an inference session), "
                                f"not {type(past_key_values).__name__}")
            session = past_key_values.session
        hidden = self.run_blocks(input_ids, inputs_embeds, attention_mask, session)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.parts.head(self.parts.norm(hidden))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=logits.shape[-1], **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{OUTPUT_CACHE_FIELD: past_key_values})
