"""wire: tensors and requests over ZeroMQ. See docs/architecture.md (wire section).

A server::

    async def ping(request): return {}, []
    server = RpcServer({"ping": ping}); await server.start()   # server.address: "tcp://...#curve=KEY"

A client::

    transport = ZmqTransport()
    reply = await transport.call(server.address, "ping", timeout=5)   # Reply(meta, tensors)
"""
import importlib

# Where each public name lives. They are imported on first use (PEP 562): codec, dispatch,
# envelope and transport import torch (seconds), and a CLI that only needs wire.errors to parse
# its arguments (zswarm.errors imports it) must not pay for that.
_HOMES = {
    "encode_tensor": "codec", "decode_tensor": "codec", "to_wire_dtype": "codec",
    "Handler": "dispatch", "Reply": "dispatch", "Request": "dispatch",
    "PROTOCOL_VERSION": "envelope", "Message": "envelope", "decode_message": "envelope", "encode_message": "envelope",
    "Limits": "limits", "DEFAULT_LIMITS": "limits",
    "BackgroundLoop": "loop",
    "CurveKeys": "curve",
    "RpcServer": "server",
    "MockTransport": "transport", "Transport": "transport", "ZmqTransport": "transport",
}
for _name in ("BadHeader", "BadTensor", "BadVersion", "ConnectionLost", "CorruptPayload", "CurveUnavailable", "HandshakeFailed",
              "MessageTooLarge", "PlaintextRefused", "ProtocolError",
              "RemoteError", "RequestTimeout", "TransportClosed", "UnknownMethod", "WireError", "register_remote_error"):
    _HOMES[_name] = "errors"


def __getattr__(name):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'wire' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    # errors
    "WireError", "ProtocolError", "BadVersion", "BadHeader", "UnknownMethod", "BadTensor",
    "MessageTooLarge", "CorruptPayload", "RequestTimeout", "ConnectionLost", "TransportClosed", "RemoteError",
    "register_remote_error", "HandshakeFailed", "PlaintextRefused", "CurveUnavailable",
    # encryption (CURVE)
    "CurveKeys",
    # codec and envelope
    "encode_tensor", "decode_tensor", "to_wire_dtype", "Message", "encode_message",
    "decode_message", "Limits", "DEFAULT_LIMITS", "PROTOCOL_VERSION",
    # client and server
    "Transport", "ZmqTransport", "MockTransport", "Reply", "Request", "Handler", "RpcServer",
    "BackgroundLoop",
]
