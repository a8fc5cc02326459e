"""How zswarm writes a range of blocks, in every log line and message: ``start:end``, half-open,
the way ``zswarm-server --block-indices`` takes it (``0:3`` is blocks 0, 1 and 2)."""

from __future__ import annotations

from typing import Iterable

__all__ = ["format_blocks", "format_ranges"]


def format_blocks(start: int, end: int) -> str:
    """Blocks [start, end) as ``"start:end"``."""
    return f"{start}:{end}"


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """Several half-open ranges: [(10, 20), (25, 26)] -> ``"10:20, 25:26"``."""
    return ", ".join(format_blocks(a, b) for a, b in ranges)
