"""Fixtures for wire tests: a live RpcServer on a background loop, for raw-socket clients."""
import asyncio

import pytest

from wire import BackgroundLoop, Limits, RpcServer

# Small caps keep the oversize tests cheap; the logic is the same at the default 256 MiB.
SMALL_LIMITS = Limits(max_message_bytes=1 << 20, max_frames=8, max_header_bytes=64 << 10)


async def echo(request):
    return request.meta, request.tensors


async def ping(request):
    return {}, []


@pytest.fixture
def background_loop():
    loop = BackgroundLoop(name="wire-test-loop")
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def live_server(background_loop):
    """An RpcServer with echo/ping and SMALL_LIMITS, served from a background thread."""
    async def make():
        server = RpcServer({"echo": echo, "ping": ping}, limits=SMALL_LIMITS)
        await server.start()
        return server
    server = background_loop.run(make(), timeout=10)
    try:
        yield server
    finally:
        background_loop.run(server.stop(), timeout=10)
