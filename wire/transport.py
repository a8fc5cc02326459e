"""The client side: a Transport interface, the ZeroMQ one, and an in-process fake.

``ZmqTransport`` keeps one DEALER socket per server address, many requests in flight on it, and
one reader task that matches replies to requests by id. Every call has its own timeout. libzmq
reconnects by itself, so a transport outlives a server restart: calls in flight when the server
died time out, later ones are served once it is back. All calls of one transport must come from
one event loop (sync code: see wire.loop.BackgroundLoop).

Addresses name the server's CURVE key (wire.curve): the DEALER dials with it and a keypair of
this transport's own, so only the key's holder can read or answer. A socket monitor reports the
handshake: when it fails (the server there does not hold that key, or one side is plaintext),
the calls waiting on that connection fail at once with HandshakeFailed, and so do new ones
until a handshake succeeds, instead of each timing out. An address without a key is refused
(PlaintextRefused) unless the transport was made with ``insecure_plaintext``.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import torch
import zmq

from .curve import CurveKeys
from .endpoint import split_endpoint
from .dispatch import Handler, Reply, Request, run_handler
from .envelope import Message, decode_message, encode_message
from .errors import (BadAddress, BadHeader, ConnectionLost, HandshakeFailed, PlaintextRefused, ProtocolError,
                     RequestTimeout, SocketError, TransportClosed, remote_error_from_reply)
from .limits import DEFAULT_LIMITS, Limits
from .sockets import LoopSocket, configure_socket, sync_context

__all__ = ["Transport", "ZmqTransport", "MockTransport", "Reply"]

logger = logging.getLogger(__name__)


class Transport(ABC):
    @abstractmethod
    async def call(self, address: str, method: str, meta: dict | None = None,
                   tensors: Sequence[torch.Tensor] = (), *, timeout: float) -> Reply:
        """Send one request and wait for its reply; raise RequestTimeout, RemoteError,
        ProtocolError or TransportClosed."""

    def start_call(self, address: str, method: str, meta: dict | None = None,
                   tensors: Sequence[torch.Tensor] = (), *, timeout: float) -> asyncio.Future:
        """``call``, begun now: a plain Future of its Reply (or error). Whoever holds it may end
        the call early by setting its exception or cancelling it. Must run on the event loop."""
        return _future_of(self.call(address, method, meta, tensors, timeout=timeout))

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _future_of(coro) -> asyncio.Future:
    """A plain Future that ends as the coroutine ``coro`` (run as a task) ends; ending the
    Future first (an exception, a cancel) cancels the task."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    task = loop.create_task(coro)

    def copy(done: asyncio.Task) -> None:
        exc = None if done.cancelled() else done.exception()  # read, so asyncio logs nothing
        if fut.done():
            return
        if done.cancelled():
            fut.cancel()
        elif exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(done.result())

    task.add_done_callback(copy)
    fut.add_done_callback(lambda _: task.cancel())
    return fut


def _reply_or_error(msg: Message):
    if msg.kind == "reply":
        return Reply(msg.meta, msg.tensors)
    if msg.kind == "error":
        code, message = msg.meta.get("code"), msg.meta.get("message")
        if isinstance(code, str) and isinstance(message, str):
            return remote_error_from_reply(code, message)
        return BadHeader(f"error reply without a string code and message: {msg.meta!r:.200}")
    return BadHeader(f"expected a reply, got a {msg.kind!r}")


_HANDSHAKE_FAILED = {int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "the server closed the connection during it",
                     int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "protocol error",
                     int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "authentication refused"}
_HANDSHAKE_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_HANDSHAKE_EVENTS = _HANDSHAKE_SUCCEEDED | sum(_HANDSHAKE_FAILED)
_MECHANISM_MISMATCH = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
_LOST_EVENTS = int(zmq.EVENT_DISCONNECTED) | int(zmq.EVENT_CONNECT_RETRIED)


