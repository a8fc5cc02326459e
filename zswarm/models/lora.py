"""LoRA adapters on a BlockSpan, chosen per request (our own few lines; peft is not used at runtime).

    add_lora(span, "my-adapter", deltas)        # deltas: {layer_idx: {"self_attn.q_proj": LoraDelta}}
    with using_adapter("my-adapter"):           # on the thread that runs the span
        hidden = span.forward(hidden)

Each targeted linear layer of a block is wrapped once in a `LoraLinear`, which keeps the frozen
base layer (nn.Linear, or a bitsandbytes Linear8bitLt / Linear4bit) and every adapter's
(A, B, scale). Its output is `base(x)`, plus `scale * B(A(x))` when the adapter active on this
thread has weights for it. With no active adapter, the wrapper returns `base(x)` untouched, so
the model computes exactly what it computed before any adapter was added.

The active adapter is a context variable: a server's compute thread sets it around one
request's computation, so requests with different adapters can share the same weights. A CUDA
decode graph (decode_graph.py) records the kernels of the adapter active when it was captured;
it belongs to one cache, and a server session keeps one adapter for all its steps, so its
replays compute what the session asked for.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AdapterError

_ACTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("zswarm_lora_adapter", default=None)


@contextlib.contextmanager
def using_adapter(name: str | None) -> Iterator[None]:
    """Run the enclosed span calls with adapter `name` (None: the base model) on this thread."""
    token = _ACTIVE.set(name or None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_adapter() -> str | None:
    return _ACTIVE.get()


@dataclass
class LoraDelta:
    """One adapter's low-rank update of one linear layer: delta(x) = scale * B(A(x))."""

    A: torch.Tensor  # [rank, in_features]
    B: torch.Tensor  # [out_features, rank]
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # the order of operations is peft's (lora_B(lora_A(x)) * scaling), so fp32 results match it
        return F.linear(F.linear(x.to(self.A.dtype), self.A), self.B) * self.scale


class LoraLinear(nn.Module):
    """A frozen linear layer plus the LoRA adapters that target it."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        # Plain tensors, not parameters or buffers: they are frozen, were loaded on the span's
        # device already, and must not show up as model weights (state_dict, memory counts).
        self.adapters: dict[str, LoraDelta] = {}

    # transformers' layers sometimes read the weight of a projection directly
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.adapters:
            return out
        delta = self.adapters.get(_ACTIVE.get())
        if delta is None:
            return out
        return out + delta(x).to(out.dtype)

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.adapters)}"


def add_lora(span, name: str, deltas: dict[int, dict[str, LoraDelta]]) -> int:
    """Add adapter `name` to the blocks of `span` (layer indices outside it are ignored).

    Returns how many linear layers it touches. Raises AdapterError if a target is not a linear
    layer of the block or its shapes disagree; a span already holding `name` is refused.
    """
    touched = 0
    for layer_idx, modules in deltas.items():
        if not span.start <= layer_idx < span.end:
            continue
        block = span.blocks[layer_idx - span.start]
        for path, delta in modules.items():
            layer = _lora_linear(block, path, layer_idx)
            if name in layer.adapters:
                raise AdapterError(f"adapter {name!r} is already on block {layer_idx} {path}")
            expected_a, expected_b = (delta.rank, layer.in_features), (layer.out_features, delta.rank)
            if tuple(delta.A.shape) != expected_a or tuple(delta.B.shape) != expected_b:
                raise AdapterError(
                    f"adapter {name!r}: block {layer_idx} {path} is {layer.in_features}->{layer.out_features}, "
                    f"but lora_A is {list(delta.A.shape)} and lora_B {list(delta.B.shape)}")
            layer.adapters[name] = delta
            touched += 1
    return touched


def adapters_on(span) -> set[str]:
    """The names of the adapters held anywhere in the span's blocks."""
    return {name for module in span.blocks.modules() if isinstance(module, LoraLinear) for name in module.adapters}


def _lora_linear(block: nn.Module, path: str, layer_idx: int) -> LoraLinear:
    parent_path, _, child = path.rpartition(".")
    try:
        parent = block.get_submodule(parent_path) if parent_path else block
        module = getattr(parent, child)
    except AttributeError:
        raise AdapterError(f"block {layer_idx} has no module {path!r}") from None
    if isinstance(module, LoraLinear):
        return module
    if not isinstance(module, nn.Linear):  # bitsandbytes' Linear8bitLt and Linear4bit are nn.Linear too
        raise AdapterError(f"block {layer_idx} {path} is a {type(module).__name__}, not a linear layer")
    wrapped = LoraLinear(module)
    setattr(parent, child, wrapped)
    return wrapped
