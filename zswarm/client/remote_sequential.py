"""`RemoteSequential`: the model's transformer blocks as one module whose forward and backward
run through the swarm (the `forward` and `backward` RPCs), with autograd, for training and for
`model(input_ids)`. No cache: each call carries the whole sequence.

Deep prompts (`prompts`, `[blocks, batch or 1, pre_seq_len, hidden]`, one per block of this
module) travel with each request, cut to the blocks of the span that gets it; backward returns
their gradient beside the inputs' one.

A batch goes in row groups of at most `max_request_tokens` tokens, concurrently, each on its own
forward route; a group avoids servers that other groups of the same call already use wherever
an idle replica holds the same blocks, so a big batch spreads over replicas. Forward keeps the
input each span got; backward walks the spans in reverse, sending each its input and the
gradient of its output. A failed span is banned and its range routed again (forward or
backward alike); in backward, a replacement made of several spans recomputes the inner inputs
with forward calls first.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

import torch
from torch import nn

from wire.codec import to_wire_dtype
from zswarm.blocks import format_blocks
from zswarm.client.failures import RetryBudget, ServerUnavailable, SpanFailed, is_server_fault
from zswarm.client.swarm import SwarmConnection
from zswarm.client.forward_checks import ForwardChecks
from zswarm.client.verification import check_gradient, check_reply
from zswarm.errors import ImplausibleReplyError, NoRouteError
from zswarm.routing import RouteSpan

logger = logging.getLogger(__name__)

Saved = list[tuple[RouteSpan, torch.Tensor]]   # per route span, the hidden states it was given


class RemoteSequential(nn.Module):
    def __init__(self, swarm: SwarmConnection, *, wire_dtype: torch.dtype, start: int = 0, end: int | None = None):
        super().__init__()
        self.swarm = swarm
        self.wire_dtype = wire_dtype
        self.start = start
        self.end = swarm.num_blocks if end is None else end
        # The routes the row groups of the last forward took (a retried group adds its new one),
        # for tools and tests.
        self.last_routes: list[list[RouteSpan]] = []
        self.checks = ForwardChecks(swarm.manager, swarm.config.spot_check_rate, wire_dtype)  # forward_checks.py

    def forward(self, hidden: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden`: [batch, seq, hidden_size] -> the same shape after blocks [start, end);
        `prompts`: deep prompts [end - start, batch or 1, pre_seq_len <= seq, hidden_size]."""
        if hidden.ndim != 3:
            raise ValueError(f"hidden states must be [batch, seq, hidden], got {tuple(hidden.shape)}")
        if prompts is not None:
            check_prompts(prompts, self.end - self.start, hidden)
        return _RemoteBlocks.apply(hidden, prompts, self)

    def extra_repr(self) -> str:
        return f"blocks {format_blocks(self.start, self.end)} of {self.swarm.model_id}"

    # ---- async work on the client loop ------------------------------------------------------
    async def aforward(self, hidden: torch.Tensor, prompts: torch.Tensor | None = None, *,
                       busy: Counter | None = None) -> tuple[torch.Tensor, Saved]:
        """Returns the output and, per route span, the input it was given (for backward).
        `busy` counts the row groups of this call per server, to spread them over replicas."""
        saved: Saved = []
        routes = self.last_routes

        async def through(route: list[RouteSpan]) -> torch.Tensor:
            saved.clear()
            if busy is not None:
                busy.update(span.peer_id for span in route)
            routes.append(route)
            x = hidden
            for span in route:
                saved.append((span, x))
                x = (await self._call(span, "forward", x, self._cut(prompts, span)))[0]
            return x

        out = await self._with_failover(self.start, self.end, through, busy=busy)
        return out, saved

    async def abackward(self, saved: Saved, grad: torch.Tensor,
                        prompts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradients of the input and of `prompts` (None without them), given the output's."""
        grad_prompts = torch.zeros_like(prompts) if prompts is not None else None
        for span, x in reversed(saved):
            grad, span_grad = await self._backward_range(span, x, grad, prompts)
            if grad_prompts is not None:
                grad_prompts[span.start - self.start:span.end - self.start] = span_grad
        return grad, grad_prompts

    async def _backward_range(self, span: RouteSpan, x: torch.Tensor, grad: torch.Tensor,
                              prompts: torch.Tensor | None):
        async def back(route: list[RouteSpan]):
            inputs = [x]
            for inner in route[:-1]:
                inputs.append((await self._call(inner, "forward", inputs[-1], self._cut(prompts, inner)))[0])
            g, prompt_grads = grad, []
            for inner, inner_x in zip(reversed(route), reversed(inputs)):
                g, *rest = await self._call(inner, "backward", inner_x, self._cut(prompts, inner), grad=g)
                prompt_grads[:0] = rest
            return g, torch.cat(prompt_grads) if prompt_grads else None

        return await self._with_failover(span.start, span.end, back, first_route=[span])

    def _cut(self, prompts: torch.Tensor | None, span: RouteSpan) -> torch.Tensor | None:
        return None if prompts is None else prompts[span.start - self.start:span.end - self.start]

    async def _with_failover(self, start: int, end: int, work, *, first_route: list[RouteSpan] | None = None,
                             busy: Counter | None = None):
        """Run `work(route)` on a route of [start, end); on a server's failure ban it and run it
        again on a new route, at most `max_retries` times."""
        manager = self.swarm.manager
        budget = RetryBudget(self.swarm.config, manager.model_id)
        route = first_route
        while True:
            try:
                if route is None:
                    route = await manager.make_forward_route(start, end, busy=busy)
                return await work(route)
            except (NoRouteError, ServerUnavailable) as exc:
                await budget.no_route(exc, start, end, manager.update)
            except SpanFailed as exc:
                manager.on_failure(exc.peer_id, exc.cause)
                budget.fail(exc, start, end)
                logger.warning("%s; routing blocks %s again (%s)", exc, format_blocks(start, end), budget)
                route = None
                budget.new_route()

    async def _call(self, span: RouteSpan, method: str, hidden: torch.Tensor, prompts: torch.Tensor | None = None,
                    *, grad: torch.Tensor | None = None) -> list[torch.Tensor]:
        """`forward` -> [hidden]; `backward` (with `grad`) -> [grad_hidden] (+ [grad_prompts])."""
        manager = self.swarm.manager
        names, tensors = ["hidden"], [hidden]
        if grad is not None:
            names.append("grad_out"), tensors.append(grad)
        if prompts is not None:
            names.append("prompts"), tensors.append(prompts)
        expected = [hidden.shape] + ([prompts.shape] if prompts is not None and grad is not None else [])
        meta = manager.request_meta(start=span.start, end=span.end, tensor_names=names)

        async def call_on(peer_id: str):
            reply = await manager.call(manager.address(peer_id), method, meta, tensors,
                                       timeout=self.swarm.config.request_timeout)
            got = [t.shape for t in reply.tensors[:len(expected)]]
            if got != expected:
                raise ImplausibleReplyError(peer_id, f"answered {method} with shapes {[tuple(s) for s in got]}, "
                                            f"expected {[tuple(s) for s in expected]}", blocks=(span.start, span.end))
            if grad is None:
                check_reply(hidden, reply.tensors[0], peer_id=peer_id, start=span.start, end=span.end)
            return reply

        try:
            reply = await call_on(span.peer_id)
            if grad is None and self.checks.due():
                await self.checks.check(span.peer_id, span.start, span.end, reply.tensors[0],
                                        lambda peer: _first_tensor(call_on(peer)))
            if grad is not None:
                for tensor, shape in zip(reply.tensors, expected):
                    check_gradient(tensor, shape, peer_id=span.peer_id, start=span.start, end=span.end)
        except Exception as exc:
            if is_server_fault(exc) or isinstance(exc, KeyError):
                raise SpanFailed(span.peer_id, exc) from exc
            raise
        manager.on_success(span.peer_id)
        return [t.to(self.wire_dtype) for t in reply.tensors[:len(expected)]]


async def _first_tensor(reply) -> torch.Tensor:
    return (await reply).tensors[0]


def check_prompts(prompts: torch.Tensor, num_blocks: int, hidden: torch.Tensor) -> None:
    batch, seq, size = hidden.shape
    if (prompts.ndim != 4 or prompts.shape[0] != num_blocks or prompts.shape[1] not in (1, batch)
            or prompts.shape[3] != size or not 0 < prompts.shape[2] <= seq):
        raise ValueError(f"deep prompts must be [{num_blocks}, {batch} or 1, pre_seq_len <= {seq}, {size}], "
                         f"got {tuple(prompts.shape)}")


class _RemoteBlocks(torch.autograd.Function):
    """Rows go in groups of at most `max_request_tokens` tokens, concurrently (see the module)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, prompts: torch.Tensor | None, sequential: RemoteSequential) -> torch.Tensor:
        wire = to_wire_dtype(hidden.detach().cpu(), sequential.wire_dtype)
        rows = _rows_per_request(sequential, wire.shape[1])
        groups = wire.split(rows, dim=0)
        prompt_groups = _prompt_groups(prompts, sequential.wire_dtype, [g.shape[0] for g in groups], rows)
        sequential.last_routes = []
        busy = Counter()

        async def run_all():
            return await asyncio.gather(*(sequential.aforward(group, p, busy=busy)
                                          for group, p in zip(groups, prompt_groups)))

        results = sequential.swarm.run(run_all())
        ctx.sequential, ctx.saved, ctx.prompt_groups = sequential, [saved for _, saved in results], prompt_groups
        ctx.prompts_like = None if prompts is None else (prompts.shape, prompts.device, prompts.dtype)
        return torch.cat([out for out, _ in results], dim=0).to(hidden.device, hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        sequential = ctx.sequential
        wire = to_wire_dtype(grad_out.detach().cpu(), sequential.wire_dtype)
        groups = wire.split(_rows_per_request(sequential, wire.shape[1]), dim=0)

        async def run_all():
            return await asyncio.gather(*(sequential.abackward(saved, group, p)
                                          for saved, group, p in zip(ctx.saved, groups, ctx.prompt_groups)))

        results = sequential.swarm.run(run_all())
        grad_hidden = torch.cat([g for g, _ in results], dim=0).to(grad_out.device, grad_out.dtype)
        grad_prompts = None
        if ctx.prompts_like is not None:
            shape, device, dtype = ctx.prompts_like
            grad_prompts = torch.cat([g.float() for _, g in results], dim=1)
            if shape[1] == 1:  # one prompt shared by every row: its gradient is their sum
                grad_prompts = grad_prompts.sum(dim=1, keepdim=True)
            grad_prompts = grad_prompts.to(device, dtype)
        return grad_hidden, grad_prompts, None


def _prompt_groups(prompts: torch.Tensor | None, dtype: torch.dtype, sizes: list[int], rows: int) -> list:
    """The deep prompts of each row group, on the wire, one row per hidden row (servers want that)."""
    if prompts is None:
        return [None] * len(sizes)
    wire = to_wire_dtype(prompts.detach().cpu(), dtype)
    if wire.shape[1] == 1:
        return [wire.expand(-1, size, -1, -1).contiguous() for size in sizes]
    return list(wire.split(rows, dim=1))


def _rows_per_request(sequential: RemoteSequential, seq_len: int) -> int:
    return max(1, sequential.swarm.config.max_request_tokens // max(seq_len, 1))
