"""CURVE (libzmq's CurveZMQ: X25519 key exchange, XSalsa20-Poly1305 boxes) for the wire.

A server holds a `CurveKeys` pair and listens with it; whoever dials it must already know its
public key, which travels inside the server's address (wire.endpoint). A client dials with a
pair of its own made for the transport (ephemeral: servers do not authenticate clients).
"""
from __future__ import annotations

from dataclasses import dataclass

import zmq
from zmq.utils import z85

from .endpoint import KEY_BYTES, format_key
from .errors import CurveUnavailable

__all__ = ["CurveKeys", "require_curve"]


def require_curve() -> None:
    """Raise CurveUnavailable when this libzmq was built without CURVE (pyzmq's wheels have it)."""
    if not zmq.has("curve"):
        raise CurveUnavailable(f"libzmq {zmq.zmq_version()} was built without CURVE: install pyzmq's "
                               "wheel (it bundles libsodium), or run with --insecure-plaintext")


@dataclass(frozen=True)
class CurveKeys:
    """An X25519 key pair as raw 32-byte strings."""

    public: bytes
    secret: bytes

    def __post_init__(self):
        if len(self.public) != KEY_BYTES or len(self.secret) != KEY_BYTES:
            raise ValueError("a CURVE key is 32 bytes")

    @classmethod
    def generate(cls) -> "CurveKeys":
        require_curve()
        public, secret = zmq.curve_keypair()
        return cls(z85.decode(public), z85.decode(secret))

    @classmethod
    def from_secret(cls, secret: bytes) -> "CurveKeys":
        """The pair of a given secret (any 32 bytes: X25519 clamps them), e.g. one derived from
        a persistent identity."""
        require_curve()
        if len(secret) != KEY_BYTES:
            raise ValueError("a CURVE secret key is 32 bytes")
        public = zmq.curve_public(z85.encode(secret))
        return cls(z85.decode(public), bytes(secret))

    def __repr__(self) -> str:  # never print the secret
        return f"CurveKeys(public={format_key(self.public)!r})"
