"""Request, Reply and the one place that turns a handler's outcome into a reply message.

Shared by RpcServer (real sockets) and MockTransport (in-process), so both answer alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Union

import torch

from .envelope import Message, error_message

__all__ = ["Request", "Reply", "Handler", "run_handler"]

logger = logging.getLogger(__name__)


@dataclass
class Reply:
    meta: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)


@dataclass
class Request:
    method: str
    meta: dict
    tensors: list
    peer: bytes          # the DEALER's routing identity: one per client connection
    request_id: int = 0
    peer_address: str = ""  # the sender's IP ("" when the transport cannot tell)


HandlerResult = Union[Reply, tuple, None]
Handler = Callable[[Request], Awaitable[HandlerResult]]


def _as_reply(result) -> Reply:
    if result is None:
        return Reply()
    if isinstance(result, Reply):
        reply = result
    elif isinstance(result, tuple) and len(result) == 2:
        reply = Reply(result[0] if result[0] is not None else {}, list(result[1]))
    else:
        raise TypeError(f"handler returned {type(result).__name__}; expected Reply or (meta, tensors)")
    if not isinstance(reply.meta, dict):
        raise TypeError(f"reply meta must be a dict, got {type(reply.meta).__name__}")
    for t in reply.tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"reply tensors must be torch.Tensor, got {type(t).__name__}")
    return reply


def exception_reply(request: Request, exc: BaseException) -> Message:
    """Error reply for ``exc``: its ``code`` if it has a string one, else ``internal``."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        message = exc.message if isinstance(getattr(exc, "message", None), str) else str(exc)
        return error_message(request.request_id, code, message, request.method)
    logger.error("handler for %r failed", request.method, exc_info=exc)
    return error_message(request.request_id, "internal", f"{type(exc).__name__}: {exc}", request.method)


async def run_handler(handler: Handler, request: Request) -> Message:
    """Run ``handler``; return the reply or error-reply Message (never raises but CancelledError)."""
    try:
        reply = _as_reply(await handler(request))
    except Exception as exc:
        return exception_reply(request, exc)
    return Message(request.method, reply.meta, reply.tensors, request.request_id, "reply")
