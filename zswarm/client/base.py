"""`DistributedModelBase`: what every zswarm model class shares -- loading the local parts
(embeddings, final norm, LM head), the swarm connection, the remote blocks, prompt tuning, and
the walk embed -> [prompts] -> remote blocks that the task heads (causal LM, classification) sit on.
"""
from __future__ import annotations

import copy
import logging
import os

import torch
from transformers import GenerationConfig, PreTrainedModel

from zswarm.client.config import ClientConfig
from zswarm.client.inference_session import InferenceSession
from zswarm.client.ptune import PromptTuning
from zswarm.client.remote_sequential import RemoteSequential
from zswarm.client.swarm import SwarmConnection
from zswarm.dtypes import as_torch_dtype, dtype_name

logger = logging.getLogger(__name__)

WIRE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def choose_wire_dtype(setting: str, model_dtype: torch.dtype | None) -> torch.dtype:
    """"auto": the model's own dtype (a checkpoint that names none is float32, as transformers loads
    it). Rounding a float32 model's hidden states to float16 between servers changes greedy output
    within a few tokens, which a user never asked for; half the bytes is an explicit choice
    (wire_dtype="float16"). bfloat16 models keep bfloat16: float16 would overflow their activations."""
    if setting != "auto":
        return WIRE_DTYPES[setting]
    return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.float32


