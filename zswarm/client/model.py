"""`AutoDistributedModelForCausalLM`: a transformers causal LM whose blocks run in the swarm.

    model = AutoDistributedModelForCausalLM.from_pretrained(MODEL, initial_peers=["host:port"])
    with model.inference_session(max_length=512) as session:
        out = model.generate(ids, max_new_tokens=64, session=session)
        out2 = model.generate(more_ids, max_new_tokens=64, session=session)   # continues the chat

Only the embeddings, final norm and LM head are loaded here. `forward` is embed -> remote
blocks -> norm -> head; with a `RemoteCache` (one per inference session) the blocks run as an
inference step on the servers' caches, without one as a forward with autograd. transformers'
own `generate` runs on top unchanged: every decoding strategy only sees logits and a cache.
"""
from __future__ import annotations

import inspect
import os

import torch
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from zswarm.client.config import ClientConfig
from zswarm.client.inference_session import InferenceSession
from zswarm.client.remote_cache import RemoteCache
from zswarm.client.remote_sequential import RemoteSequential
from zswarm.client.swarm import SwarmConnection

# transformers 5.2x calls the cache `cache` (it renames `past_key_values` with a warning); 4.x
# calls it `past_key_values`. Our forward takes either.
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
    else "past_key_values"

WIRE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def choose_wire_dtype(setting: str, model_dtype: torch.dtype | None) -> torch.dtype:
    """"auto": bfloat16 for bfloat16 models (fp16 would overflow their activations), float16 else."""
    if setting != "auto":
        return WIRE_DTYPES[setting]
    return torch.bfloat16 if model_dtype == torch.bfloat16 else torch.float16


class AutoDistributedModelForCausalLM(PreTrainedModel, GenerationMixin):
    main_input_name = "input_ids"
    base_model_prefix = "zswarm"

    def __init__(self, config, *, parts, swarm: SwarmConnection, client_config: ClientConfig,
                 wire_dtype: torch.dtype):
        super().__init__(config)
        self.parts = parts
        self.blocks = RemoteSequential(swarm, wire_dtype=wire_dtype)
        self.swarm = swarm
        self.client_config = client_config
        self.wire_dtype = wire_dtype

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_ref: str, *, initial_peers=(), dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, **kwargs) -> "AutoDistributedModelForCausalLM":
        """`model_ref`: a local checkpoint directory or a hub id. `dtype`/`device` are for the
        local parts (default float32 on CPU); other keyword arguments are ClientConfig fields."""
        from zswarm.models import load_client_parts, resolve_model

        dtype = dtype if dtype is not None else kwargs.pop("torch_dtype", None)   # transformers 4's name
        config, rest = ClientConfig.from_kwargs(dict(kwargs, initial_peers=initial_peers))
        if rest:
            raise TypeError(f"unknown arguments: {sorted(rest)} (not ClientConfig fields)")
        source = resolve_model(model_ref)
        dtype = _as_dtype(dtype) or torch.float32
        parts = load_client_parts(source, dtype=dtype, device=torch.device(device or "cpu"))
        swarm = SwarmConnection(config, model_id=config.model_id or source.model_id, num_blocks=source.num_blocks)
        try:
            model = cls.from_parts(source, parts, swarm, config)
        except BaseException:
            swarm.close()
            raise
        return model

    @classmethod
    def from_parts(cls, source, parts, swarm: SwarmConnection, config: ClientConfig) -> "AutoDistributedModelForCausalLM":
        """Build the model from already loaded local parts and a swarm connection (tests do)."""
        model_dtype = _as_dtype(getattr(source.config, "dtype", None) or getattr(source.config, "torch_dtype", None))
        model = cls(source.config, parts=parts, swarm=swarm, client_config=config,
                    wire_dtype=choose_wire_dtype(config.wire_dtype, model_dtype))
        path = getattr(source, "path", None)
        if path and os.path.exists(os.path.join(path, "generation_config.json")):
            model.generation_config = GenerationConfig.from_pretrained(path)
        model.eval()
        return model

    def close(self) -> None:
        """Leave the swarm: stop the background refresh, close sockets and the DHT node."""
        self.swarm.close()

    # ---- sessions ------------------------------------------------------------------------------
    def inference_session(self, max_length: int) -> InferenceSession:
        """A session holding up to `max_length` tokens (per sequence) on the servers; use it as a
        context manager and pass it to `generate(..., session=session)` to continue a chat."""
        return InferenceSession(self.swarm.manager, self.client_config, max_length=max_length,
                                wire_dtype=self.wire_dtype, run=self.swarm.run)

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
                if mask is not None and mask.shape[1] == inputs.shape[1] - done:
                    kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], done), mask], dim=1)
            result = super().generate(inputs, generation_config, **{CACHE_KWARG: RemoteCache(session)}, **kwargs)
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

    def _session_length(self, inputs, generation_config, kwargs) -> int:
        config = generation_config or self.generation_config
        prompt = inputs.shape[1] if inputs is not None else 1
        max_new = kwargs.get("max_new_tokens", config.max_new_tokens)
        if max_new is not None and "max_length" not in kwargs:
            return prompt + max_new
        return max(kwargs.get("max_length") or config.max_length or 20, prompt + 1)

    # ---- forward -------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.parts.embeddings

    def get_output_embeddings(self):
        return self.parts.lm_head

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: RemoteCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, return_dict: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise NotImplementedError("padded batches are not supported by the swarm protocol: "
                                      "generate one sequence at a time or batch sequences of equal length")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        hidden = self.parts.embed(input_ids) if inputs_embeds is None else inputs_embeds
        past_key_values = past_key_values if past_key_values is not None else kwargs.pop("cache", None)
        if past_key_values is not None:
            if not isinstance(past_key_values, RemoteCache):
                raise TypeError(f"past_key_values must be a RemoteCache (an inference session), "
                                f"not {type(past_key_values).__name__}")
            with torch.no_grad():
                hidden = past_key_values.session.step(hidden)
        else:
            hidden = self.blocks(hidden)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.parts.head(self.parts.norm(hidden))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=logits.shape[-1], **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(value, torch.dtype):
            return value
    raise ValueError(f"not a torch dtype: {dtype!r}")
