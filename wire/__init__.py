"""wire: tensors and requests over ZeroMQ. See docs/architecture.md (wire section).

A server::

    async def ping(request): return {}, []
    server = RpcServer({"ping": ping}); await server.start()     # server.address: "tcp://..."

A client::

    transport = ZmqTransport()
    reply = await transport.call(server.address, "ping", timeout=5)   # Reply(meta, tensors)
"""
from .codec import decode_tensor, encode_tensor, to_wire_dtype
from .dispatch import Handler, Reply, Request
from .envelope import PROTOCOL_VERSION, Message, decode_message, encode_message
from .errors import (BadHeader, BadTensor, BadVersion, ConnectionLost, CorruptPayload, MessageTooLarge,
                     ProtocolError, RemoteError, RequestTimeout, TransportClosed, UnknownMethod,
                     WireError, register_remote_error)
from .limits import DEFAULT_LIMITS, Limits
from .loop import BackgroundLoop
from .server import RpcServer
from .transport import MockTransport, Transport, ZmqTransport

__all__ = [
    # errors
    "WireError", "ProtocolError", "BadVersion", "BadHeader", "UnknownMethod", "BadTensor",
    "MessageTooLarge", "CorruptPayload", "RequestTimeout", "ConnectionLost", "TransportClosed", "RemoteError",
    "register_remote_error",
    # codec and envelope
    "encode_tensor", "decode_tensor", "to_wire_dtype", "Message", "encode_message",
    "decode_message", "Limits", "DEFAULT_LIMITS", "PROTOCOL_VERSION",
    # client and server
    "Transport", "ZmqTransport", "MockTransport", "Reply", "Request", "Handler", "RpcServer",
    "BackgroundLoop",
]
