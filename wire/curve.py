"""CURVE (libzmq's CurveZMQ: X25519 key exchange, XSalsa20-Poly1305 boxes) for the wire.

A server holds a `CurveKeys` pair and listens with it; whoever dials it must already know its
public key, which travels inside the server's *address*::

    tcp://10.0.0.5:31337                                  plaintext (--insecure-plaintext)
    tcp://10.0.0.5:31337#curve=<52 base32 characters>     CURVE: only the holder of the key answers

The key rides in the address, as a libp2p multiaddr carries its /p2p/<peer id>, so that every
place that passes an address on (routes, bans, probes, logs) passes who must answer there with
it, and two records that name one host with different keys are two different servers. A client
dials with a keypair of its own made for the transport (ephemeral: servers do not authenticate
clients). The key is written in lowercase base32, as peer ids are: unlike ZeroMQ's Z85, it has
no '#', '/' or quotes to trip a shell or a log reader.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from .errors import BadAddress, CurveUnavailable

__all__ = ["CurveKeys", "endpoint", "split_endpoint", "format_key", "parse_key", "require_curve", "KEY_BYTES",
           "CURVE_MARK"]

KEY_BYTES = 32
CURVE_MARK = "#curve="
_KEY_CHARS = 52  # base32 of 32 bytes, without its "====" padding


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


def endpoint(address: str, server_key: bytes | None) -> str:
    """`address` (tcp://host:port) with the server's public key, or as it is without one."""
    if not server_key:
        return address
    if len(server_key) != KEY_BYTES:
        raise BadAddress(f"a CURVE server key is {KEY_BYTES} bytes, got {len(server_key)}")
    return f"{address}{CURVE_MARK}{format_key(server_key)}"


def format_key(key: bytes) -> str:
    return base64.b32encode(key).decode("ascii").rstrip("=").lower()


def parse_key(text: str) -> bytes:
    """`format_key`'s inverse; ValueError for anything else."""
    if len(text) != _KEY_CHARS or text != text.lower():
        raise ValueError(f"a CURVE key is {_KEY_CHARS} lowercase base32 characters")
    try:
        return base64.b32decode(text.upper() + "====")
    except (binascii.Error, ValueError):
        raise ValueError(f"a CURVE key is {_KEY_CHARS} lowercase base32 characters") from None


def split_endpoint(text: str) -> tuple[str, bytes | None]:
    """The inverse of `endpoint`: (tcp address, server key or None); BadAddress for a malformed key."""
    address, mark, key = text.partition(CURVE_MARK)
    if not mark:
        return text, None
    try:
        return address, parse_key(key)
    except ValueError as exc:
        raise BadAddress(f"bad CURVE key in {text!r}: {exc}") from None
