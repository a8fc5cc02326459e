"""A thread beside timed steps, as a server's event loop sits beside its compute thread:
'loop' (an idle asyncio loop on a ZeroMQ socket, the server's own reader), 'ticker' (the same,
woken every 1 ms) or 'busy' (a thread that never blocks)."""
from __future__ import annotations

import asyncio
import threading


class Background:
    """A thread beside the timed steps: 'loop', 'ticker' or 'busy' (see the module docstring)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.stop = threading.Event()
        self.loop = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"bench-{kind}")

    def _main(self):
        if self.kind == "busy":
            self.ready.set()
            while not self.stop.is_set():
                sum(range(2000))
            return
        import zmq

        from wire.sockets import LoopSocket

        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.bind("tcp://127.0.0.1:*")
        # the server's own reader: it reads ZMQ_EVENTS, which consumes the FD's edge (a reader that
        # does not finds the FD readable forever and spins the loop)
        wrapped = LoopSocket(sock, lambda frames: None, loop)
        if self.kind == "ticker":
            def tick():
                loop.call_later(0.001, tick)
            loop.call_soon(tick)
        loop.call_soon(self.ready.set)
        try:
            loop.run_forever()
        finally:
            wrapped.close()
            loop.close()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        return False
