"""The one exception tree of `wire`.

::

    WireError                      anything wire raises
    ├── ProtocolError              a message broke the protocol (ours or the peer's)
    │   ├── BadVersion             protocol version we do not speak
    │   ├── BadHeader              header not msgpack / not a map / missing or mistyped fields
    │   ├── UnknownMethod          no handler for the method (server side)
    │   ├── BadTensor              unknown dtype, bad shape, byte count that does not match
    │   ├── MessageTooLarge        over Limits (bytes, frames, header size)
    │   └── CorruptPayload         truncated or corrupt lz4
    ├── RequestTimeout             no reply within the call's timeout
    │   └── ConnectionLost         the connection of a call dropped or was refused: no reply will come
    ├── TransportClosed            the transport (or its server) was closed
    ├── BadAddress (ValueError)    an address ZeroMQ cannot connect to
    ├── SocketError                ZeroMQ refused a send (zmq.ZMQError chained)
    ├── HandshakeFailed            the CURVE handshake failed: the server does not hold the key
    │                              its address names (or speaks plaintext, or we do)
    ├── PlaintextRefused           an address without a CURVE key, and plaintext not allowed
    ├── CurveUnavailable           this libzmq was built without CURVE
    └── RemoteError(code, message) the server answered with an error reply

Every class has a string ``code``; the server answers any exception that has a ``code``
attribute with an error reply carrying that code and ``str(exc)``, anything else with
``internal``. On the client the reply becomes ``RemoteError`` -- or the subclass a higher
package registered for that code with :func:`register_remote_error`.
"""
from __future__ import annotations

__all__ = [
    "WireError", "ProtocolError", "BadVersion", "BadHeader", "UnknownMethod", "BadTensor",
    "MessageTooLarge", "CorruptPayload", "RequestTimeout", "ConnectionLost", "TransportClosed", "BadAddress",
    "SocketError", "HandshakeFailed", "PlaintextRefused", "CurveUnavailable", "RemoteError",
    "register_remote_error", "remote_error_from_reply",
]


class WireError(Exception):
    """Base of every error raised by `wire`."""

    code = "wire_error"


class ProtocolError(WireError):
    code = "protocol_error"


class BadVersion(ProtocolError):
    code = "bad_version"


class BadHeader(ProtocolError):
    code = "bad_header"


class UnknownMethod(ProtocolError):
    code = "unknown_method"


class BadTensor(ProtocolError):
    code = "bad_tensor"


class MessageTooLarge(ProtocolError):
    code = "message_too_large"


class CorruptPayload(ProtocolError):
    code = "corrupt_payload"


class RequestTimeout(WireError):
    code = "timeout"


class ConnectionLost(RequestTimeout):
    """The TCP connection a call was sent on dropped before its reply came, or a reconnect was
    refused while the call waited: the reply never will come (a killed server's kernel closes its
    sockets at once), so the call fails then, not at its timeout."""
    code = "connection_lost"


class TransportClosed(WireError):
    code = "transport_closed"


class BadAddress(WireError, ValueError):
    code = "bad_address"


class SocketError(WireError):
    code = "socket_error"


class HandshakeFailed(WireError):
    code = "handshake_failed"


class PlaintextRefused(WireError):
    code = "plaintext_refused"


class CurveUnavailable(WireError):
    code = "curve_unavailable"


class RemoteError(WireError):
    """The server answered with an error reply. ``code`` says what kind, ``message`` why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message

    def __reduce__(self):  # keep the two-argument constructor picklable for executors/threads
        return (type(self), (self.code, self.message))


_REMOTE_ERRORS: dict[str, type[RemoteError]] = {}


def register_remote_error(code: str, cls: type[RemoteError]) -> None:
    """Make the client raise ``cls(code, message)`` for error replies with this ``code``."""
    if not (isinstance(cls, type) and issubclass(cls, RemoteError)):
        raise TypeError(f"{cls!r} is not a RemoteError subclass")
    _REMOTE_ERRORS[code] = cls


def remote_error_from_reply(code: str, message: str) -> RemoteError:
    """The exception a client raises for an error reply (registered subclass or RemoteError)."""
    return _REMOTE_ERRORS.get(code, RemoteError)(code, message)
