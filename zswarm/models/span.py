"""BlockSpan: blocks [start, end) of a model, run exactly as the whole model would run them."""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from zswarm.blocks import format_blocks

from .cache import SpanCache
from .decode_graph import MAX_GRAPH_ROWS, GraphSettings, RowBatch, run_tick
from .errors import ConfigMismatchError, SpanInputError
from .kv_pool import KVPool

if TYPE_CHECKING:
    from .source import ModelSource

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    try:
        return DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


def prompts_apply(prompts: torch.Tensor | None, past: int, q: int) -> bool:
    """Whether deep prompts ([blocks, batch, pre_seq_len, hidden]) touch positions [past, past + q)."""
    return prompts is not None and past < prompts.shape[2]


def add_prompt(hidden: torch.Tensor, prompt: torch.Tensor, past: int) -> torch.Tensor:
    """Add a deep prompt [batch, pre_seq_len, hidden] to the positions < pre_seq_len of this chunk."""
    q = hidden.shape[1]
    k = min(q, prompt.shape[1] - past)
    if k <= 0:
        return hidden
    if k == q:
        return hidden + prompt[:, past:past + q]
    return torch.cat([hidden[:, :k] + prompt[:, past:past + k], hidden[:, k:]], dim=1)


class BlockSpan(nn.Module):
    """Blocks [start, end) with frozen weights. See docs/architecture.md for the contract."""

    def __init__(self, source_family, config, start: int, end: int, blocks: nn.ModuleList,
                 dtype: torch.dtype, device: torch.device, rotary=None, windows=None, graphs=None):
        super().__init__()
        self.family = source_family
        self.config = config
        self.start, self.end = start, end
        self.blocks = blocks
        self.dtype = dtype
        self.device = device
        self.rotary = rotary  # RotaryTable or None, shared with sub-spans
        self.alibi = None     # AlibiTable, made lazily by families that use ALiBi
        self.windows = windows if windows is not None else [
            source_family.sliding_window(config, i) for i in range(start, end)]
        self.windows_used = sorted(set(self.windows), key=lambda w: -1 if w is None else w)
        self.hidden_size = int(config.hidden_size)
        # CUDA graphs for decode ticks (decode_graph.py); shared with sub-span views
        self.graphs = graphs if graphs is not None else GraphSettings(enabled=self.device.type == "cuda")
        # the span a sub-span view was made from owns the KV pool; kept out of nn.Module's
        # submodule registry (a module that is its own child would recurse)
        object.__setattr__(self, "root", self)
        self._pool: KVPool | None = None

    def __repr__(self) -> str:
        return f"BlockSpan({self.family.name}, blocks={format_blocks(self.start, self.end)}, dtype={self.dtype}, device={self.device})"

    # ---- public API ---------------------------------------------------------------------------
    def sub(self, start: int, end: int) -> "BlockSpan":
        """A view over blocks [start, end) within this span; shares weights and position tables."""
        if not self.start <= start < end <= self.end:
            raise SpanInputError(f"blocks {format_blocks(start, end)} are not inside this span {format_blocks(self.start, self.end)}")
        a, b = start - self.start, end - self.start
        view = BlockSpan(self.family, self.config, start, end, nn.ModuleList(list(self.blocks)[a:b]),
                         self.dtype, self.device, self.rotary, self.windows[a:b], self.graphs)
        view.alibi = self.alibi
        object.__setattr__(view, "root", self.root)
        return view

    @property
    def kv_pool(self) -> KVPool:
        """The KV pool every session of this span (and of its sub-span views) keeps its pages in.

        Made on first use, growing as sessions need it, unless `attach_pool` fixed its size."""
        root = self.root
        if root._pool is None:
            root._pool = self._make_pool(None)
        return root._pool

    def attach_pool(self, tokens: int) -> KVPool:
        """Give this span a KV pool of `tokens` positions that never grows (a server's cache budget)."""
        if self.root is not self:
            raise SpanInputError("attach the KV pool to the loaded span, not to a sub-span view")
        self._pool = self._make_pool(int(tokens))
        return self._pool

    def _make_pool(self, tokens: int | None) -> KVPool:
        heads, head_dim = self.family.cache_heads_and_dim(self.config)
        root = self.root
        return KVPool(root.start, root.end, heads, head_dim, dtype=self.dtype, device=self.device, tokens=tokens)

    def new_cache(self, batch_size: int, max_length: int | None = None, *, left_pad=None) -> SpanCache:
        """A fresh KV cache for one session; `max_length` (optional) preallocates that many positions.

        `left_pad` (optional, one int per row): row r's first left_pad[r] positions are padding, as in
        a left-padded batch: later tokens never attend to them and count rotary positions from the
        row's first real token. All zeros is the same as none."""
        if batch_size < 1:
            raise SpanInputError("batch_size must be at least 1")
        pads = self._check_left_pad(left_pad, int(batch_size), max_length)
        return SpanCache(self.kv_pool, self.start, self.end, int(batch_size),
                         max_length=int(max_length) if max_length else None, left_pad=pads)

    def cache_bytes_per_token(self, batch_size: int = 1) -> int:
        heads, head_dim = self.family.cache_heads_and_dim(self.config)
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * heads * head_dim * element * (self.end - self.start) * batch_size

    def inference_step(self, hidden: torch.Tensor, cache: SpanCache, *, prompts: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Run new tokens through the span; positions continue from `cache.length`.

        Runs under torch.inference_mode (the decode hot path), so the result is an inference tensor.
        """
        self._check_cache(cache)
        hidden = self._check_hidden(hidden)
        prompts = self._check_prompts(prompts, hidden)
        cache._begin_step(hidden.shape[0])
        if hidden.shape[1] == 1 and not prompts_apply(prompts, cache.length, 1):
            out = self.decode_tick([hidden], [cache])
            return out.clone() if self.graphs.enabled else out  # a graph's output buffer is reused
        return self._session_step(hidden, cache, prompts)

    def decode_tick(self, hiddens: list[torch.Tensor], caches: list[SpanCache]) -> torch.Tensor:
        """One new token for every row of several sessions (a batched decode step); rows stacked in order.

        `hiddens[i]` is [caches[i].batch_size, 1, hidden_size]. Deep prompts are not taken: a session
        whose prompts still cover its next position steps alone (`inference_step`). The result may be
        a CUDA graph's output buffer: read it before the next tick."""
        if len(hiddens) != len(caches) or not caches:
            raise SpanInputError("decode_tick takes one hidden-state tensor per cache, at least one")
        for hidden, cache in zip(hiddens, caches):
            self._check_cache(cache)
            if hidden.ndim != 3 or hidden.shape[1] != 1 or hidden.shape[0] != cache.batch_size:
                raise SpanInputError(f"a decode tick takes [{cache.batch_size}, 1, hidden] per cache, "
                                     f"got {list(hidden.shape)}")
        with torch.inference_mode():
            if not self._batches_rows() or (len(caches) == 1 and not self.graphs.enabled):
                # one session alone (or a family whose blocks take no per-row positions): its own step,
                # exactly the path of a prompt
                outs = [self._session_step(self._check_hidden(h), c, None) for h, c in zip(hiddens, caches)]
                return outs[0] if len(outs) == 1 else torch.cat(outs)
            for cache in caches:
                cache.rows_for_step(1)  # takes a page where the next position starts one
            outs, group, rows = [], [], 0
            for index, cache in enumerate(caches):  # graphs hold at most MAX_GRAPH_ROWS rows
                if group and rows + cache.batch_size > MAX_GRAPH_ROWS:
                    outs.append(self._tick(hiddens, caches, group))
                    group, rows = [], 0
                group.append(index)
                rows += cache.batch_size
            outs.append(self._tick(hiddens, caches, group))
            return outs[0] if len(outs) == 1 else torch.cat(outs)

    def forward(self, hidden: torch.Tensor, *, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Run a whole sequence without a cache (positions from 0). Returns an ordinary (no-grad) tensor."""
        hidden = self._check_hidden(hidden)
        prompts = self._check_prompts(prompts, hidden)
        with torch.no_grad():  # not inference_mode: callers may feed the result to backward() later
            return self._run(hidden, 0, None, prompts)

    def backward(self, hidden: torch.Tensor, grad_out: torch.Tensor, *, prompts: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradients of <forward(hidden, prompts), grad_out> with respect to hidden (and prompts)."""
        hidden = self._check_hidden(hidden)
        prompts = self._check_prompts(prompts, hidden)
        if not isinstance(grad_out, torch.Tensor) or grad_out.shape != hidden.shape:
            raise SpanInputError(f"grad_out must have the shape of hidden {list(hidden.shape)}")
        with torch.enable_grad():
            leaf_hidden = _grad_leaf(hidden)
            leaves = [leaf_hidden]
            leaf_prompts = None
            if prompts is not None:
                leaf_prompts = _grad_leaf(prompts)
                leaves.append(leaf_prompts)
            out = self._run(leaf_hidden, 0, None, leaf_prompts)
            grads = torch.autograd.grad(out, leaves, grad_out.to(device=self.device, dtype=self.dtype))
        return grads[0], (grads[1] if prompts is not None else None)

    # ---- internals ----------------------------------------------------------------------------
    def _tick(self, hiddens, caches, group: list[int]) -> torch.Tensor:
        batch = RowBatch.of([caches[i] for i in group])
        hidden = torch.cat([hiddens[i] for i in group]) if len(group) > 1 else hiddens[group[0]]
        out = run_tick(self, self.kv_pool, hidden, batch)
        for cache in batch.caches:
            cache.length += 1
        return out if len(group) == 1 else out.clone()  # the next group may replay the same graph

    def _session_step(self, hidden: torch.Tensor, cache: SpanCache, prompts: torch.Tensor | None) -> torch.Tensor:
        """New tokens of one session (a prompt chunk, or a decode step that runs alone)."""
        batch, q, _ = hidden.shape
        with torch.inference_mode():
            past = cache._begin_step(batch)
            rows = cache.rows_for_step(q)
            inputs = self.family.step_inputs(self, past, q, batch, left_pad=cache.left_pad_device)
            for i, block in enumerate(self.blocks):
                if prompts is not None:
                    hidden = add_prompt(hidden, prompts[i], past)
                hidden = self.family.run_block(block, hidden, inputs, self.windows[i], rows)
            cache.length = past + q
        return hidden

    def _batches_rows(self) -> bool:
        """Whether rows of different sessions can share a step: the family takes per-row positions
        and masks, and rotary positions do not depend on the length."""
        return self.family.left_padding and self.rotary is not None and not self.rotary.dynamic

    def _check_cache(self, cache) -> None:
        if not isinstance(cache, SpanCache) or (cache.start, cache.end) != (self.start, self.end) \
                or cache.pool is not self.kv_pool:
            raise SpanInputError(f"cache {cache!r} was not made for blocks {format_blocks(self.start, self.end)} of this span")

    def _run(self, hidden: torch.Tensor, past: int, cache: None, prompts: torch.Tensor | None) -> torch.Tensor:
        """A whole sequence without a cache (forward and backward)."""
        batch, q, _ = hidden.shape
        family = self.family
        inputs = family.step_inputs(self, past, q, batch)
        for i, block in enumerate(self.blocks):
            if prompts is not None:
                hidden = add_prompt(hidden, prompts[i], past)
            hidden = family.run_block(block, hidden, inputs, self.windows[i], cache)
        return hidden

    def _check_left_pad(self, left_pad, batch_size: int, max_length: int | None) -> torch.Tensor | None:
        if left_pad is None:
            return None
        pads = torch.as_tensor(left_pad)
        if pads.ndim != 1 or pads.numel() != batch_size or pads.dtype.is_floating_point or pads.dtype == torch.bool:
            raise SpanInputError(f"left_pad must be {batch_size} integers (one per row), got {left_pad!r}")
        if int(pads.min()) < 0 or (max_length and int(pads.max()) >= max_length):
            raise SpanInputError(f"left_pad values must lie in [0, max_length={max_length}), got {pads.tolist()}")
        if not bool(pads.any()):
            return None  # no padding: exactly the unpadded path
        if not self.family.left_padding:
            raise SpanInputError(f"left padding is not supported for family {self.family.name}")
        return pads.to(device="cpu", dtype=torch.long)  # host: batched ticks build their rows there

    def _check_hidden(self, hidden) -> torch.Tensor:
        if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or hidden.shape[-1] != self.hidden_size:
            shape = list(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise SpanInputError(f"hidden states must be [batch, seq, {self.hidden_size}], got {shape}")
        if hidden.shape[0] == 0 or hidden.shape[1] == 0:
            raise SpanInputError("hidden states must hold at least one token")
        if not hidden.is_floating_point():
            raise SpanInputError(f"hidden states must be floating point, got {hidden.dtype}")
        return hidden.to(device=self.device, dtype=self.dtype)

    def _check_prompts(self, prompts, hidden: torch.Tensor) -> torch.Tensor | None:
        if prompts is None:
            return None
        n = self.end - self.start
        if (not isinstance(prompts, torch.Tensor) or prompts.ndim != 4 or prompts.shape[0] != n
                or prompts.shape[1] not in (1, hidden.shape[0]) or prompts.shape[3] != self.hidden_size
                or not prompts.is_floating_point()):
            shape = list(prompts.shape) if isinstance(prompts, torch.Tensor) else type(prompts).__name__
            raise SpanInputError(
                f"prompts must be [{n}, batch ({hidden.shape[0]}) or 1, pre_seq_len, {self.hidden_size}], got {shape}")
        return prompts.to(device=self.device, dtype=self.dtype)


def _grad_leaf(tensor: torch.Tensor) -> torch.Tensor:
    # inference tensors (e.g. an inference_step result) cannot require grad; a clone outside
    # inference mode is an ordinary tensor
    tensor = tensor.detach()
    return (tensor.clone() if tensor.is_inference() else tensor).requires_grad_(True)


def block_config(source: "ModelSource"):
    """The model's config as blocks are built with it: a copy naming the family's attention kernel."""
    family = source.family
    config = copy.deepcopy(source.config)
    config._attn_implementation = family.attn_implementation
    if family.experts_implementation is not None:
        config._experts_implementation = family.experts_implementation
    return config


def load_span(source: "ModelSource", start: int, end: int, *, dtype: torch.dtype | str = torch.float32,
              device: torch.device | str = "cpu") -> BlockSpan:
    """Build blocks [start, end) from transformers' own layer classes and assign only their tensors."""
    if not 0 <= start < end <= source.num_blocks:
        raise ValueError(f"blocks {format_blocks(start, end)} are outside the model's {format_blocks(0, source.num_blocks)}")
    dtype, device = as_dtype(dtype), torch.device(device)
    family = source.family
    config = block_config(source)
    index = source.weights
    began = time.monotonic()
    blocks = []
    for layer_idx in range(start, end):
        block = family.build_block(config, layer_idx)
        tensors = index.load(family.block_tensors(index, block, layer_idx), dtype=dtype, device=device)
        state = family.block_state_dict(tensors, index, layer_idx)
        _assign(block, state, f"block {layer_idx}", index.files.description)
        blocks.append(block)
    span = BlockSpan(family, config, start, end, nn.ModuleList(blocks), dtype, device,
                     rotary=family.build_rotary(config, dtype, device))
    span.eval()
    logger.info("loaded %s blocks [%d, %d) as %s on %s in %.1f s", source.model_id, start, end,
                str(dtype).removeprefix("torch."), device, time.monotonic() - began)
    return span


def _assign(module: nn.Module, state: dict[str, torch.Tensor], what: str, description: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigMismatchError(f"{description}: {what} lacks tensors {missing[:5]} / has extra {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConfigMismatchError(f"{description}: {what} tensor {name!r} has shape {list(tensor.shape)}, "
                                      f"config implies {list(expected[name].shape)}")
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:
        raise ConfigMismatchError(f"{description}: {what} has tensors no checkpoint fills: {leftover[:5]}")
    module.requires_grad_(False)
