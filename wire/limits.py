"""Limits: what a receiver accepts, checked before it allocates anything large."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "DEFAULT_LIMITS"]


@dataclass(frozen=True)
class Limits:
    # Sum of all frames of one message, and of all tensors' decoded bytes; also given to libzmq
    # as ZMQ_MAXMSGSIZE, which drops any single frame above it before we ever see it.
    # 256 MiB holds a 1x4096x16384 fp16 prefill with room for a backward's two tensors.
    max_message_bytes: int = 256 << 20
    max_frames: int = 64          # the header frame plus up to 63 tensors
    max_header_bytes: int = 1 << 20
    max_dims: int = 8
    max_elements: int = 1 << 28   # per tensor
    max_method_len: int = 64

    def __post_init__(self):
        for name in ("max_message_bytes", "max_frames", "max_header_bytes", "max_dims",
                     "max_elements", "max_method_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()
