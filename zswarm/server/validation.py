"""Checks on everything a request carries, each failing with a typed error that names the problem.

Requests are untrusted: meta values may be of any msgpack type, tensors of any dtype and shape
(within wire's Limits). Nothing here allocates more than the tensors already hold.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import numpy as np
import torch

from zswarm.blocks import format_blocks
from zswarm.errors import BadInputError, BlocksNotServedError, TooManyTokensError

HIDDEN_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def meta_int(meta: dict, name: str, *, low: int = 0, high: Optional[int] = None, default=None) -> int:
    value = meta.get(name, default)
    if value is None:
        raise BadInputError(f"meta field {name!r} is required (an integer)")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInputError(f"meta field {name!r} must be an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise BadInputError(f"meta field {name!r} must be {bounds}, got {value}")
    return value


def meta_float(meta: dict, name: str, *, default: float, low: float = 0.0, high: float = math.inf) -> float:
    value = meta.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BadInputError(f"meta field {name!r} must be a finite number, got {value!r}")
    return float(min(max(value, low), high))


def meta_str(meta: dict, name: str, *, max_len: int = 256) -> Optional[str]:
    value = meta.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise BadInputError(f"meta field {name!r} must be a string of at most {max_len} characters")
    return value


SESSION_ID = re.compile(r"[0-9A-Za-z_-]{8,64}")


def meta_session_id(meta: dict) -> str:
    value = meta.get("session_id")
    if not isinstance(value, str) or not SESSION_ID.fullmatch(value):
        raise BadInputError("meta field 'session_id' must be 8 to 64 letters, digits, '-' or '_'")
    return value


def meta_left_pad(meta: dict, batch_size: int, max_length: int, family) -> Optional[list[int]]:
    """open_session's optional `left_pad`: leading pads per row of a left-padded batch, or None
    (also for all zeros: no padding at all)."""
    value = meta.get("left_pad")
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != batch_size
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in value)):
        raise BadInputError(f"meta field 'left_pad' must be a list of {batch_size} integers (one per row)")
    if any(p < 0 or p >= max_length for p in value):
        raise BadInputError(f"meta field 'left_pad' values must lie in [0, max_length={max_length}), got {list(value)}")
    if not any(value):
        return None
    if not family.left_padding:
        raise BadInputError(f"left padding is not supported for family {family.name}")
    return list(value)


def block_range(meta: dict, hosted_start: int, hosted_end: int) -> tuple[int, int]:
    """The request's [start, end); defaults to everything hosted; must lie within it."""
    start = meta_int(meta, "start", default=hosted_start)
    end = meta_int(meta, "end", default=hosted_end)
    if start >= end:
        raise BadInputError(f"empty block range {format_blocks(start, end)}")
    if start < hosted_start or end > hosted_end:
        raise BlocksNotServedError(
            f"blocks {format_blocks(start, end)} asked, but this server holds blocks "
            f"{format_blocks(hosted_start, hosted_end)}"
        )
    return start, end


def named_tensors(meta: dict, tensors: Sequence[torch.Tensor], required: Sequence[str],
                  optional: Sequence[str]) -> dict[str, torch.Tensor]:
    """Name the request's tensors: by meta["tensor_names"] if given, else positionally."""
    allowed = list(required) + list(optional)
    names = meta.get("tensor_names")
    if names is None:
        if len(tensors) > len(allowed):
            raise BadInputError(f"expected at most {len(allowed)} tensors ({', '.join(allowed)}), got {len(tensors)}")
        names = allowed[: len(tensors)]
    else:
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise BadInputError("meta field 'tensor_names' must be a list of strings")
        if len(names) != len(tensors):
            raise BadInputError(f"tensor_names lists {len(names)} names for {len(tensors)} tensors")
        unknown = [n for n in names if n not in allowed]
        if unknown or len(set(names)) != len(names):
            raise BadInputError(f"tensor_names {list(names)!r}: each must be one of {allowed}, once")
    found = dict(zip(names, tensors))
    missing = [n for n in required if n not in found]
    if missing:
        raise BadInputError(f"missing tensor(s): {', '.join(missing)}")
    return found


def check_hidden(t: torch.Tensor, hidden_size: int, name: str = "hidden") -> torch.Tensor:
    check_hidden_shape(t.dtype, t.shape, hidden_size, name)
    check_finite(t, name)
    return t