class _Connection:
    """One DEALER to one address and its requests in flight; replies are matched in the
    socket's reader callback, which completes the caller's future directly. `refused` holds the
    last handshake failure until a handshake succeeds."""

    def __init__(self, sock: zmq.Socket, monitor: zmq.Socket, address: str, limits: Limits,
                 loop: asyncio.AbstractEventLoop, curve: bool):
        self.address, self.limits, self.curve = address, limits, curve
        self.pending: dict[int, asyncio.Future] = {}
        self.refused: HandshakeFailed | None = None
        # one monitor (libzmq allows one per socket) for the handshake and for the connection:
        # a request in flight on a dropped connection will get no reply (the server's ROUTER
        # knows the reconnected peer under another id), and one waiting for a connection that
        # was refused has nobody to go to: both fail then, not at their timeouts
        self.monitor = LoopSocket(monitor, self._on_event, loop)
        self.sock = LoopSocket(sock, self._on_message, loop)

    def _lost(self, event: int) -> None:
        why = ("dropped with the call in flight" if event == zmq.EVENT_DISCONNECTED
               else "was refused: nobody listens there")
        lost = ConnectionLost(f"the connection to {self.address} {why}")
        for fut in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(lost)

    def _on_message(self, frames: list) -> None:
        pending = self.pending
        try:
            msg = decode_message(frames, self.limits)
        except ProtocolError as exc:
            fut = pending.get(getattr(exc, "request_id", 0))
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            else:
                logger.warning("unreadable reply from %s: %s", self.address, exc)
            return
        fut = pending.get(msg.request_id)
        if fut is None or fut.done():
            logger.debug("late reply %d from %s dropped", msg.request_id, self.address)
            return
        outcome = _reply_or_error(msg)
        if isinstance(outcome, Reply):
            fut.set_result(outcome)
        else:
            fut.set_exception(outcome)

    def _on_event(self, frames: list) -> None:
        try:
            event, value = struct.unpack("=HI", frames[0].bytes[:6])
        except (struct.error, IndexError):  # not a monitor message we can read: nothing to act on
            return
        if event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECT_RETRIED):
            self._lost(event)
            return
        if event == _HANDSHAKE_SUCCEEDED:
            self.refused = None
            return
        if event not in _HANDSHAKE_FAILED:
            return
        detail = _HANDSHAKE_FAILED[event]
        if event == int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) and value == _MECHANISM_MISMATCH:
            detail = "the server speaks CURVE" if not self.curve else "the server speaks plaintext"
        why = ("the server there does not hold the CURVE key its address names, or speaks no CURVE"
               if self.curve else "the server there wants CURVE: dial it with its key")
        if self.refused is None:  # libzmq retries every second: say it once, not each time
            logger.warning("handshake with %s failed (%s): %s", self.address, detail, why)
        self.refused = HandshakeFailed(f"handshake with {self.address} failed ({detail}): {why}")
        for fut in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(HandshakeFailed(str(self.refused)))

    def close(self) -> None:
        if not self.sock.closed:
            try:
                self.sock.sock.disable_monitor()
            except zmq.ZMQError:
                pass
        self.monitor.close()
        self.sock.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(TransportClosed(f"transport to {self.address} closed"))


