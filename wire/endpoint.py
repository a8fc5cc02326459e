"""Server addresses that name the server's CURVE key (pure string code: no zmq, no sockets)::

    tcp://10.0.0.5:31337                                   plaintext (--insecure-plaintext)
    tcp://10.0.0.5:31337#curve=<52 base32 characters>      CURVE: only the holder of the key answers

The key rides in the address, as a libp2p multiaddr carries its /p2p/<peer id>, so that every
place that passes an address on (routes, bans, probes, logs) passes who must answer there with
it, and two records that name one host with different keys are two different servers. The key
is written in lowercase base32, as peer ids are: unlike ZeroMQ's Z85, it has no '#', '/' or
quotes to trip a shell or a log reader. wire.curve holds the keys and the sockets' side.
"""
from __future__ import annotations

import base64
import binascii

from .errors import BadAddress

__all__ = ["endpoint", "split_endpoint", "format_key", "parse_key", "KEY_BYTES", "CURVE_MARK"]

KEY_BYTES = 32
CURVE_MARK = "#curve="
_KEY_CHARS = 52  # base32 of 32 bytes, without its "====" padding


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
