"""The help text of each field of a config dataclass: the comment written beside it.

    model: str = DEFAULT_MODEL  # local checkpoint dir, hub id, or the embedded default

A CLI reads these instead of writing a help text of its own (vLLM's way), so a field's
meaning is written once, in the dataclass.
"""
from __future__ import annotations

import inspect
import re

_FIELD_COMMENT = re.compile(r"^\s+(\w+): [^\n=]+=[^\n#]+#\s*(.+)$", re.MULTILINE)


def field_help(cls: type) -> dict[str, str]:
    """The comment beside each field of `cls`, keyed by field name ({} without source)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {match.group(1): match.group(2).strip() for match in _FIELD_COMMENT.finditer(source)}