class DistributedModelBase(PreTrainedModel):
    main_input_name = "input_ids"
    base_model_prefix = "zswarm"
    # from_pretrained keyword arguments that are the model class's own, not ClientConfig fields.
    model_kwargs: tuple[str, ...] = ()

    def __init__(self, config, *, parts, swarm: SwarmConnection, client_config: ClientConfig,
                 wire_dtype: torch.dtype):
        super().__init__(config)
        self.parts = parts
        self.blocks = RemoteSequential(swarm, wire_dtype=wire_dtype)
        self.swarm = swarm
        self.client_config = client_config
        self.wire_dtype = wire_dtype
        self.tuning = (PromptTuning(client_config.tuning_mode, client_config.pre_seq_len, swarm.num_blocks,
                                    parts.embed, config.vocab_size, parts.device)
                       if client_config.tuning_mode else None)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_ref: str, *, initial_peers=(), dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, **kwargs):
        """`model_ref`: a local checkpoint directory or a hub id. `dtype`/`device` are for the
        local parts (default float32 on CPU); other keyword arguments are ClientConfig fields
        (tuning_mode, pre_seq_len, active_adapter, ...) or the class's own `model_kwargs`."""
        from zswarm.models import load_client_parts, resolve_model

        dtype = dtype if dtype is not None else kwargs.pop("torch_dtype", None)   # transformers 4's name
        config, rest = ClientConfig.from_kwargs(dict(kwargs, initial_peers=initial_peers))
        unknown = sorted(set(rest) - set(cls.model_kwargs))
        if unknown:
            raise TypeError(f"unknown arguments: {unknown} (not ClientConfig fields"
                            + (f" nor {', '.join(cls.model_kwargs)}" if cls.model_kwargs else "") + ")")
        source = resolve_model(model_ref)
        dtype = _as_dtype(dtype) or torch.float32
        parts = load_client_parts(source, dtype=dtype, device=torch.device(device or "cpu"))
        swarm = SwarmConnection(config, model_id=config.model_id or source.model_id, num_blocks=source.num_blocks)
        try:
            model = cls.from_parts(source, parts, swarm, config, **rest)
        except BaseException:
            swarm.close()
            raise
        return model

    @classmethod
    def from_parts(cls, source, parts, swarm: SwarmConnection, config: ClientConfig, **model_kwargs):
        """Build the model from already loaded local parts and a swarm connection (tests do)."""
        model_dtype = _as_dtype(getattr(source.config, "dtype", None) or getattr(source.config, "torch_dtype", None))
        wire_dtype = choose_wire_dtype(config.wire_dtype, model_dtype)
        model = cls(cls.prepare_config(copy.deepcopy(source.config), **model_kwargs), parts=parts, swarm=swarm,
                    client_config=config, wire_dtype=wire_dtype)
        logger.info("%s: hidden states travel as %s (wire_dtype=%r; the model's dtype is %s)", swarm.model_id,
                    dtype_name(wire_dtype), config.wire_dtype, dtype_name(model_dtype) if model_dtype else "not given")
        path = getattr(source, "path", None)
        if path and os.path.exists(os.path.join(path, "generation_config.json")):
            model.generation_config = GenerationConfig.from_pretrained(path)
        model.eval()
        return model

    @classmethod
    def prepare_config(cls, config, **model_kwargs):
        """The model config with the class's own `model_kwargs` applied (a copy: ours to change)."""
        return config

    def close(self) -> None:
        """Leave the swarm: stop the background refresh, close sockets and the DHT node."""
        self.swarm.close()

    # ---- sessions ------------------------------------------------------------------------------
    @property
    def prefix_length(self) -> int:
        """Prompt tokens the client puts before every input (0 without prompt tuning)."""
        return self.tuning.pre_seq_len if self.tuning is not None else 0

    def inference_session(self, max_length: int) -> InferenceSession:
        """A session holding up to `max_length` tokens (per sequence, not counting the tuned
        prompts) on the servers; use it as a context manager and pass it to
        `generate(..., session=session)` to continue a chat. Deep prompts are the values they
        have now."""
        prompts = self.tuning.block_prompts() if self.tuning is not None else None
        return InferenceSession(self.swarm.manager, self.client_config, max_length=max_length + self.prefix_length,
                                wire_dtype=self.wire_dtype, run=self.swarm.run,
                                prompts=None if prompts is None else prompts.detach(),
                                prefix_length=self.prefix_length)

    # ---- the shared walk -----------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.parts.embeddings

    def run_blocks(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                   attention_mask: torch.Tensor | None, session: InferenceSession | None = None) -> torch.Tensor:
        """Embed (or take `inputs_embeds`), put the tuned prompts first, run every block in the
        swarm (on `session`'s caches if given, else forward with autograd) and return the last
        block's hidden states at the caller's positions only."""
        pads = check_attention_mask(attention_mask, cached=session is not None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        hidden = self.parts.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if session is not None:
            if pads is not None and self.tuning is not None:
                raise NotImplementedError("left padding with prompt tuning is not supported (the tuned prompts "
                                          "would stand between a row's pads and its tokens)")
            session_left_pad(session, attention_mask, pads, hidden.shape[1])
            prefix = self.prefix_length if session.position == 0 else 0   # prompts start the session
            if prefix:
                hidden = self.tuning.prepend(hidden)
            with torch.no_grad():
                return session.step(hidden)[:, prefix:]
        if self.tuning is None:
            return self.blocks(hidden)
        out = self.blocks(self.tuning.prepend(hidden), self.tuning.block_prompts())
        return out[:, self.prefix_length:]


def check_attention_mask(mask: torch.Tensor | None, *, cached: bool) -> list[int] | None:
    """Blocks attend causally and servers take no mask with a step: padding at the end of a row
    (right padding) changes no earlier position, so it is fine without a cache. In a session
    (generate) rows may be padded on the left instead, 0...0 1...1 each, as tokenizers do with
    padding_side="left": the servers are told each row's pads when the session opens. Returns
    those leading pads per row (None where no row has any)."""
    if mask is None:
        return None
    ones = mask.bool()
    if bool(ones.all()):
        return None
    if cached:
        if bool((ones[:, :-1] & ~ones[:, 1:]).any()):   # a 1 followed by a 0
            raise NotImplementedError("inference sessions support left padding only (each attention_mask row "
                                      "0...0 1...1): pad on the left (tokenizer.padding_side = 'left')")
        pads = (~ones).sum(dim=1)
        if bool((pads == mask.shape[1]).any()):
            raise ValueError("a row of the attention_mask is all zeros: every row needs at least one token")
        return [int(p) for p in pads]
    if bool((ones[:, 1:] & ~ones[:, :-1]).any()):
        raise NotImplementedError("only right padding is supported (the servers take no attention mask, and "
                                  "causal attention keeps trailing pads out of earlier positions): pad on the right")
    return None


def session_left_pad(session: InferenceSession, mask: torch.Tensor | None, pads: list[int] | None, new: int) -> None:
    """Give a session's first step its rows' pads; check that later masks (transformers passes the
    whole sequence's mask with each step) still show those pads."""
    if session.position == 0:
        session.set_left_pad(pads)
        return
    if mask is None:
        return
    fixed = session.left_pad or [0] * mask.shape[0]
    if mask.shape[1] == session.position + new:
        if (pads or [0] * mask.shape[0]) != fixed:
            raise ValueError(f"the attention_mask pads rows with {pads or 'nothing'}, but this session's rows were "
                             f"padded with {session.left_pad or 'nothing'} when it began; open a new session")
    elif pads is not None:
        raise NotImplementedError("padding after a session's first step is not supported: only its first tokens "
                                  "may be left padding")


def left_pad_mask(left_pad: list[int] | None, batch: int, length: int) -> torch.Tensor:
    """The attention mask of a session's first `length` tokens: 0 on each row's leading pads."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate(left_pad or ()):
        mask[row, :pad] = 0
    return mask


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and as_torch_dtype(dtype) is not None:
        return as_torch_dtype(dtype)
    raise ValueError(f"not a torch dtype: {dtype!r}")
