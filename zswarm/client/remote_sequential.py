"""`RemoteSequential`: the model's transformer blocks as one module whose forward and backward
run through the swarm (the `forward` and `backward` RPCs), with autograd, for training and for
`model(input_ids)`. No cache: each call carries the whole sequence.

Forward picks a load-spreading route (`find_forward_route`) and keeps the input each span got;
backward walks the spans in reverse, sending each its input and the gradient of its output. A
failed span is banned and its range routed again; in backward, a replacement made of several
spans recomputes the inner inputs with forward calls first.
"""
from __future__ import annotations

import asyncio
import logging

import torch
from torch import nn

from wire.codec import to_wire_dtype
from zswarm.client.failures import (ServerUnavailable, SpanFailed, backoff_delay, is_server_fault,
                                    retries_exhausted)
from zswarm.client.swarm import SwarmConnection
from zswarm.errors import NoRouteError
from zswarm.routing import RouteSpan

logger = logging.getLogger(__name__)


class RemoteSequential(nn.Module):
    def __init__(self, swarm: SwarmConnection, *, wire_dtype: torch.dtype, start: int = 0, end: int | None = None):
        super().__init__()
        self.swarm = swarm
        self.wire_dtype = wire_dtype
        self.start = start
        self.end = swarm.num_blocks if end is None else end

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden`: [batch, seq, hidden_size] -> the same shape after blocks [start, end)."""
        if hidden.ndim != 3:
            raise ValueError(f"hidden states must be [batch, seq, hidden], got {tuple(hidden.shape)}")
        return _RemoteBlocks.apply(hidden, self)

    def extra_repr(self) -> str:
        return f"blocks {self.start}-{self.end - 1} of {self.swarm.model_id}"

    # ---- async work on the client loop ------------------------------------------------------
    async def aforward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, list[tuple[RouteSpan, torch.Tensor]]]:
        """Returns the output and, per route span, the input it was given (for backward)."""
        saved: list[tuple[RouteSpan, torch.Tensor]] = []

        async def through(route: list[RouteSpan]) -> torch.Tensor:
            saved.clear()
            x = hidden
            for span in route:
                saved.append((span, x))
                x = await self._call(span, "forward", [x])
            return x

        out = await self._with_failover(self.start, self.end, through)
        return out, saved

    async def abackward(self, saved: list[tuple[RouteSpan, torch.Tensor]], grad: torch.Tensor) -> torch.Tensor:
        for span, x in reversed(saved):
            grad = await self._backward_range(span, x, grad)
        return grad

    async def _backward_range(self, span: RouteSpan, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        async def back(route: list[RouteSpan]) -> torch.Tensor:
            inputs = [x]
            for inner in route[:-1]:
                inputs.append(await self._call(inner, "forward", [inputs[-1]]))
            g = grad
            for inner, inner_x in zip(reversed(route), reversed(inputs)):
                g = await self._call(inner, "backward", [inner_x, g])
            return g

        return await self._with_failover(span.start, span.end, back, first_route=[span])

    async def _with_failover(self, start: int, end: int, work, *, first_route: list[RouteSpan] | None = None):
        """Run `work(route)` on a route of [start, end); on a server's failure ban it and run it
        again on a new route, at most `max_retries` times."""
        manager, config = self.swarm.manager, self.swarm.config
        route, attempt, cause, refreshed = first_route, 0, None, False
        while True:
            try:
                if route is None:
                    route = await manager.make_forward_route(start, end)
                return await work(route)
            except (NoRouteError, ServerUnavailable) as exc:
                if not refreshed:  # our view may be stale: the DHT may know servers we do not
                    refreshed = True
                    await manager.update()
                    continue
                attempt, cause = attempt + 1, exc
                if attempt > config.max_retries:
                    raise retries_exhausted(manager.model_id, start, end, attempt, cause) from exc
                await asyncio.sleep(backoff_delay(config, attempt))
                await manager.update()
            except SpanFailed as exc:
                attempt, cause = attempt + 1, exc
                manager.on_failure(exc.peer_id, exc.cause)
                if attempt > config.max_retries:
                    raise retries_exhausted(manager.model_id, start, end, attempt, cause) from exc
                logger.warning("%s; routing blocks %d-%d again (attempt %d of %d)", exc, start, end - 1,
                               attempt, config.max_retries)
                route, refreshed = None, False

    async def _call(self, span: RouteSpan, method: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        manager = self.swarm.manager
        try:
            reply = await manager.call(manager.address(span.peer_id), method,
                                       manager.request_meta(start=span.start, end=span.end),
                                       tensors, timeout=self.swarm.config.request_timeout)
            if len(reply.tensors) < 1 or reply.tensors[0].shape != tensors[0].shape:
                raise ServerUnavailable(f"{span.peer_id} answered {method} with the wrong shapes")
        except Exception as exc:
            if is_server_fault(exc) or isinstance(exc, KeyError):
                raise SpanFailed(span.peer_id, exc) from exc
            raise
        manager.on_success(span.peer_id)
        return reply.tensors[0].to(self.wire_dtype)


class _RemoteBlocks(torch.autograd.Function):
    """Rows go in groups of at most `max_request_tokens` tokens, each group on its own forward
    route (drawn at random by throughput), concurrently: a big batch spreads over replicas."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, sequential: RemoteSequential) -> torch.Tensor:
        wire = to_wire_dtype(hidden.detach().cpu(), sequential.wire_dtype)
        groups = wire.split(_rows_per_request(sequential, wire.shape[1]), dim=0)

        async def run_all():
            return await asyncio.gather(*(sequential.aforward(group) for group in groups))

        results = sequential.swarm.run(run_all())
        ctx.sequential, ctx.saved = sequential, [saved for _, saved in results]
        return torch.cat([out for out, _ in results], dim=0).to(hidden.device, hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        sequential = ctx.sequential
        wire = to_wire_dtype(grad_out.detach().cpu(), sequential.wire_dtype)
        groups = wire.split(_rows_per_request(sequential, wire.shape[1]), dim=0)

        async def run_all():
            return await asyncio.gather(*(sequential.abackward(saved, group)
                                          for saved, group in zip(ctx.saved, groups)))

        grads = sequential.swarm.run(run_all())
        return torch.cat(grads, dim=0).to(grad_out.device, grad_out.dtype), None


def _rows_per_request(sequential: RemoteSequential, seq_len: int) -> int:
    return max(1, sequential.swarm.config.max_request_tokens // max(seq_len, 1))
