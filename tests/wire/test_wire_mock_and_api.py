"""MockTransport answers like the real server; the public API is what architecture.md promises."""
import asyncio

import pytest
import torch

import wire
from wire import MockTransport, RemoteError, Reply, RequestTimeout, Transport, ZmqTransport


class Busy(Exception):
    code = "shutting_down"


def test_public_api_is_pinned():
    assert sorted(wire.__all__) == sorted([
        "WireError", "ProtocolError", "BadVersion", "BadHeader", "UnknownMethod", "BadTensor",
        "MessageTooLarge", "CorruptPayload", "RequestTimeout", "ConnectionLost", "TransportClosed", "RemoteError",
        "register_remote_error", "HandshakeFailed", "PlaintextRefused", "CurveUnavailable", "CurveKeys",
        "encode_tensor", "decode_tensor", "to_wire_dtype", "Message",
        "encode_message", "decode_message", "Limits", "DEFAULT_LIMITS", "PROTOCOL_VERSION",
        "Transport", "ZmqTransport", "MockTransport", "Reply", "Request", "Handler", "RpcServer",
        "BackgroundLoop"])
    for name in wire.__all__:
        assert getattr(wire, name) is not None
    assert issubclass(ZmqTransport, Transport) and issubclass(MockTransport, Transport)


def test_error_tree_matches_the_documented_one():
    assert issubclass(wire.BadVersion, wire.ProtocolError)
    for cls in (wire.BadHeader, wire.UnknownMethod, wire.BadTensor, wire.MessageTooLarge,
                wire.CorruptPayload):
        assert issubclass(cls, wire.ProtocolError)
    for cls in (wire.ProtocolError, wire.RequestTimeout, wire.TransportClosed, wire.RemoteError,
                wire.HandshakeFailed, wire.PlaintextRefused, wire.CurveUnavailable):
        assert issubclass(cls, wire.WireError)
    err = RemoteError("bad_input", "no")
    assert (err.code, err.message) == ("bad_input", "no")


def test_mock_transport_routes_copies_and_raises_like_a_server():
    async def main():
        got = []
        async def step(request):
            got.append(request.tensors[0])
            if request.meta.get("fail"):
                raise Busy("draining")
            return Reply({"ok": 1}, [request.tensors[0] + 1])
        async def slow(request):
            await asyncio.sleep(30)
        transport = MockTransport({"tcp://a:1": {"step": step, "slow": slow}})
        x = torch.zeros(2, dtype=torch.bfloat16)
        reply = await transport.call("tcp://a:1", "step", {}, [x], timeout=5)
        assert reply.meta == {"ok": 1} and torch.equal(reply.tensors[0], x + 1)
        got[0].add_(5)
        assert x.sum().item() == 0  # the handler saw a copy, as over a socket
        with pytest.raises(RemoteError) as err:
            await transport.call("tcp://a:1", "step", {"fail": True}, [x], timeout=5)
        assert err.value.code == "shutting_down"
        with pytest.raises(RemoteError) as err:
            await transport.call("tcp://a:1", "nope", timeout=5)
        assert err.value.code == "unknown_method"
        with pytest.raises(RequestTimeout):
            await transport.call("tcp://a:1", "slow", timeout=0.05)
        transport.remove_server("tcp://a:1")
        with pytest.raises(RequestTimeout):
            await transport.call("tcp://a:1", "step", {}, [x], timeout=5)
        with pytest.raises(TypeError):  # meta must survive msgpack, as on the real wire
            await MockTransport({"tcp://b:1": {}}).call("tcp://b:1", "step", {"x": object()}, timeout=5)
        assert transport.calls[0] == ("tcp://a:1", "step")
    asyncio.run(main())
