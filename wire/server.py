"""RpcServer: an asyncio ZeroMQ ROUTER that dispatches requests by method to async handlers.

A reader callback on the ROUTER socket validates each message's header (see envelope.py) and
answers bad input with an error reply at once; then the server's ``admit`` hook (if given) sees
the method, meta and every tensor's declared dtype and shape, before a byte is decompressed: what
a handler would refuse anyway (a million-token "prefill" that lz4 packs into 1 MiB) costs it no
memory. Each good request then runs in its own task, so a slow handler never delays
a ping. Tasks are started in arrival order, so a handler that takes a per-session asyncio.Lock
before its first other ``await`` serves one connection's pipelined steps in the order sent --
except requests whose lz4 payloads are large enough to be decompressed off the loop. Replies
that need lz4 over more than OFFLOAD_BYTES are compressed off the loop as well (~8 ms per 4 MiB
of bf16 on the dev box, long enough to hold up every other request); replies are matched by id,
so their order does not matter. Handlers that compute must do so off the event loop
(run_in_executor).

CURVE is on unless ``insecure_plaintext``: the server listens with ``keys`` (an ephemeral pair
when none is given) and ``address`` names its public key (see curve.py), so a client that dials
``address`` talks to this server and no other. It accepts any client key (no ZAP handler).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping, Sequence

import zmq

from .codec import Checked, plan_compression, wire_tensor
from .curve import CurveKeys
from .endpoint import endpoint
from .dispatch import Handler, Request, exception_reply, run_handler
from .envelope import (Message, decode_header, decode_tensors, encode_message, error_message,
                       with_request_id)
from .errors import BadHeader, ProtocolError, UnknownMethod
from .limits import DEFAULT_LIMITS, Limits
from .sockets import LoopSocket, configure_socket, sync_context

__all__ = ["RpcServer"]

logger = logging.getLogger(__name__)

# lz4 payloads above this are decompressed in a worker thread, not on the event loop; replies
# with more than this to compress are compressed there
OFFLOAD_DECODE_BYTES = OFFLOAD_ENCODE_BYTES = 1 << 20

# admit(method, meta, declared tensors): raise (an exception with a ``code``) to refuse a request
# from what it declares, before its payloads are decoded
Admit = Callable[[str, dict, Sequence[Checked]], None]


class RpcServer:
    def __init__(self, handlers: Mapping[str, Handler], host: str = "127.0.0.1", port: int = 0,
                 limits: Limits = DEFAULT_LIMITS, *, compression: str = "auto",
                 context: zmq.Context | None = None, admit: Admit | None = None, keys: CurveKeys | None = None,
                 insecure_plaintext: bool = False):
        if keys is not None and insecure_plaintext:
            raise ValueError("give CURVE keys or insecure_plaintext, not both")
        self.handlers = dict(handlers)
        self.admit = admit
        self.host, self.port = host, port
        self.limits = limits
        self.compression = compression
        self.keys = None if insecure_plaintext else keys or CurveKeys.generate()
        self.address: str | None = None  # tcp://host:port, with #curve=KEY unless plaintext
        self._context = context
        self._sock: LoopSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        ctx = self._context or sync_context()
        sock = ctx.socket(zmq.ROUTER)
        configure_socket(sock, self.limits)
        if self.keys is not None:
            sock.curve_server = True
            sock.curve_secretkey = self.keys.secret
        try:
            sock.bind(f"tcp://{self.host}:{self.port or '*'}")
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(bound.rsplit(":", 1)[1])
        self.address = endpoint(bound, self.keys and self.keys.public)
        self._loop = asyncio.get_running_loop()
        self._sock = LoopSocket(sock, self._on_message, self._loop)
        logger.info("rpc server listening on %s, %s (%s)", bound, "CURVE" if self.keys else "PLAINTEXT",
                    ", ".join(sorted(self.handlers)))

    async def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock = None
            logger.info("rpc server on %s stopped", self.address)

    async def __aenter__(self) -> "RpcServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _on_message(self, frames: list) -> None:
        if len(frames) < 2:
            return
        peer = frames[0].bytes
        try:
            msg, pending = decode_header(frames[1:], self.limits)
            if msg.kind != "request":
                raise with_request_id(BadHeader(f"a server takes requests, got a {msg.kind!r}"),
                                      msg.request_id)
            handler = self.handlers.get(msg.method)
            if handler is None:
                raise with_request_id(UnknownMethod(
                    f"unknown method {msg.method!r} (this server has: {', '.join(sorted(self.handlers))})"),
                    msg.request_id)
        except ProtocolError as exc:
            logger.info("bad request from %s: %s", peer.hex(), exc)
            self._send(peer, error_message(getattr(exc, "request_id", 0), exc.code, str(exc)))
            return
        request = Request(msg.method, msg.meta, [], peer, msg.request_id, peer_address(frames[0]))
        if self.admit is not None:
            try:
                self.admit(msg.method, msg.meta, pending.checked)
            except Exception as exc:  # refused on what it declares: nothing was decoded
                logger.info("refused %s from %s before decoding: %s", msg.method, peer.hex(), exc)
                self._send(peer, exception_reply(request, exc))
                return
        # the task removes itself from _tasks when done: a done-callback would cost one more
        # event-loop pass per request
        self._tasks.add(self._loop.create_task(self._serve(request, pending, handler)))

    async def _serve(self, request: Request, pending, handler: Handler) -> None:
        try:
            await self._serve_request(request, pending, handler)
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _serve_request(self, request: Request, pending, handler: Handler) -> None:
        peer = request.peer
        try:
            if pending.compressed_bytes > OFFLOAD_DECODE_BYTES:
                request.tensors = await asyncio.get_running_loop().run_in_executor(
                    None, decode_tensors, pending, self.limits, request.request_id)
            else:
                request.tensors = decode_tensors(pending, self.limits, request.request_id)
        except ProtocolError as exc:
            logger.info("bad tensors from %s: %s", peer.hex(), exc)
            self._send(peer, exception_reply(request, exc))
            return
        reply = await run_handler(handler, request)
        plan = self._plan(reply)
        if sum(t.nbytes for t, c in zip(reply.tensors, plan) if c == "lz4") > OFFLOAD_ENCODE_BYTES:
            frames = await asyncio.get_running_loop().run_in_executor(None, self._encode, reply, plan)
        else:
            frames = self._encode(reply, plan)
        self._post(peer, frames)

    def _send(self, peer: bytes, reply: Message) -> None:
        self._post(peer, self._encode(reply))

    def _plan(self, reply: Message) -> list:
        """Per reply tensor, whether it gets lz4 (the probe runs here, once); [] when it cannot
        be planned, in which case _encode reports why."""
        try:
            reply.tensors = [wire_tensor(t) for t in reply.tensors]
            return [plan_compression(t, self.compression) for t in reply.tensors]
        except Exception:
            return []

    def _encode(self, reply: Message, plan: list | None = None) -> list:
        try:
            return encode_message(reply, compression=plan or self.compression)
        except Exception as exc:  # e.g. meta that msgpack cannot encode, a dtype the wire lacks
            logger.error("cannot encode reply to %r: %s", reply.method, exc)
            return encode_message(error_message(reply.request_id, "internal",
                                                f"server could not encode its reply: {exc}", reply.method))

    def _post(self, peer: bytes, frames: list) -> None:
        if self._sock is not None and not self._sock.closed:
            # ROUTER sends never block: a full or vanished peer drops the reply (it times out)
            self._sock.send([peer, *frames])



def peer_address(frame) -> str:
    """The sender's IP as libzmq saw it (frame metadata "Peer-Address"); "" when unknown."""
    try:
        return frame.get("Peer-Address") or ""
    except (AttributeError, zmq.ZMQError):  # bytes (tests), or a transport without the property
        return ""
