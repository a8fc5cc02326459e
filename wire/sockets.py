"""ZeroMQ sockets for asyncio without per-message futures.

`LoopSocket` wraps a plain (sync) zmq socket and hands every arriving message to a callback,
straight from the event loop's reader callback on the socket's FD. pyzmq's zmq.asyncio wraps each
recv in a Future that then wakes a Task -- an extra event-loop pass (and epoll syscall) per
message that a request/reply round trip pays on both ends. Sends are non-blocking: a ROUTER never
blocks, a DEALER only when its queue (HWM_MESSAGES) is full, which the caller handles.

libzmq's FD is edge-triggered and any send may consume the edge, so after every send we look at
ZMQ_EVENTS ourselves and schedule a drain if messages are waiting.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import zmq
import zmq.backend

from .limits import Limits

__all__ = ["configure_socket", "LoopSocket", "HWM_MESSAGES", "sync_context"]

logger = logging.getLogger(__name__)

# Messages queued per peer before a DEALER send waits / a ROUTER reply is dropped; well above
# the thousand requests one client may keep in flight.
HWM_MESSAGES = 10_000
# Messages handled per reader callback before yielding to other callbacks on the loop.
DRAIN_BATCH = 64
# Frames below this are copied into libzmq (cheaper than pyzmq's zero-copy bookkeeping).
COPY_BELOW_BYTES = 64 << 10

# The Cython-level calls, as plain ints: pyzmq's sugar wraps EVENTS in an enum and re-checks
# every frame, a few microseconds per message that both ends of every round trip pay.
_get = zmq.backend.Socket.get
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


def sync_context() -> zmq.Context:
    return zmq.Context.instance()


def configure_socket(sock: zmq.Socket, limits: Limits) -> None:
    sock.setsockopt(zmq.LINGER, 0)  # close never blocks on unsent messages
    # libzmq drops a peer that sends any single frame above this, before we allocate for it
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    sock.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
    sock.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
    # reconnect fast after a server restart, then back off to 1 s
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    # SNDBUF/RCVBUF stay at the kernel's default on purpose: setting them turns off Linux's
    # buffer autotuning (which long-distance links need), and on loopback 256 KiB..4 MiB buffers
    # changed a 4 MiB round trip by less than the noise (tools/bench_wire.py, 2-core box).
    # notice a peer that vanished without closing TCP (power loss, NAT drop)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)


class LoopSocket:
    """A sync zmq socket driven by ``loop.add_reader``; ``on_message(frames)`` gets each message
    as a list of zmq.Frame (zero-copy). Use from the loop's thread only."""

    def __init__(self, sock: zmq.Socket, on_message: Callable[[list], None],
                 loop: asyncio.AbstractEventLoop):
        self.sock, self.on_message, self.loop = sock, on_message, loop
        self._fd = sock.getsockopt(zmq.FD)
        self._drain_scheduled = False
        self.closed = False
        loop.add_reader(self._fd, self._drain)
        self._schedule_drain()  # messages may have queued before the reader was added

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        sock = self.sock
        for _ in range(DRAIN_BATCH):
            if self.closed or not _get(sock, _EVENTS) & _POLLIN:
                return
            frame = _recv(sock, _NOBLOCK, False)
            frames = [frame]
            while frame.more:  # the rest of a multipart message is already here
                frame = _recv(sock, _NOBLOCK, False)
                frames.append(frame)
            try:
                self.on_message(frames)
            except Exception:  # one bad message must never stop the socket
                logger.exception("message handler failed")
        self._schedule_drain()  # more may be waiting: continue after other callbacks ran

    def send(self, frames: list) -> None:
        """Send without blocking; raise zmq.Again if the peer's queue is full."""
        sock = self.sock
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            # only the first frame can raise Again: later parts of a message always go
            _send(sock, frame, (_NOBLOCK | _SNDMORE) if i < last else _NOBLOCK,
                  len(frame) < COPY_BELOW_BYTES)
        if _get(sock, _EVENTS) & _POLLIN:
            self._schedule_drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self._fd)
            self.sock.close(linger=0)