def check_hidden_shape(dtype: torch.dtype, shape: Sequence[int], hidden_size: int, name: str = "hidden") -> None:
    """Hidden states' dtype and shape, from a tensor or from what a request declares (admission.py)."""
    if dtype not in HIDDEN_DTYPES:
        raise BadInputError(f"{name} must be float16, bfloat16 or float32, got {str(dtype).replace('torch.', '')}")
    if len(shape) != 3:
        raise BadInputError(f"{name} must be [batch, seq, hidden], got shape {list(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise BadInputError(f"{name} is empty (shape {list(shape)})")
    if shape[2] != hidden_size:
        raise BadInputError(f"{name} has hidden size {shape[2]}, this model's is {hidden_size}")


# 16-bit floats are NaN or inf exactly when all their exponent bits are set
_EXPONENT_BITS = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not _all_finite(t):
        raise BadInputError(f"{name} contains NaN or inf")


def _all_finite(t: torch.Tensor) -> bool:
    # numpy, on the bits for 16-bit floats: torch.isfinite(t).all() costs 3-20x more (7 us for
    # one token on the dev box; 4 ms for a 512x4096 fp16 prefill, on the server's event loop)
    if t.is_cpu and not t.requires_grad:
        bits = _EXPONENT_BITS.get(t.dtype)
        if bits is not None:
            return not ((t.view(torch.int16).numpy() & bits) == bits).any()
        if t.dtype == torch.float32:
            return bool(np.isfinite(t.numpy()).all())
    return bool(torch.isfinite(t).all())


def check_same(t: torch.Tensor, like: torch.Tensor, name: str, like_name: str = "hidden") -> None:
    check_same_shape(t, like, name, like_name)
    check_finite(t, name)


def check_same_shape(t, like, name: str, like_name: str = "hidden") -> None:
    """`t` and `like`: tensors, or declared tensors (anything with .dtype and .shape)."""
    if t.dtype != like.dtype or list(t.shape) != list(like.shape):
        raise BadInputError(
            f"{name} must match {like_name} ({str(like.dtype).replace('torch.', '')} {list(like.shape)}), "
            f"got {str(t.dtype).replace('torch.', '')} {list(t.shape)}"
        )


def check_tokens(batch: int, seq: int, cap: int, what: str) -> None:
    if batch * seq > cap:
        raise TooManyTokensError(f"{what}: {batch} x {seq} = {batch * seq} tokens exceeds this server's cap of {cap}")


def check_prompts(prompts: torch.Tensor, num_blocks: int, hidden: torch.Tensor, max_len: int) -> None:
    """Deep prompts: [num_blocks, batch, pre_seq_len, hidden_size], in the hidden states' dtype."""
    check_prompts_shape(prompts.dtype, prompts.shape, num_blocks, hidden.dtype, hidden.shape, max_len)
    check_finite(prompts, "prompts")


def check_prompts_shape(dtype: torch.dtype, shape: Sequence[int], num_blocks: int, hidden_dtype: torch.dtype,
                        hidden_shape: Sequence[int], max_len: int) -> None:
    expected = f"[{num_blocks}, {hidden_shape[0]}, pre_seq_len, {hidden_shape[2]}]"
    if len(shape) != 4:
        raise BadInputError(f"prompts must be {expected}, got shape {list(shape)}")
    blocks, batch, pre_seq_len, size = shape
    if blocks != num_blocks or batch != hidden_shape[0] or size != hidden_shape[2] or pre_seq_len == 0:
        raise BadInputError(f"prompts must be {expected}, got shape {list(shape)}")
    if pre_seq_len > max_len:
        raise TooManyTokensError(f"prompts pre_seq_len {pre_seq_len} exceeds the limit of {max_len}")
    if dtype != hidden_dtype:
        raise BadInputError(f"prompts must have the hidden states' dtype {hidden_dtype}, got {dtype}")


def check_hypo_ids(hypo_ids: torch.Tensor, batch: int) -> torch.Tensor:
    check_hypo_ids_shape(hypo_ids.dtype, hypo_ids.shape, batch)
    if batch and (int(hypo_ids.min()) < 0 or int(hypo_ids.max()) >= batch):
        raise BadInputError(f"hypo_ids must lie in [0, {batch})")
    return hypo_ids.long()


def check_hypo_ids_shape(dtype: torch.dtype, shape: Sequence[int], batch: int) -> None:
    if dtype not in (torch.int64, torch.int32) or len(shape) != 1 or shape[0] != batch:
        raise BadInputError(f"hypo_ids must be an int64 vector of length {batch} (the batch), "
                            f"got {str(dtype).replace('torch.', '')} {list(shape)}")


def check_batch(batch: int, max_batch: int) -> None:
    if batch > max_batch:
        raise TooManyTokensError(f"batch {batch} exceeds this server's limit of {max_batch}")
