"""torch dtype <-> the name zswarm writes in configs, records, logs and RPC replies ("float16")."""
from __future__ import annotations

import torch


def dtype_name(dtype: torch.dtype | str) -> str:
    """torch.float16 or "torch.float16" -> "float16"."""
    return str(dtype).removeprefix("torch.")


def as_torch_dtype(value: torch.dtype | str) -> torch.dtype | None:
    """A torch dtype for a dtype or its name ("float16", "torch.float16"); None if it names none."""
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, dtype_name(value), None)
    return found if isinstance(found, torch.dtype) else None