def _expire(fut: asyncio.Future, what: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(RequestTimeout(f"{what}: no reply within {timeout:g} s"))


# While a DEALER's queue is full (server gone for long, HWM_MESSAGES queued), retry this often.
FULL_QUEUE_RETRY_S = 0.01


class ZmqTransport(Transport):
    def __init__(self, *, limits: Limits = DEFAULT_LIMITS, compression: str = "auto",
                 context: zmq.Context | None = None, insecure_plaintext: bool = False):
        self.limits = limits
        self.compression = compression
        self.insecure_plaintext = insecure_plaintext
        # this client's own pair, for every server it dials (servers do not authenticate clients);
        # made at the first address that names a key, so a plaintext-only transport needs no CURVE
        self.keys: CurveKeys | None = None
        self._context = context
        self._connections: dict[str, _Connection] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def _connect(self, address: str) -> _Connection:
        tcp_address, server_key = split_endpoint(address)
        if server_key is None and not self.insecure_plaintext:
            raise PlaintextRefused(f"{address} names no CURVE key: this transport talks to servers in "
                                   "clear only when made with insecure_plaintext")
        if server_key is not None and self.keys is None:
            self.keys = CurveKeys.generate()  # CurveUnavailable before any socket is made
        sock = (self._context or sync_context()).socket(zmq.DEALER)
        configure_socket(sock, self.limits)
        if server_key is not None:
            sock.curve_serverkey = server_key
            sock.curve_publickey = self.keys.public
            sock.curve_secretkey = self.keys.secret
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS | _LOST_EVENTS)  # before connect, or it may miss the handshake
        try:
            sock.connect(tcp_address)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            raise BadAddress(f"bad address {address!r}: {exc}") from exc
        conn = self._connections[address] = _Connection(sock, monitor, address, self.limits,
                                                        asyncio.get_running_loop(), server_key is not None)
        return conn

    async def call(self, address: str, method: str, meta: dict | None = None,
                   tensors: Sequence[torch.Tensor] = (), *, timeout: float) -> Reply:
        return await self.start_call(address, method, meta, tensors, timeout=timeout)

    def start_call(self, address: str, method: str, meta: dict | None = None,
                   tensors: Sequence[torch.Tensor] = (), *, timeout: float) -> asyncio.Future:
        # Sent here, without a task: the reply future is completed by the connection's reader
        # callback, and a done-callback tidies up (a task per call cost an event-loop pass).
        if self._closed:
            raise TransportClosed("transport is closed")
        conn = self._connections.get(address) or self._connect(address)
        if conn.refused is not None:
            raise HandshakeFailed(str(conn.refused))
        rid = next(self._ids)
        frames = encode_message(Message(method, meta if meta is not None else {}, list(tensors), rid),
                                compression=self.compression)
        try:
            conn.sock.send(frames)
        except zmq.Again:  # queue full: wait for room in a task, but never past the timeout
            return _future_of(self._send_when_room(conn, frames, rid, method, address, timeout))
        except zmq.ZMQError as exc:
            if conn.sock.closed:
                raise TransportClosed(f"transport to {address} closed") from exc
            raise SocketError(f"{method} to {address}: {exc}") from exc
        fut = asyncio.get_running_loop().create_future()
        self._track(conn, fut, rid, method, address, timeout)
        return fut

    @staticmethod
    def _track(conn: _Connection, fut: asyncio.Future, rid: int, method: str, address: str,
               timeout: float) -> None:
        conn.pending[rid] = fut
        timer = fut.get_loop().call_later(timeout, _expire, fut, f"{method} to {address}", timeout)

        def done(_) -> None:
            timer.cancel()
            conn.pending.pop(rid, None)

        fut.add_done_callback(done)

    async def _send_when_room(self, conn: _Connection, frames: list, rid: int, method: str,
                              address: str, timeout: float) -> Reply:
        fut = asyncio.get_running_loop().create_future()
        self._track(conn, fut, rid, method, address, timeout)
        try:
            while not fut.done():
                try:
                    conn.sock.send(frames)
                    break
                except zmq.Again:
                    await asyncio.sleep(FULL_QUEUE_RETRY_S)
                except zmq.ZMQError as exc:
                    if conn.sock.closed:
                        raise TransportClosed(f"transport to {address} closed") from exc
                    raise SocketError(f"{method} to {address}: {exc}") from exc
            return await fut
        finally:
            fut.cancel()

    async def close(self) -> None:
        self._closed = True
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            conn.close()


class MockTransport(Transport):
    """Routes calls to in-process handlers, through the real envelope encode/decode (so meta
    must be msgpack-able and tensors are copied, as over a socket). An address with no server
    behaves like a dead one: the call raises RequestTimeout (at once, to keep tests fast)."""

    def __init__(self, servers: Mapping[str, Mapping[str, Handler]] | None = None, *,
                 limits: Limits = DEFAULT_LIMITS):
        self.servers: dict[str, dict[str, Handler]] = {a: dict(h) for a, h in (servers or {}).items()}
        self.limits = limits
        self.calls: list[tuple[str, str]] = []  # (address, method), for assertions in tests
        self._ids = itertools.count(1)
        self._closed = False

    def add_server(self, address: str, handlers: Mapping[str, Handler]) -> None:
        self.servers[address] = dict(handlers)

    def remove_server(self, address: str) -> None:
        self.servers.pop(address, None)

    def _through_wire(self, msg: Message) -> Message:
        frames = [bytes(f) for f in encode_message(msg, compression="none")]
        return decode_message(frames, self.limits)

    async def call(self, address: str, method: str, meta: dict | None = None,
                   tensors: Sequence[torch.Tensor] = (), *, timeout: float) -> Reply:
        if self._closed:
            raise TransportClosed("transport is closed")
        self.calls.append((address, method))
        sent = self._through_wire(Message(method, meta if meta is not None else {}, list(tensors),
                                          next(self._ids)))
        handlers = self.servers.get(address, self.servers.get(split_endpoint(address)[0]))
        if handlers is None:
            raise RequestTimeout(f"{method} to {address}: no server there (mock)")
        handler = handlers.get(method)
        if handler is None:
            raise remote_error_from_reply("unknown_method", f"unknown method {method!r} (mock)")
        request = Request(sent.method, sent.meta, sent.tensors, b"mock", sent.request_id)
        try:
            reply = await asyncio.wait_for(run_handler(handler, request), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{method} to {address}: no reply within {timeout:g} s") from None
        outcome = _reply_or_error(self._through_wire(reply))
        if isinstance(outcome, Reply):
            return outcome
        raise outcome

    async def close(self) -> None:
        self._closed = True
