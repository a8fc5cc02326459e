"""ZmqTransport against a real RpcServer on loopback: matching, concurrency, timeouts, errors."""
import asyncio

import pytest
import torch

from wire import (BackgroundLoop, CurveKeys, RemoteError, Reply, RequestTimeout, RpcServer, TransportClosed,
                  ZmqTransport, register_remote_error)
from wire.endpoint import endpoint

TIMEOUT = 10.0


class SessionGone(RemoteError):
    pass


class CodedError(Exception):
    code = "cache_full"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def serving(handlers, **kwargs):
    server = RpcServer(handlers, **kwargs)
    await server.start()
    return server


async def echo(request):
    return Reply(request.meta, request.tensors)


def test_thousand_concurrent_requests_on_one_dealer_all_matched():
    async def main():
        async def delayed_echo(request):  # replies come back out of order
            await asyncio.sleep((request.meta["i"] * 7919 % 13) / 1000)
            return request.meta, [request.tensors[0] * 2]
        server = await serving({"echo": delayed_echo})
        async with ZmqTransport() as transport:
            replies = await asyncio.gather(*[
                transport.call(server.address, "echo", {"i": i}, [torch.tensor([i])], timeout=TIMEOUT)
                for i in range(1000)])
            assert len(transport._connections) == 1
        await server.stop()
        assert [r.meta["i"] for r in replies] == list(range(1000))
        assert [r.tensors[0].item() for r in replies] == [2 * i for i in range(1000)]
    run(main())


def test_slow_handler_does_not_delay_ping():
    async def main():
        release = asyncio.Event()
        async def slow(request):
            await release.wait()
            return {"done": True}, []
        async def ping(request):
            return {}, []
        server = await serving({"slow": slow, "ping": ping})
        async with ZmqTransport() as transport:
            slow_call = asyncio.ensure_future(transport.call(server.address, "slow", timeout=TIMEOUT))
            for _ in range(5):  # pings are answered while the slow request is still held
                await transport.call(server.address, "ping", timeout=TIMEOUT)
            assert not slow_call.done()
            release.set()
            assert (await slow_call).meta == {"done": True}
        await server.stop()
    run(main())


def test_request_timeout_then_late_reply_ignored_and_next_call_served():
    async def main():
        release = asyncio.Event()
        async def stuck(request):
            await release.wait()
            return {"late": True}, []
        server = await serving({"stuck": stuck, "echo": echo})
        async with ZmqTransport() as transport:
            with pytest.raises(RequestTimeout):
                await transport.call(server.address, "stuck", timeout=0.2)
            release.set()  # its reply now arrives for a request nobody waits for
            reply = await transport.call(server.address, "echo", {"x": 1}, timeout=TIMEOUT)
            assert reply.meta == {"x": 1}
        await server.stop()
    run(main())


def test_call_to_dead_address_times_out():
    async def main():
        async with ZmqTransport() as transport:
            with pytest.raises(RequestTimeout):
                await transport.call(endpoint("tcp://127.0.0.1:9", CurveKeys.generate().public), "ping",
                                     timeout=0.2)
    run(main())


def test_an_address_zeromq_cannot_connect_to_raises_bad_address_a_wire_error():
    from wire.errors import BadAddress, WireError

    async def main():
        async with ZmqTransport() as transport:
            with pytest.raises(BadAddress, match="bad address") as caught:
                await transport.call(endpoint("nonsense://x", CurveKeys.generate().public), "ping", timeout=0.2)
            assert isinstance(caught.value, WireError) and isinstance(caught.value, ValueError)
    run(main())


def test_handler_errors_become_remote_errors_with_code_and_registered_type():
    register_remote_error("unknown_session", SessionGone)
    async def main():
        async def fails(request):
            kind = request.meta["kind"]
            if kind == "coded":
                raise CodedError("no room for 512 tokens")
            if kind == "registered":
                raise SessionGone("unknown_session", "session 5 expired")
            raise RuntimeError("bug")
        server = await serving({"fails": fails})
        async with ZmqTransport() as transport:
            call = lambda kind: transport.call(server.address, "fails", {"kind": kind}, timeout=TIMEOUT)
            with pytest.raises(RemoteError) as err:
                await call("coded")
            assert (err.value.code, err.value.message) == ("cache_full", "no room for 512 tokens")
            with pytest.raises(SessionGone) as err:
                await call("registered")
            assert err.value.message == "session 5 expired"
            with pytest.raises(RemoteError) as err:
                await call("plain")
            assert err.value.code == "internal" and "RuntimeError: bug" in err.value.message
            with pytest.raises(RemoteError) as err:
                await transport.call(server.address, "nope", timeout=TIMEOUT)
            assert err.value.code == "unknown_method"
        await server.stop()
    run(main())


def test_pipelined_steps_of_one_session_are_handled_in_send_order():
    async def main():
        seen = []
        lock = asyncio.Lock()
        async def step(request):
            async with lock:  # taken before any other await: FIFO in arrival order
                seen.append(request.meta["position"])
                await asyncio.sleep(0.001 * (request.meta["position"] % 3))
            return {}, []
        server = await serving({"inference_step": step})
        async with ZmqTransport() as transport:
            await asyncio.gather(*[transport.call(server.address, "inference_step", {"position": p},
                                                  timeout=TIMEOUT) for p in range(50)])
        await server.stop()
        assert seen == list(range(50))
    run(main())


def test_every_dtype_and_compression_crosses_a_real_socket():
    async def main():
        tensors = [torch.randn(3, 5), torch.randn(2, 70_000).half(), torch.zeros(1, 70_000, dtype=torch.bfloat16),
                   torch.arange(9), torch.arange(4, dtype=torch.int32), torch.ones(2, 2, dtype=torch.bool),
                   torch.empty(0, 4096, dtype=torch.float16),
                   torch.randn(600_000)]  # > 1 MiB of lz4 payload: decoded off the event loop
        server = await serving({"echo": echo}, compression="lz4")
        for compression in ("none", "lz4", "auto"):
            async with ZmqTransport(compression=compression) as transport:
                reply = await transport.call(server.address, "echo", {"b": b"\x00\xff"}, tensors, timeout=TIMEOUT)
            assert reply.meta == {"b": b"\x00\xff"}
            for got, sent in zip(reply.tensors, tensors):
                assert got.dtype == sent.dtype and torch.equal(got, sent)
        await server.stop()
    run(main())


def test_closed_transport_refuses_calls_and_fails_pending_ones():
    async def main():
        never = asyncio.Event()
        async def stuck(request):
            await never.wait()
        server = await serving({"stuck": stuck})
        transport = ZmqTransport()
        pending = asyncio.ensure_future(transport.call(server.address, "stuck", timeout=TIMEOUT))
        await asyncio.sleep(0.05)
        await transport.close()
        with pytest.raises(TransportClosed):
            await pending
        with pytest.raises(TransportClosed):
            await transport.call(server.address, "stuck", timeout=TIMEOUT)
        await server.stop()
    run(main())


def test_sync_caller_uses_background_loop():
    with BackgroundLoop() as loop:
        async def start():
            return await serving({"echo": echo}), ZmqTransport()
        server, transport = loop.run(start(), timeout=TIMEOUT)
        reply = loop.run(transport.call(server.address, "echo", {"sync": True}, timeout=TIMEOUT), timeout=TIMEOUT)
        assert reply.meta == {"sync": True}
        with pytest.raises(TimeoutError):
            loop.run(asyncio.sleep(30), timeout=0.1)
        loop.run(transport.close(), timeout=TIMEOUT)
        loop.run(server.stop(), timeout=TIMEOUT)
