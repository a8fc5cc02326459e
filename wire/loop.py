"""BackgroundLoop: an asyncio event loop in a daemon thread, for sync callers of async APIs.

    loop = BackgroundLoop()
    transport = loop.run(make_transport())           # objects bound to the loop are made on it
    reply = loop.run(transport.call(addr, "ping", timeout=5), timeout=10)
    loop.close()
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Coroutine, TypeVar

__all__ = ["BackgroundLoop"]

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "zswarm-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[object, object, T]) -> "concurrent.futures.Future[T]":
        """Schedule ``coro`` on the loop; return a concurrent Future (for callers that poll)."""
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("BackgroundLoop is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[object, object, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result; on ``timeout`` cancel it and raise
        TimeoutError. Must not be called from the loop's own thread (it would deadlock)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.run called from its own loop thread")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and join the thread."""
        if not self._thread.is_alive():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if threading.current_thread() is not self._thread:
            try:
                asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(timeout)
            except Exception:  # a task that refuses to die must not block shutdown
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> "BackgroundLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
