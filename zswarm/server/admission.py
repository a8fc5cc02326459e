"""Admission: a request judged on what it declares, before any of its tensors is decoded.

wire's RpcServer calls `admit` with each request's method, meta and tensor descriptors (dtype and
shape) as soon as the header is read. An lz4 payload of 1 MiB may declare 256 MiB; decoding it
only for the handler to refuse a million-token step would let a few such messages take
gigabytes (issue 14). So the shape checks the handlers make on tensors (validation.py) run here
on the descriptors, against the same limits; the handlers still check the decoded tensors (and
their values) as before.
"""

from __future__ import annotations

from typing import Sequence

from zswarm.errors import BadInputError
from zswarm.server.validation import (check_batch, check_hidden_shape, check_hypo_ids_shape,
                                      check_prompts_shape, check_same_shape, check_tokens, named_tensors)

# The tensors each method takes: (required, optional), by name (meta "tensor_names") or in this order.
TENSOR_NAMES = {
    "inference_step": (("hidden",), ("prompts", "hypo_ids")),
    "push_step": (("hidden",), ("prompts", "hypo_ids")),  # an inference_step handed on by the previous server
    "forward": (("hidden",), ("prompts",)),
    "backward": (("hidden", "grad_out"), ("prompts",)),
}


def admit(state, method: str, meta: dict, declared: Sequence) -> None:
    """Raise the error the handler would raise for tensors of these shapes; `state` is the
    server's ServingState (its limits), `declared` wire's Checked descriptors."""
    names = TENSOR_NAMES.get(method)
    if names is None:
        if declared:
            raise BadInputError(f"{method} takes no tensors, got {len(declared)}")
        return
    found = named_tensors(meta, declared, *names)
    hidden = found["hidden"]
    check_hidden_shape(hidden.dtype, hidden.shape, state.hidden_size)
    batch, seq = hidden.shape[0], hidden.shape[1]
    check_tokens(batch, seq, state.max_request_tokens, method)
    check_batch(batch, state.max_batch_size)
    if "grad_out" in found:
        check_same_shape(found["grad_out"], hidden, "grad_out")
    prompts = found.get("prompts")
    if prompts is not None:
        # a step's prompts may be as long as its session; forward's and backward's as their tokens
        max_len = state.max_session_length if method == "inference_step" else seq
        blocks = prompts.shape[0] if len(prompts.shape) == 4 else 0
        check_prompts_shape(prompts.dtype, prompts.shape, blocks, hidden.dtype, hidden.shape, max_len)
        if blocks > state.end - state.start:
            raise BadInputError(f"prompts for {blocks} blocks, this server holds {state.end - state.start}")
    if "hypo_ids" in found:
        check_hypo_ids_shape(found["hypo_ids"].dtype, found["hypo_ids"].shape, batch)
