"""RpcServer: an asyncio ZeroMQ ROUTER that dispatches requests by method to async handlers.

One receive loop validates each message's header (see envelope.py) and answers bad input with an
error reply at once; each good request then runs in its own task, so a slow handler never delays
a ping. Tasks are started in arrival order, so a handler that takes a per-session asyncio.Lock
before its first other ``await`` serves one connection's pipelined steps in the order sent --
except requests whose lz4 payloads are large enough to be decompressed off the loop.
Handlers that compute must do so off the event loop (run_in_executor).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Mapping

import zmq
import zmq.asyncio

from .dispatch import Handler, Request, exception_reply, run_handler
from .envelope import (Message, decode_header, decode_tensors, encode_message, error_message,
                       with_request_id)
from .errors import BadHeader, ProtocolError, UnknownMethod
from .limits import DEFAULT_LIMITS, Limits
from .sockets import configure_socket

__all__ = ["RpcServer"]

logger = logging.getLogger(__name__)

# lz4 payloads above this are decompressed in a worker thread, not on the event loop
OFFLOAD_DECODE_BYTES = 1 << 20


class RpcServer:
    def __init__(self, handlers: Mapping[str, Handler], host: str = "127.0.0.1", port: int = 0,
                 limits: Limits = DEFAULT_LIMITS, *, compression: str = "auto",
                 context: zmq.asyncio.Context | None = None):
        self.handlers = dict(handlers)
        self.host, self.port = host, port
        self.limits = limits
        self.compression = compression
        self.address: str | None = None
        self._context = context
        self._sock: zmq.asyncio.Socket | None = None
        self._recv_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        ctx = self._context or zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        configure_socket(sock, self.limits)
        try:
            sock.bind(f"tcp://{self.host}:{self.port or '*'}")
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._sock = sock
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.address.rsplit(":", 1)[1])
        self._recv_task = asyncio.get_running_loop().create_task(self._receive_loop())
        logger.info("rpc server listening on %s (%s)", self.address, ", ".join(sorted(self.handlers)))

    async def stop(self) -> None:
        if self._recv_task is not None:
            self._recv_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*([self._recv_task] if self._recv_task else []), *self._tasks,
                             return_exceptions=True)
        self._recv_task = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        logger.info("rpc server on %s stopped", self.address)

    async def __aenter__(self) -> "RpcServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _receive_loop(self) -> None:
        sock, limits, handlers = self._sock, self.limits, self.handlers
        create_task = asyncio.get_running_loop().create_task
        while True:
            frames = await sock.recv_multipart(copy=False)
            if len(frames) < 2:
                continue
            peer = frames[0].bytes
            try:
                msg, pending = decode_header(frames[1:], limits)
                if msg.kind != "request":
                    raise with_request_id(BadHeader(f"a server takes requests, got a {msg.kind!r}"),
                                          msg.request_id)
                handler = handlers.get(msg.method)
                if handler is None:
                    raise with_request_id(UnknownMethod(
                        f"unknown method {msg.method!r} (this server has: {', '.join(sorted(handlers))})"),
                        msg.request_id)
            except ProtocolError as exc:
                rid = getattr(exc, "request_id", 0)
                logger.info("bad request from %s: %s", peer.hex(), exc)
                self._send(peer, error_message(rid, exc.code, str(exc)))
                continue
            task = create_task(self._serve(peer, msg, pending, handler))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, peer: bytes, msg: Message, pending, handler: Handler) -> None:
        request = Request(msg.method, msg.meta, [], peer, msg.request_id)
        try:
            if pending.compressed_bytes > OFFLOAD_DECODE_BYTES:
                request.tensors = await asyncio.get_running_loop().run_in_executor(
                    None, decode_tensors, pending, self.limits, msg.request_id)
            else:
                request.tensors = decode_tensors(pending, self.limits, msg.request_id)
        except ProtocolError as exc:
            logger.info("bad tensors from %s: %s", peer.hex(), exc)
            self._send(peer, exception_reply(request, exc))
            return
        self._send(peer, await run_handler(handler, request))

    def _send(self, peer: bytes, reply: Message) -> None:
        try:
            frames = encode_message(reply, compression=self.compression)
        except Exception as exc:  # e.g. meta that msgpack cannot encode, a dtype the wire lacks
            logger.error("cannot encode reply to %r: %s", reply.method, exc)
            frames = encode_message(error_message(reply.request_id, "internal",
                                                  f"server could not encode its reply: {exc}", reply.method))
        if self._sock is not None:
            # ROUTER sends never block: a full or vanished peer drops the reply (it times out)
            self._sock.send_multipart([peer, *frames], copy=False)

